//! PUT/GET/HEAD of blocks (keep-protocol.md §3.1, §3.2, §6) plus keepring's deliberate
//! differences: 413 before reading an oversized body, `100 Continue`, atomic writes, corrupt
//! copies never served as good and repaired by PUT.

use std::io::Write;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::support::client::{eventually, Conn};
use crate::support::*;

const MIB: usize = 1024 * 1024;

fn assert_only_block_file(volume: &std::path::Path, hash: &str) {
    assert_eq!(
        block_dir_entries(volume, hash),
        vec![hash.to_string()],
        "the block directory should hold exactly the block file (no temp files)"
    );
}

#[test]
fn put_get_head_round_trip_stores_bytes_on_disk() {
    let server = TestServer::start();
    let data = b"hello keep\n";
    let hash = md5_hex(data);
    assert_eq!(hash, "6f09f2b353b6d63069f770b90e2b112c");

    let put = server.put(data);
    assert_eq!(put.status, 200, "{}", put.summary());
    let locator = put.text();
    assert!(
        locator.starts_with(&format!("{hash}+11+A")) && locator.ends_with('\n'),
        "PUT body {locator:?}"
    );
    assert_eq!(locator.matches('\n').count(), 1, "exactly one trailing newline");
    assert_eq!(put.header("X-Keep-Replicas-Stored"), Some("1"));
    assert_eq!(put.header("X-Keep-Storage-Classes-Confirmed"), Some("default=1"));
    assert_eq!(put.header("Content-Length"), Some(locator.len().to_string().as_str()));

    let path = block_path(server.volume(0), &hash);
    assert_eq!(std::fs::read(&path).expect("block file on disk"), data);
    assert_only_block_file(server.volume(0), &hash);

    let locator = locator.trim_end();
    let get = server.get(locator);
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data);
    assert_eq!(get.header("Content-Length"), Some("11"));
    assert_eq!(get.header("Vary"), Some("X-Keep-Signature"));

    let head = server.request(Request::head(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(head.header("Content-Length"), Some("11"));
    assert_eq!(head.header("Vary"), Some("X-Keep-Signature"));
}

#[test]
fn put_signature_is_hmac_of_hash_token_expiry_and_ttl() {
    let server = TestServer::start();
    let data = b"signature check";
    let hash = md5_hex(data);
    let before = now_secs();
    let locator = server.put_block(data);
    let after = now_secs();

    let (unsigned, hint) = locator.split_once("+A").expect("signed locator");
    assert_eq!(unsigned, format!("{hash}+{}", data.len()));
    let (signature, expiry_hex) = hint.split_once('@').expect("sig@expiry");
    assert_eq!(expiry_hex.len(), 8, "expiry is 8 hex digits: {locator}");
    let expiry = u64::from_str_radix(expiry_hex, 16).expect("hex expiry");
    assert!(
        (before + SIGNING_TTL_SECS_DEFAULT..=after + SIGNING_TTL_SECS_DEFAULT).contains(&expiry),
        "expiry {expiry} should be now + 1209600"
    );
    assert_eq!(
        signature,
        sign(&hash, USER_TOKEN, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, expiry)
    );
}

#[test]
fn signing_ttl_flag_sets_expiry_and_signed_ttl() {
    let server = ServerBuilder::new().arg("--blob-signing-ttl-secs").arg("3600").start();
    let data = b"short ttl";
    let hash = md5_hex(data);
    let before = now_secs();
    let locator = server.put_block(data);
    let expiry_hex = locator.rsplit('@').next().expect("expiry");
    let expiry = u64::from_str_radix(expiry_hex, 16).expect("hex expiry");
    assert!(
        (before + 3600..=now_secs() + 3600).contains(&expiry),
        "expiry {expiry} should be now + 3600"
    );
    assert_eq!(
        locator,
        signed_locator_with(&hash, data.len(), USER_TOKEN, SIGNING_KEY, 3600, expiry)
    );
    let get = server.get(&locator);
    assert_eq!(get.status, 200, "{}", get.summary());
}

#[test]
fn put_without_token_returns_unsigned_locator() {
    let server = TestServer::start();
    let data = b"hello keep\n";
    let response = server.request(Request::put(&format!("/{}", md5_hex(data)), data));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), "6f09f2b353b6d63069f770b90e2b112c+11\n");
}

#[test]
fn put_without_signing_key_returns_unsigned_locator_and_reads_need_no_token() {
    let server = ServerBuilder::new().without_signing_key().start();
    let data = b"no key configured";
    let hash = md5_hex(data);
    let response = server.put(data);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), format!("{hash}+{}\n", data.len()));
    let get = server.request(Request::get(&format!("/{hash}+{}", data.len())));
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data);
}

#[test]
fn put_same_block_twice_succeeds_and_keeps_one_file() {
    let server = TestServer::start();
    let data = test_bytes(1, 1000);
    let first = server.put(&data);
    let second = server.put(&data);
    assert_eq!(first.status, 200, "{}", first.summary());
    assert_eq!(second.status, 200, "{}", second.summary());
    assert_only_block_file(server.volume(0), &md5_hex(&data));
}

#[test]
fn put_tolerates_hints_after_the_hash() {
    let server = TestServer::start();
    let data = b"hello keep\n";
    let hash = md5_hex(data);
    let response = server.request(Request::put(&format!("/{hash}+12"), data));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), format!("{hash}+11\n"));
}

#[test]
fn empty_block_round_trip() {
    let server = TestServer::start();
    let put = server.put(b"");
    assert_eq!(put.status, 200, "{}", put.summary());
    assert!(
        put.text().starts_with(&format!("{EMPTY_HASH}+0+A")),
        "{}",
        put.summary()
    );
    assert_eq!(
        std::fs::read(block_path(server.volume(0), EMPTY_HASH)).expect("empty block file"),
        b""
    );
    let get = server.get(put.text().trim_end());
    assert_eq!(get.status, 200, "{}", get.summary());
    assert!(get.body.is_empty());
    assert_eq!(get.header("Content-Length"), Some("0"));
}

