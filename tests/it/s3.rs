//! S3 volumes (issue 13) on a real store: a three-node Garage cluster on 127.0.0.1
//! (`support::s3`). keepring serves a bucket in keepstore's layout that a plain S3 client
//! filled, and what it writes, trashes and untrashes lands in that same layout, checked
//! with the plain client (boto3). All tests share the store's one bucket: each works on
//! blocks of its own random bytes and looks only at those.

use std::path::Path;
use std::time::Duration;

use crate::support::client::eventually;
use crate::support::s3::{plain_client, store, volume_entry, S3Store};
use crate::support::*;

fn random_block(len: usize) -> Vec<u8> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(7)
        ^ u64::from(std::process::id()) << 32;
    let mut data = test_bytes(seed, len);
    data.extend_from_slice(format!("{seed}").as_bytes());
    data
}

const UUID: &str = "zzzzz-nyw5e-s3volumetests00";

/// The emptier test's server empties every `trash/` copy of the shared bucket past its 1 s
/// lifetime: it runs alone (write), the tests that leave trash copies beside each other
/// (read).
static TRASH_IN_USE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A node serving only an S3 volume on `store`'s bucket, with these `Collections` lines.
fn s3_server(dir: &Path, store: &S3Store, prefix_length: usize, collections: &str) -> TestServer {
    s3_server_with(dir, store, prefix_length, collections, "", ServerBuilder::new())
}

/// As `s3_server`, with cluster-level lines (`top`, e.g. a `TLS` section) and a builder
/// that may carry environment.
fn s3_server_with(
    dir: &Path,
    store: &S3Store,
    prefix_length: usize,
    collections: &str,
    top: &str,
    builder: ServerBuilder,
) -> TestServer {
    let config = dir.join("config.yml");
    let text = format!(
        "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n{top}    Collections:\n      \
         BlobSigningKey: {SIGNING_KEY}\n{collections}    Volumes:\n{}",
        volume_entry(store, UUID, prefix_length, "")
    );
    std::fs::write(&config, text).expect("write config");
    builder
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .arg("--config")
        .arg(config.to_str().expect("utf-8 path"))
        .start()
}

/// `head KEY` through the plain client: `None` when missing, else (size, etag).
fn head(store: &S3Store, key: &str) -> Option<(u64, String)> {
    let answer = plain_client(store, &store.bucket, &["head", key]);
    let answer = answer.trim();
    if answer == "missing" {
        return None;
    }
    let mut fields = answer.split(' ');
    let size = fields.next()?.parse().ok()?;
    Some((size, fields.next()?.to_string()))
}

/// Put `data` at `key` through the plain client.
fn put_object(store: &S3Store, dir: &Path, key: &str, data: &[u8]) {
    let file = dir.join("object");
    std::fs::write(&file, data).expect("object file");
    let source = match data.is_empty() {
        true => "-".to_string(),
        false => file.display().to_string(),
    };
    plain_client(store, &store.bucket, &["put", key, &source]);
}

