//! Root-token endpoints (keep-protocol.md §2 "Admin endpoints", §3.4, keepstore-observed.md
//! "GET /index", "GET /mounts", "Admin / misc"), the root-token checks of the operations
//! endpoints (their behaviour is in ops.rs), TOUCH, and `/_health/ping`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::client::Conn;
use crate::support::*;

fn admin_get(server: &TestServer, target: &str) -> Response {
    server.request(Request::get(target).token(ROOT_TOKEN))
}

/// Parses an index body: asserts the line format and the terminating blank line, returns
/// (`hash+size`, mtime ns) pairs.
fn parse_index(response: &Response) -> Vec<(String, u128)> {
    assert_eq!(response.status, 200, "{}", response.summary());
    let text = response.text();
    let lines = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("index {text:?} lacks its terminating blank line"));
    if lines.is_empty() {
        return Vec::new();
    }
    let lines = lines
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("index {text:?} lacks its terminating blank line"));
    lines
        .split('\n')
        .map(|line| {
            let (locator, mtime) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad index line {line:?}"));
            let (hash, size) = locator
                .split_once('+')
                .unwrap_or_else(|| panic!("bad index locator {line:?}"));
            assert!(
                hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "bad hash in {line:?}"
            );
            size.parse::<u64>().unwrap_or_else(|_| panic!("bad size in {line:?}"));
            let mtime = mtime
                .parse::<u128>()
                .unwrap_or_else(|_| panic!("bad mtime in {line:?}"));
            (locator.to_string(), mtime)
        })
        .collect()
}

fn mtime_ns(path: &std::path::Path) -> u128 {
    std::fs::metadata(path)
        .expect("stat block")
        .modified()
        .expect("mtime")
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

fn locators(entries: &[(String, u128)]) -> BTreeSet<String> {
    entries.iter().map(|(locator, _)| locator.clone()).collect()
}

/// Stores three blocks (one empty); returns (hash, data) for each.
fn store_blocks(server: &TestServer) -> Vec<(String, Vec<u8>)> {
    [b"".to_vec(), b"hello keep\n".to_vec(), test_bytes(20, 5000)]
        .into_iter()
        .map(|data| {
            server.put_block(&data);
            (md5_hex(&data), data)
        })
        .collect()
}

#[test]
fn empty_index_is_a_single_newline() {
    let server = TestServer::start();
    let response = admin_get(&server, "/index");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), "\n");
}

#[test]
fn index_lists_every_block_with_size_and_mtime_ns() {
    let server = TestServer::start();
    let blocks = store_blocks(&server);
    let response = admin_get(&server, "/index");
    let entries = parse_index(&response);
    assert_eq!(entries.len(), blocks.len(), "{entries:?}");
    for (hash, data) in &blocks {
        let locator = format!("{hash}+{}", data.len());
        let (_, mtime) = entries
            .iter()
            .find(|(listed, _)| *listed == locator)
            .unwrap_or_else(|| panic!("{locator} not in index {entries:?}"));
        assert_eq!(
            *mtime,
            mtime_ns(&block_path(server.volume(0), hash)),
            "index mtime of {locator} should be the file mtime in ns"
        );
    }
    let slash = admin_get(&server, "/index/");
    assert_eq!(locators(&parse_index(&slash)), locators(&entries));
}

#[test]
fn index_content_type_is_text_plain() {
    let server = TestServer::start();
    server.put_block(b"hello keep\n");
    let response = admin_get(&server, "/index");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(
        response
            .header("Content-Type")
            .is_some_and(|value| value.starts_with("text/plain")),
        "index Content-Type should be text/plain (as keepstore): {}",
        response.summary()
    );
}

#[test]
fn index_prefix_filters_by_path_and_query() {
    let server = TestServer::start();
    let blocks = store_blocks(&server);
    for (hash, data) in &blocks {
        for prefix in [&hash[..1], &hash[..2], &hash[..]] {
            let expected: BTreeSet<String> = blocks
                .iter()
                .filter(|(other, _)| other.starts_with(prefix))
                .map(|(other, other_data)| format!("{other}+{}", other_data.len()))
                .collect();
            assert!(expected.contains(&format!("{hash}+{}", data.len())));
            for target in [format!("/index/{prefix}"), format!("/index?prefix={prefix}")] {
                let entries = parse_index(&admin_get(&server, &target));
                assert_eq!(locators(&entries), expected, "GET {target}");
            }
        }
    }
}

