//! HTTPS (issue 13): an https InternalURL with `TLS.Certificate` / `TLS.Key`, or the
//! `--tls-certificate` / `--tls-key` flags, serves the same protocol over TLS (rustls in
//! the server, OpenSSL in these tests' client); a 64 MiB block leaves encrypted byte for
//! byte (the path that sends file pieces by sendfile over plain HTTP); an https URL
//! without a usable pair refuses to start; SIGHUP swaps the certificate for new
//! handshakes and keeps the old one when the new pair is bad; a drain closes TLS
//! connections with close_notify. Restarts under HTTPS load are in `restart.rs`.

use std::time::Duration;

use crate::support::client::{eventually, Request};
use crate::support::keep::*;
use crate::support::server::{ServerBuilder, TestServer};
use crate::support::tls::{served_certificate, TlsFixture};

const RELOAD_WITHIN: Duration = Duration::from_secs(10);

fn https_server(name: &str) -> (tempfile::TempDir, TlsFixture, TestServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFixture::new(dir.path(), name);
    let server = ServerBuilder::new().tls(&tls).start();
    (dir, tls, server)
}

#[test]
fn https_put_get_head_round_trip_on_one_keep_alive_connection() {
    let (_dir, tls, server) = https_server("round-trip");
    let data = test_bytes(130, 300 * 1024);
    let hash = md5_hex(&data);
    let mut conn = server.conn();
    let version = conn.tls().expect("a TLS connection").version_str().to_string();
    assert!(version == "TLSv1.3" || version == "TLSv1.2", "{version}");
    let put = conn.request(&Request::put(&format!("/{hash}"), &data).token(USER_TOKEN));
    assert_eq!(put.status, 200, "{}", put.summary());
    let locator = put.text().trim_end().to_string();
    assert!(locator.starts_with(&format!("{hash}+{}+A", data.len())), "{locator}");
    let get = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(get.status, 200, "{}", get.summary());
    assert!(get.body == data, "GET over TLS returned other bytes: {}", get.summary());
    let head = conn.request(&Request::head(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(head.status, 200, "{}", head.summary());
    assert_eq!(head.header("Content-Length"), Some(data.len().to_string().as_str()));
    assert!(head.body.is_empty());
    let unsigned = conn.request(&Request::get(&format!("/{hash}+{}", data.len())).token(USER_TOKEN));
    assert_eq!(
        unsigned.status,
        400,
        "errors answer over TLS too: {}",
        unsigned.summary()
    );
    assert_eq!(
        served_certificate(server.addr),
        tls.der,
        "the configured certificate is served"
    );
    // The block is on disk as over plain HTTP.
    assert_eq!(server.volumes_holding(&hash), vec![0]);
}

#[test]
fn https_serves_a_64_mib_block_byte_for_byte() {
    let (_dir, _tls, server) = https_server("big");
    let data = test_bytes(131, 64 * 1024 * 1024);
    let locator = server.put_block(&data);
    let mut conn = server.conn();
    for round in 0..2 {
        let get = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
        assert_eq!(get.status, 200, "round {round}: {}", get.status);
        assert!(get.complete, "round {round}: body cut short");
        assert_eq!(get.body.len(), data.len(), "round {round}");
        assert!(get.body == data, "round {round}: the 64 MiB body differs");
    }
}

#[test]
fn https_put_of_a_big_body_is_stored_byte_for_byte() {
    // Over TLS the plaintext of a body goes straight into the free end of its buffer while
    // the hasher and the direct writes read what arrived; a wrong hash is still refused.
    let (_dir, _tls, server) = https_server("big-put");
    let data = test_bytes(132, 40 * 1024 * 1024 + 4321);
    let hash = md5_hex(&data);
    let mut conn = server.conn();
    let put = conn.request(&Request::put(&format!("/{hash}"), &data).token(USER_TOKEN));
    assert_eq!(put.status, 200, "{}", put.summary());
    assert!(std::fs::read(block_path(server.volume(0), &hash)).unwrap() == data);
    let wrong = md5_hex(b"other bytes");
    let refused = conn.request(&Request::put(&format!("/{wrong}"), &data).token(USER_TOKEN));
    assert_eq!(refused.status, 400, "{}", refused.summary());
    assert!(!block_path(server.volume(0), &wrong).exists());
}

#[test]
fn plain_http_serves_beside_https_and_is_not_answered_on_the_https_port() {
    let (_dir, _tls, https) = https_server("beside");
    let plain = TestServer::start();
    let data = test_bytes(132, 4096);
    let locator = https.put_block(&data);
    let plain_locator = plain.put_block(&data);
    assert_eq!(plain.get(&plain_locator).body, data);
    // Plain HTTP to the TLS port gets no HTTP answer, and the port goes on serving TLS.
    let mut raw = crate::support::client::Conn::connect(https.addr);
    let _ = raw.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = raw.read_response("GET");
    assert!(
        answer.is_err(),
        "plain HTTP on the TLS port was answered: {:?}",
        answer.map(|response| response.summary())
    );
    assert_eq!(https.get(&locator).body, data);
}

#[test]
fn https_url_in_the_config_serves_tls_and_refuses_to_start_without_a_pair() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFixture::new(dir.path(), "config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let volume = dir.path().join("vol");
    std::fs::create_dir_all(&volume).expect("volume dir");
    let config = |tls_keys: &str| {
        format!(
            "Clusters:\n  zzzzz:\n    SystemRootToken: {ROOT_TOKEN}\n    Services:\n      Keepstore:\n        \
             InternalURLs:\n          \"https://127.0.0.1:{port}/\": {{}}\n    Collections:\n      \
             BlobSigningKey: {SIGNING_KEY}\n{tls_keys}    Volumes:\n      zzzzz-nyw5e-000000000000000:\n        \
             Driver: Directory\n        DriverParameters: {{Root: {}}}\n",
            volume.display()
        )
    };
    let without = dir.path().join("without.yml");
    std::fs::write(&without, config("")).expect("write config");
    let args = vec!["--config".to_string(), without.display().to_string()];
    crate::cli::assert_startup_error(&args, "TLS.Certificate and TLS.Key are not both set");
    let broken = dir.path().join("broken.yml");
    let missing = dir.path().join("missing.pem");
    std::fs::write(
        &broken,
        config(&format!(
            "    TLS:\n      Certificate: file://{}\n      Key: file://{}\n",
            missing.display(),
            tls.key.display()
        )),
    )
    .expect("write config");
    let args = vec!["--config".to_string(), broken.display().to_string()];
    crate::cli::assert_startup_error(&args, "missing.pem");
    let with = dir.path().join("with.yml");
    std::fs::write(
        &with,
        config(&format!(
            "    TLS:\n      Certificate: file://{}\n      Key: file://{}\n",
            tls.certificate.display(),
            tls.key.display()
        )),
    )
    .expect("write config");
    let server = ServerBuilder::new()
        .without_listen_flag()
        .arg("--config")
        .arg(&with.display().to_string())
        .tls_client(&tls)
        .start();
    assert_eq!(server.addr.port(), port);
    let data = test_bytes(133, 1000);
    let locator = server.put_block(&data);
    assert_eq!(server.get(&locator).body, data);
}

#[test]
fn tls_flags_with_an_unusable_pair_refuse_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = TlsFixture::new(dir.path(), "first");
    let second = TlsFixture::new(dir.path(), "second");
    let volume = dir.path().join("vol").display().to_string();
    let base = ["--listen", "127.0.0.1:0", "--volume", &volume].map(String::from);
    let mut mismatched = base.to_vec();
    mismatched.extend([
        "--tls-certificate".to_string(),
        first.certificate.display().to_string(),
        "--tls-key".to_string(),
        second.key.display().to_string(),
    ]);
    crate::cli::assert_startup_error(&mismatched, "unusable together");
    let mut garbage = base.to_vec();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    garbage.extend([
        "--tls-certificate".to_string(),
        not_pem.display().to_string(),
        "--tls-key".to_string(),
        first.key.display().to_string(),
    ]);
    crate::cli::assert_startup_error(&garbage, "not.pem");
}

#[test]
fn sighup_serves_a_renewed_certificate_to_new_handshakes_and_keeps_it_over_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = TlsFixture::new(dir.path(), "served");
    let renewed = TlsFixture::new(dir.path(), "renewed");
    let mut server = ServerBuilder::new().tls(&served).start();
    let data = test_bytes(134, 2000);
    let locator = server.put_block(&data);
    assert_eq!(served_certificate(server.addr), served.der);
    let mut before = server.conn();
    assert_eq!(
        before
            .request(&Request::get(&format!("/{locator}")).token(USER_TOKEN))
            .status,
        200
    );

    renewed.install_at(&served.certificate, &served.key);
    server.signal(libc::SIGHUP);
    let loaded = |server: &TestServer, count: usize| {
        crate::support::client::eventually(RELOAD_WITHIN, || {
            server
                .log
                .lines()
                .iter()
                .filter(|line| line.contains("TLS certificate loaded"))
                .count()
                >= count
        })
    };
    assert!(
        loaded(&server, 1),
        "no reload logged:\n{}",
        server.log.lines().join("\n")
    );
    assert_eq!(
        served_certificate(server.addr),
        renewed.der,
        "a new handshake gets the new pair"
    );
    // A connection made before the reload goes on as it was.
    assert_eq!(
        before
            .request(&Request::get(&format!("/{locator}")).token(USER_TOKEN))
            .status,
        200
    );

    std::fs::write(&served.certificate, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("break the file");
    server.signal(libc::SIGHUP);
    let kept = server
        .log
        .wait_for(RELOAD_WITHIN, |line| line.contains("TLS certificate not reloaded"));
    assert!(
        kept.is_some(),
        "a bad pair is logged:\n{}",
        server.log.lines().join("\n")
    );
    assert_eq!(served_certificate(server.addr), renewed.der, "the running pair stays");
    let mut conn = crate::support::client::Conn::connect_tls(server.addr, &renewed.connector);
    assert_eq!(
        conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN))
            .status,
        200
    );
}