fn index_lines(server: &TestServer, prefix: &str) -> Vec<String> {
    let response = server.request(Request::get(&format!("/index/{prefix}")).token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let text = response.text();
    assert!(text.ends_with("\n\n") || text == "\n", "index not whole: {text:?}");
    text.lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_bucket_keepstore_filled_is_served_and_keepring_writes_the_same_layout() {
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    // keepstore's layout, put there by a plain client: a block with its recent/ marker,
    // and one from before markers.
    let marked = random_block(5000);
    let unmarked = random_block(7000);
    let (marked_hash, unmarked_hash) = (md5_hex(&marked), md5_hex(&unmarked));
    put_object(store, dir.path(), &marked_hash, &marked);
    put_object(store, dir.path(), &format!("recent/{marked_hash}"), b"");
    put_object(store, dir.path(), &unmarked_hash, &unmarked);

    let server = s3_server(dir.path(), store, 0, "");
    for data in [&marked, &unmarked] {
        let response = server.get(&signed_locator_for(data));
        assert_eq!(response.status, 200, "{}", response.summary());
        assert_eq!(&response.body, data);
        let head = server.request(Request::head(&format!("/{}", signed_locator_for(data))).token(USER_TOKEN));
        assert_eq!(head.status, 200, "{}", head.summary());
    }
    let wanted = format!("{marked_hash}+{} ", marked.len());
    let shows = || {
        index_lines(&server, &marked_hash[..6])
            .iter()
            .any(|line| line.starts_with(&wanted))
    };
    assert!(
        eventually(Duration::from_secs(5), shows),
        "{marked_hash} not in the index"
    );
    let index = index_lines(&server, &marked_hash[..6]);
    let line = index
        .iter()
        .find(|line| line.starts_with(&format!("{marked_hash}+{} ", marked.len())))
        .unwrap_or_else(|| panic!("{marked_hash} not in the index: {index:?}"));
    let mtime_ns: i128 = line.rsplit(' ').next().and_then(|ns| ns.parse().ok()).expect("mtime");
    assert_eq!(mtime_ns % 1_000_000_000, 0, "S3 mtimes are whole seconds: {line}");

    // What keepring writes: the object with the block's bytes and its empty marker.
    let written = random_block(3 * 1024 * 1024 + 17);
    let hash = md5_hex(&written);
    let response = server.put(&written);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.header("X-Keep-Replicas-Stored"), Some("1"));
    assert_eq!(head(store, &hash), Some((written.len() as u64, hash.clone())));
    assert_eq!(head(store, &format!("recent/{hash}")).map(|(size, _)| size), Some(0));
    let fetched = plain_client(store, &store.bucket, &["get", &hash]);
    assert_eq!(fetched.trim(), hex(&written), "the object holds the block's bytes");

    let mounts = server.request(Request::get("/mounts").token(ROOT_TOKEN));
    assert_eq!(mounts.status, 200);
    assert!(
        mounts
            .text()
            .contains(&format!("\"device_id\":\"s3://{}/{}\"", store.endpoint, store.bucket)),
        "{}",
        mounts.text()
    );
    assert!(mounts.text().contains(UUID), "{}", mounts.text());
}

#[test]
fn prefix_length_puts_blocks_under_their_first_digits() {
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = s3_server(dir.path(), store, 3, "");
    let data = random_block(10_000);
    let hash = md5_hex(&data);
    assert_eq!(server.put(&data).status, 200);
    let key = format!("{}/{hash}", &hash[..3]);
    assert_eq!(head(store, &key), Some((data.len() as u64, hash.clone())));
    assert_eq!(head(store, &hash), None, "no object at the bare hash");
    assert_eq!(head(store, &format!("recent/{key}")).map(|(size, _)| size), Some(0));
    let response = server.get(&signed_locator_for(&data));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, data);
    // A listing may lag a write on Garage for a moment: wait, bounded.
    let line = format!("{hash}+{} ", data.len());
    let listed = || {
        index_lines(&server, &hash[..5])
            .iter()
            .any(|listed| listed.starts_with(&line))
    };
    assert!(eventually(Duration::from_secs(5), listed), "{hash} not in the index");
}

#[test]
fn a_body_that_fails_its_hash_never_becomes_an_object() {
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = s3_server(dir.path(), store, 0, "");
    let data = random_block(2 * 1024 * 1024);
    let claimed = md5_hex(b"something else entirely, for this test");
    let response = server.request(Request::put(&format!("/{claimed}"), &data).token(USER_TOKEN));
    // keepstore 3.x answers a body that fails its locator with 400.
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(head(store, &claimed), None);
    assert_eq!(head(store, &format!("recent/{claimed}")), None);
}

#[test]
fn delete_moves_a_block_to_trash_and_untrash_brings_it_back() {
    let _trash = TRASH_IN_USE.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    // A 1 s signing TTL makes a block old enough to trash after 2 s; the emptier is off.
    let server = s3_server(
        dir.path(),
        store,
        0,
        "      BlobSigningTTL: 1s\n      BlobTrashLifetime: 1h\n      BlobTrashCheckInterval: 0s\n",
    );
    let data = random_block(4096);
    let hash = md5_hex(&data);
    let response = server.put(&data);
    assert_eq!(response.status, 200, "{}", response.summary());
    let locator = format!("{hash}+{}", data.len());
    std::thread::sleep(Duration::from_millis(2100));
    let deleted = server.request(Request::new("DELETE", &format!("/{locator}")).token(ROOT_TOKEN));
    assert_eq!(deleted.status, 200, "{}", deleted.summary());
    assert_eq!(head(store, &hash), None, "the block object is gone");
    assert_eq!(
        head(store, &format!("trash/{hash}")).map(|(size, _)| size),
        Some(data.len() as u64)
    );
    // Garage's listing may name a just-deleted object for a while (its GET and HEAD do
    // not): wait for it, bounded. Seen here under the full test suite's load: still
    // listed after 15 s by the store's own listing (boto3) while HEAD said it was gone.
    // The object's deletion is checked above through HEAD; what the index must then do is
    // say what the store's listing says.
    let listed = |server: &TestServer| {
        index_lines(server, &hash[..6])
            .iter()
            .any(|line| line.starts_with(&hash))
    };
    if !eventually(Duration::from_secs(15), || !listed(&server)) {
        // The store's listing first, the index's after: the store's lag only shrinks, so
        // an index that names the block after the store's listing dropped it is keepring's
        // fault, and one that agrees (or has caught up meanwhile) is not. (Asked the other
        // way round, a listing that caught up between the two looked like a failure.)
        let store_listing = plain_client(store, &store.bucket, &["list", &hash[..6]]);
        let index_still_lists = listed(&server);
        assert!(
            !index_still_lists || store_listing.contains(&hash),
            "trash still listed by the index and not by the store: index {:?}, HEAD {:?}, trash/ HEAD {:?}, \
             recent/ HEAD {:?}; store listing {}",
            index_lines(&server, &hash[..6]),
            head(store, &hash),
            head(store, &format!("trash/{hash}")),
            head(store, &format!("recent/{hash}")),
            store_listing.trim()
        );
        eprintln!("Garage still lists the deleted {hash} after 15 s (HEAD: gone); the index agrees with it");
    }
    let untrashed = server.request(Request::put(&format!("/untrash/{locator}"), b"").token(ROOT_TOKEN));
    assert_eq!(untrashed.status, 200, "{}", untrashed.summary());
    assert_eq!(head(store, &hash), Some((data.len() as u64, hash.clone())));
    assert!(
        eventually(Duration::from_secs(5), || listed(&server)),
        "untrashed block not listed"
    );
}