#[test]
fn index_prefix_matching_nothing_is_a_single_newline() {
    let server = TestServer::start();
    let blocks = store_blocks(&server);
    let unused = "0123456789abcdef"
        .chars()
        .map(|c| format!("{c}{c}{c}"))
        .find(|prefix| !blocks.iter().any(|(hash, _)| hash.starts_with(prefix.as_str())))
        .expect("an unused prefix");
    for target in [format!("/index/{unused}"), format!("/index?prefix={unused}")] {
        let response = admin_get(&server, &target);
        assert_eq!(response.status, 200, "{}", response.summary());
        assert_eq!(response.text(), "\n", "GET {target}");
    }
}

#[test]
fn index_with_non_hex_prefix_is_400() {
    let server = TestServer::start();
    let response = admin_get(&server, "/index/zz");
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(response.text(), "Bad Request\n");
}

#[test]
fn index_lists_a_block_on_two_volumes_twice_and_ignores_other_files() {
    let builder = ServerBuilder::new().volumes(2);
    let data = test_bytes(21, 321);
    let hash = md5_hex(&data);
    for index in 0..2 {
        write_block_file(builder.volume(index), &hash, &data);
        // Files the index must skip: temp files, trash, junk names.
        let dir = builder.volume(index).join(&hash[..3]);
        std::fs::write(dir.join(format!("tmp{hash}12345")), b"partial").expect("tmp file");
        std::fs::write(dir.join(format!("{hash}.trash.1234567890")), &data).expect("trash");
        std::fs::write(dir.join("junk"), b"junk").expect("junk");
    }
    let server = builder.start();
    let entries = parse_index(&admin_get(&server, "/index"));
    let expected = format!("{hash}+{}", data.len());
    assert_eq!(
        entries.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
        vec![expected.clone(), expected],
        "{entries:?}"
    );
}

fn mounts(server: &TestServer) -> Vec<Value> {
    let response = admin_get(server, "/mounts");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(
        response
            .header("Content-Type")
            .is_some_and(|value| value.starts_with("text/plain")),
        "/mounts Content-Type should be text/plain: {}",
        response.summary()
    );
    let value: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("/mounts is not JSON ({error}): {}", response.summary()));
    value.as_array().expect("/mounts is a JSON array").clone()
}

#[test]
fn mounts_lists_each_volume_with_its_uuid_file() {
    let server = ServerBuilder::new().volumes(2).start();
    let list = mounts(&server);
    assert_eq!(list.len(), 2, "{list:?}");
    let mut on_disk: Vec<String> = server
        .volumes()
        .iter()
        .map(|volume| {
            std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
                .expect("uuid file")
                .trim()
                .to_string()
        })
        .collect();
    on_disk.sort();
    let reported: Vec<String> = list
        .iter()
        .map(|mount| mount["uuid"].as_str().expect("uuid string").to_string())
        .collect();
    assert_eq!(reported, on_disk, "uuids, sorted, as in the volume roots");
    for mount in &list {
        assert!(is_volume_uuid(mount["uuid"].as_str().unwrap_or_default()), "{mount}");
        assert!(mount["device_id"].is_string(), "{mount}");
        assert_eq!(mount["allow_write"], Value::Bool(true), "{mount}");
        assert!(mount["allow_trash"].is_boolean(), "{mount}");
        assert_eq!(mount["replication"], Value::from(1), "{mount}");
        assert_eq!(
            mount["storage_classes"],
            serde_json::json!({"default": true}),
            "{mount}"
        );
    }
}

#[test]
fn mount_blocks_lists_only_that_volume() {
    let server = ServerBuilder::new().volumes(2).start();
    let mut stored = Vec::new();
    for seed in 0..8 {
        let data = test_bytes(30 + seed, 100 + seed as usize);
        server.put_block(&data);
        stored.push((md5_hex(&data), data.len()));
    }
    let mut seen = BTreeSet::new();
    for volume in server.volumes() {
        let uuid = std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
            .expect("uuid file")
            .trim()
            .to_string();
        let expected: BTreeSet<String> = stored
            .iter()
            .filter(|(hash, _)| block_path(volume, hash).exists())
            .map(|(hash, size)| format!("{hash}+{size}"))
            .collect();
        for target in [format!("/mounts/{uuid}/blocks"), format!("/mounts/{uuid}/blocks/")] {
            let listed = locators(&parse_index(&admin_get(&server, &target)));
            assert_eq!(listed, expected, "GET {target}");
        }
        let (hash, size) = &stored[0];
        let prefix = &hash[..2];
        let expected_prefixed: BTreeSet<String> = expected
            .iter()
            .filter(|locator| locator.starts_with(prefix))
            .cloned()
            .collect();
        for target in [
            format!("/mounts/{uuid}/blocks/{prefix}"),
            format!("/mounts/{uuid}/blocks?prefix={prefix}"),
        ] {
            let listed = locators(&parse_index(&admin_get(&server, &target)));
            assert_eq!(listed, expected_prefixed, "GET {target} ({hash}+{size})");
        }
        seen.extend(expected);
    }
    assert_eq!(seen.len(), stored.len(), "every block is on some volume");
}