#[test]
fn empty_block_must_be_stored_before_it_can_be_read() {
    let server = TestServer::start();
    let get = server.get(&signed_locator(EMPTY_HASH, 0, USER_TOKEN));
    assert_eq!(get.status, 404, "{}", get.summary());
    assert_eq!(get.text(), "file does not exist\n");
}

/// Piece `index` of the 64 MiB test block: 1 MiB, distinct per piece.
fn big_piece(index: usize) -> Vec<u8> {
    test_bytes(1000 + index as u64, MIB)
}

#[test]
fn put_and_get_exactly_64_mib() {
    let server = TestServer::start();
    let pieces = BLOCK_BYTES_MAX / MIB;
    let mut hasher = Md5::new();
    for index in 0..pieces {
        hasher.update(big_piece(index));
    }
    let hash = hex(&hasher.finalize());

    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\nContent-Length: {BLOCK_BYTES_MAX}\r\n\r\n"
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    for index in 0..pieces {
        conn.write_raw(&big_piece(index)).expect("write body piece");
    }
    let put = conn.read_response("PUT").expect("PUT response");
    assert_eq!(put.status, 200, "{}", put.summary());
    let locator = put.text().trim_end().to_string();
    assert!(locator.starts_with(&format!("{hash}+{BLOCK_BYTES_MAX}+A")), "{locator}");
    assert_eq!(
        std::fs::metadata(block_path(server.volume(0), &hash))
            .expect("block file")
            .len(),
        BLOCK_BYTES_MAX as u64
    );

    let get = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(get.status, 200, "status {} {}", get.status, get.reason);
    assert!(get.complete, "GET body cut short at {} bytes", get.body.len());
    assert_eq!(get.body.len(), BLOCK_BYTES_MAX);
    assert_eq!(md5_hex(&get.body), hash, "GET returned different bytes");
}

#[test]
fn put_over_64_mib_is_rejected_with_413_before_the_body_is_sent() {
    let server = TestServer::start();
    let hash = md5_hex(b"never sent");
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        BLOCK_BYTES_MAX + 1
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    // No body is sent: the server must answer from the header alone, without `100 Continue`.
    let response = conn.read_response("PUT").expect("a response without any body sent");
    assert_eq!(response.status, 413, "{}", response.summary());
    assert_eq!(response.text(), "request entity too large\n");
    assert!(
        conn.closed_by_server_within(Duration::from_secs(5)),
        "the server should close the connection after a 413"
    );
    assert!(block_dir_entries(server.volume(0), &hash).is_empty());
}

#[test]
fn put_over_64_mib_without_expect_is_rejected_before_the_body_is_sent() {
    let server = TestServer::start();
    let hash = md5_hex(b"never sent either");
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        BLOCK_BYTES_MAX + 1
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    let response = conn.read_response("PUT").expect("a response without any body sent");
    assert_eq!(response.status, 413, "{}", response.summary());
    assert_eq!(response.text(), "request entity too large\n");
    assert!(conn.closed_by_server_within(Duration::from_secs(5)));
}

#[test]
fn chunked_put_over_64_mib_is_rejected_with_413() {
    let server = TestServer::start();
    let hash = md5_hex(b"too big, chunked");
    let mut conn = server.conn();
    let head = format!("PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.write_raw(head.as_bytes()).expect("write head");
    // A writer thread, so a server that answers early cannot deadlock the test.
    let mut writer = conn.stream().try_clone().expect("clone stream");
    let sender = std::thread::spawn(move || {
        let piece = vec![b'x'; MIB];
        let mut chunk = format!("{:x}\r\n", MIB).into_bytes();
        chunk.extend_from_slice(&piece);
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..BLOCK_BYTES_MAX / MIB {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"1\r\nx\r\n0\r\n\r\n");
    });
    let response = conn.read_response("PUT").expect("413 response");
    assert_eq!(response.status, 413, "{}", response.summary());
    assert_eq!(response.text(), "request entity too large\n");
    sender.join().expect("writer thread");
    assert!(block_dir_entries(server.volume(0), &hash).is_empty());
}

#[test]
fn expect_100_continue_gets_interim_response_before_body() {
    let server = TestServer::start();
    let data = test_bytes(2, 2 * MIB);
    let hash = md5_hex(&data);
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    let interim = conn.read_response("PUT").expect("100 Continue before any body");
    assert_eq!(interim.status, 100, "{}", interim.summary());
    assert_eq!(interim.version, "HTTP/1.1");
    conn.write_raw(&data).expect("write body");
    let response = conn.read_response("PUT").expect("final response");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.text(), format!("{hash}+{}\n", data.len()));
    assert_eq!(
        std::fs::read(block_path(server.volume(0), &hash)).expect("stored"),
        data
    );
}

