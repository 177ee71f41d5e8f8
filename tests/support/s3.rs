//! The real S3 store the S3-volume tests run against: a three-node Garage cluster on
//! 127.0.0.1 (`scripts/s3-store.sh`). `scripts/test` starts one and exports its `S3_*`
//! variables; a plain `cargo test` starts (or reuses) one under `target/s3-store` when
//! Garage is installed in the tools cache, and otherwise fails with how to install it
//! (`keepring::s3::testing`, shared with the S3 client's own tests).
//! Checks of the bucket's layout go through a plain S3 client (boto3,
//! `tests/python/s3_plain.py`), never through keepring's own.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The store's coordinates (`keepring::s3::testing`: the `S3_*` variables `scripts/test`
/// exports, else a cluster under `target/s3-store`).
pub use keepring::s3::testing::StoreEnv as S3Store;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The store, found (or started) once per test process.
pub fn store() -> &'static S3Store {
    static STORE: OnceLock<S3Store> = OnceLock::new();
    STORE.get_or_init(keepring::s3::testing::test_store)
}

/// The test cluster's directory, for `scripts/s3-store.sh stop-node DIR N`: `S3_STORE_DIR`
/// (`scripts/test` exports it), else the one `test_store` starts, `target/s3-store`.
pub fn store_dir() -> std::path::PathBuf {
    store();
    match std::env::var("S3_STORE_DIR") {
        Ok(dir) => dir.into(),
        Err(_) => repo().join("target/s3-store"),
    }
}

/// Run `tests/python/s3_plain.py` (boto3) with `args` against `store`; its stdout.
pub fn plain_client(store: &S3Store, bucket: &str, args: &[&str]) -> String {
    static PYTHON: OnceLock<String> = OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join("scripts/s3-store.sh"))
            .arg("client-python")
            .output()
            .expect("scripts/s3-store.sh client-python");
        assert!(
            output.status.success(),
            "no boto3 venv:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    });
    let output = Command::new(python)
        .arg(repo().join("tests/python/s3_plain.py"))
        .args(args)
        .env("S3_ENDPOINT", &store.endpoint)
        .env("S3_REGION", &store.region)
        .env("S3_BUCKET", bucket)
        .env("S3_ACCESS_KEY_ID", &store.access_key_id)
        .env("S3_SECRET_ACCESS_KEY", &store.secret_access_key)
        .output()
        .expect("run s3_plain.py");
    assert!(
        output.status.success(),
        "s3_plain.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `Volumes:` entry of an S3 volume on `store`'s bucket, indented for a cluster config.
pub fn volume_entry(store: &S3Store, uuid: &str, prefix_length: usize, extra: &str) -> String {
    format!(
        "      {uuid}:\n        Driver: S3\n        DriverParameters:\n          Bucket: {}\n          \
         Region: {}\n          Endpoint: \"{}\"\n          UsePathStyle: true\n          AccessKeyID: {}\n          \
         SecretAccessKey: {}\n          PrefixLength: {prefix_length}\n{extra}",
        store.bucket, store.region, store.endpoint, store.access_key_id, store.secret_access_key
    )
}