#[test]
fn drain_closes_tls_connections_with_close_notify() {
    let (_dir, _tls, mut server) = https_server("drain");
    let data = test_bytes(135, 5000);
    let locator = server.put_block(&data);
    let get = Request::get(&format!("/{locator}")).token(USER_TOKEN);
    let mut idle = server.conn();
    assert_eq!(idle.request(&get).status, 200);
    let mut busy = server.conn();
    assert_eq!(busy.request(&get).status, 200);
    server.signal(libc::SIGTERM);
    assert!(
        server
            .log
            .wait_for(RELOAD_WITHIN, |line| line.contains("draining"))
            .is_some(),
        "no drain logged"
    );
    // Requests once the drain began are answered, the first after the worker's gate
    // opened (a moment after the log line) with `Connection: close`, then closed.
    let closed = crate::support::client::eventually(RELOAD_WITHIN, || {
        let answer = busy.request(&get);
        assert_eq!(answer.status, 200, "{}", answer.summary());
        answer.header("Connection") == Some("close")
    });
    assert!(closed, "no Connection: close while draining");
    let mut byte = [0u8; 1];
    for (what, conn) in [("after Connection: close", &mut busy), ("idle", &mut idle)] {
        match conn.read_raw(&mut byte, Duration::from_secs(5)) {
            Ok(0) => {}
            other => panic!("{what}: want a close_notify (a clean end), got {other:?}"),
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the drained server exits");
    assert_eq!(status.code(), Some(0));
}

/// How long a pull worker gets to fetch a block (or give up on it) in these tests.
const PULL_WITHIN: Duration = Duration::from_secs(20);

/// A pull list asking `puller` for `data` from `server` (its base URL).
fn pull_from(puller: &TestServer, server: &str, data: &[u8]) {
    let list = format!(
        r#"[{{"locator":"{}+{}","servers":["{server}"],"mount_uuid":""}}]"#,
        md5_hex(data),
        data.len()
    );
    let response = puller.request(Request::put("/pull", list.as_bytes()).token(ROOT_TOKEN));
    assert_eq!(response.status, 200, "{}", response.summary());
}

/// A cluster config that only sets `TLS.Insecure` (volumes, keys and the listen address
/// come from the test server's flags).
fn insecure_config(dir: &std::path::Path, insecure: bool) -> String {
    let path = dir.join(format!("insecure-{insecure}.yml"));
    let text = format!("Clusters:\n  zzzzz:\n    TLS:\n      Insecure: {insecure}\n");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn pull_from_an_https_peer_needs_tls_insecure_for_a_self_signed_certificate() {
    let (dir, _tls, source) = https_server("pull-source");
    let data = test_bytes(133, 200 * 1024);
    source.put_block(&data);
    let hash = md5_hex(&data);
    let peer = format!("https://{}/", source.addr);

    // keepstore's default, TLS.Insecure false: the certificate is checked against the
    // system's roots, which do not know it. Nothing is stored and the log says why.
    let checking = ServerBuilder::new()
        .arg("--config")
        .arg(&insecure_config(dir.path(), false))
        .start();
    pull_from(&checking, &peer, &data);
    let refused = checking.log.wait_for(PULL_WITHIN, |line| line.contains("pull failed"));
    let refused = refused.expect("a pull failed line");
    assert!(
        refused.contains(&hash) && refused.contains("TLS handshake: invalid peer certificate: UnknownIssuer"),
        "{refused}"
    );
    assert!(checking.volumes_holding(&hash).is_empty());

    // TLS.Insecure: true (a self-signed cluster): the block arrives, byte for byte.
    let trusting = ServerBuilder::new()
        .arg("--config")
        .arg(&insecure_config(dir.path(), true))
        .start();
    pull_from(&trusting, &peer, &data);
    assert!(
        eventually(PULL_WITHIN, || trusting.volumes_holding(&hash) == [0]),
        "not pulled; log:\n{}",
        trusting.log.lines().join("\n")
    );
    assert_eq!(
        std::fs::read(block_path(trusting.volume(0), &hash)).expect("block"),
        data
    );
}

#[test]
fn pull_from_an_https_peer_trusts_the_roots_ssl_cert_file_names() {
    // The system's trust store as Go reads it: SSL_CERT_FILE replaces the bundle, so a
    // cluster's own CA (here the self-signed certificate itself) is trusted without
    // TLS.Insecure, and the name (127.0.0.1, in the certificate) is checked.
    let (_dir, tls, source) = https_server("pull-roots");
    let data = test_bytes(134, 70 * 1024);
    source.put_block(&data);
    let hash = md5_hex(&data);
    let puller = ServerBuilder::new()
        .env("SSL_CERT_FILE", tls.certificate.to_str().expect("utf-8 path"))
        .start();
    pull_from(&puller, &format!("https://{}", source.addr), &data);
    assert!(
        eventually(PULL_WITHIN, || puller.volumes_holding(&hash) == [0]),
        "not pulled; log:\n{}",
        puller.log.lines().join("\n")
    );
}