#[test]
fn chunked_put_is_stored() {
    let server = TestServer::start();
    let data = test_bytes(3, 300_000);
    let hash = md5_hex(&data);
    let mut body = Vec::new();
    for piece in data.chunks(70_000) {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let response = server.request(
        Request::put(&format!("/{hash}"), &body)
            .header("Transfer-Encoding", "chunked")
            .token(USER_TOKEN),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(response.text().starts_with(&format!("{hash}+300000+A")));
    assert_eq!(
        std::fs::read(block_path(server.volume(0), &hash)).expect("stored"),
        data
    );
    assert_only_block_file(server.volume(0), &hash);
}

#[test]
fn put_with_wrong_hash_is_rejected_and_stores_nothing() {
    let server = TestServer::start();
    let data = b"hello keep\n";
    let wrong = "00000000000000000000000000000000";
    let response = server.request(Request::put(&format!("/{wrong}"), data).token(USER_TOKEN));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(
        response.text(),
        format!(
            "content hash {} did not match specified locator {wrong}\n",
            md5_hex(data)
        )
    );
    assert!(block_dir_entries(server.volume(0), wrong).is_empty());
    assert!(block_dir_entries(server.volume(0), &md5_hex(data)).is_empty());
}

#[test]
fn put_with_short_content_length_hashes_only_the_declared_bytes() {
    let server = TestServer::start();
    let hash = md5_hex(b"hello keep\n");
    let response = server.request(Request::put(&format!("/{hash}"), b"hello keep\n").header("Content-Length", "5"));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(
        response.text(),
        format!("content hash 5d41402abc4b2a76b9719d911017c592 did not match specified locator {hash}\n")
    );
    assert!(block_dir_entries(server.volume(0), &hash).is_empty());
}

#[test]
fn client_hang_up_mid_body_stores_nothing_and_server_keeps_serving() {
    let server = TestServer::start();
    // The URL names the hash of exactly the bytes sent, so a server that took EOF for the end
    // of the body would store them: it must not, since Content-Length promised more.
    let data = test_bytes(4, 100_000);
    let hash = md5_hex(&data);
    {
        let mut conn = server.conn();
        let head = format!(
            "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            data.len() + 1000
        );
        conn.write_raw(head.as_bytes()).expect("write head");
        conn.write_raw(&data).expect("write partial body");
        conn.shutdown_write();
        // Give the server the chance to answer (keepstore: 499) or not; then hang up.
        let _ = conn.closed_by_server_within(Duration::from_secs(2));
    }
    // The server is still serving.
    let other = test_bytes(5, 10);
    let locator = server.put_block(&other);
    assert_eq!(server.get(&locator).body, other);
    // Let any late write of the aborted request surface before looking.
    let _ = server.log.wait_for(Duration::from_secs(2), |line| line.contains(&hash));
    assert!(
        block_dir_entries(server.volume(0), &hash).is_empty(),
        "nothing may be stored for an incomplete body: {:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    let get = server.get(&signed_locator(&hash, data.len(), USER_TOKEN));
    assert_eq!(get.status, 404, "{}", get.summary());
}

/// Names in the block's directory that are temp files (a write in progress or left over).
fn temp_files(volume: &std::path::Path, hash: &str) -> Vec<String> {
    block_dir_entries(volume, hash)
        .into_iter()
        .filter(|name| name.starts_with("tmp"))
        .collect()
}

#[test]
fn big_put_with_wrong_hash_leaves_no_temp_file() {
    // A body of 1 MiB or more is written to the volume while it arrives; a mismatch at the
    // end must remove that temp file.
    let server = TestServer::start();
    let data = test_bytes(31, 3 * MIB);
    let wrong = md5_hex(b"not these bytes");
    let response = server.request(Request::put(&format!("/{wrong}"), &data).token(USER_TOKEN));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert!(
        block_dir_entries(server.volume(0), &wrong).is_empty(),
        "{:?}",
        block_dir_entries(server.volume(0), &wrong)
    );
    assert!(block_dir_entries(server.volume(0), &md5_hex(&data)).is_empty());
}

/// A connection that sent a PUT of `data` (as block `hash`) with only its first `sent`
/// body bytes: the server waits for the rest.
fn put_part_of(server: &TestServer, hash: &str, data: &[u8], sent: usize) -> Conn {
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    conn.write_raw(&data[..sent]).expect("write most of the body");
    conn
}

#[test]
fn big_body_is_written_while_it_arrives_and_a_hang_up_removes_it() {
    let server = TestServer::start();
    let data = test_bytes(32, 4 * MIB);
    let hash = md5_hex(&data);
    let conn = put_part_of(&server, &hash, &data, 3 * MIB);
    // The part received is on disk under a temp name, never under the block's name.
    let temp_size = || {
        temp_files(server.volume(0), &hash)
            .first()
            .and_then(|name| std::fs::metadata(server.volume(0).join(&hash[..3]).join(name)).ok())
            .map_or(0, |meta| meta.len())
    };
    assert!(
        eventually(Duration::from_secs(5), || temp_size() >= 2 * MIB as u64),
        "no temp file growing as the body arrives: {:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    assert!(!block_path(server.volume(0), &hash).exists());
    drop(conn);
    assert!(
        eventually(Duration::from_secs(5), || block_dir_entries(server.volume(0), &hash)
            .is_empty()),
        "the temp file of an abandoned body stays: {:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    // The same block whole, on a fresh connection: stored, and only the block file.
    let locator = server.put_block(&data);
    assert_only_block_file(server.volume(0), &hash);
    assert_eq!(std::fs::read(block_path(server.volume(0), &hash)).unwrap(), data);
    assert_eq!(md5_hex(&server.get(&locator).body), hash);
}

#[test]
fn a_hang_up_while_direct_writes_run_beside_the_body_leaves_nothing() {
    // A 40 MiB body is written past the page cache 16 MiB at a time, each write a task of
    // its own while the body keeps arriving: a client gone after 34 MiB leaves those
    // tasks to end on their own, and their temp file must still go.
    let server = TestServer::start();
    let data = test_bytes(34, 40 * MIB);
    let hash = md5_hex(&data);
    let conn = put_part_of(&server, &hash, &data, 34 * MIB);
    assert!(
        eventually(Duration::from_secs(5), || !temp_files(server.volume(0), &hash)
            .is_empty()),
        "no temp file while the body arrives"
    );
    drop(conn);
    assert!(
        eventually(Duration::from_secs(10), || block_dir_entries(server.volume(0), &hash)
            .is_empty()),
        "the temp file of an abandoned body stays: {:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    // The body's buffer lease went back with its memory, once the write tasks let go.
    let in_use = || {
        crate::ops::metrics(&server)
            .get("keepring_bufferpool_inuse_bytes")
            .copied()
    };
    assert!(
        eventually(Duration::from_secs(5), || in_use() == Some(0.0)),
        "the abandoned body's lease is still counted: {:?}",
        in_use()
    );
    // The server goes on: the whole body on a new connection is stored, byte for byte.
    let locator = server.put_block(&data);
    assert_only_block_file(server.volume(0), &hash);
    assert!(std::fs::read(block_path(server.volume(0), &hash)).unwrap() == data);
    assert_eq!(md5_hex(&server.get(&locator).body), hash);
}

#[test]
fn a_slow_reader_of_a_big_block_gets_every_byte_in_order() {
    // The chunks between the first and the last leave by sendfile alone, the session
    // waiting for room in the socket whenever it is full: a reader with a tiny receive
    // buffer that pauses between reads makes it wait hundreds of times.
    let server = TestServer::start();
    let data = test_bytes(33, 6 * MIB + 12_345);
    let locator = server.put_block(&data);
    let stream = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stream.set_recv_buffer_size(16 * 1024).unwrap();
    stream.connect(&server.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = stream.into();
    let received = std::sync::atomic::AtomicU64::new(0);
    let result = crate::support::client::slow_get(&mut stream, &locator, Duration::from_micros(300), &received);
    assert_eq!(result.error, None);
    assert!(result.status_line.contains(" 200 "), "{}", result.status_line);
    assert_eq!((result.content_length, result.body_bytes), (data.len(), data.len()));
    assert_eq!(result.body_md5, md5_hex(&data));
    // The connection is still in step for the next request.
    let again = crate::support::client::slow_get(&mut stream, &locator, Duration::ZERO, &received);
    assert_eq!(again.error, None);
    assert_eq!(again.body_md5, md5_hex(&data));
}

#[test]
fn blocks_are_served_right_from_a_cold_cache() {
    // Small blocks are opened and read on the worker's core only while the dentry and
    // page caches hold them (openat2 RESOLVE_CACHED, preadv2 RWF_NOWAIT); from a cold
    // cache the same GET goes through io_uring. Dropping the caches needs root.
    let server = TestServer::start();
    let small = test_bytes(34, 4096);
    let big = test_bytes(35, 3 * MIB / 2);
    let locators = [server.put_block(&small), server.put_block(&big)];
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Err(error) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("skipping: cannot drop the page cache here: {error}");
        return;
    }
    for (locator, data) in locators.iter().zip([&small, &big]) {
        let get = server.get(locator);
        assert_eq!(get.status, 200, "{}", get.summary());
        assert_eq!(get.body, *data);
    }
}

#[test]
fn put_with_requested_default_storage_class_is_confirmed() {
    let server = TestServer::start();
    let data = b"classy";
    let response =
        server.request(Request::put(&format!("/{}", md5_hex(data)), data).header("X-Keep-Storage-Classes", "default"));
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.header("X-Keep-Storage-Classes-Confirmed"), Some("default=1"));
}

#[test]
fn put_with_unknown_storage_class_is_507_and_stores_nothing() {
    let server = TestServer::start();
    let data = b"no such class";
    let hash = md5_hex(data);
    let response =
        server.request(Request::put(&format!("/{hash}"), data).header("X-Keep-Storage-Classes", "nosuchclass"));
    assert_eq!(response.status, 507, "{}", response.summary());
    assert_eq!(response.text(), "insufficient storage\n");
    assert!(block_dir_entries(server.volume(0), &hash).is_empty());
}

#[test]
fn put_lands_on_exactly_one_of_two_volumes() {
    let server = ServerBuilder::new().volumes(2).start();
    let mut used = [0usize; 2];
    for seed in 0..16 {
        let data = test_bytes(100 + seed, 64);
        let hash = md5_hex(&data);
        server.put_block(&data);
        let holders = server.volumes_holding(&hash);
        assert_eq!(holders.len(), 1, "block {hash} on volumes {holders:?}");
        used[holders[0]] += 1;
        assert_only_block_file(server.volume(holders[0]), &hash);
    }
    assert!(used.iter().all(|&count| count > 0), "placement {used:?}");
}

#[test]
fn put_places_block_on_first_volume_in_rendezvous_order() {
    // keep-protocol.md §5: mounts sorted by md5(hash + last 15 chars of uuid) ascending.
    let server = ServerBuilder::new().volumes(3).start();
    let uuids: Vec<String> = server
        .volumes()
        .iter()
        .map(|volume| {
            std::fs::read_to_string(volume.join(VOLUME_UUID_FILE))
                .expect("volume uuid file")
                .trim()
                .to_string()
        })
        .collect();
    for seed in 0..12 {
        let data = test_bytes(200 + seed, 32);
        let hash = md5_hex(&data);
        server.put_block(&data);
        let expected = (0..uuids.len())
            .min_by_key(|&index| md5_hex(format!("{hash}{}", &uuids[index][12..]).as_bytes()))
            .expect("volumes");
        assert_eq!(
            server.volumes_holding(&hash),
            vec![expected],
            "block {hash}, volume uuids {uuids:?}"
        );
    }
}

#[test]
fn corrupt_small_block_is_not_served_as_good() {
    let server = TestServer::start();
    let data = test_bytes(6, 5000);
    let locator = server.put_block(&data);
    let hash = md5_hex(&data);
    std::fs::write(block_path(server.volume(0), &hash), corrupted(&data)).expect("corrupt");

    let get = server.get(&locator);
    assert_eq!(get.status, 502, "{}", get.summary());
    assert_eq!(get.text(), "checksum mismatch in stored data\n");
    // The bad copy is then quarantined (issue 14): the block is no longer here, and a
    // HEAD says so (404) or, if it came first, checks the copy and refuses it too (502).
    let head = server.request(Request::head(&format!("/{locator}")).token(USER_TOKEN));
    assert!(matches!(head.status, 502 | 404), "{}", head.summary());
    let quarantined = eventually(Duration::from_secs(10), || {
        block_dir_entries(server.volume(0), &hash)
            .iter()
            .any(|name| name.starts_with(&format!("{hash}.corrupt.")))
    });
    assert!(quarantined, "{:?}", block_dir_entries(server.volume(0), &hash));
    assert_eq!(server.get(&locator).status, 404, "no copy left here");
}

#[test]
fn verified_cache_still_catches_a_copy_rewritten_after_it_was_verified() {
    let server = ServerBuilder::new()
        .arg("--workers")
        .arg("1")
        .arg("--verified-cache-entries")
        .arg("100")
        .start();
    let data = test_bytes(61, 5000);
    let locator = server.put_block(&data);
    let hash = md5_hex(&data);
    for _ in 0..3 {
        assert_eq!(server.get(&locator).body, data, "served and remembered as verified");
    }
    // Any write changes mtime/ctime, so the remembered verification no longer applies.
    std::fs::write(block_path(server.volume(0), &hash), corrupted(&data)).expect("corrupt");
    let get = server.get(&locator);
    assert_eq!(get.status, 502, "{}", get.summary());
}

#[test]
fn corrupt_large_block_is_502_or_cut_short_never_a_full_200() {
    let server = TestServer::start();
    let data = test_bytes(7, 3 * MIB);
    let locator = server.put_block(&data);
    let hash = md5_hex(&data);
    let mut bad = data.clone();
    bad[3 * MIB - 1] ^= 0xff; // only the last byte differs
    std::fs::write(block_path(server.volume(0), &hash), &bad).expect("corrupt");

    let get = server.get(&locator);
    match get.status {
        502 => assert_eq!(get.text(), "checksum mismatch in stored data\n"),
        200 => assert!(
            !get.complete && get.body.len() < data.len(),
            "a corrupt block was delivered as a complete 200 ({} bytes, md5 {})",
            get.body.len(),
            md5_hex(&get.body)
        ),
        _ => panic!("unexpected {}", get.summary()),
    }
    // The server survives and still serves good blocks.
    let other = test_bytes(8, 100);
    let other_locator = server.put_block(&other);
    assert_eq!(server.get(&other_locator).body, other);
}

#[test]
fn a_copy_rotted_mid_block_is_cut_before_its_end_and_set_aside() {
    // Past its first chunk a big copy is read and hashed by a task of its own while the
    // bytes between leave by sendfile; one byte flipped in place in the middle (bit rot:
    // same size, same name) must still end in a cut body, never a complete one.
    let server = TestServer::start();
    let data = test_bytes(36, 6 * MIB + 12_345);
    let locator = server.put_block(&data);
    let hash = md5_hex(&data);
    let path = block_path(server.volume(0), &hash);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the copy");
        file.write_all_at(&[!data[3 * MIB]], 3 * MIB as u64)
            .expect("flip one byte");
    }
    let get = server.get(&locator);
    assert_eq!(get.status, 200, "the first chunk is good: {}", get.summary());
    assert!(
        !get.complete && get.body.len() < data.len(),
        "a rotted copy was delivered whole ({} of {} bytes)",
        get.body.len(),
        data.len()
    );
    assert!(
        get.body.len() > 3 * MIB,
        "cut before the bytes up to its last chunk: {}",
        get.summary()
    );
    assert_eq!(
        get.body[..3 * MIB],
        data[..3 * MIB],
        "the bytes before the flip are the block's"
    );
    assert!(
        eventually(Duration::from_secs(10), || block_dir_entries(server.volume(0), &hash)
            .iter()
            .any(|name| name.starts_with(&format!("{hash}.corrupt.")))),
        "not quarantined: {:?}",
        block_dir_entries(server.volume(0), &hash)
    );
    assert_eq!(server.get(&locator).status, 404, "no good copy left");
    // A fresh PUT repairs it, and the server serves it whole.
    let again = server.put_block(&data);
    assert_eq!(md5_hex(&server.get(&again).body), hash);
}

#[test]
fn clients_gone_mid_get_stop_their_hash_and_leave_no_buffer_held() {
    // Past its first chunk a GET's copy is read and hashed by a task of its own; a client
    // that reads a little of a big block and hangs up must end the request, its task (no
    // hashing on for nobody) and its buffer lease, and the server goes on serving.
    let server = ServerBuilder::new().arg("--workers").arg("1").start();
    let data = test_bytes(37, 64 * MIB);
    // Written straight to the volume: a PUT would hash it, and leave its body buffer as a
    // spare held from the budget; both counts below must start from the GETs alone.
    write_block_file(server.volume(0), &md5_hex(&data), &data);
    let locator = signed_locator_for(&data);
    let metric = |name: &str| server.metric_values().get(name).copied().unwrap_or(f64::NAN);
    let hashed_before = metric("keepring_md5_bytes_total");
    let abandoned = 4;
    for _ in 0..abandoned {
        let mut conn = server.conn();
        let request =
            format!("GET /{locator} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n");
        conn.write_raw(request.as_bytes()).expect("send GET");
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received = 0;
        while received < MIB {
            match conn.read_raw(&mut buffer, Duration::from_secs(10)) {
                Ok(0) | Err(_) => break,
                Ok(read) => received += read,
            }
        }
        assert!(received >= MIB, "the body did not start: {received} bytes");
    } // each connection dropped with most of its block unread
    assert!(
        eventually(Duration::from_secs(10), || metric("keepring_bufferpool_inuse_bytes")
            == 0.0),
        "buffers still held after the clients left: {} bytes",
        metric("keepring_bufferpool_inuse_bytes")
    );
    // Workers publish their counts once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let hashed = metric("keepring_md5_bytes_total") - hashed_before;
    assert!(
        hashed < (abandoned * data.len() / 2) as f64,
        "{hashed} bytes hashed for {abandoned} GETs abandoned after 1 MiB of 64: their hashing went on"
    );
    let get = server.get(&locator);
    assert_eq!(get.status, 200, "{}", get.summary());
    assert!(get.body == data, "wrong bytes after the hang-ups: {}", get.summary());
}

#[test]
fn corrupt_copy_on_one_volume_is_skipped_for_a_good_copy_on_another() {
    let builder = ServerBuilder::new().volumes(2);
    // Two blocks, each corrupt on a different volume, so whichever volume the server tries
    // first holds the corrupt copy of one of them.
    let blocks = [test_bytes(9, 2000), test_bytes(10, 2000)];
    for (index, data) in blocks.iter().enumerate() {
        let hash = md5_hex(data);
        write_block_file(builder.volume(index), &hash, &corrupted(data));
        write_block_file(builder.volume(1 - index), &hash, data);
    }
    let server = builder.start();
    for data in &blocks {
        let get = server.get(&signed_locator_for(data));
        assert_eq!(get.status, 200, "{}", get.summary());
        assert!(get.complete);
        assert_eq!(get.body, *data, "wrong bytes served");
        let head = server.request(Request::head(&format!("/{}", signed_locator_for(data))).token(USER_TOKEN));
        assert_eq!(head.status, 200, "{}", head.summary());
    }
}

#[test]
fn put_over_corrupt_stored_copy_rewrites_it() {
    let server = TestServer::start();
    let data = test_bytes(11, 4000);
    let hash = md5_hex(&data);
    let locator = server.put_block(&data);
    let path = block_path(server.volume(0), &hash);
    std::fs::write(&path, corrupted(&data)).expect("corrupt");

    let put = server.put(&data);
    assert_eq!(put.status, 200, "{}", put.summary());
    assert_eq!(std::fs::read(&path).expect("block file"), data, "not repaired");
    assert_only_block_file(server.volume(0), &hash);
    let get = server.get(&locator);
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data);
}

#[test]
fn blocks_written_by_another_keepstore_are_served() {
    let builder = ServerBuilder::new();
    let data = test_bytes(12, 777);
    write_block_file(builder.volume(0), &md5_hex(&data), &data);
    let server = builder.start();
    let get = server.get(&signed_locator_for(&data));
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data);
}

#[test]
fn missing_volume_directories_are_created_with_a_uuid_file() {
    let server = ServerBuilder::new().volumes(2).start();
    for volume in server.volumes() {
        assert!(volume.is_dir(), "{} not created", volume.display());
        let uuid = std::fs::read_to_string(volume.join(VOLUME_UUID_FILE)).expect("uuid file");
        assert!(is_volume_uuid(uuid.trim()), "bad uuid {uuid:?}");
    }
}

#[test]
fn volume_uuid_survives_a_restart() {
    let volumes = tempfile::tempdir().expect("temp dir");
    let paths = vec![volumes.path().join("a"), volumes.path().join("b")];
    let read_uuids = || -> Vec<String> {
        paths
            .iter()
            .map(|path| {
                std::fs::read_to_string(path.join(VOLUME_UUID_FILE))
                    .expect("uuid file")
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let first = ServerBuilder::new().volume_paths(paths.clone()).start();
    let uuids = read_uuids();
    assert_ne!(uuids[0], uuids[1], "volumes need distinct uuids");
    drop(first);
    let _second = ServerBuilder::new().volume_paths(paths.clone()).start();
    assert_eq!(read_uuids(), uuids);
}

#[test]
fn concurrent_puts_of_the_same_block_leave_one_good_file() {
    let server = TestServer::start();
    let data = test_bytes(13, 512 * 1024);
    let hash = md5_hex(&data);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8).map(|_| scope.spawn(|| server.put(&data))).collect();
        for worker in workers {
            let response = worker.join().expect("PUT thread");
            assert_eq!(response.status, 200, "{}", response.summary());
        }
    });
    assert_eq!(
        std::fs::read(block_path(server.volume(0), &hash)).expect("block file"),
        data
    );
    assert_only_block_file(server.volume(0), &hash);
}

#[test]
fn an_exhausted_buffer_budget_answers_503_after_a_bounded_wait_then_recovers() {
    let server = ServerBuilder::new().arg("--max-buffers").arg("1").start();
    let big = test_bytes(16, BLOCK_BYTES_MAX);
    let big_hash = md5_hex(&big);
    let put_head =
        |hash: &str| format!("PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {BLOCK_BYTES_MAX}\r\n\r\n");
    // A 64 MiB PUT whose body has started: it holds (almost) the whole budget until it ends.
    // 3 MiB sent: over the next 5 s its average stays above the rate below which a body
    // waiting for budget would cut it (BODY_RATE_BYTES_PER_SEC_MIN, 256 KiB/s).
    let sent = 3 * 1024 * 1024;
    let mut holder = server.conn();
    holder.write_raw(put_head(&big_hash).as_bytes()).expect("write head");
    holder.write_raw(&big[..sent]).expect("write some body");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A second 64 MiB PUT cannot get its buffer: it waits the bounded time, then 503.
    let other = test_bytes(17, BLOCK_BYTES_MAX);
    let mut waiter = server.conn();
    let started = std::time::Instant::now();
    waiter
        .write_raw(put_head(&md5_hex(&other)).as_bytes())
        .expect("write head");
    let refused = waiter.read_response("PUT").expect("an answer, not a hang");
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.summary());
    assert_eq!(
        refused.text().matches('\n').count(),
        1,
        "one line: {:?}",
        refused.text()
    );
    assert!(
        waited >= std::time::Duration::from_secs(4),
        "answered after {waited:?}, not after the wait"
    );
    // The holder finishes; the budget comes back and the refused block can be stored.
    holder.write_raw(&big[sent..]).expect("write the rest");
    let stored = holder.read_response("PUT").expect("big PUT answer");
    assert_eq!(stored.status, 200, "{}", stored.summary());
    let retried = server.put(&other);
    assert_eq!(retried.status, 200, "{}", retried.summary());
}

#[test]
fn buffers_are_returned_after_successes_and_failures() {
    // With a single buffer, a request that leaked its buffer would make every later block
    // request fail (503 or hang).
    let server = ServerBuilder::new().arg("--max-buffers").arg("1").start();
    let data = test_bytes(14, 200_000);
    let hash = md5_hex(&data);
    let locator = server.put_block(&data);
    for round in 0..3 {
        let get = server.get(&locator);
        assert_eq!(get.status, 200, "round {round}: {}", get.summary());
        assert_eq!(get.body, data);
        let missing = server.get(&signed_locator_for(b"absent"));
        assert_eq!(missing.status, 404, "round {round}: {}", missing.summary());
        let wrong = server.request(Request::put("/00000000000000000000000000000000", &data));
        assert_eq!(wrong.status, 400, "round {round}: {}", wrong.summary());
        {
            let mut conn = server.conn();
            let head = format!(
                "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
                data.len()
            );
            conn.write_raw(head.as_bytes()).expect("write head");
            conn.write_raw(&data[..1000]).expect("write some body");
        } // hang up mid-body
        let put = server.put(&data);
        assert_eq!(put.status, 200, "round {round}: {}", put.summary());
    }
    let get = server.get(&locator);
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data);
}

