//! Operations endpoints and their background workers (keep-protocol.md §3.3, §3.5, §3.7,
//! §6; keepstore-observed.md "Admin / misc" and "/metrics families"): DELETE and untrash,
//! trash lists (exact mtime, signing TTL, lifetime 0), the empty-trash sweep, trash
//! settings applied live on SIGHUP (BlobTrash off freezes deletion), pull lists
//! between two keepring processes, read-only volumes, `/metrics`, and GET latency while a
//! large trash list is worked off the cores. Every check looks at the files on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::client::eventually;
use crate::support::*;

/// Older than the default blob signing TTL (14 days).
const OLD_AGE: Duration = Duration::from_secs(15 * 24 * 3600);
/// How long a background worker gets to act on a list in these tests.
const WORKER_WITHIN: Duration = Duration::from_secs(20);

fn root_request(request: Request) -> Request {
    request.token(ROOT_TOKEN)
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
        .set_modified(time)
        .expect("set mtime");
}

fn mtime_ns(path: &Path) -> i64 {
    let modified = std::fs::metadata(path).expect("stat").modified().expect("mtime");
    modified.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i64
}

/// Stores `data` through the server on volume 0 and makes it look `OLD_AGE` old.
fn old_block(server: &TestServer, data: &[u8]) -> (String, String) {
    server.put_block(data);
    let hash = md5_hex(data);
    set_mtime(&block_path(server.volume(0), &hash), SystemTime::now() - OLD_AGE);
    (hash.clone(), format!("{hash}+{}", data.len()))
}

/// `(name, deadline)` of each `<hash>.trash.<deadline>` file beside the block.
fn trash_files(volume: &Path, hash: &str) -> Vec<(String, u64)> {
    block_dir_entries(volume, hash)
        .into_iter()
        .filter_map(|name| {
            let deadline = name.strip_prefix(&format!("{hash}.trash."))?.parse().ok()?;
            Some((name, deadline))
        })
        .collect()
}

fn index_text(server: &TestServer) -> String {
    let response = server.request(root_request(Request::get("/index")));
    assert_eq!(response.status, 200, "{}", response.summary());
    response.text()
}

fn put_list(server: &TestServer, target: &str, json: &str) -> Response {
    server.request(root_request(Request::put(target, json.as_bytes())))
}

/// Metrics as `series → value`, where series is `name{labels}` exactly as printed.
/// Asserts that every line is a comment or `name{labels} value`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap_or_default();
        assert!(
            !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        series.insert(name.to_string(), value);
    }
    series
}

/// Every series of the server's /metrics by name (labels included); also used by `blocks`.
pub(crate) fn metrics(server: &TestServer) -> BTreeMap<String, f64> {
    let response = server.request(Request::get("/metrics"));
    assert_eq!(response.status, 200, "{}", response.summary());
    parse_metrics(&response.text())
}

