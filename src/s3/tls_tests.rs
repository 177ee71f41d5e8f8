//! The client over https against the real test store: a TLS terminator made here (rustls
//! with a self-signed certificate, `tls::testing`) relays bytes to Garage's plain
//! endpoint, so requests, signatures and answers are Garage's own and only the
//! transport differs. With `tls_insecure` the self-signed certificate is accepted and
//! everything works as over http, on one keep-alive connection; without it the
//! handshake is refused and nothing reaches the store. A terminator that never answers
//! the handshake is a timeout within the connect timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::testing::{test_store, unique_prefix};
use super::*;

/// How long each relay socket read waits before the relay looks the other way.
const RELAY_POLL_MS: u64 = 2;

/// A TLS terminator on 127.0.0.1 in front of `upstream`; counts the connections it took.
struct TlsFront {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn tls_front(upstream: SocketAddr) -> TlsFront {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let config = crate::tls::testing::self_signed_server();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let config = Arc::clone(&config);
            std::thread::spawn(move || relay(client, upstream, config));
        }
    });
    TlsFront { address, accepted }
}

fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Decrypt what the client sends to the store, encrypt what the store answers, until
/// either side closes (or the handshake fails).
fn relay(client: TcpStream, upstream: SocketAddr, config: Arc<ServerConfig>) {
    let Ok(mut store) = TcpStream::connect(upstream) else {
        return;
    };
    let poll = Some(Duration::from_millis(RELAY_POLL_MS));
    if client.set_read_timeout(poll).is_err() || store.set_read_timeout(poll).is_err() {
        return;
    }
    let Ok(connection) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(connection, client);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match tls.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                if store.write_all(&buffer[..count]).is_err() {
                    return;
                }
            }
            Err(error) if would_block(&error) => {}
            Err(_) => return,
        }
        match store.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                let mut sent = 0;
                while sent < count {
                    match tls.write(&buffer[sent..count]) {
                        Ok(written) => sent += written,
                        Err(error) if would_block(&error) => {}
                        Err(_) => return,
                    }
                }
                while tls.conn.wants_write() {
                    match tls.conn.write_tls(&mut tls.sock) {
                        Ok(_) => {}
                        Err(error) if would_block(&error) => {}
                        Err(_) => return,
                    }
                }
            }
            Err(error) if would_block(&error) => {}
            Err(_) => return,
        }
    }
}

/// The test store's config, sent through `front` over https.
fn https_config(front: &TlsFront, tls_insecure: bool) -> ClientConfig {
    ClientConfig {
        endpoint: format!("https://{}", front.address),
        tls_insecure,
        ..test_store().client_config()
    }
}

fn store_address() -> SocketAddr {
    let endpoint = test_store().endpoint;
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    authority
        .to_socket_addrs()
        .expect("store address")
        .next()
        .expect("an address")
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

#[test]
fn https_with_tls_insecure_puts_gets_lists_and_deletes_on_one_connection() {
    let front = tls_front(store_address());
    let client = Client::new(https_config(&front, true)).expect("https config");
    let prefix = unique_prefix("https");
    // Many records each way, and more than one send buffer of plaintext.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 77)
        .map(|index| (index * 31 % 251) as u8)
        .collect();
    tokio_uring::start(async {
        let key = format!("{prefix}big");
        let (result, returned) = client.put(&key, big.clone(), Some(md5_of(&big))).await;
        result.expect("put over https");
        assert_eq!(returned.len(), big.len(), "the buffer comes back");
        let (info, bytes) = client
            .get_all(&key, big.len() as u64)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(info.size, big.len() as u64);
        assert!(bytes == big, "the object came back different over https");
        let small = format!("{prefix}small");
        let (result, _) = client.put(&small, b"hello".to_vec(), None).await;
        result.expect("small put");
        assert!(client.head(&small).await.expect("head").is_some());
        let listed = client.list(&prefix, None, None, 10).await.expect("list");
        let keys: Vec<&str> = listed.objects.iter().map(|object| object.key.as_str()).collect();
        assert_eq!(keys, [key.as_str(), small.as_str()]);
        client.delete(&small).await.expect("delete");
        assert!(client.head(&small).await.expect("head").is_none());
        assert_eq!(client.connections_opened(), 1, "one keep-alive TLS connection");
        assert_eq!(client.idle_connections(), 1);

        // The store closing an idle TLS connection: retried once on a new handshake.
        assert_eq!(connection::shut_idle(&client.inner.endpoint.pool_key), 1);
        assert!(client
            .head(&key)
            .await
            .expect("head after a stale connection")
            .is_some());
        assert_eq!(client.connections_opened(), 2);
    });
    assert_eq!(
        front.accepted.load(Ordering::SeqCst),
        2,
        "the terminator saw the same two"
    );
}

#[test]
fn https_without_tls_insecure_refuses_a_self_signed_certificate_and_stores_nothing() {
    let front = tls_front(store_address());
    let client = Client::new(https_config(&front, false)).expect("https config");
    let plain = Client::new(test_store().client_config()).expect("http config");
    let key = format!("{}refused", unique_prefix("https"));
    tokio_uring::start(async {
        let (result, returned) = client.put(&key, b"never stored".to_vec(), None).await;
        let error = result.expect_err("an untrusted certificate");
        assert_eq!(returned, b"never stored");
        let reason = error.to_string();
        assert!(
            reason.contains("TLS handshake: invalid peer certificate: UnknownIssuer"),
            "{reason}"
        );
        assert!(!reason.contains('\n'));
        assert_eq!(client.idle_connections(), 0);
        assert!(
            plain.head(&key).await.expect("head over http").is_none(),
            "nothing stored"
        );
    });
}

#[test]
fn a_handshake_that_never_ends_times_out_within_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = silent.local_addr().expect("address");
    let holder = std::thread::spawn(move || {
        // Accept and say nothing until the client gives up.
        let (mut socket, _) = silent.accept().expect("accept");
        let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = [0u8; 4096];
        while matches!(socket.read(&mut sink), Ok(count) if count > 0) {}
    });
    let client = Client::new(ClientConfig {
        endpoint: format!("https://{address}"),
        bucket: "b".into(),
        use_path_style: true,
        connect_timeout: Duration::from_millis(300),
        tls_insecure: true,
        ..ClientConfig::default()
    })
    .expect("config");
    tokio_uring::start(async {
        let started = Instant::now();
        let error = client.head("k").await.expect_err("times out");
        let elapsed = started.elapsed();
        assert!(matches!(error, S3Error::Timeout), "{error}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    });
    let _ = holder.join();
}