#[test]
fn trickling_bodies_give_way_to_an_honest_put_when_the_budget_runs_out() {
    // Two uploads announce 64 MiB, send three bytes and stall: with --max-buffers 2 they
    // hold the whole budget. An honest 64 MiB PUT must not wait them out (it used to get
    // 503 after 5 s, for as long as they trickled): the slowest is cut with 408.
    let server = ServerBuilder::new()
        .without_signing_key()
        .arg("--max-buffers")
        .arg("2")
        .start();
    let big = 64 * 1024 * 1024;
    let mut tricklers: Vec<crate::support::client::Conn> = (0u8..2)
        .map(|seed| {
            let mut conn = server.conn();
            let head = format!(
                "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {big}\r\n\r\n",
                md5_hex(&[seed])
            );
            conn.write_raw(head.as_bytes()).expect("head");
            conn.write_raw(b"abc").expect("three bytes");
            conn
        })
        .collect();
    // Older than the age a body must reach before it can be judged too slow.
    std::thread::sleep(Duration::from_millis(2500));
    let data = test_bytes(77, big);
    let started = std::time::Instant::now();
    let response = server.put(&data);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "the honest PUT waited {:?}",
        started.elapsed()
    );
    let mut cut = 0;
    for conn in &mut tricklers {
        conn.stream()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        if let Ok(answer) = conn.read_response("PUT") {
            assert_eq!(answer.status, 408, "{}", answer.summary());
            assert!(answer.text().starts_with("request body too slow"), "{}", answer.text());
            cut += 1;
        }
    }
    assert_eq!(cut, 1, "exactly the one needed gives way");
    let stored = server.get(&format!("{}+{big}", md5_hex(&data)));
    assert_eq!(stored.status, 200);
}

