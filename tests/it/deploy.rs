//! Deployment from one shared cluster `config.yml`, as an Arvados operator runs keepstore:
//! the same file on every node, each node finding its own `InternalURLs` entry and
//! volumes; settings that would serve unsafely refuse to start (exit 2, nothing served,
//! nothing created); the trash emptier on keepstore's schedule. Nodes live on 127.0.0.1
//! and 127.0.0.2 (both this host's), and one entry names 100.64.0.9, an address this host
//! lacks: it is only ever tried for a bind, never contacted.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::client::{eventually, Request};
use crate::support::keep::*;
use crate::support::server::{binary_path, ServerBuilder, TestServer};

/// An address no interface here has (RFC 6598 shared space).
const FOREIGN_HOST: &str = "100.64.0.9";
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free port on {host}: {error}"))
}

/// A three-node cluster config: node A on 127.0.0.1, B on 127.0.0.2, C elsewhere. Volume
/// `a` is A's only, `b` B's only (its AccessViaHosts key spelled differently), `shared`
/// both's (read-only for A), `c` C's; `everyone` has no AccessViaHosts.
struct Cluster {
    dir: tempfile::TempDir,
    urls: [String; 3],
    config: PathBuf,
}

const UUID_A: &str = "zzzzz-nyw5e-aaaaaaaaaaaaaaa";
const UUID_B: &str = "zzzzz-nyw5e-bbbbbbbbbbbbbbb";
const UUID_C: &str = "zzzzz-nyw5e-ccccccccccccccc";
const UUID_SHARED: &str = "zzzzz-nyw5e-sssssssssssssss";
const UUID_EVERYONE: &str = "zzzzz-nyw5e-eeeeeeeeeeeeeee";

impl Cluster {
    fn new(extra_collections: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("keepring-cluster-")
            .tempdir()
            .expect("temp dir");
        let urls = [
            format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
            format!("http://127.0.0.2:{}/", free_port("127.0.0.2")),
            format!("http://{FOREIGN_HOST}:25107/"),
        ];
        for name in ["a", "b", "c", "shared", "everyone"] {
            std::fs::create_dir_all(dir.path().join(name)).expect("volume dir");
        }
        let volume = |uuid: &str, name: &str, hosts: &str| {
            let root = dir.path().join(name);
            format!(
                "      {uuid}:\n        Driver: Directory\n        DriverParameters: {{Root: {}}}\n{hosts}",
                root.display()
            )
        };
        let b_spelled_otherwise = urls[1].trim_end_matches('/').to_uppercase().replace("HTTP", "http");
        let text = format!(
            "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n    Services:\n      Keepstore:\n        \
             InternalURLs:\n{}    Collections:\n      BlobSigningKey: {SIGNING_KEY}\n{extra_collections}    Volumes:\n{}{}{}{}{}",
            urls.iter().map(|url| format!("          \"{url}\": {{}}\n")).collect::<String>(),
            volume(UUID_A, "a", &format!("        AccessViaHosts:\n          \"{}/\": {{}}\n", urls[0])),
            volume(UUID_B, "b", &format!("        AccessViaHosts:\n          \"{b_spelled_otherwise}\": {{}}\n")),
            volume(UUID_C, "c", &format!("        AccessViaHosts:\n          \"{}\": {{}}\n", urls[2])),
            volume(
                UUID_SHARED,
                "shared",
                &format!(
                    "        AccessViaHosts:\n          \"{}\": {{ReadOnly: true}}\n          \"{}\": {{}}\n",
                    urls[0], urls[1]
                )
            ),
            volume(UUID_EVERYONE, "everyone", ""),
        );
        let config = dir.path().join("config.yml");
        std::fs::write(&config, text).expect("write config");
        Cluster { dir, urls, config }
    }

    /// A node started with the shared config only (no --listen, no volume flags).
    fn node(&self) -> ServerBuilder {
        ServerBuilder::new()
            .volume_paths(Vec::new())
            .without_signing_key()
            .without_root_token()
            .without_listen_flag()
            .env("XDG_RUNTIME_DIR", self.dir.path().to_str().expect("utf-8 path"))
            .arg("--config")
            .arg(self.config.to_str().expect("utf-8 path"))
    }

    fn address(&self, node: usize) -> SocketAddr {
        let rest = self.urls[node].trim_start_matches("http://").trim_end_matches('/');
        rest.parse().expect("socket address")
    }
}

