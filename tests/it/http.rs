//! HTTP-level behaviour: CORS on every response and OPTIONS (keep-protocol.md §3.6),
//! `X-Request-Id` (§8), keep-alive, pipelining, `Connection: close`, several workers, and
//! the per-request log line.

use std::time::Duration;

use crate::support::client::eventually;
use crate::support::*;

const DATA: &[u8] = b"hello keep\n";

fn assert_cors(response: &Response, what: &str) {
    for (name, value) in CORS_HEADERS {
        assert_eq!(
            response.header(name),
            Some(value),
            "{what}: header {name}: {}",
            response.summary()
        );
    }
}

fn is_generated_request_id(id: &str) -> bool {
    id.strip_prefix("req-").is_some_and(|rest| {
        rest.len() == 20
            && rest
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
    })
}

#[test]
fn options_on_any_path_is_200_with_cors_headers() {
    let server = TestServer::start();
    for target in [
        "/".to_string(),
        "/index".to_string(),
        format!("/{}+11", md5_hex(DATA)),
        "/no/such/thing".to_string(),
    ] {
        let response = server.request(Request::new("OPTIONS", &target));
        assert_eq!(response.status, 200, "OPTIONS {target}: {}", response.summary());
        assert!(response.body.is_empty(), "OPTIONS {target}: {}", response.summary());
        assert_cors(&response, &format!("OPTIONS {target}"));
    }
}

#[test]
fn cors_headers_are_on_success_and_error_responses() {
    let server = TestServer::start();
    let locator = server.put_block(DATA);
    let responses = [
        ("PUT", server.put(DATA)),
        ("GET 200", server.get(&locator)),
        ("GET 404", server.get(&signed_locator_for(b"missing"))),
        ("GET 400 route", server.request(Request::get("/xyz"))),
        ("GET 400 locator", server.get(&format!("{}++11", md5_hex(DATA)))),
        ("GET 401", server.request(Request::get(&format!("/{locator}")))),
        ("GET 405", server.get(&md5_hex(DATA))),
        ("index 401", server.request(Request::get("/index"))),
        ("index 200", server.request(Request::get("/index").token(ROOT_TOKEN))),
        (
            "PUT 400 hash",
            server.request(Request::put("/00000000000000000000000000000000", DATA)),
        ),
    ];
    for (what, response) in responses {
        assert_cors(&response, what);
    }
}

#[test]
fn route_miss_400_carries_nosniff_header() {
    let server = TestServer::start();
    let response = server.request(Request::get("/xyz"));
    assert_eq!(response.status, 400, "{}", response.summary());
    assert_eq!(response.text(), "Bad Request\n");
    assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"));
    assert!(response
        .header("Content-Type")
        .is_some_and(|value| value.starts_with("text/plain")));
}

#[test]
fn request_id_is_echoed() {
    let server = TestServer::start();
    let locator = server.put_block(DATA);
    for request in [
        Request::get(&format!("/{locator}")).token(USER_TOKEN),
        Request::get("/xyz"),
        Request::put(&format!("/{}", md5_hex(DATA)), DATA),
        Request::new("OPTIONS", "/"),
    ] {
        let what = format!("{} {}", request.method, request.target);
        let response = server.request(request.header("X-Request-Id", "req-mytestid0000000001"));
        assert_eq!(
            response.header("X-Request-Id"),
            Some("req-mytestid0000000001"),
            "{what}: {}",
            response.summary()
        );
    }
}