/// Issue 16: every MD5 kernel the CPU has (forced with `KEEPRING_MD5_KERNEL`) stores and
/// serves blocks of ragged sizes from many clients at once, checks every byte (a corrupt
/// copy is 502, a body that does not match its locator 400 naming its real MD5), and a kernel the CPU lacks
/// or a name that is none refuses to start with one line.
#[test]
fn every_md5_kernel_stores_serves_and_checks_blocks_under_concurrency() {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|word| word == flag);
    let kernels = [
        ("scalar", true),
        ("avx2", has("avx2")),
        ("avx512", has("avx512f") && has("avx512vl")),
    ];
    for (kernel, available) in kernels {
        if !available {
            let output = std::process::Command::new(crate::support::server::binary_path())
                .args(["--listen", "127.0.0.1:0", "--volume", "/nonexistent-keepring-test"])
                .env("KEEPRING_MD5_KERNEL", kernel)
                .output()
                .expect("run keepring");
            assert_eq!(output.status.code(), Some(2), "{kernel} on a CPU without it");
            eprintln!("[{kernel}] not on this CPU: refused at start, as it should");
            continue;
        }
        let server = ServerBuilder::new()
            .arg("--workers")
            .arg("1")
            .env("KEEPRING_MD5_KERNEL", kernel)
            .start();
        assert!(server
            .log
            .wait_for(Duration::from_secs(5), |line| line
                .contains("MD5 hashing in SIMD lanes")
                && line.contains(kernel))
            .is_some());
        let lanes = match kernel {
            "avx512" => 16,
            "avx2" => 8,
            _ => 1,
        };
        let metrics = server.request(Request::get("/metrics")).text();
        let series = format!("keepring_md5_lanes{{kernel=\"{kernel}\"}} {lanes}\n");
        assert!(metrics.contains(&series), "[{kernel}] no {series:?} in /metrics");
        let sizes = [0, 1, 55, 56, 64, 4096, 65_537, MIB + 3, 3 * MIB - 1];
        let blocks: Vec<Vec<u8>> = (0..24)
            .map(|i| test_bytes(100 + i as u64, sizes[i % sizes.len()]))
            .collect();
        let locators: Vec<String> = std::thread::scope(|scope| {
            let puts: Vec<_> = blocks
                .iter()
                .map(|data| scope.spawn(|| server.put_block(data)))
                .collect();
            puts.into_iter().map(|put| put.join().expect("PUT thread")).collect()
        });
        let server_ref = &server;
        std::thread::scope(|scope| {
            for (locator, data) in locators.iter().zip(&blocks) {
                let server = server_ref;
                scope.spawn(move || {
                    let get = server.get(locator);
                    assert_eq!(get.status, 200, "[{kernel}] {}", get.summary());
                    assert!(get.body == *data, "[{kernel}] {locator} came back different");
                });
            }
        });
        // Every byte went through the core's hasher twice (its PUT, its GET); the worker
        // copies the hasher's totals into /metrics every second.
        let stored_bytes: u64 = blocks.iter().map(|data| data.len() as u64).sum();
        let counted = |name: &str| crate::ops::metrics(&server).get(name).copied().unwrap_or(0.0) as u64;
        eventually(Duration::from_secs(5), || {
            counted("keepring_md5_bytes_total") >= 2 * stored_bytes
        });
        assert_eq!(
            counted("keepring_md5_bytes_total"),
            2 * stored_bytes,
            "[{kernel}] bytes hashed"
        );
        let (batches, chunks) = (
            counted("keepring_md5_batches_total"),
            counted("keepring_md5_chunks_total"),
        );
        assert!(
            batches > 0 && chunks >= batches,
            "[{kernel}] {batches} batches, {chunks} chunks"
        );
        // The rounds hashed each GET's blocks with its padding (the hasher finishes a GET's
        // digest) and each PUT body's whole blocks (its last partial block and padding are
        // hashed by the request itself), each once; SIMD rounds never hash more than their
        // room, and a SIMD round has at least 2 streams in at most 32 lanes; the scalar
        // kernel has no lanes.
        let (in_lanes, alone, room) = (
            counted("keepring_md5_round_bytes_total{path=\"lanes\"}"),
            counted("keepring_md5_round_bytes_total{path=\"single\"}"),
            counted("keepring_md5_round_room_bytes_total"),
        );
        let rounded: u64 = blocks
            .iter()
            .map(|data| data.len() as u64)
            .map(|length| length / 64 * 64 + (length + 9).div_ceil(64) * 64)
            .sum();
        assert_eq!(in_lanes + alone, rounded, "[{kernel}] bytes through the rounds");
        assert!(
            in_lanes <= room && room <= 16 * in_lanes,
            "[{kernel}] {in_lanes} bytes in lanes with {room} of room"
        );
        if kernel == "scalar" {
            assert_eq!((in_lanes, room), (0, 0), "[{kernel}] no lanes");
        }
        let wrong = server.request(Request::put(&format!("/{}", md5_hex(b"other")), b"not that block"));
        assert_eq!(wrong.status, 400, "[{kernel}] {}", wrong.summary());
        assert!(
            wrong.text().contains(&md5_hex(b"not that block")),
            "[{kernel}] the computed hash"
        );
        let (data, locator) = (&blocks[4], &locators[4]);
        std::fs::write(block_path(server.volume(0), &md5_hex(data)), corrupted(data)).expect("corrupt");
        assert_eq!(server.get(locator).status, 502, "[{kernel}] a corrupt copy");
    }
    let output = std::process::Command::new(crate::support::server::binary_path())
        .args(["--listen", "127.0.0.1:0", "--volume", "/nonexistent-keepring-test"])
        .env("KEEPRING_MD5_KERNEL", "sse9")
        .output()
        .expect("run keepring");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KEEPRING_MD5_KERNEL"), "{stderr}");
}

