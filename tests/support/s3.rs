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

/// An HTTPS front for a plain-HTTP store on 127.0.0.1: TLS (OpenSSL, `certificate` and
/// `key`, PEM files) on an ephemeral port, each connection piped to `target` on its own
/// thread. Lives as long as the test process.
pub fn tls_front(target: std::net::SocketAddr, certificate: &Path, key: &Path) -> std::net::SocketAddr {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
    builder.set_certificate_chain_file(certificate).expect("certificate");
    builder.set_private_key_file(key, SslFiletype::PEM).expect("key");
    let acceptor = std::sync::Arc::new(builder.build());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || pipe_tls(&acceptor, client, target));
        }
    });
    address
}

/// One TLS connection to the front, relayed to the store both ways until either side ends.
fn pipe_tls(acceptor: &openssl::ssl::SslAcceptor, client: std::net::TcpStream, target: std::net::SocketAddr) {
    use std::io::{ErrorKind, Read, Write};
    use std::time::Duration;
    let Ok(mut tls) = acceptor.accept(client) else {
        return; // a refused handshake: the client decided not to trust us
    };
    let Ok(mut store) = std::net::TcpStream::connect(target) else {
        return;
    };
    let poll = Some(Duration::from_millis(2));
    if tls.get_ref().set_read_timeout(poll).is_err() || store.set_read_timeout(poll).is_err() {
        return;
    }
    let mut buffer = vec![0u8; 256 * 1024];
    let idle_max = Duration::from_secs(30);
    let mut idle_since = std::time::Instant::now();
    loop {
        let mut moved = false;
        for from_client in [true, false] {
            let read = match from_client {
                true => tls.read(&mut buffer),
                false => store.read(&mut buffer),
            };
            match read {
                Ok(0) => return,
                Ok(count) => {
                    let written = match from_client {
                        true => store.write_all(&buffer[..count]),
                        false => tls.write_all(&buffer[..count]),
                    };
                    if written.is_err() {
                        return;
                    }
                    moved = true;
                }
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
        if moved {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() > idle_max {
            return;
        }
    }
}