/// Sum of every series of `family` whose labels contain all of `labels`.
fn metric_sum(series: &BTreeMap<String, f64>, family: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(name, _)| name.split('{').next() == Some(family))
        .filter(|(name, _)| labels.iter().all(|label| name.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

/// Waits until both queues of `which` (`trash` or `pull`) are empty and idle.
fn wait_queue_idle(server: &TestServer, which: &str) {
    let pending = format!("arvados_keepstore_{which}_queue_pending_entries");
    let busy = format!("arvados_keepstore_{which}_queue_inprogress_entries");
    let idle = eventually(WORKER_WITHIN, || {
        let series = metrics(server);
        series.get(&pending) == Some(&0.0) && series.get(&busy) == Some(&0.0)
    });
    assert!(idle, "{which} queue did not drain within {WORKER_WITHIN:?}");
}

#[test]
fn delete_of_an_old_block_trashes_it_with_its_deadline_and_untrash_brings_it_back() {
    let server = ServerBuilder::new().arg("--trash-lifetime-secs").arg("3600").start();
    let data = b"old enough to trash";
    let (hash, locator) = old_block(&server, data);

    let before = now_secs();
    let response = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(response.body.is_empty(), "{}", response.summary());
    let trashed = trash_files(server.volume(0), &hash);
    assert_eq!(trashed.len(), 1, "{:?}", block_dir_entries(server.volume(0), &hash));
    assert!(
        (before + 3600..=now_secs() + 3600).contains(&trashed[0].1),
        "deadline {} should be now + 3600",
        trashed[0].1
    );
    assert!(!block_path(server.volume(0), &hash).exists());
    assert_eq!(server.get(&signed_locator_for(data)).status, 404);
    assert!(!index_text(&server).contains(&hash), "a trashed block is not indexed");

    let untrash = format!("/untrash/{locator}");
    let response = server.request(root_request(Request::put(&untrash, b"")));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(response.body.is_empty());
    assert_eq!(block_dir_entries(server.volume(0), &hash), [hash.as_str()]);
    let read = server.get(&signed_locator_for(data));
    assert_eq!((read.status, read.body.as_slice()), (200, &data[..]));
    assert!(index_text(&server).contains(&locator));

    let again = server.request(root_request(Request::put(&untrash, b"")));
    assert_eq!(again.status, 404, "nothing left to untrash: {}", again.summary());
    assert_eq!(again.text(), "file does not exist\n");
}

#[test]
fn delete_of_a_young_block_is_200_and_trashes_nothing_and_missing_blocks_are_404() {
    let server = TestServer::start();
    let data = b"young block";
    let locator = server.put_block(data);
    let hash = md5_hex(data);
    let unsigned = format!("{hash}+{}", data.len());
    let response = server.request(root_request(Request::new("DELETE", &format!("/{unsigned}"))));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(block_dir_entries(server.volume(0), &hash), [hash.as_str()]);
    assert_eq!(server.get(&locator).status, 200);

    let missing = format!("/{}+3", md5_hex(b"abc"));
    let response = server.request(root_request(Request::new("DELETE", &missing)));
    assert_eq!(response.status, 404, "{}", response.summary());
    let response = server.request(root_request(Request::put(&format!("/untrash{missing}"), b"")));
    assert_eq!(response.status, 404, "{}", response.summary());
}

#[test]
fn delete_with_trash_lifetime_zero_unlinks_at_once() {
    let server = ServerBuilder::new().arg("--trash-lifetime-secs").arg("0").start();
    let (hash, locator) = old_block(&server, b"delete me now");
    let response = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(
        block_dir_entries(server.volume(0), &hash).is_empty(),
        "no trash file either"
    );
    let response = server.request(root_request(Request::put(&format!("/untrash/{locator}"), b"")));
    assert_eq!(response.status, 404, "{}", response.summary());
}

#[test]
fn delete_is_405_when_blob_trash_is_off() {
    let server = ServerBuilder::new().arg("--no-blob-trash").start();
    let (hash, locator) = old_block(&server, b"keep me");
    let response = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(response.status, 405, "{}", response.summary());
    assert_eq!(block_dir_entries(server.volume(0), &hash), [hash.as_str()]);
}

#[test]
fn trash_list_trashes_only_old_blocks_whose_mtime_matches_exactly() {
    let server = TestServer::start();
    let (exact_hash, exact) = old_block(&server, b"exact mtime");
    let (wrong_hash, wrong) = old_block(&server, b"wrong mtime");
    server.put_block(b"young");
    let young_hash = md5_hex(b"young");
    let volume = server.volume(0);
    let list = format!(
        r#"[{{"locator":"{exact}","block_mtime":{},"mount_uuid":""}},
            {{"locator":"{wrong}","block_mtime":{}}},
            {{"locator":"{young_hash}+5","block_mtime":{}}}]"#,
        mtime_ns(&block_path(volume, &exact_hash)),
        mtime_ns(&block_path(volume, &wrong_hash)) + 1,
        mtime_ns(&block_path(volume, &young_hash)),
    );
    let response = put_list(&server, "/trash", &list);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(response.body.is_empty());
    assert!(
        eventually(WORKER_WITHIN, || trash_files(volume, &exact_hash).len() == 1),
        "the exact-mtime block was not trashed: {:?}",
        block_dir_entries(volume, &exact_hash)
    );
    assert!(!block_path(volume, &exact_hash).exists());
    wait_queue_idle(&server, "trash");
    assert_eq!(
        block_dir_entries(volume, &wrong_hash),
        [wrong_hash.as_str()],
        "wrong mtime"
    );
    assert_eq!(
        block_dir_entries(volume, &young_hash),
        [young_hash.as_str()],
        "too young"
    );
}

#[test]
fn trash_list_with_lifetime_zero_unlinks_and_bad_lists_are_refused() {
    let server = ServerBuilder::new().arg("--trash-lifetime-secs").arg("0").start();
    let (hash, locator) = old_block(&server, b"unlink via list");
    let list = format!(
        r#"[{{"locator":"{locator}","block_mtime":{}}}]"#,
        mtime_ns(&block_path(server.volume(0), &hash))
    );
    assert_eq!(put_list(&server, "/trash", &list).status, 200);
    assert!(
        eventually(WORKER_WITHIN, || block_dir_entries(server.volume(0), &hash).is_empty()),
        "{:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    // A list that is not JSON is the client's error: 400 and one line saying why (keepstore
    // 3.2.1 answers 500).
    for target in ["/trash", "/pull"] {
        let response = put_list(&server, target, "[{nope");
        assert_eq!(response.status, 400, "{target}: {}", response.summary());
        let text = response.text();
        assert!(
            text.starts_with("unreadable list: ") && text.ends_with('\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert_eq!(put_list(&server, target, "[]").status, 200, "{target} []");
    }
}

/// Hold an open-file-description write lock on `file`, as a live keepring writer does.
fn hold_writer_lock(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; the fd is open for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    assert_eq!(result, 0, "lock: {}", std::io::Error::last_os_error());
}

#[test]
fn sweep_removes_temp_files_of_dead_writes_and_keeps_live_ones() {
    // A write killed mid-body (crash, kill -9) leaves `tmp<hash><digits>` and no lock on it:
    // the sweep at start removes every such file whatever its age, and leaves those a live
    // writer holds however old they look.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("v0");
    let ancient = md5_hex(b"a write that died long ago");
    let killed = md5_hex(b"a write killed two minutes ago");
    let fresh = md5_hex(b"a write killed just now");
    let live = md5_hex(b"a write in progress");
    let stalled = md5_hex(b"a live write untouched for two days");
    let mut held = Vec::new();
    for (hash, age, locked) in [
        (&ancient, Duration::from_secs(25 * 3600), false),
        (&killed, Duration::from_secs(120), false),
        (&fresh, Duration::from_secs(0), false),
        (&live, Duration::from_secs(600), true),
        (&stalled, Duration::from_secs(48 * 3600), true),
    ] {
        let block_dir = volume.join(&hash[..3]);
        std::fs::create_dir_all(&block_dir).unwrap();
        let file = std::fs::File::create(block_dir.join(format!("tmp{hash}42"))).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        if locked {
            hold_writer_lock(&file);
            held.push(file);
        }
    }
    let server = ServerBuilder::new().volume_paths(vec![volume.clone()]).start();
    for gone in [&ancient, &killed, &fresh] {
        assert!(
            eventually(WORKER_WITHIN, || block_dir_entries(&volume, gone).is_empty()),
            "a dead write's temp file stays: {:?}",
            block_dir_entries(&volume, gone)
        );
    }
    assert!(server
        .log
        .wait_for(WORKER_WITHIN, |line| line.contains("stale temp files"))
        .is_some());
    for kept in [&live, &stalled] {
        assert_eq!(
            block_dir_entries(&volume, kept),
            [format!("tmp{kept}42")],
            "a held one stays"
        );
    }
    drop(held);
}

/// Issue 15: a writer killed in the middle of a body leaves its temp file; the restarted
/// server's first sweep removes it at once (no age rule), and no partial block is visible.
#[test]
fn a_write_killed_mid_body_leaves_no_temp_file_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("v0");
    let mut server = ServerBuilder::new().volume_paths(vec![volume.clone()]).start();
    let data = vec![0x5au8; 8 * 1024 * 1024];
    let hash = md5_hex(&data);
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ROOT_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_raw(head.as_bytes()).expect("send head");
    conn.write_raw(&data[..data.len() / 2]).expect("send half the body");
    let temp_name = format!("tmp{hash}");
    assert!(
        eventually(WORKER_WITHIN, || block_dir_entries(&volume, &hash)
            .iter()
            .any(|name| name.starts_with(&temp_name))),
        "the write never made a temp file"
    );
    server.signal(libc::SIGKILL);
    assert!(
        server.wait_exit(Duration::from_secs(5)).is_some(),
        "kill -9 did not end it"
    );
    let left = block_dir_entries(&volume, &hash);
    assert!(
        left.len() == 1 && left[0].starts_with(&temp_name),
        "the killed write left {left:?}"
    );
    let restarted = ServerBuilder::new().volume_paths(vec![volume.clone()]).start();
    assert!(
        eventually(Duration::from_secs(5), || block_dir_entries(&volume, &hash).is_empty()),
        "after the restart the killed write's temp file stays: {:?}",
        block_dir_entries(&volume, &hash)
    );
    assert!(
        restarted.volumes_holding(&hash).is_empty(),
        "no partial block is visible"
    );
    let locator = restarted.put_block(&data);
    assert!(locator.starts_with(&hash), "PUT answered {locator}");
    assert_eq!(block_dir_entries(&volume, &hash), std::slice::from_ref(&hash));
    assert_eq!(restarted.get(&locator).body, data);
}

#[test]
fn empty_trash_sweep_deletes_expired_trash_and_keeps_the_rest() {
    let server = ServerBuilder::new()
        .arg("--trash-check-interval-secs")
        .arg("1")
        .arg("--trash-lifetime-secs")
        .arg("2")
        .start();
    let volume = server.volume(0).to_path_buf();
    let (hash, locator) = old_block(&server, b"trash that expires");
    let response = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(response.status, 200, "{}", response.summary());
    let trashed = trash_files(&volume, &hash);
    assert_eq!(trashed.len(), 1, "{:?}", block_dir_entries(&volume, &hash));
    let deadline = trashed[0].1;

    // Hand-made trash: one long expired, one far in the future.
    let expired = md5_hex(b"expired");
    let future = md5_hex(b"future");
    write_block_file(&volume, &expired, b"x");
    std::fs::rename(
        block_path(&volume, &expired),
        volume.join(&expired[..3]).join(format!("{expired}.trash.1000")),
    )
    .unwrap();
    write_block_file(&volume, &future, b"x");
    let future_name = format!("{future}.trash.{}", now_secs() + 3600);
    std::fs::rename(
        block_path(&volume, &future),
        volume.join(&future[..3]).join(&future_name),
    )
    .unwrap();

    assert!(
        eventually(WORKER_WITHIN, || trash_files(&volume, &hash).is_empty()),
        "trash past its deadline was not deleted"
    );
    assert!(now_secs() >= deadline, "trash deleted before its deadline {deadline}");
    assert!(
        trash_files(&volume, &expired).is_empty(),
        "expired hand-made trash deleted"
    );
    assert_eq!(
        block_dir_entries(&volume, &future),
        [future_name],
        "unexpired trash kept"
    );
    let response = server.request(root_request(Request::put(&format!("/untrash/{locator}"), b"")));
    assert_eq!(response.status, 404, "{}", response.summary());
}

fn base_url(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

fn volume_uuid(volume: &Path) -> String {
    std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
        .expect("uuid file")
        .trim()
        .to_string()
}

#[test]
fn pull_list_copies_blocks_from_another_keepring_onto_the_asked_volume() {
    let source = TestServer::start();
    let puller = ServerBuilder::new().volumes(2).start();
    let first = test_bytes(61, 100_000);
    let second = b"second pulled block".to_vec();
    source.put_block(&first);
    source.put_block(&second);
    let (first_hash, second_hash) = (md5_hex(&first), md5_hex(&second));
    assert!(puller.volumes_holding(&first_hash).is_empty());
    let target_uuid = volume_uuid(puller.volume(1));
    let list = format!(
        r#"[{{"locator":"{first_hash}+{}","servers":["http://127.0.0.1:9","{}"],"mount_uuid":""}},
            {{"locator":"{second_hash}+{}","servers":["{}"],"mount_uuid":"{target_uuid}"}}]"#,
        first.len(),
        base_url(&source),
        second.len(),
        base_url(&source),
    );
    let response = put_list(&puller, "/pull", &list);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(response.body.is_empty());
    assert!(
        eventually(WORKER_WITHIN, || puller.volumes_holding(&second_hash) == [1]),
        "second block not pulled onto volume 1: {:?}",
        puller.volumes_holding(&second_hash)
    );
    assert!(eventually(WORKER_WITHIN, || puller.volumes_holding(&first_hash).len() == 1));
    for (hash, data) in [(&first_hash, &first), (&second_hash, &second)] {
        let volume = puller.volumes_holding(hash)[0];
        assert_eq!(&std::fs::read(block_path(puller.volume(volume), hash)).unwrap(), data);
        let read = puller.get(&signed_locator_for(data));
        assert_eq!(read.status, 200, "{}", read.summary());
        assert_eq!(&read.body, data);
        let leftovers: Vec<String> = block_dir_entries(puller.volume(volume), hash)
            .into_iter()
            .filter(|name| name != hash)
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
}

#[test]
fn a_stalled_peer_does_not_hold_up_the_rest_of_the_pull_list() {
    // The first item's only server accepts the connection and never answers (the pull
    // client would wait out its 60 s stall timeout); the items after it are pulled
    // meanwhile by the other pull workers.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        if let Ok((connection, _)) = stalled.accept() {
            connections.push(connection);
        }
        std::thread::sleep(Duration::from_secs(15));
        drop(connections);
    });
    let source = TestServer::start();
    let puller = TestServer::start();
    let blocks: Vec<Vec<u8>> = (0..3).map(|seed| test_bytes(90 + seed, 50_000)).collect();
    for data in &blocks {
        source.put_block(data);
    }
    let mut items = vec![format!(
        r#"{{"locator":"{}+{}","servers":["{stalled_url}"],"mount_uuid":""}}"#,
        md5_hex(&blocks[0]),
        blocks[0].len()
    )];
    for data in &blocks[1..] {
        items.push(format!(
            r#"{{"locator":"{}+{}","servers":["{}"],"mount_uuid":""}}"#,
            md5_hex(data),
            data.len(),
            base_url(&source)
        ));
    }
    let response = put_list(&puller, "/pull", &format!("[{}]", items.join(",")));
    assert_eq!(response.status, 200, "{}", response.summary());
    let pulled = |data: &Vec<u8>| puller.volumes_holding(&md5_hex(data)).len() == 1;
    assert!(
        eventually(Duration::from_secs(10), || blocks[1..].iter().all(pulled)),
        "items behind a stalled peer waited for it"
    );
    assert!(!pulled(&blocks[0]), "nothing can come from the stalled peer");
    drop(held);
}

#[test]
fn pull_of_a_block_no_server_has_stores_nothing_and_unsized_lists_are_400() {
    let source = TestServer::start();
    let puller = TestServer::start();
    let hash = md5_hex(b"nobody has this");
    let list = format!(r#"[{{"locator":"{hash}+15","servers":["{}"]}}]"#, base_url(&source));
    assert_eq!(put_list(&puller, "/pull", &list).status, 200);
    wait_queue_idle(&puller, "pull");
    assert!(puller.volumes_holding(&hash).is_empty());
    assert!(
        block_dir_entries(puller.volume(0), &hash).is_empty(),
        "no temp file left"
    );

    let bare_hash = format!(r#"[{{"locator":"{hash}","servers":["{}"]}}]"#, base_url(&source));
    let response = put_list(&puller, "/pull", &bare_hash);
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(
        response.text(),
        "rejecting pull list containing a locator without a size hint -- this probably means \
         keep-balance needs to be upgraded\n"
    );
}

#[test]
fn metrics_need_the_management_token_and_have_no_cors_or_request_id() {
    let server = ServerBuilder::new().management_token().start();
    let none = server.request(Request::get("/metrics"));
    assert_eq!((none.status, none.text().as_str()), (401, "Unauthorized\n"));
    let wrong = server.request(Request::get("/metrics").token(ROOT_TOKEN));
    assert_eq!((wrong.status, wrong.text().as_str()), (403, "Forbidden\n"));
    let ok = server.request(Request::get("/metrics").token(MANAGEMENT_TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.summary());
    assert_eq!(
        ok.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for response in [&none, &wrong, &ok] {
        assert_eq!(response.header("X-Request-Id"), None, "{}", response.summary());
        assert_eq!(
            response.header("Access-Control-Allow-Origin"),
            None,
            "{}",
            response.summary()
        );
    }
    parse_metrics(&ok.text());
}

#[test]
fn metrics_json_has_the_same_families_as_metric_family_messages() {
    // keepstore serves its registry at /metrics.json as a JSON array of Prometheus
    // MetricFamily messages (Go jsonpb); its own test reads name, type, label and the
    // summary's sampleCount (a string) for code=200, method=put.
    let server = ServerBuilder::new().management_token().start();
    let none = server.request(Request::get("/metrics.json"));
    assert_eq!(none.status, 401, "{}", none.summary());
    for seed in 0..2 {
        server.put_block(&test_bytes(70 + seed, 100));
    }
    let put_label = serde_json::json!([{"name": "code", "value": "200"}, {"name": "method", "value": "put"}]);
    let put_count = |families: &serde_json::Value| {
        families.as_array().and_then(|families| {
            let summaries = families
                .iter()
                .find(|family| family["name"] == "request_duration_seconds")?;
            let metrics = summaries["metric"].as_array()?;
            let put = metrics.iter().find(|metric| metric["label"] == put_label)?;
            put["summary"]["sampleCount"].as_str().map(str::to_string)
        })
    };
    // A request is counted just after its response left, possibly on the other worker.
    let mut families = serde_json::Value::Null;
    eventually(Duration::from_secs(5), || {
        let response = server.request(Request::get("/metrics.json").token(MANAGEMENT_TOKEN));
        assert_eq!(response.status, 200, "{}", response.summary());
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        families = serde_json::from_slice(&response.body).expect("JSON");
        put_count(&families).as_deref() == Some("2")
    });
    assert_eq!(
        put_count(&families).as_deref(),
        Some("2"),
        "summary for code=200 method=put"
    );
    let families = families.as_array().expect("an array of families");
    let family = |name: &str| {
        families
            .iter()
            .find(|family| family["name"] == name)
            .unwrap_or_else(|| panic!("family {name} missing"))
    };
    let text = server.request(Request::get("/metrics").token(MANAGEMENT_TOKEN)).text();
    for line in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        assert_eq!(family(name)["type"], kind.to_ascii_uppercase(), "{name}");
    }
    let put_200 = family("request_duration_seconds")["metric"]
        .as_array()
        .unwrap()
        .iter()
        .find(|metric| metric["label"] == put_label)
        .unwrap()
        .clone();
    assert!(put_200["summary"]["sampleSum"].as_f64().unwrap() > 0.0);
    let buckets = family("keepring_request_duration_seconds")["metric"][0]["histogram"]["bucket"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(buckets.last().unwrap()["upperBound"], "Infinity");
    let writes = family("arvados_keepstore_volume_operations")["metric"]
        .as_array()
        .unwrap()
        .iter()
        .find(|metric| {
            metric["label"]
                .as_array()
                .unwrap()
                .iter()
                .any(|label| label["name"] == "operation" && label["value"] == "write")
        })
        .expect("a write counter")["counter"]["value"]
        .as_f64()
        .unwrap();
    assert_eq!(writes, 2.0);
}

#[test]
fn metrics_families_are_present_and_counters_grow_with_requests() {
    let server = TestServer::start();
    let families = [
        "keepring_requests_total",
        "request_duration_seconds",
        "keepring_request_duration_seconds",
        "keepring_http_bytes_total",
        "arvados_keepstore_bufferpool_allocated_bytes",
        "arvados_keepstore_bufferpool_max_buffers",
        "arvados_keepstore_bufferpool_inuse_buffers",
        "arvados_keepstore_volume_operations",
        "arvados_keepstore_volume_errors",
        "arvados_keepstore_volume_io_bytes",
        "keepring_volume_free_bytes",
        "arvados_keepstore_trash_queue_pending_entries",
        "arvados_keepstore_trash_queue_inprogress_entries",
        "arvados_keepstore_pull_queue_pending_entries",
        "arvados_keepstore_pull_queue_inprogress_entries",
        "keepring_draining",
        "arvados_version_running",
    ];
    let text = server.request(Request::get("/metrics")).text();
    for family in families {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "family {family} missing:\n{text}"
        );
    }
    let before = parse_metrics(&text);
    assert_eq!(before.get("keepring_draining"), Some(&0.0));
    assert!(metric_sum(&before, "keepring_volume_free_bytes", &[]) > 0.0);

    let data = test_bytes(62, 4096);
    let locator = server.put_block(&data);
    for _ in 0..3 {
        assert_eq!(server.get(&locator).status, 200);
    }
    assert_eq!(server.get(&signed_locator_for(b"absent")).status, 404);
    let get_200 = "keepring_requests_total{method=\"GET\",code=\"200\"}";
    let grown = |after: &BTreeMap<String, f64>| {
        after.get(get_200).copied().unwrap_or(0.0) - before.get(get_200).copied().unwrap_or(0.0)
    };
    // Three block GETs, plus the first scrape. A request is counted just after its response
    // left, possibly on the other worker, so the count may trail the client by a moment.
    let mut after = metrics(&server);
    let mut extra_scrapes = 0.0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let get_404 = "keepring_requests_total{method=\"GET\",code=\"404\"}";
    let all_counted = |after: &BTreeMap<String, f64>| grown(after) >= 3.0 && after.get(get_404) >= Some(&1.0);
    while !all_counted(&after) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = metrics(&server);
        extra_scrapes += 1.0;
    }
    let delta = grown(&after);
    // Each polling scrape is itself a GET 200, counted once its response left.
    assert!(
        (3.0..=4.0 + extra_scrapes).contains(&delta),
        "GET 200 count grew by {delta}"
    );
    assert!(after.get(get_404) >= Some(&1.0));
    assert!(after.get("keepring_requests_total{method=\"PUT\",code=\"200\"}") >= Some(&1.0));
    let grew = |family: &str, labels: &[&str], by: f64| {
        let delta = metric_sum(&after, family, labels) - metric_sum(&before, family, labels);
        assert!(delta >= by, "{family} {labels:?} grew by {delta}, expected ≥ {by}");
    };
    grew("keepring_http_bytes_total", &["direction=\"out\""], 3.0 * 4096.0);
    grew("keepring_http_bytes_total", &["direction=\"in\""], 4096.0);
    grew("keepring_request_duration_seconds_count", &[], 5.0);
    grew("request_duration_seconds_count", &["method=\"get\""], 4.0);
    grew("arvados_keepstore_volume_operations", &["operation=\"read\""], 3.0);
    grew("arvados_keepstore_volume_operations", &["operation=\"write\""], 1.0);
    grew(
        "arvados_keepstore_volume_io_bytes",
        &["direction=\"out\""],
        3.0 * 4096.0,
    );
    grew("arvados_keepstore_volume_io_bytes", &["direction=\"in\""], 4096.0);
}

/// A cluster config with one volume at `root`, the fixture key and root token, and these
/// `Collections` lines.
fn write_trash_config(path: &Path, root: &Path, collections: &str) {
    let text = format!(
        "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n    Collections:\n      \
         BlobSigningKey: {SIGNING_KEY}\n{collections}    Volumes:\n      zzzzz-nyw5e-trashsettings00:\n        \
         Driver: Directory\n        DriverParameters: {{Root: {}}}\n",
        root.display()
    );
    std::fs::write(path, text).expect("write config");
}

/// Send SIGHUP and wait until the server has reloaded its config `times` times in all.
fn reload(server: &mut TestServer, times: usize) {
    server.signal(libc::SIGHUP);
    let reloaded = |server: &TestServer| {
        server
            .log
            .lines()
            .iter()
            .filter(|line| line.contains("SIGHUP: configuration reloaded"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || reloaded(server) >= times),
        "SIGHUP not applied; log:\n{}",
        server.log.lines().join("\n")
    );
}

#[test]
fn sighup_freezes_deletion_with_blob_trash_off_and_resumes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let volume = dir.path().join("vol");
    std::fs::create_dir_all(&volume).expect("volume dir");
    let config = dir.path().join("config.yml");
    // The default BlobTrashCheckInterval (24h): no emptier pass during the test unless
    // SIGHUP shortens it.
    write_trash_config(&config, &volume, "      BlobTrash: true\n");
    let mut server = ServerBuilder::new()
        .volume_paths(Vec::new())
        .without_signing_key()
        .without_root_token()
        .arg("--config")
        .arg(config.to_str().expect("utf-8 path"))
        .start();
    let data = b"wanted back after the incident";
    server.put_block(data);
    let hash = md5_hex(data);
    let block = block_path(&volume, &hash);
    set_mtime(&block, SystemTime::now() - OLD_AGE);
    let locator = format!("{hash}+{}", data.len());
    let expired_hash = md5_hex(b"expired trash");
    write_block_file(&volume, &expired_hash, b"expired trash");
    let expired = volume
        .join(&expired_hash[..3])
        .join(format!("{expired_hash}.trash.1000"));
    std::fs::rename(block_path(&volume, &expired_hash), &expired).expect("rename to trash");

    // Incident: freeze all deletion.
    write_trash_config(
        &config,
        &volume,
        "      BlobTrash: false\n      BlobTrashCheckInterval: 1s\n",
    );
    reload(&mut server, 1);
    let delete = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(delete.status, 405, "{}", delete.summary());
    assert_eq!(block_dir_entries(&volume, &hash), [hash.as_str()]);
    let list = format!(
        r#"[{{"locator":"{locator}","block_mtime":{},"mount_uuid":""}}]"#,
        mtime_ns(&block)
    );
    let response = put_list(&server, "/trash", &list);
    assert_eq!(response.status, 200, "{}", response.summary());
    wait_queue_idle(&server, "trash");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        block_dir_entries(&volume, &hash),
        [hash.as_str()],
        "trash list acted on"
    );
    assert!(expired.exists(), "the emptier ran with BlobTrash off");
    assert!(
        server
            .log
            .lines()
            .iter()
            .any(|line| line.contains("SIGHUP: trash settings in force")
                && (line.contains("\"blob_trash\":false") || line.contains("blob_trash=false"))),
        "no log line with the trash settings"
    );

    // Resume, with a short lifetime and interval: both apply at once.
    write_trash_config(
        &config,
        &volume,
        "      BlobTrash: true\n      BlobTrashLifetime: 1s\n      BlobTrashCheckInterval: 1s\n",
    );
    reload(&mut server, 2);
    assert!(
        eventually(Duration::from_secs(10), || !expired.exists()),
        "the emptier did not resume with the new interval"
    );
    let delete = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(delete.status, 200, "{}", delete.summary());
    assert!(!block.exists(), "DELETE did not trash the block");
    assert!(
        eventually(Duration::from_secs(10), || block_dir_entries(&volume, &hash).is_empty()),
        "the trashed block outlived its 1s lifetime: {:?}",
        block_dir_entries(&volume, &hash)
    );
    assert!(server.is_running());
}

/// A config file that adds a read-only volume (`ReadOnly: true`) at `root`.
fn read_only_config(dir: &Path, uuid: &str, root: &Path) -> PathBuf {
    let path = dir.join("config.yml");
    let text = format!(
        "Clusters:\n  zzzzz:\n    Volumes:\n      {uuid}:\n        Driver: Directory\n        \
         DriverParameters: {{Root: {}}}\n        ReadOnly: true\n",
        root.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn read_only_volumes_serve_reads_and_refuse_writes_trash_and_untrash() {
    let builder = ServerBuilder::new();
    let read_only = builder.temp_path().join("ro");
    let uuid = "zzzzz-nyw5e-readonly0000000";
    let data = b"on a read-only volume";
    let hash = md5_hex(data);
    write_block_file(&read_only, &hash, data);
    set_mtime(&block_path(&read_only, &hash), SystemTime::now() - OLD_AGE);
    let stored_mtime = mtime_ns(&block_path(&read_only, &hash));
    let trashed = md5_hex(b"trashed there");
    write_block_file(&read_only, &trashed, b"trashed there");
    std::fs::rename(
        block_path(&read_only, &trashed),
        read_only
            .join(&trashed[..3])
            .join(format!("{trashed}.trash.99999999999")),
    )
    .unwrap();
    let config = read_only_config(builder.temp_path(), uuid, &read_only);
    let server = builder.arg("--config").arg(config.to_str().unwrap()).start();

    let read = server.get(&signed_locator_for(data));
    assert_eq!(
        (read.status, read.body.as_slice()),
        (200, &data[..]),
        "{}",
        read.summary()
    );
    assert!(index_text(&server).contains(&hash));
    let locator = format!("{hash}+{}", data.len());
    let delete = server.request(root_request(Request::new("DELETE", &format!("/{locator}"))));
    assert_eq!(
        delete.status,
        404,
        "no trash-allowed volume has it: {}",
        delete.summary()
    );
    let list = format!(r#"[{{"locator":"{locator}","block_mtime":{stored_mtime},"mount_uuid":"{uuid}"}}]"#);
    assert_eq!(put_list(&server, "/trash", &list).status, 200);
    wait_queue_idle(&server, "trash");
    assert_eq!(
        block_dir_entries(&read_only, &hash),
        [hash.as_str()],
        "read-only block kept"
    );
    let untrash = server.request(root_request(Request::put(&format!("/untrash/{trashed}+13"), b"")));
    assert_eq!(untrash.status, 404, "{}", untrash.summary());
    assert!(!block_path(&read_only, &trashed).exists());

    let touch = server.request(root_request(Request::new("TOUCH", &format!("/{locator}"))));
    assert_eq!(
        touch.status,
        404,
        "TOUCH only touches writable volumes: {}",
        touch.summary()
    );
    let fresh = b"new block";
    server.put_block(fresh);
    assert!(
        !block_path(&read_only, &md5_hex(fresh)).exists(),
        "PUT wrote to a read-only volume"
    );
    let pull = format!(
        r#"[{{"locator":"{}+9","servers":["{}"],"mount_uuid":"{uuid}"}}]"#,
        md5_hex(fresh),
        base_url(&server)
    );
    assert_eq!(put_list(&server, "/pull", &pull).status, 200);
    wait_queue_idle(&server, "pull");
    assert!(
        !block_path(&read_only, &md5_hex(fresh)).exists(),
        "pulled onto a read-only volume"
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn timed_get(conn: &mut crate::support::client::Conn, locator: &str) -> Duration {
    let started = Instant::now();
    let response = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.summary());
    elapsed
}

#[test]
fn gets_keep_their_latency_while_a_large_trash_list_is_processed() {
    const BLOCKS: usize = 20_000;
    let builder = ServerBuilder::new().arg("--workers").arg("2");
    let volume = builder.volume(0).to_path_buf();
    let old = SystemTime::now() - OLD_AGE;
    let mut items = Vec::with_capacity(BLOCKS);
    for index in 0..BLOCKS {
        let data = format!("garbage block {index}");
        let hash = md5_hex(data.as_bytes());
        write_block_file(&volume, &hash, data.as_bytes());
        let path = block_path(&volume, &hash);
        set_mtime(&path, old);
        items.push(format!(
            r#"{{"locator":"{hash}+{}","block_mtime":{}}}"#,
            data.len(),
            mtime_ns(&path)
        ));
    }
    let server = builder.start();
    let data = test_bytes(63, 64 * 1024);
    let locator = server.put_block(&data);
    let mut conn = server.conn();
    for _ in 0..20 {
        timed_get(&mut conn, &locator);
    }
    let baseline = median((0..200).map(|_| timed_get(&mut conn, &locator)).collect());

    let list = format!("[{}]", items.join(","));
    let response = put_list(&server, "/trash", &list);
    assert_eq!(response.status, 200, "{}", response.summary());
    let mut during = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..25 {
            during.push(timed_get(&mut conn, &locator));
        }
        let series = metrics(&server);
        let busy = series["arvados_keepstore_trash_queue_pending_entries"]
            + series["arvados_keepstore_trash_queue_inprogress_entries"];
        if busy == 0.0 || Instant::now() > deadline {
            break;
        }
    }
    wait_queue_idle(&server, "trash");
    let trashed = std::fs::read_dir(&volume)
        .unwrap()
        .filter_map(|dir| std::fs::read_dir(dir.ok()?.path()).ok())
        .flatten()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.file_name().to_string_lossy().contains(".trash."))
        })
        .count();
    assert_eq!(trashed, BLOCKS, "every listed block is trashed");
    let during_median = median(during.clone());
    eprintln!(
        "GET median: {baseline:?} before, {during_median:?} while trashing {BLOCKS} blocks ({} samples)",
        during.len()
    );
    assert!(
        during_median <= baseline * 3 + Duration::from_millis(2),
        "GET median {during_median:?} while trashing vs {baseline:?} before"
    );
}