/// Issue 14 (its first part): a GET that meets a copy failing its MD5 check serves the good
/// copy on the other volume and renames the bad one to `<hash>.corrupt.<secs>`, same bytes,
/// so `/index` no longer lists it; the good copy stays, and the GET after is served too.
#[test]
fn a_copy_failing_its_md5_on_a_get_is_quarantined_and_leaves_the_index() {
    let server = ServerBuilder::new().volumes(2).start();
    let data = test_bytes(21, 3000);
    let hash = md5_hex(&data);
    // The corrupt copy goes where the server looks first: placement's order, lowest
    // md5(hash + the volume UUID without its first 12 characters).
    let weight = |index: usize| {
        let uuid = std::fs::read_to_string(server.volume(index).join("keepring-volume-uuid")).expect("volume uuid");
        let uuid = uuid.trim();
        Md5::digest(format!("{hash}{}", &uuid[12..]).as_bytes())
    };
    let (first, second) = if weight(0) < weight(1) { (0, 1) } else { (1, 0) };
    write_block_file(server.volume(first), &hash, &corrupted(&data));
    write_block_file(server.volume(second), &hash, &data);
    let get = server.get(&signed_locator_for(&data));
    assert_eq!(get.status, 200, "{}", get.summary());
    assert_eq!(get.body, data, "wrong bytes served");
    let block_dir = server.volume(first).join(&hash[..3]);
    let aside = || -> Vec<String> {
        block_dir_entries(server.volume(first), &hash)
            .into_iter()
            .filter(|name| name.starts_with(&format!("{hash}.corrupt.")))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || !aside().is_empty()),
        "not quarantined: {:?}",
        block_dir_entries(server.volume(first), &hash)
    );
    assert_eq!(aside().len(), 1);
    assert_eq!(
        std::fs::read(block_dir.join(&aside()[0])).expect("kept"),
        corrupted(&data),
        "kept with its bytes"
    );
    assert_eq!(
        server.volumes_holding(&hash),
        [second],
        "the good copy stays, the bad one left its name"
    );
    let index_text = server.request(Request::get("/index").token(ROOT_TOKEN)).text();
    assert_eq!(
        index_text.lines().filter(|line| line.starts_with(&hash)).count(),
        1,
        "only the good copy is listed:\n{index_text}"
    );
    assert!(server
        .log
        .wait_for(Duration::from_secs(5), |line| line.contains("quarantined")
            && line.contains(&hash))
        .is_some());
    assert_eq!(server.get(&signed_locator_for(&data)).body, data);
    // Listed for the operator on its volume (root token only), not on the other.
    let uuid_of = |index: usize| {
        std::fs::read_to_string(server.volume(index).join("keepring-volume-uuid"))
            .expect("volume uuid")
            .trim()
            .to_string()
    };
    let listing = |index: usize, token: &str| {
        server.request(Request::get(&format!("/mounts/{}/quarantine", uuid_of(index))).token(token))
    };
    let secs = aside()[0].rsplit('.').next().expect("secs").to_string();
    let listed = listing(first, ROOT_TOKEN);
    assert_eq!(listed.status, 200, "{}", listed.summary());
    assert_eq!(listed.text(), format!("{hash}+{} {secs}\n", data.len()));
    assert_eq!(listing(second, ROOT_TOKEN).text(), "");
    assert_ne!(listing(first, USER_TOKEN).status, 200, "root only");
}