/// `(uuid, allow_write, allow_trash)` of each mount, in /mounts order.
fn mounts(server: &TestServer) -> Vec<(String, bool, bool)> {
    let response = server.request(Request::get("/mounts").token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let value: Value = serde_json::from_slice(&response.body).expect("mounts JSON");
    let mut found: Vec<(String, bool, bool)> = value
        .as_array()
        .expect("mounts array")
        .iter()
        .map(|mount| {
            (
                mount["uuid"].as_str().unwrap_or("").to_string(),
                mount["allow_write"].as_bool().unwrap_or(true),
                mount["allow_trash"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    found.sort();
    found
}

fn mount(uuid: &str, write: bool, trash: bool) -> (String, bool, bool) {
    (uuid.to_string(), write, trash)
}

#[test]
fn nodes_of_one_config_each_find_their_url_and_volumes() {
    let cluster = Cluster::new("");
    // B first, named by the environment (A's entry is free and sorts first).
    let node_b = cluster
        .node()
        .env("ARVADOS_SERVICE_INTERNAL_URL", &cluster.urls[1])
        .start();
    assert_eq!(node_b.addr, cluster.address(1));
    // A: both 127.0.0.x entries are this host's; B's port is taken, A's is free.
    let node_a = cluster.node().start();
    assert_eq!(node_a.addr, cluster.address(0));

    assert_eq!(
        mounts(&node_a),
        [
            mount(UUID_A, true, true),
            mount(UUID_EVERYONE, true, true),
            mount(UUID_SHARED, false, false),
        ],
        "A: its own, the unrestricted one, and the shared one read-only for A"
    );
    assert_eq!(
        mounts(&node_b),
        [
            mount(UUID_B, true, true),
            mount(UUID_EVERYONE, true, true),
            mount(UUID_SHARED, true, true),
        ],
        "B: matched through a differently spelled AccessViaHosts key"
    );
    // A write on A never lands on the volume that is read-only for A.
    for seed in 0..6 {
        let data = test_bytes(seed, 1000);
        node_a.put_block(&data);
        let hash = md5_hex(&data);
        assert!(!block_path(&cluster.dir.path().join("shared"), &hash).exists());
    }

    // A third process: every 127.0.0.x entry is in use and it replaces nobody.
    let output = Command::new(binary_path())
        .args(["--config", cluster.config.to_str().expect("utf-8 path")])
        .env("XDG_RUNTIME_DIR", cluster.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run keepring");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ARVADOS_SERVICE_INTERNAL_URL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_restart_with_term_pid_keeps_its_url_when_every_entry_is_busy() {
    let cluster = Cluster::new("");
    let node_a = cluster.node().start();
    let node_b = cluster.node().start();
    assert_eq!((node_a.addr, node_b.addr), (cluster.address(0), cluster.address(1)));
    let mut old_b = node_b;
    let new_b = cluster.node().arg("--term-pid").arg(&old_b.pid().to_string()).start();
    assert_eq!(new_b.addr, cluster.address(1), "the replaced process's URL");
    let status = old_b.wait_exit(EXIT_WITHIN).expect("the old B exits");
    assert!(status.success(), "{status}");
    assert_eq!(mounts(&new_b)[0].0, UUID_B);
    assert!(eventually(Duration::from_secs(5), || new_b
        .put(b"after the restart")
        .status
        == 200));
}

/// Runs keepring with `args` (in `cwd`) expecting a start-up refusal: exit 2 within
/// bounds, one stderr line; returns it.
fn refused(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> String {
    let mut child = Command::new(binary_path())
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .env("XDG_RUNTIME_DIR", cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keepring");
    let exited = eventually(EXIT_WITHIN, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("wait");
    assert!(exited, "still running: {args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    stderr
}

#[test]
fn unsafe_settings_refuse_to_start_and_serve_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port("127.0.0.1");
    let root = dir.path().join("never-created");
    let write = |name: &str, url: &str, collections: &str, volume: &str| -> PathBuf {
        let path = dir.path().join(name);
        let text = format!(
            "Clusters:\n  zzzzz:\n    Services:\n      Keepstore:\n        InternalURLs:\n          \"{url}\": {{}}\n\
             {collections}    Volumes:\n      zzzzz-nyw5e-000000000000000:\n{volume}        DriverParameters: {{Root: {}}}\n",
            root.display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    };
    let here = format!("http://127.0.0.1:{port}/");
    let key = format!("    Collections:\n      BlobSigningKey: {SIGNING_KEY}\n");
    let directory = "        Driver: Directory\n";
    let elsewhere =
        format!("        Driver: Directory\n        AccessViaHosts:\n          \"http://{FOREIGN_HOST}:1/\": {{}}\n");
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("no-key.yml", &here, "", directory), "BlobSigningKey"),
        (
            write(
                "bad-key.yml",
                &here,
                "    Collections:\n      BlobSigningKey: \"no spaces please\"\n",
                directory,
            ),
            "unacceptable characters",
        ),
        (
            write("no-volume.yml", &here, &key, &elsewhere),
            "no volume configured for",
        ),
        (
            write("driver.yml", &here, &key, "        Driver: Tape\n"),
            "invalid driver",
        ),
        (
            // An S3 volume without its bucket (keepstore refuses it the same way).
            write("s3.yml", &here, &key, "        Driver: S3\n"),
            "DriverParameters.Bucket must be set",
        ),
        (
            write("https.yml", &format!("https://127.0.0.1:{port}/"), &key, directory),
            "TLS.Certificate",
        ),
        (
            write(
                "nowhere.yml",
                &format!("http://{FOREIGN_HOST}:{port}/"),
                &key,
                directory,
            ),
            "no Services.Keepstore.InternalURLs entry has an address of this host",
        ),
    ];
    for (config, reason) in &cases {
        let line = refused(&["--config", config.to_str().expect("utf-8")], dir.path(), &[]);
        assert!(line.contains(reason), "{}: {line}", config.display());
        // Nothing served meanwhile, nothing created.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
    assert!(!root.exists(), "a configured root is never created");
    assert!(!dir.path().join("keepring-data").exists(), "no fallback data dir");
    // (With --volume-root or --discover-mounts a volume may appear live: not refused.)
}

#[test]
fn keepstore_style_invocations_read_the_cluster_config() {
    let cluster = Cluster::new("");
    // `-config FILE`, one dash, as keepstore's Go flags take it.
    let single_dash = ServerBuilder::new()
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .without_listen_flag()
        .env("XDG_RUNTIME_DIR", cluster.dir.path().to_str().expect("utf-8"))
        .arg("-config")
        .arg(cluster.config.to_str().expect("utf-8"))
        .start();
    assert_eq!(single_dash.addr, cluster.address(0));
    drop(single_dash);
    // No arguments at all: $ARVADOS_CONFIG, as keepstore's packaged unit runs it.
    let no_arguments = ServerBuilder::new()
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .without_listen_flag()
        .env("XDG_RUNTIME_DIR", cluster.dir.path().to_str().expect("utf-8"))
        .env("ARVADOS_CONFIG", cluster.config.to_str().expect("utf-8"))
        .start();
    assert_eq!(no_arguments.addr, cluster.address(0));
    assert!(mounts(&no_arguments).iter().any(|(uuid, _, _)| uuid == UUID_A));
}

/// A block trashed long ago (its deadline passed) on volume `a`.
fn expired_trash(cluster: &Cluster, data: &[u8]) -> (PathBuf, String) {
    let volume = cluster.dir.path().join("a");
    let hash = md5_hex(data);
    write_block_file(&volume, &hash, data);
    let trashed = volume.join(&hash[..3]).join(format!("{hash}.trash.1000"));
    std::fs::rename(block_path(&volume, &hash), &trashed).expect("rename to trash");
    (trashed, hash)
}

#[test]
fn expired_trash_survives_restarts_with_a_long_interval_and_is_untrashed() {
    // Arvados' recovery procedure: BlobTrashCheckInterval 2400h, restart, untrash.
    let cluster = Cluster::new("      BlobTrashCheckInterval: 2400h\n");
    let data = b"a block an operator wants back";
    let (trashed, hash) = expired_trash(&cluster, data);
    let mut first = cluster.node().start();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(trashed.exists(), "deleted at start");
    let second = cluster.node().arg("--term-pid").arg(&first.pid().to_string()).start();
    assert!(first.wait_exit(EXIT_WITHIN).is_some_and(|status| status.success()));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(trashed.exists(), "deleted at a restart");
    let response = second.request(Request::new("PUT", &format!("/untrash/{hash}+{}", data.len())).token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let read = second.get(&signed_locator_for(data));
    assert_eq!((read.status, read.body.as_slice()), (200, &data[..]));
}

#[test]
fn the_emptier_deletes_after_one_interval_unless_blob_trash_is_off() {
    let short = Cluster::new("      BlobTrashCheckInterval: 1s\n");
    let (trashed, _) = expired_trash(&short, b"expired and unwanted");
    let _server = short.node().start();
    assert!(
        eventually(Duration::from_secs(20), || !trashed.exists()),
        "expired trash stays"
    );

    let off = Cluster::new("      BlobTrashCheckInterval: 1s\n      BlobTrash: false\n");
    let (trashed, hash) = expired_trash(&off, b"kept while trash is off");
    let server = off.node().start();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(trashed.exists(), "BlobTrash: false empties nothing");
    let delete = server.request(Request::new("DELETE", &format!("/{hash}+23")).token(ROOT_TOKEN));
    assert_eq!(delete.status, 405, "{}", delete.summary());
}

#[test]
fn request_limits_queue_then_refuse_and_are_measured() {
    let server = ServerBuilder::new()
        .arg("--max-concurrent-requests")
        .arg("1")
        .arg("--max-queued-requests")
        .arg("1")
        .start();
    // The one slot is held by a PUT whose body is still arriving.
    let data = test_bytes(11, 200_000);
    let mut holder = server.conn();
    let head = format!(
        "PUT /{} HTTP/1.1\r\nHost: keep\r\nAuthorization: Bearer {USER_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        md5_hex(&data),
        data.len()
    );
    holder.write_raw(head.as_bytes()).expect("send head");
    holder.write_raw(&data[..1000]).expect("send some body");
    let concurrent = "arvados_concurrent_requests{queue=\"api\"}";
    assert!(
        eventually(Duration::from_secs(5), || server.metric_values().get(concurrent)
            == Some(&1.0)),
        "metrics are never limited, and count the held request: {:?}",
        server.metric_values().get(concurrent)
    );
    // The next request waits in the queue...
    let mut waiting = server.conn();
    waiting
        .send(&Request::get("/mounts").token(ROOT_TOKEN))
        .expect("send queued request");
    let queued = "arvados_queued_requests{priority=\"normal\",queue=\"api\"}";
    assert!(eventually(Duration::from_secs(5), || server
        .metric_values()
        .get(queued)
        == Some(&1.0)));
    // ...and the one after it is refused at once, with an empty body, as keepstore does.
    let refused = server.request(Request::get("/mounts").token(ROOT_TOKEN));
    assert_eq!((refused.status, refused.body.len()), (503, 0), "{}", refused.summary());
    let values = server.metric_values();
    assert_eq!(values.get("arvados_max_concurrent_requests{queue=\"api\"}"), Some(&1.0));
    assert_eq!(values.get("arvados_max_queued_requests{queue=\"api\"}"), Some(&1.0));
    assert!(eventually(Duration::from_secs(5), || {
        server
            .metric_values()
            .get("arvados_max_active_request_age_seconds")
            .is_some_and(|age| *age > 0.0)
    }));
    // The held PUT completes; the queued request is then served.
    holder.write_raw(&data[1000..]).expect("send the rest");
    let stored = holder.read_response("PUT").expect("PUT response");
    assert_eq!(stored.status, 200, "{}", stored.summary());
    let served = waiting.read_response("GET").expect("queued response");
    assert_eq!(served.status, 200, "{}", served.summary());
    assert!(eventually(Duration::from_secs(5), || server
        .metric_values()
        .get(queued)
        == Some(&0.0)));
}

#[test]
fn metrics_name_the_config_and_the_arvados_release() {
    let cluster = Cluster::new("");
    let server = cluster.node().start();
    let values = server.metric_values();
    let sha256 = sha256_hex_of(&cluster.config);
    let source = format!("arvados_config_source_timestamp_seconds{{sha256=\"{sha256}\"}}");
    let loaded = format!("arvados_config_load_timestamp_seconds{{sha256=\"{sha256}\"}}");
    let mtime = std::fs::metadata(&cluster.config)
        .and_then(|metadata| metadata.modified())
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        values.get(&source).is_some_and(|value| (value - mtime).abs() < 1e-3),
        "{values:?}"
    );
    assert!(values.get(&loaded).is_some_and(|value| *value >= mtime - 1.0));
    assert_eq!(values.get("arvados_version_running{version=\"3.2.1\"}"), Some(&1.0));
    let build = format!("keepring_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(values.get(&build), Some(&1.0));
    // A cluster config brings keepstore's default limits.
    assert_eq!(
        values.get("arvados_max_concurrent_requests{queue=\"api\"}"),
        Some(&64.0)
    );
    assert_eq!(values.get("arvados_max_queued_requests{queue=\"api\"}"), Some(&128.0));
}

/// The file's SHA-256 as coreutils' `sha256sum` prints it.
fn sha256_hex_of(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().next().expect("sha256sum output").to_string()
}
