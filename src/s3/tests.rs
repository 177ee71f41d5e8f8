//! The client against a real S3 store (Garage, `testing::test_store`), and its timeouts
//! against 127.0.0.1 sockets that never answer. Each test writes under its own key
//! prefix, so they run in parallel on one bucket.

use std::cell::Cell;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::testing::{test_store, unique_prefix};
use super::*;

fn client() -> Client {
    Client::new(test_store().client_config()).expect("test store config is valid")
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Deterministic bytes that differ at every offset of a 64 MiB object.
fn pattern(length: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[test]
fn put_then_get_returns_the_bytes_small_and_empty() {
    let client = client();
    let prefix = unique_prefix("roundtrip");
    tokio_uring::start(async {
        let key = format!("{prefix}small");
        let body = b"hello, keep".to_vec();
        let (result, returned) = client.put(&key, body.clone(), Some(md5_of(&body))).await;
        result.expect("put");
        assert_eq!(returned, body, "the buffer comes back");
        let (info, bytes) = client.get_all(&key, 1024).await.expect("get").expect("present");
        assert_eq!(bytes, body);
        assert_eq!(info.size, body.len() as u64);
        assert_eq!(info.etag, hex(&md5_of(&body)));
        let head = client.head(&key).await.expect("head").expect("present");
        assert_eq!(head, info);

        // keepstore writes empty recent/<hash> markers.
        let marker = format!("{prefix}recent/empty");
        let (result, _) = client.put(&marker, Vec::new(), Some(md5_of(b""))).await;
        result.expect("empty put");
        let (info, bytes) = client.get_all(&marker, 1024).await.expect("get").expect("present");
        assert_eq!((info.size, bytes.len()), (0, 0));
        let (result, _) = client.put(&marker, Vec::new(), None).await;
        result.expect("empty put without Content-MD5");
        assert!(matches!(
            client.get_all(&key, 3).await,
            Err(S3Error::TooLarge { size: 11, max: 3 })
        ));
    });
}

#[test]
fn a_64_mib_object_streams_back_in_chunks() {
    let client = client();
    let key = format!("{}block", unique_prefix("big"));
    let body = pattern(64 * 1024 * 1024, 7);
    let expected_md5 = md5_of(&body);
    tokio_uring::start(async {
        let (result, body) = client.put(&key, body, Some(expected_md5)).await;
        result.expect("put 64 MiB");
        let mut object = client.get(&key).await.expect("get").expect("present");
        assert_eq!(object.info.size, body.len() as u64);
        let mut offset = 0;
        let mut reads = 0;
        let mut chunk = Vec::with_capacity(1024 * 1024);
        loop {
            chunk.clear();
            let (result, returned) = object.read(chunk).await;
            chunk = returned;
            let count = result.expect("read");
            if count == 0 {
                break;
            }
            assert_eq!(chunk[..], body[offset..offset + count], "bytes at offset {offset}");
            offset += count;
            reads += 1;
        }
        assert_eq!(offset, body.len());
        assert_eq!(object.remaining(), 0);
        assert!(reads >= 64, "read in chunks of at most 1 MiB ({reads} reads)");
        assert_eq!(client.idle_connections(), 1, "the connection went back to the pool");
    });
}

#[test]
fn a_body_not_matching_its_content_md5_is_refused_and_not_stored() {
    let client = client();
    let key = format!("{}bad", unique_prefix("md5"));
    tokio_uring::start(async {
        let (result, _) = client
            .put(&key, b"the real bytes".to_vec(), Some(md5_of(b"other bytes")))
            .await;
        let error = result.expect_err("a wrong Content-MD5 is refused");
        assert_eq!(error.code(), Some("BadDigest"), "{error}");
        assert!(matches!(error, S3Error::Store { status: 400, .. }), "{error}");
        assert_eq!(client.head(&key).await.expect("head"), None);
    });
}

#[test]
fn a_missing_object_is_none_for_head_and_get() {
    let client = client();
    let key = format!("{}nothing", unique_prefix("missing"));
    tokio_uring::start(async {
        assert_eq!(client.head(&key).await.expect("head"), None);
        assert!(client.get(&key).await.expect("get").is_none());
        assert!(client.get_all(&key, 10).await.expect("get_all").is_none());
        assert!(matches!(
            client.copy(&key, &format!("{key}-copy")).await,
            Err(S3Error::NotFound)
        ));
        // Both missing-object answers left the connection reusable.
        assert_eq!(client.connections_opened(), 1);
    });
}

#[test]
fn a_missing_bucket_is_a_store_error_not_a_missing_object() {
    let mut config = test_store().client_config();
    config.bucket = "keepring-no-such-bucket".into();
    let client = Client::new(config).expect("config");
    tokio_uring::start(async {
        let error = client.get("anything").await.err().expect("an error");
        assert!(matches!(error, S3Error::Store { status: 404, .. }), "{error}");
        assert_eq!(error.code(), Some("NoSuchBucket"), "{error}");
    });
}

#[test]
fn delete_removes_the_object() {
    let client = client();
    let key = format!("{}gone", unique_prefix("delete"));
    tokio_uring::start(async {
        let (result, _) = client.put(&key, b"x".to_vec(), None).await;
        result.expect("put");
        client.delete(&key).await.expect("delete");
        assert_eq!(client.head(&key).await.expect("head"), None);
        client.delete(&key).await.expect("deleting a missing key succeeds too");
    });
}

#[test]
fn copy_keeps_the_bytes_and_gives_a_new_last_modified() {
    let client = client();
    let prefix = unique_prefix("copy");
    let (from, to) = (format!("{prefix}from"), format!("{prefix}trash/to"));
    let body = pattern(100_000, 3);
    tokio_uring::start(async {
        let (result, body) = client.put(&from, body, Some(md5_of(&pattern(100_000, 3)))).await;
        result.expect("put");
        let original = client.head(&from).await.expect("head").expect("present");
        // Last-Modified has one-second resolution: let the clock pass a second.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let copied_at = client.copy(&from, &to).await.expect("copy").expect("a LastModified");
        assert!(
            copied_at > original.last_modified,
            "{copied_at:?} vs {:?}",
            original.last_modified
        );
        let (info, bytes) = client.get_all(&to, 1 << 20).await.expect("get").expect("present");
        assert_eq!(bytes, body);
        assert!(info.last_modified > original.last_modified);
        assert_eq!(info.etag, original.etag);
    });
}

#[test]
fn list_pages_through_keys_in_order() {
    let client = client();
    let prefix = unique_prefix("list");
    tokio_uring::start(async {
        let mut keys: Vec<String> = (0..25).map(|index| format!("{prefix}{index:03}")).collect();
        for key in &keys {
            let (result, _) = client.put(key, key.as_bytes().to_vec(), None).await;
            result.expect("put");
        }
        keys.sort();
        let mut listed = Vec::new();
        let mut pages = 0;
        let mut continuation: Option<String> = None;
        loop {
            let page = client
                .list(&prefix, None, continuation.as_deref(), 10)
                .await
                .expect("list");
            pages += 1;
            assert!(page.objects.len() <= 10);
            for object in &page.objects {
                assert_eq!(object.size, object.key.len() as u64);
            }
            listed.extend(page.objects.into_iter().map(|object| object.key));
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(listed, keys);

        let after = client
            .list(&prefix, Some(&keys[19]), None, 10)
            .await
            .expect("list after");
        let after_keys: Vec<&str> = after.objects.iter().map(|object| object.key.as_str()).collect();
        assert_eq!(after_keys, keys[20..].iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(after.next, None);
        let none = client
            .list(&format!("{prefix}zzz"), None, None, 10)
            .await
            .expect("empty");
        assert_eq!(
            none,
            ListPage {
                objects: vec![],
                next: None
            }
        );
    });
}

#[test]
fn sequential_requests_reuse_one_connection() {
    let client = client();
    let prefix = unique_prefix("keepalive");
    tokio_uring::start(async {
        for index in 0..10 {
            let key = format!("{prefix}{index}");
            let (result, _) = client.put(&key, vec![index as u8; 1000], None).await;
            result.expect("put");
            client.head(&key).await.expect("head").expect("present");
            client.get_all(&key, 1000).await.expect("get").expect("present");
            client.delete(&key).await.expect("delete");
        }
        client.list(&prefix, None, None, 10).await.expect("list");
        assert_eq!(client.connections_opened(), 1);
        assert_eq!(client.idle_connections(), 1);
    });
}

#[test]
fn a_closed_idle_connection_is_retried_once_on_a_new_one() {
    let client = client();
    let key = format!("{}k", unique_prefix("stale"));
    tokio_uring::start(async {
        let (result, _) = client.put(&key, b"v".to_vec(), None).await;
        result.expect("put");
        assert_eq!(connection::shut_idle(&client.inner.endpoint.pool_key), 1);
        let (result, returned) = client.put(&key, b"w".to_vec(), None).await;
        result.expect("put on a fresh connection after the idle one failed");
        assert_eq!(returned, b"w");
        assert_eq!(client.connections_opened(), 2);
        let (_, bytes) = client.get_all(&key, 10).await.expect("get").expect("present");
        assert_eq!(bytes, b"w");
    });
}

#[test]
fn connecting_to_a_closed_port_fails_at_once() {
    // Bind, learn the port, close: nothing listens there now.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("port")
        .port();
    let client = Client::new(ClientConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "b".into(),
        use_path_style: true,
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    })
    .expect("config");
    tokio_uring::start(async {
        let started = Instant::now();
        let error = client.head("k").await.expect_err("refused");
        assert!(
            matches!(&error, S3Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    });
}

/// A task that counts ticks while another waits: proof the core was not stalled.
fn ticker() -> (Rc<Cell<u32>>, tokio::task::JoinHandle<()>) {
    let ticks = Rc::new(Cell::new(0));
    let counter = ticks.clone();
    let handle = tokio_uring::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            counter.set(counter.get() + 1);
        }
    });
    (ticks, handle)
}

#[test]
fn a_store_that_accepts_and_never_answers_times_out_without_stalling_the_core() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    // Accept and hold the connections, never answering.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(3) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let client = Client::new(ClientConfig {
        endpoint: format!("http://{address}"),
        bucket: "b".into(),
        use_path_style: true,
        read_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    })
    .expect("config");
    tokio_uring::start(async {
        let (ticks, ticking) = ticker();
        let started = Instant::now();
        let error = client.get("k").await.err().expect("times out");
        let elapsed = started.elapsed();
        assert!(matches!(error, S3Error::Timeout), "{error}");
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(
            ticks.get() >= 10,
            "the core kept running other tasks ({} ticks)",
            ticks.get()
        );
        // A PUT's buffer comes back even from a timeout.
        let (result, returned) = client.put("k", vec![1; 1000], None).await;
        assert!(matches!(result, Err(S3Error::Timeout)));
        assert_eq!(returned.len(), 1000);
        // A body the store never reads: the socket buffers fill, the write stops making
        // progress and is cut; the buffer still comes back whole.
        let started = Instant::now();
        let (result, returned) = client.put("k", vec![2; 16 * 1024 * 1024], None).await;
        assert!(matches!(result, Err(S3Error::Timeout)), "{result:?}");
        assert_eq!(returned.len(), 16 * 1024 * 1024);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(client.idle_connections(), 0, "a timed-out connection is not kept");
        ticking.abort();
    });
    let _ = holder.join();
}

#[test]
fn a_store_that_never_accepts_fails_within_the_connect_timeout() {
    // A listener with a backlog of one that never accepts: once its queue is full the
    // kernel drops further SYNs, so a connect hangs (on 127.0.0.1, no outside traffic).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().expect("address").into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let address = socket.local_addr().expect("address").as_socket().expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            fillers.push(stream);
        }
    }
    let client = Client::new(ClientConfig {
        endpoint: format!("http://{address}"),
        bucket: "b".into(),
        use_path_style: true,
        connect_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    })
    .expect("config");
    tokio_uring::start(async {
        let (ticks, ticking) = ticker();
        let started = Instant::now();
        let error = client.head("k").await.expect_err("times out");
        let elapsed = started.elapsed();
        assert!(matches!(error, S3Error::Timeout), "{error}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(
            ticks.get() >= 5,
            "the core kept running other tasks ({} ticks)",
            ticks.get()
        );
        ticking.abort();
    });
    drop(fillers);
}