#[test]
fn request_id_is_generated_when_absent() {
    let server = TestServer::start();
    let mut seen = std::collections::BTreeSet::new();
    for target in ["/xyz", "/xyz", "/index"] {
        let response = server.request(Request::get(target));
        let id = response
            .header("X-Request-Id")
            .unwrap_or_else(|| panic!("no X-Request-Id: {}", response.summary()))
            .to_string();
        assert!(is_generated_request_id(&id), "bad generated id {id:?}");
        assert_eq!(response.header_count("X-Request-Id"), 1);
        seen.insert(id);
    }
    assert_eq!(seen.len(), 3, "generated ids should differ: {seen:?}");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start();
    let mut conn = server.conn();
    let put = conn.request(&Request::put(&format!("/{}", md5_hex(DATA)), DATA).token(USER_TOKEN));
    assert_eq!(put.status, 200, "{}", put.summary());
    let locator = put.text().trim_end().to_string();
    for round in 0..5 {
        let get = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
        assert_eq!(get.status, 200, "round {round}: {}", get.summary());
        assert_eq!(get.body, DATA);
        let missing = conn.request(&Request::get(&format!("/{}", signed_locator_for(b"nope"))).token(USER_TOKEN));
        assert_eq!(missing.status, 404, "round {round}: {}", missing.summary());
        let head = conn.request(&Request::head(&format!("/{locator}")).token(USER_TOKEN));
        assert_eq!(head.status, 200, "round {round}: {}", head.summary());
    }
    assert!(
        !conn.closed_by_server_within(Duration::from_millis(300)),
        "keep-alive connection closed by the server"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let first = test_bytes(40, 3000);
    let second = test_bytes(41, 70_000);
    let first_locator = server.put_block(&first);
    let second_locator = server.put_block(&second);
    let missing = signed_locator_for(b"not stored");

    let requests = [
        Request::get(&format!("/{first_locator}"))
            .token(USER_TOKEN)
            .header("X-Request-Id", "pipe-1"),
        Request::head(&format!("/{second_locator}"))
            .token(USER_TOKEN)
            .header("X-Request-Id", "pipe-2"),
        Request::get(&format!("/{missing}"))
            .token(USER_TOKEN)
            .header("X-Request-Id", "pipe-3"),
        Request::get(&format!("/{second_locator}"))
            .token(USER_TOKEN)
            .header("X-Request-Id", "pipe-4"),
    ];
    let mut bytes = Vec::new();
    for request in &requests {
        bytes.extend(request.to_bytes());
    }
    let mut conn = server.conn();
    conn.write_raw(&bytes).expect("write pipelined requests in one write");

    let responses: Vec<Response> = requests
        .iter()
        .map(|request| conn.read_response(&request.method).expect("pipelined response"))
        .collect();
    let ids: Vec<Option<&str>> = responses.iter().map(|r| r.header("X-Request-Id")).collect();
    assert_eq!(
        ids,
        vec![Some("pipe-1"), Some("pipe-2"), Some("pipe-3"), Some("pipe-4")],
        "responses out of order"
    );
    assert_eq!(responses[0].status, 200, "{}", responses[0].summary());
    assert_eq!(responses[0].body, first);
    assert_eq!(responses[1].status, 200, "{}", responses[1].summary());
    assert_eq!(responses[1].header("Content-Length"), Some("70000"));
    assert_eq!(responses[2].status, 404, "{}", responses[2].summary());
    assert_eq!(responses[3].status, 200, "{}", responses[3].summary());
    assert_eq!(responses[3].body, second);
}

#[test]
fn pipelined_puts_are_answered_in_order() {
    let server = TestServer::start();
    let blocks: Vec<Vec<u8>> = (0..3).map(|seed| test_bytes(50 + seed, 10_000)).collect();
    let mut bytes = Vec::new();
    for data in &blocks {
        bytes.extend(Request::put(&format!("/{}", md5_hex(data)), data).to_bytes());
    }
    let mut conn = server.conn();
    conn.write_raw(&bytes).expect("write pipelined PUTs");
    for data in &blocks {
        let response = conn.read_response("PUT").expect("PUT response");
        assert_eq!(response.status, 200, "{}", response.summary());
        assert_eq!(response.text(), format!("{}+{}\n", md5_hex(data), data.len()));
    }
}

#[test]
fn connection_close_request_is_answered_then_closed() {
    let server = TestServer::start();
    let locator = server.put_block(DATA);
    let mut conn = server.conn();
    let response = conn.request(
        &Request::get(&format!("/{locator}"))
            .token(USER_TOKEN)
            .header("Connection", "close"),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body, DATA);
    assert!(
        conn.closed_by_server_within(Duration::from_secs(5)),
        "the server kept a `Connection: close` connection open"
    );
}

#[test]
fn http10_keep_alive_is_announced_and_honoured_and_plain_http10_closes() {
    let server = TestServer::start();
    let mut conn = server.conn();
    let request = b"OPTIONS /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    for _ in 0..2 {
        conn.write_raw(request).expect("write HTTP/1.0 request");
        let response = conn.read_response("OPTIONS").expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("Connection"),
            Some("keep-alive"),
            "{}",
            response.summary()
        );
    }
    let mut plain = server.conn();
    plain.write_raw(b"OPTIONS /x HTTP/1.0\r\n\r\n").expect("write");
    assert_eq!(plain.read_response("OPTIONS").expect("response").status, 200);
    assert!(
        plain.closed_by_server_within(Duration::from_secs(5)),
        "HTTP/1.0 without keep-alive closes"
    );
}