#[test]
fn the_emptier_deletes_expired_trash_and_its_marker() {
    let _trash = TRASH_IN_USE.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = s3_server(
        dir.path(),
        store,
        0,
        "      BlobSigningTTL: 1s\n      BlobTrashLifetime: 1s\n      BlobTrashCheckInterval: 1s\n",
    );
    let data = random_block(4096);
    let hash = md5_hex(&data);
    assert_eq!(server.put(&data).status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let deleted = server.request(Request::new("DELETE", &format!("/{hash}+{}", data.len())).token(ROOT_TOKEN));
    assert_eq!(deleted.status, 200, "{}", deleted.summary());
    let gone = eventually(Duration::from_secs(20), || {
        head(store, &format!("trash/{hash}")).is_none() && head(store, &format!("recent/{hash}")).is_none()
    });
    assert!(
        gone,
        "trash/ copy or recent/ marker still there; log:\n{}",
        server.log.lines().join("\n")
    );
    assert_eq!(head(store, &hash), None);
}

#[test]
fn a_block_a_racing_trash_took_is_copied_back_on_read() {
    let _trash = TRASH_IN_USE.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    // keepstore's race: the block was written (recent/ marker) and trashed moments later,
    // well inside the signing TTL: the trash copy must be put back, not lost.
    let data = random_block(6000);
    let hash = md5_hex(&data);
    put_object(store, dir.path(), &format!("recent/{hash}"), b"");
    put_object(store, dir.path(), &format!("trash/{hash}"), &data);
    let server = s3_server(dir.path(), store, 0, "");
    let response = server.get(&signed_locator_for(&data));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, data);
    assert_eq!(head(store, &hash), Some((data.len() as u64, hash.clone())));
}

/// A node with a directory volume and an S3 volume whose store is `endpoint`, with short
/// timeouts.
fn server_beside_a_directory(dir: &Path, store: &S3Store, endpoint: &str) -> TestServer {
    let config = dir.join("config.yml");
    let directory = dir.join("disk");
    std::fs::create_dir_all(&directory).expect("volume dir");
    let mut broken = store.clone();
    broken.endpoint = endpoint.to_string();
    let text = format!(
        "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n    Collections:\n      \
         BlobSigningKey: {SIGNING_KEY}\n    Volumes:\n{}      zzzzz-nyw5e-s3directoryvol0:\n        \
         Driver: Directory\n        DriverParameters: {{Root: {}}}\n",
        volume_entry(
            &broken,
            UUID,
            0,
            "          ConnectTimeout: 1s\n          ReadTimeout: 1s\n"
        ),
        directory.display()
    );
    std::fs::write(&config, text).expect("write config");
    ServerBuilder::new()
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .arg("--config")
        .arg(config.to_str().expect("utf-8 path"))
        .start()
}