#[test]
fn mount_blocks_of_unknown_uuid_is_404() {
    let server = TestServer::start();
    let response = admin_get(&server, "/mounts/zzzzz-nyw5e-000000000000999/blocks");
    assert_eq!(response.status, 404, "{}", response.summary());
    assert_eq!(response.text(), "file does not exist\n");
}

fn assert_unauthorized(response: &Response, status: u16, body: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.summary());
    assert_eq!(response.text(), body, "{what}");
    assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"), "{what}");
    for (name, value) in CORS_HEADERS {
        assert_eq!(response.header(name), Some(value), "{what}: {name}");
    }
}

#[test]
fn admin_reads_need_the_root_token() {
    let server = TestServer::start();
    let uuid = std::fs::read_to_string(server.volume(0).join(VOLUME_UUID_FILE))
        .expect("uuid file")
        .trim()
        .to_string();
    for target in [
        "/index".to_string(),
        "/index/ab".to_string(),
        "/mounts".to_string(),
        format!("/mounts/{uuid}/blocks"),
    ] {
        let none = server.request(Request::get(&target));
        assert_unauthorized(&none, 401, "Unauthorized\n", &format!("GET {target} no token"));
        let wrong = server.request(Request::get(&target).token(USER_TOKEN));
        assert_unauthorized(&wrong, 403, "Forbidden\n", &format!("GET {target} user token"));
        let root = server.request(Request::get(&target).token(ROOT_TOKEN));
        assert_eq!(root.status, 200, "GET {target}: {}", root.summary());
    }
}

#[test]
fn root_token_is_accepted_as_api_token_query_parameter() {
    let server = TestServer::start();
    let response = server.request(Request::get(&format!("/index?api_token={ROOT_TOKEN}")));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), "\n");
}

#[test]
fn background_admin_endpoints_check_root_token_then_answer_200() {
    let server = TestServer::start();
    let data = b"hello keep\n";
    let locator = format!("{}+11", md5_hex(data));
    server.put_block(data);
    let requests = [
        Request::put("/pull", b"[]"),
        Request::put("/trash", b"[]"),
        Request::new("DELETE", &format!("/{locator}")),
    ];
    for request in requests {
        let what = format!("{} {}", request.method, request.target);
        let none = server.request(request.clone());
        assert_unauthorized(&none, 401, "Unauthorized\n", &format!("{what} no token"));
        let wrong = server.request(request.clone().token(USER_TOKEN));
        assert_unauthorized(&wrong, 403, "Forbidden\n", &format!("{what} user token"));
        let root = server.request(request.clone().token(ROOT_TOKEN));
        assert_eq!(root.status, 200, "{what}: {}", root.summary());
        assert!(root.body.is_empty(), "{what}: {}", root.summary());
    }
    let untrash = Request::put(&format!("/untrash/{locator}"), b"");
    assert_unauthorized(
        &server.request(untrash.clone()),
        401,
        "Unauthorized\n",
        "untrash no token",
    );
    let root = server.request(untrash.token(ROOT_TOKEN));
    assert_eq!(root.status, 404, "nothing to untrash: {}", root.summary());
    assert_eq!(
        std::fs::read(block_path(server.volume(0), &md5_hex(data))).expect("block kept"),
        data,
        "DELETE of a block younger than the signing TTL must not remove it"
    );
}

