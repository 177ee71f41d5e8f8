//! A real S3 store for tests (never a mock): the Garage cluster of `scripts/s3-store.sh`.
//! Used by this module's tests and by integration tests alike (`keepring::s3::testing`).
//!
//! `test_store()` takes the store from the environment when `S3_ENDPOINT` is set
//! (`scripts/test` starts one and exports its `S3_*` lines); otherwise, if Garage is built
//! in the tools cache, it starts a cluster under `target/s3-store` (or finds it running:
//! it is left running for the next test run, `scripts/s3-store.sh stop target/s3-store`
//! ends it); otherwise it panics saying how to get one. Tests share the bucket and keep
//! apart by key prefix (`unique_prefix`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::ClientConfig;

/// Where a test store is, as `scripts/s3-store.sh` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEnv {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub use_path_style: bool,
}

impl StoreEnv {
    /// A client configuration for this store (keepstore's default timeouts).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            use_path_style: self.use_path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            ..ClientConfig::default()
        }
    }

    /// From `S3_*` variables; `None` if `S3_ENDPOINT` is absent.
    fn from_variables(lookup: impl Fn(&str) -> Option<String>) -> Option<StoreEnv> {
        let endpoint = lookup("S3_ENDPOINT")?;
        let get = |name: &str| lookup(name).unwrap_or_else(|| panic!("S3_ENDPOINT is set but {name} is not"));
        Some(StoreEnv {
            endpoint,
            region: get("S3_REGION"),
            bucket: get("S3_BUCKET"),
            access_key_id: get("S3_ACCESS_KEY_ID"),
            secret_access_key: get("S3_SECRET_ACCESS_KEY"),
            use_path_style: lookup("S3_USE_PATH_STYLE").is_some_and(|value| value == "true"),
        })
    }
}

/// Parse `KEY=VALUE` lines (the store's `env` file).
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cluster_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    target.join("s3-store")
}

static STORE: Mutex<Option<StoreEnv>> = Mutex::new(None);

/// The test store (see the module doc). Starts the cluster at most once per process.
pub fn test_store() -> StoreEnv {
    let mut store = STORE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = store.as_ref() {
        return found.clone();
    }
    let found = StoreEnv::from_variables(|name| std::env::var(name).ok()).unwrap_or_else(start_cluster);
    *store = Some(found.clone());
    found
}

fn start_cluster() -> StoreEnv {
    let script = repository().join("scripts/s3-store.sh");
    let installed = Command::new("bash")
        .arg(&script)
        .arg("installed")
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    if !installed.status.success() {
        panic!(
            "no S3 test store: set S3_* (scripts/s3-store.sh start DIR prints them) or build Garage once with `scripts/s3-store.sh install` (~20 min)"
        );
    }
    let dir = cluster_dir();
    if let Some(parent) = dir.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let started = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    if !started.status.success() {
        panic!(
            "scripts/s3-store.sh start {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&started.stderr)
        );
    }
    let text =
        std::fs::read_to_string(dir.join("env")).unwrap_or_else(|error| panic!("read {}/env: {error}", dir.display()));
    let variables = parse_env_file(&text);
    StoreEnv::from_variables(|name| variables.get(name).cloned())
        .unwrap_or_else(|| panic!("{}/env has no S3_ENDPOINT", dir.display()))
}

/// A key prefix no other test (in this process or another) uses: `test/<pid>-<time>-<n>/`.
pub fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("test/{label}-{}-{nanos:x}-{count}/", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_env_file() {
        let text = "S3_ENDPOINT=http://127.0.0.1:1\nS3_REGION=garage\nS3_BUCKET=b\n\
S3_ACCESS_KEY_ID=GK1\nS3_SECRET_ACCESS_KEY=s\nS3_USE_PATH_STYLE=true\n";
        let variables = parse_env_file(text);
        let store = StoreEnv::from_variables(|name| variables.get(name).cloned()).expect("complete");
        assert_eq!(store.endpoint, "http://127.0.0.1:1");
        assert!(store.use_path_style);
        assert_eq!(store.client_config().region, "garage");
        assert!(StoreEnv::from_variables(|_| None).is_none());
        assert_ne!(unique_prefix("x"), unique_prefix("x"));
    }
}