#[test]
fn a_store_that_hangs_fails_over_like_a_failing_disk() {
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    // A "store" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            holder.lock().expect("lock").push(stream);
        }
    });
    let server = server_beside_a_directory(dir.path(), store, &endpoint);
    // Blocks whose placement puts the S3 volume first (keepstore's rendezvous order:
    // md5 of hash + UUID suffix, ascending), so every PUT would try it first.
    let weight = |hash: &str, uuid: &str| md5_hex(format!("{hash}{}", &uuid[12..]).as_bytes());
    let blocks: Vec<Vec<u8>> = std::iter::repeat_with(|| random_block(20_000))
        .filter(|data| {
            let hash = md5_hex(data);
            weight(&hash, UUID) < weight(&hash, "zzzzz-nyw5e-s3directoryvol0")
        })
        .take(6)
        .collect();
    for data in &blocks {
        let response = server.put(data);
        assert_eq!(response.status, 200, "{}", response.summary());
        assert!(block_path(&dir.path().join("disk"), &md5_hex(data)).exists());
    }
    assert!(
        !held.lock().expect("lock").is_empty(),
        "no request reached the hung store"
    );
    let s3_errors = |what: &str| {
        server
            .log
            .lines()
            .iter()
            .filter(|line| line.contains(what) && line.contains(UUID))
            .count()
    };
    // The first write timed out; the volume then sat out of the rotation
    // (VOLUME_RETRY_MS), so the other five went straight to the disk.
    assert_eq!(s3_errors("block write failed"), 1, "{}", server.log.lines().join("\n"));
    // Reads try the failing volume last: every block comes from the disk at once.
    for data in &blocks {
        let response = server.get(&signed_locator_for(data));
        assert_eq!(response.status, 200, "{}", response.summary());
        assert_eq!(&response.body, data);
    }
    assert_eq!(s3_errors("block open failed"), 0, "{}", server.log.lines().join("\n"));
}

/// Restarts node 3 of the test cluster when dropped (a failed assertion included).
struct NodeStopped<'a> {
    dir: &'a Path,
}

impl Drop for NodeStopped<'_> {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-store.sh");
        let started = std::process::Command::new("bash")
            .arg(script)
            .arg("start-node")
            .arg(self.dir)
            .arg("3")
            .status();
        assert!(
            started.is_ok_and(|status| status.success()),
            "node 3 did not start again"
        );
    }
}

#[test]
fn keepring_keeps_serving_with_one_store_node_down() {
    let store = store();
    let store_dir = crate::support::s3::store_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = s3_server(dir.path(), store, 0, "");
    let before = random_block(50_000);
    assert_eq!(server.put(&before).status, 200);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-store.sh");
    let stopped = std::process::Command::new("bash")
        .arg(&script)
        .arg("stop-node")
        .arg(&store_dir)
        .arg("3")
        .status()
        .expect("stop-node");
    assert!(stopped.success(), "stop-node failed");
    let _restart = NodeStopped { dir: &store_dir };
    // Replication 3, quorum 2: reads, writes and listings go on.
    let response = server.get(&signed_locator_for(&before));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, before);
    let during = random_block(3 * 1024 * 1024);
    let response = server.put(&during);
    assert_eq!(response.status, 200, "{}", response.summary());
    let response = server.get(&signed_locator_for(&during));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, during);
    let hash = md5_hex(&during);
    let listed = || {
        index_lines(&server, &hash[..6])
            .iter()
            .any(|line| line.starts_with(&hash))
    };
    assert!(eventually(Duration::from_secs(5), listed), "{hash} not in the index");
}

#[test]
fn an_s3_endpoint_over_https_is_verified_and_served() {
    let store = store();
    let dir = tempfile::tempdir().expect("temp dir");
    // Garage speaks plain HTTP: an HTTPS front with a certificate made here.
    let fixture = crate::support::tls::TlsFixture::new(dir.path(), "s3front");
    let target = store
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("store address");
    let front = crate::support::s3::tls_front(target, &fixture.certificate, &fixture.key);
    let mut https = store.clone();
    https.endpoint = format!("https://127.0.0.1:{}", front.port());
    let certificate = fixture.certificate.to_str().expect("utf-8 path");

    // Trusted through SSL_CERT_FILE (the roots keepring reads, as Go does): served.
    let trusted_dir = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted_dir).expect("dir");
    let server = s3_server_with(
        &trusted_dir,
        &https,
        0,
        "",
        "",
        ServerBuilder::new().env("SSL_CERT_FILE", certificate),
    );
    let data = random_block(2 * 1024 * 1024 + 3);
    let hash = md5_hex(&data);
    let response = server.put(&data);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(head(store, &hash), Some((data.len() as u64, hash.clone())));
    let response = server.get(&signed_locator_for(&data));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, data);
    drop(server);

    // Not trusted, even with TLS.Insecure (keepstore's S3 driver ignores it too): the
    // only volume fails, nothing is stored, and the log says why.
    let refused_dir = dir.path().join("refused");
    std::fs::create_dir_all(&refused_dir).expect("dir");
    let server = s3_server_with(
        &refused_dir,
        &https,
        0,
        "",
        "    TLS:\n      Insecure: true\n",
        ServerBuilder::new(),
    );
    let other = random_block(4096);
    let response = server.put(&other);
    assert_eq!(response.status, 503, "{}", response.summary());
    assert_eq!(head(store, &md5_hex(&other)), None);
    assert!(
        server.log.lines().iter().any(|line| line.contains("certificate")),
        "no log line names the certificate:\n{}",
        server.log.lines().join("\n")
    );
}