#[test]
fn metrics_answer_prometheus_text() {
    let server = ServerBuilder::new().management_token().start();
    let response = server.request(Request::get("/metrics").token(MANAGEMENT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
    let text = response.text();
    assert!(
        text.contains("# TYPE arvados_keepstore_bufferpool_max_buffers gauge\n"),
        "{text}"
    );
}

#[test]
fn touch_needs_root_token_and_updates_mtime() {
    let server = TestServer::start();
    let data = b"touch me";
    let hash = md5_hex(data);
    let locator = format!("{hash}+{}", data.len());
    server.put_block(data);
    let path = block_path(server.volume(0), &hash);
    let old = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open block")
        .set_modified(old)
        .expect("set old mtime");

    let target = format!("/{locator}");
    let none = server.request(Request::new("TOUCH", &target));
    assert_unauthorized(&none, 401, "Unauthorized\n", "TOUCH no token");
    let wrong = server.request(Request::new("TOUCH", &target).token(USER_TOKEN));
    assert_unauthorized(&wrong, 403, "Forbidden\n", "TOUCH user token");

    let root = server.request(Request::new("TOUCH", &target).token(ROOT_TOKEN));
    match root.status {
        200 => {
            assert!(root.body.is_empty(), "{}", root.summary());
            let modified = std::fs::metadata(&path).expect("stat").modified().expect("mtime");
            assert!(
                modified > old + Duration::from_secs(3600),
                "TOUCH answered 200 but the mtime did not change"
            );
            let missing = format!("/{}+3", md5_hex(b"abc"));
            let response = server.request(Request::new("TOUCH", &missing).token(ROOT_TOKEN));
            assert_eq!(response.status, 404, "{}", response.summary());
            assert_eq!(response.text(), "file does not exist\n");
        }
        _ => panic!("TOUCH: {}", root.summary()),
    }
}

#[test]
fn health_ping_is_disabled_without_management_token() {
    let server = TestServer::start();
    let response = server.request(Request::get("/_health/ping"));
    assert_eq!(response.status, 404, "{}", response.summary());
    assert_eq!(response.text(), "disabled\n");
}

#[test]
fn health_ping_with_management_token() {
    let server = ServerBuilder::new().management_token().start();
    let ok = server.request(Request::get("/_health/ping").token(MANAGEMENT_TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.summary());
    assert_eq!(ok.text(), "{\"health\":\"OK\"}\n");
    assert!(
        ok.header("Content-Type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{}",
        ok.summary()
    );
    let none = server.request(Request::get("/_health/ping"));
    assert_eq!(none.status, 401, "{}", none.summary());
    assert_eq!(none.text(), "authorization required\n");
    let wrong = server.request(Request::get("/_health/ping").token(ROOT_TOKEN));
    assert_eq!(wrong.status, 403, "{}", wrong.summary());
}

/// Threads of process `pid`, without the kernel's io_uring workers (`iou-wrk-*`), which
/// the kernel starts and ends by itself for the rings' own operations.
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the server's threads")
        .flatten()
        .filter(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            !name.starts_with("iou-")
        })
        .count()
}

/// A connection whose receive buffer is as small as the kernel allows, so a response it
/// does not read stays on the server's side.
fn tight_connection(server: &TestServer) -> Conn {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect_timeout(&server.addr.into(), Duration::from_secs(5))
        .expect("connect");
    Conn::from_stream(socket.into())
}

#[test]
fn concurrent_index_requests_share_the_helper_pool_instead_of_a_thread_each() {
    // 50 index requests at once, none read past its first byte until the server's threads
    // are counted. Each index is ~1.6 MiB of text, more than a response's socket buffers
    // hold: a walk with a thread of its own would keep it (blocked on its client) and the
    // server would count 50 more; a walk listed a piece at a time on the helper pool waits
    // between pieces without a thread.
    const REQUESTS: usize = 50;
    const BLOCKS: usize = 30_000;
    // 30,000 files are made in a blink on tmpfs, in seconds on a busy disk.
    let shm = Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("volume dir");
    let volume = dir.path().join("volume");
    for index in 0..BLOCKS {
        let hash = md5_hex(&(index as u64).to_le_bytes());
        let block_dir = volume.join(&hash[..3]);
        if !block_dir.is_dir() {
            std::fs::create_dir_all(&block_dir).expect("block dir");
        }
        std::fs::File::create(block_dir.join(&hash)).expect("block file");
    }
    let server = ServerBuilder::new().volume_paths(vec![volume]).start();
    let whole = admin_get(&server, "/index");
    assert_eq!(parse_index(&whole).len(), BLOCKS);
    let baseline = threads_of(server.pid());
    let mut conns: Vec<Conn> = (0..REQUESTS)
        .map(|_| {
            let mut conn = tight_connection(&server);
            conn.send(&Request::get("/index").token(ROOT_TOKEN)).expect("send");
            conn
        })
        .collect();
    // Every request is being answered (its first bytes wait in the socket).
    for conn in &conns {
        conn.stream().peek(&mut [0u8; 1]).expect("an answer begins");
    }
    let mut most = baseline;
    for _ in 0..50 {
        most = most.max(threads_of(server.pid()));
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("server threads: {baseline} before, at most {most} with {REQUESTS} index requests in flight");
    assert!(
        most <= baseline + keepring::limits::HELPER_THREADS,
        "{most} threads with {REQUESTS} index requests in flight, {baseline} before"
    );
    for conn in &mut conns {
        // Room again, so the rest of the text arrives in few round trips.
        let socket = socket2::SockRef::from(conn.stream());
        socket.set_recv_buffer_size(4 * 1024 * 1024).expect("SO_RCVBUF");
        let response = conn.read_response("GET").expect("index response");
        assert_eq!(response.status, 200, "{}", response.summary());
        assert!(response.body == whole.body, "every index whole and the same");
    }
}