/// Pages of the file at `path` in the page cache, and whether the file lives on tmpfs
/// (where every page is memory, so "cached").
fn cached_pages(path: &std::path::Path) -> (u64, bool) {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let file = std::fs::File::open(path).expect("open block");
    let pages = keepring::volume::page_cache::cached_pages(file.as_raw_fd()).expect("cachestat (Linux 6.5+)");
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statfs fills the struct it is given.
    let tmpfs = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    };
    (pages, tmpfs)
}

#[test]
fn a_big_put_is_stored_whole_and_leaves_the_page_cache_alone() {
    let server = TestServer::start();
    // Over one 16 MiB direct write, ending in a partial page, sent in odd-sized pieces.
    let data = test_bytes(4242, 20 * MIB + 1234);
    let hash = md5_hex(&data);
    let mut conn = server.conn();
    let head = format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    conn.write_raw(head.as_bytes()).expect("write head");
    for piece in data.chunks(300_007) {
        conn.write_raw(piece).expect("write body piece");
    }
    let put = conn.read_response("PUT").expect("PUT response");
    assert_eq!(put.status, 200, "{}", put.summary());
    let path = block_path(server.volume(0), &hash);
    let (cached, tmpfs) = cached_pages(&path);
    if !tmpfs {
        // Written past the cache (O_DIRECT) but for the last, partial page.
        assert!(cached <= 1, "{cached} pages of the stored block are in the page cache");
    }
    assert!(std::fs::read(&path).expect("read block") == data, "stored bytes differ");
    let locator = put.text().trim_end().to_string();
    let get = server.request(Request::get(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(get.status, 200, "{}", get.summary());
    assert!(get.body == data, "GET returned other bytes");
}