#[test]
fn malformed_request_line_gets_400_and_server_keeps_serving() {
    let server = TestServer::start();
    let mut conn = server.conn();
    conn.write_raw(b"this is not http\r\n\r\n").expect("write garbage");
    match conn.read_response("GET") {
        Ok(response) => assert_eq!(response.status, 400, "{}", response.summary()),
        Err(error) => assert_eq!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "expected a 400 or a close, got {error}"
        ),
    }
    let response = server.request(Request::new("OPTIONS", "/"));
    assert_eq!(response.status, 200);
}

#[test]
fn two_workers_both_serve_requests() {
    let server = ServerBuilder::new().arg("--workers").arg("2").start();
    for _ in 0..64 {
        let response = server.request(Request::get("/_no_such_route"));
        assert_eq!(response.status, 400, "{}", response.summary());
    }
    let has_worker = |worker: &str| {
        server
            .log
            .wait_for(Duration::from_secs(5), |line| {
                line.contains("_no_such_route") && line.contains(worker)
            })
            .is_some()
            || server
                .log
                .wait_for(Duration::from_secs(1), |line| {
                    line.contains("status=400") && line.contains(worker)
                })
                .is_some()
    };
    assert!(has_worker("worker=0"), "no request log line with worker=0");
    assert!(has_worker("worker=1"), "no request log line with worker=1");
}

#[test]
fn each_request_is_logged_with_method_status_and_worker() {
    let server = TestServer::start();
    server.put_block(DATA);
    let _ = server.request(Request::get("/xyz"));
    let put_line = server.log.wait_for(Duration::from_secs(5), |line| {
        line.contains("method=PUT") && line.contains("status=200") && line.contains("worker=")
    });
    assert!(put_line.is_some(), "no request log line for the PUT");
    let get_line = server.log.wait_for(Duration::from_secs(5), |line| {
        line.contains("method=GET") && line.contains("status=400") && line.contains("worker=")
    });
    assert!(get_line.is_some(), "no request log line for the 400 GET");
}

#[test]
fn json_log_format_writes_json_lines() {
    let server = ServerBuilder::new().arg("--log-format").arg("json").start();
    server.put_block(DATA);
    let _ = server.request(Request::get("/xyz"));
    // Wait for the two request lines (plus the start-up line), then check every line.
    let _ = server.log.wait_for(Duration::from_secs(5), |line| line.contains("400"));
    let lines = server.log.lines();
    assert!(lines.len() >= 2, "{lines:?}");
    for line in lines.iter().filter(|line| !line.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
        assert!(value.is_object(), "{line}");
    }
}

#[test]
fn json_request_lines_use_keepstores_field_names() {
    let server = ServerBuilder::new().arg("--log-format").arg("json").start();
    let locator = server.put_block(DATA);
    let response = server.request(
        Request::get(&format!("/{locator}?api_token={USER_TOKEN}"))
            .header("X-Forwarded-For", "192.0.2.7")
            .header("X-Request-Id", "req-jsonlogtest0000000"),
    );
    assert_eq!(response.status, 200, "{}", response.summary());
    let line = server
        .log
        .wait_for(Duration::from_secs(5), |line| line.contains("req-jsonlogtest0000000"))
        .expect("a response line for the GET");
    let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(value["msg"], "response", "{line}");
    assert_eq!(value["level"], "info");
    assert_eq!(value["RequestID"], "req-jsonlogtest0000000");
    assert_eq!(value["reqMethod"], "GET");
    assert_eq!(value["reqForwardedFor"], "192.0.2.7");
    assert!(
        value["remoteAddr"]
            .as_str()
            .is_some_and(|addr| addr.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(value["reqHost"], "127.0.0.1");
    let path = value["reqPath"].as_str().expect("reqPath");
    assert!(path.starts_with(&md5_hex(DATA)) && !path.starts_with('/'), "{line}");
    assert!(!line.contains(USER_TOKEN), "the token is redacted: {line}");
    assert!(
        !path.contains("+A") || path.contains("+A…"),
        "the signature is redacted: {line}"
    );
    assert_eq!(value["respStatusCode"], 200);
    assert_eq!(value["respStatus"], "OK");
    assert_eq!(value["respBytes"], DATA.len());
    assert!(value["timeTotal"].as_f64().is_some_and(|secs| secs >= 0.0), "{line}");
    assert!(value["PID"].as_u64().is_some() && value["time"].as_str().is_some_and(|time| time.ends_with('Z')));
}

#[test]
fn at_the_connection_limit_idle_connections_make_room_for_new_clients() {
    let server = ServerBuilder::new()
        .arg("--workers")
        .arg("1")
        .arg("--max-connections")
        .arg("8")
        .start();
    let locator = server.put_block(DATA);
    // Eight keep-alive connections, each served once and then left idle, oldest first.
    let mut idle: Vec<crate::support::client::Conn> = Vec::new();
    for _ in 0..8 {
        let mut conn = server.conn();
        let response = conn.request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
        assert_eq!(response.status, 200, "{}", response.summary());
        idle.push(conn);
        std::thread::sleep(Duration::from_millis(20));
    }
    // A ninth client is served at once, not after the 65 s idle timeout.
    let started = std::time::Instant::now();
    let response = server.get(&locator);
    assert_eq!(response.status, 200, "{}", response.summary());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The least recently used idle connection made room; the most recent one is still open.
    assert!(
        idle[0].closed_by_server_within(Duration::from_secs(5)),
        "the oldest idle connection stays open"
    );
    let again = idle[7].request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(again.status, 200, "the most recently used connection was closed");
    let warned = server
        .log
        .wait_for(Duration::from_secs(5), |line| line.contains("connection limit reached"));
    assert!(warned.is_some(), "no warning logged");
    let metrics = server.request(Request::get("/metrics")).text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("keepring_idle_connections_closed_total ") >= 1.0, "{metrics}");
    assert!(value("keepring_connection_limit_reached_total ") >= 1.0);
}

/// Raise this process's soft open-files limit to its hard one; returns it.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out- and in-pointers to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

#[test]
fn ten_thousand_idle_connections_do_not_lock_out_new_clients() {
    // The attack of issue 15: more idle connections than the default limit (4096 per worker,
    // at most half the open-files limit); new clients must be served within a second.
    let open_files = raise_open_files();
    if open_files < 12_000 {
        eprintln!("skipped: the open-files hard limit ({open_files}) cannot hold 10,000 connections here");
        return;
    }
    let server = ServerBuilder::new().arg("--workers").arg("2").start();
    let locator = server.put_block(DATA);
    let idle: Vec<std::net::TcpStream> = (0..10_000)
        .filter_map(|_| std::net::TcpStream::connect(server.addr).ok())
        .collect();
    assert!(idle.len() >= 9_000, "only {} connections opened", idle.len());
    // The kernel accepted every connect; the server is still working through its accept
    // queue (a debug build, beside other tests). Once it has made room for the last of
    // them (at 4,096 per worker, by closing the least recently used idle ones), the attack
    // is in place: from then on every new client must get in within a second.
    let beyond_limit = idle.len().saturating_sub(2 * 4096) as f64;
    let closed = || -> f64 {
        let metrics = server.request(Request::get("/metrics")).text();
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("keepring_idle_connections_closed_total ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let settled = eventually(Duration::from_secs(30), || closed() >= beyond_limit);
    assert!(
        settled,
        "the server never made room for {beyond_limit} connections: {}",
        closed()
    );
    for client in 0..48 {
        let started = std::time::Instant::now();
        let response = server.get(&locator);
        assert_eq!(response.status, 200, "client {client}: {}", response.summary());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "client {client} waited {:?}",
            started.elapsed()
        );
    }
    drop(idle);
}

#[test]
fn a_table_of_malformed_requests_gets_clean_answers_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let locator = server.put_block(DATA);
    let hash = md5_hex(DATA);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "root path",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "Bad Request",
        ),
        (
            "20 KB request line",
            [b"GET /".as_slice(), &[b'a'; 20_000], b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat(),
            431,
            "request header fields too large",
        ),
        (
            "non-numeric Content-Length",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n").into_bytes(),
            400,
            "invalid Content-Length",
        ),
        (
            "two Content-Lengths (smuggling)",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
                .into_bytes(),
            400,
            "conflicting Content-Length headers",
        ),
        (
            "gzip Transfer-Encoding",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").into_bytes(),
            400,
            "unsupported Transfer-Encoding",
        ),
        (
            "a body over 64 MiB",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nContent-Length: 67108865\r\n\r\n").into_bytes(),
            413,
            "request entity too large",
        ),
        (
            "path traversal",
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "Bad Request",
        ),
        (
            "bad chunk size",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(),
            400,
            "malformed chunked body",
        ),
        (
            "unknown method",
            format!("BREW /{hash} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            400,
            "Bad Request",
        ),
        (
            "header without a colon",
            b"GET / HTTP/1.1\r\nBadHeader\r\n\r\n".to_vec(),
            400,
            "malformed request head",
        ),
        (
            "NUL in the path",
            b"GET /\x00abc HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "malformed request head",
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            400,
            "malformed request head",
        ),
        (
            "8 hex digits",
            b"GET /6f09f2b3 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "Bad Request",
        ),
        (
            "body not matching its hash",
            format!("PUT /{hash} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").into_bytes(),
            400,
            "content hash 900150983cd24fb0d6963f7d28e17f72 did not match",
        ),
    ];
    for (name, raw, status, reason) in &cases {
        let mut conn = server.conn();
        conn.write_raw(raw).expect("write");
        let response = conn
            .read_response("GET")
            .unwrap_or_else(|error| panic!("{name}: no answer: {error}"));
        assert_eq!(response.status, *status, "{name}: {}", response.summary());
        let text = response.text();
        assert!(text.starts_with(reason), "{name}: {text:?}");
        assert_eq!(text.lines().count(), 1, "{name}: one line: {text:?}");
        assert_eq!(
            server.request(Request::new("OPTIONS", "/")).status,
            200,
            "serving after {name}"
        );
    }
    assert_eq!(server.get(&locator).status, 200, "the stored block is untouched");
    let volume = server.volume(0);
    let stray: Vec<_> = std::fs::read_dir(volume.join(&hash[..3]))
        .expect("block dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(stray, [std::ffi::OsString::from(&hash)], "nothing partial written");
}

#[test]
fn slow_heads_do_not_slow_honest_clients() {
    // 500 connections each send half a request head and then nothing (slowloris) beside
    // honest GETs and a 64 MiB PUT: every honest request is served, promptly.
    let server = ServerBuilder::new().without_signing_key().start();
    let locator = server.put_block(DATA);
    let slow: Vec<std::net::TcpStream> = (0..500)
        .filter_map(|_| {
            let mut stream = std::net::TcpStream::connect(server.addr).ok()?;
            std::io::Write::write_all(
                &mut stream,
                b"GET /6f09f2b353b6d63069f770b90e2b112c+11 HTTP/1.1\r\nHost: ",
            )
            .ok()?;
            Some(stream)
        })
        .collect();
    assert_eq!(slow.len(), 500);
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let response = server.get(&locator);
        assert_eq!(response.status, 200, "{}", response.summary());
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "an honest GET took {slowest:?}");
    let big = test_bytes(99, 64 * 1024 * 1024);
    let put = server.put(&big);
    assert_eq!(put.status, 200, "{}", put.summary());
    drop(slow);
}
