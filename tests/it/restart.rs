//! Zero-downtime restart (issue 4): a new keepring takes the listening sockets over from the
//! running one through its control socket, then sends it SIGTERM (`--term-pid`); the old one
//! drains. Under load not one request may fail; transfers in flight finish; the drain
//! timeout, a second SIGTERM and SIGQUIT behave as documented; the buffer budget is shared
//! by both processes and reclaimed from one that died.
//!
//! The restart tests take `SERIAL` so that two of them never compete for the (few) cores:
//! their timings (a slow reader, a 5 s budget wait) must not depend on each other.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::client::slow_get;
use crate::support::load::{LoadHandle, LoadLimits, LoadMode, LoadStats, LoadTarget};
use crate::support::tls::TlsFixture;
use crate::support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long an old process may take to drain and exit after its successor is ready.
/// Generous on purpose: three times, and only in the first test run right after cargo had
/// written out freshly linked binaries, a replaced process took over 10 s to exit (its
/// requests had all been answered; suspected: its exit waiting on io_uring work stuck in
/// that writeback). No request depends on the exit; the load tests count failures apart.
const OLD_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// After `OLD_EXIT_TIMEOUT` the threads' kernel stacks are printed, and the kernel gets
/// this much longer to end the process before the test fails.
const EXIT_EXTRA_WAIT: Duration = Duration::from_secs(60);
/// Restarts in each load test.
const RESTARTS: usize = 5;
/// Correct answers each load test waits for before the first and after each restart.
const OK_BETWEEN_RESTARTS: u64 = 300;
/// Least time the load runs against each generation.
const LOAD_PER_GENERATION: Duration = Duration::from_secs(1);
/// Hard bound of every load run (the tests stop it much earlier).
const LOAD_DURATION_MAX: Duration = Duration::from_secs(40);

const PHASE_DRAINING: &str = "phase=\"draining\"";

/// A chain of keepring processes on one port, each replacing the previous one with
/// `--term-pid`, sharing volumes and a control socket. `servers[0]` owns the volume
/// directories (its temp dir), so every generation is kept until the end of the test.
struct Generations {
    _control_dir: tempfile::TempDir,
    control: PathBuf,
    addr: SocketAddr,
    volumes: Vec<PathBuf>,
    extra_args: Vec<String>,
    expect_handover: bool,
    servers: Vec<TestServer>,
    /// Every generation serves HTTPS with this pair.
    tls: Option<TlsFixture>,
}

impl Generations {
    fn start(extra_args: &[&str]) -> Generations {
        Generations::start_with(extra_args, None)
    }

    fn start_with(extra_args: &[&str], tls: Option<TlsFixture>) -> Generations {
        let control_dir = tempfile::Builder::new()
            .prefix("keepring-ctl-")
            .tempdir()
            .expect("create control socket dir");
        let control = control_dir.path().join("ctl.sock");
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let mut builder = ServerBuilder::new()
            .arg("--control-socket")
            .arg(&control.display().to_string());
        for arg in &extra_args {
            builder = builder.arg(arg);
        }
        if let Some(tls) = &tls {
            builder = builder.tls(tls);
        }
        let server = builder.start();
        Generations {
            tls,
            _control_dir: control_dir,
            control,
            addr: server.addr,
            volumes: server.volumes().to_vec(),
            expect_handover: !extra_args.iter().any(|arg| arg == "--no-handover"),
            extra_args,
            servers: vec![server],
        }
    }

    fn current(&self) -> &TestServer {
        self.servers.last().expect("at least one server")
    }

    fn current_index(&self) -> usize {
        self.servers.len() - 1
    }

    /// Starts the successor of the current server with `--term-pid`, waits for its
    /// `listening on`, and checks it took the sockets over. Returns the index of the
    /// server it replaces.
    fn replace(&mut self) -> usize {
        let old = self.current_index();
        let old_pid = self.current().pid();
        let mut builder = ServerBuilder::new()
            .volume_paths(self.volumes.clone())
            .listen(self.addr)
            .arg("--control-socket")
            .arg(&self.control.display().to_string())
            .arg("--term-pid")
            .arg(&old_pid.to_string());
        for arg in &self.extra_args {
            builder = builder.arg(arg);
        }
        if let Some(tls) = &self.tls {
            builder = builder.tls(tls);
        }
        let server = builder.start();
        assert_eq!(server.addr, self.addr, "the successor listens elsewhere");
        if self.expect_handover {
            assert!(
                server
                    .log
                    .lines()
                    .iter()
                    .any(|line| line.contains("took over listening sockets")),
                "the successor did not take the listening sockets over:\n{}",
                server.log.lines().join("\n")
            );
        }
        self.servers.push(server);
        old
    }

    /// Waits for server `index` to exit and returns its status (panics at the timeout).
    fn wait_exit(&mut self, index: usize, within: Duration) -> ExitStatus {
        let server = &mut self.servers[index];
        if let Some(status) = server.wait_exit(within) {
            return status;
        }
        // Seen about once in ten clean-clone CI runs: the process logged `exiting code=0`
        // (every request answered, _exit called) and the kernel took longer than `within`
        // to end it. Record where its threads wait, then give the kernel a while longer;
        // a process that still has not ended fails the test.
        let late = format!(
            "keepring #{index} (pid {}) still running {within:?} after it was replaced; threads:\n{}",
            server.pid(),
            thread_states(server.pid())
        );
        // A passing test's output is not shown: scripts/test prints this file at the end.
        let record = |text: &str| {
            use std::io::Write;
            let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/late-exits.log");
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(file, "{text}");
            }
        };
        record(&late);
        match server.wait_exit(EXIT_EXTRA_WAIT) {
            Some(status) => {
                record(&format!(
                    "keepring #{index} ended within a further {EXIT_EXTRA_WAIT:?}\n"
                ));
                status
            }
            None => panic!(
                "keepring #{index} (pid {}) still running {:?} after it was replaced; threads:\n{}\nlog:\n{}",
                server.pid(),
                within + EXIT_EXTRA_WAIT,
                thread_states(server.pid()),
                server.log.lines().join("\n")
            ),
        }
    }

    fn assert_exited_zero(&mut self, index: usize, what: &str) {
        let status = self.wait_exit(index, OLD_EXIT_TIMEOUT);
        assert_eq!(
            status.code(),
            Some(0),
            "{what}: keepring #{index} exited with {status}; log:\n{}",
            self.servers[index].log.lines().join("\n")
        );
    }
}

fn wait_for_log(server: &TestServer, needle: &str, within: Duration) {
    if server.log.wait_for(within, |line| line.contains(needle)).is_none() {
        panic!(
            "no log line containing {needle:?} within {within:?}; log:\n{}",
            server.log.lines().join("\n")
        );
    }
}

fn put_head(hash: &str, length: usize) -> Vec<u8> {
    format!(
        "PUT /{hash} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

/// A 200 whose body is a signed locator for `hash` and `len`.
fn expect_put_ok(response: &Response, hash: &str, len: usize, what: &str) {
    assert_eq!(response.status, 200, "{what}: {}", response.summary());
    let prefix = format!("{hash}+{len}+A");
    assert!(
        response.text().starts_with(&prefix) && response.text().ends_with('\n'),
        "{what}: locator {:?} should start with {prefix:?}",
        response.text()
    );
}

fn report(name: &str, restarts: usize, stats: &LoadStats) {
    eprintln!(
        "[{name}] restarts={restarts} requests_ok={} failures={} retried={} connections={}",
        stats.ok,
        stats.failures(),
        stats.retried,
        stats.connections
    );
    eprintln!("[{name}] {}", stats.summary());
    for sample in &stats.samples {
        eprintln!("[{name}]   failure: {sample}");
    }
}

/// Runs `mode` against a block GET while the server is replaced `RESTARTS` times.
fn load_across_restarts(name: &str, mode: LoadMode, extra_args: &[&str]) -> (LoadStats, Duration) {
    load_across_restarts_with(name, mode, extra_args, None)
}

/// As `load_across_restarts`, every generation serving HTTPS with `tls` when given.
fn load_across_restarts_with(
    name: &str,
    mode: LoadMode,
    extra_args: &[&str],
    tls: Option<TlsFixture>,
) -> (LoadStats, Duration) {
    let started = Instant::now();
    let mut generations = Generations::start_with(extra_args, tls.clone());
    let data = test_bytes(41, 8 * 1024);
    let locator = generations.current().put_block(&data);
    let target = LoadTarget {
        addr: generations.addr,
        path: format!("/{locator}"),
        token: Some(USER_TOKEN.to_string()),
        expected_body: Arc::new(data),
        tls: tls.map(|fixture| fixture.connector),
    };
    let load = LoadHandle::start(
        target,
        mode,
        LoadLimits {
            duration: LOAD_DURATION_MAX,
            requests_max: None,
        },
    );
    let mut generation_started = Instant::now();
    assert!(
        load.wait_for_more_ok(OK_BETWEEN_RESTARTS, Duration::from_secs(10)),
        "[{name}] the load did not get going: {} ok, {} failures",
        load.ok_so_far(),
        load.failures_so_far()
    );
    for round in 1..=RESTARTS {
        std::thread::sleep(LOAD_PER_GENERATION.saturating_sub(generation_started.elapsed()));
        let old = generations.replace();
        generation_started = Instant::now();
        generations.assert_exited_zero(old, &format!("[{name}] restart {round}"));
        assert!(
            load.wait_for_more_ok(OK_BETWEEN_RESTARTS, Duration::from_secs(10)),
            "[{name}] no requests served after restart {round}: {} ok, {} failures",
            load.ok_so_far(),
            load.failures_so_far()
        );
    }
    std::thread::sleep(LOAD_PER_GENERATION.saturating_sub(generation_started.elapsed()));
    let stats = load.stop();
    let elapsed = started.elapsed();
    report(name, RESTARTS, &stats);
    eprintln!("[{name}] test time {:.2}s", elapsed.as_secs_f64());
    (stats, elapsed)
}

/// Each thread of a process that will not exit: its name, state and kernel stack (root
/// can read `/proc/<pid>/task/<tid>/stack`), to see what an exit waits for.
fn thread_states(pid: u32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|entries| entries.flatten().collect::<Vec<_>>());
    for task in tasks.unwrap_or_default() {
        let path = task.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|line| line.starts_with("State:"))
            .unwrap_or("")
            .to_string();
        out.push_str(&format!(
            "-- tid {} {} {state} wchan={}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}

#[test]
fn keepalive_load_survives_five_restarts_without_a_failure() {
    let _serial = serial();
    let connections = 32;
    let (stats, _) = load_across_restarts("keepalive", LoadMode::KeepAlive { connections, depth: 4 }, &[]);
    assert_eq!(
        stats.failures(),
        0,
        "failed requests: {}\n{:#?}",
        stats.summary(),
        stats.samples
    );
    assert!(
        stats.ok >= (RESTARTS as u64 + 1) * OK_BETWEEN_RESTARTS,
        "too few requests: {}",
        stats.summary()
    );
    // Every old process closed all its connections before exiting 0, so each of the 32
    // reconnected after every restart.
    assert!(
        stats.connections >= (connections * (RESTARTS + 1)) as u64,
        "connections did not move to the new processes: {}",
        stats.summary()
    );
    assert!(
        stats.close_responses >= (connections * RESTARTS) as u64,
        "draining processes should say Connection: close: {}",
        stats.summary()
    );
}

#[test]
fn https_keepalive_load_survives_five_restarts_without_a_failure() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFixture::new(dir.path(), "restart");
    let connections = 16;
    let mode = LoadMode::KeepAlive { connections, depth: 4 };
    let (stats, _) = load_across_restarts_with("https-keepalive", mode, &[], Some(tls));
    assert_eq!(
        stats.failures(),
        0,
        "failed requests: {}\n{:#?}",
        stats.summary(),
        stats.samples
    );
    assert!(
        stats.ok >= (RESTARTS as u64 + 1) * OK_BETWEEN_RESTARTS,
        "too few requests: {}",
        stats.summary()
    );
    // The drain's `Connection: close` reaches TLS connections too, and each one moved on.
    assert!(
        stats.connections >= (connections * (RESTARTS + 1)) as u64,
        "connections did not move to the new processes: {}",
        stats.summary()
    );
    assert!(
        stats.close_responses >= (connections * RESTARTS) as u64,
        "draining processes should say Connection: close: {}",
        stats.summary()
    );
}

#[test]
fn https_churn_load_survives_five_restarts_without_a_failure() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFixture::new(dir.path(), "restart");
    let (stats, _) = load_across_restarts_with("https-churn", LoadMode::Churn { threads: 4 }, &[], Some(tls));
    assert_eq!(
        stats.failures(),
        0,
        "failed connections: {}\n{:#?}",
        stats.summary(),
        stats.samples
    );
    assert!(
        stats.ok >= (RESTARTS as u64 + 1) * OK_BETWEEN_RESTARTS,
        "too few requests: {}",
        stats.summary()
    );
}

#[test]
fn churn_load_survives_five_restarts_without_a_failure() {
    let _serial = serial();
    let (stats, _) = load_across_restarts("churn", LoadMode::Churn { threads: 4 }, &[]);
    assert_eq!(
        stats.failures(),
        0,
        "failed connections: {}\n{:#?}",
        stats.summary(),
        stats.samples
    );
    assert!(
        stats.ok >= (RESTARTS as u64 + 1) * OK_BETWEEN_RESTARTS,
        "too few requests: {}",
        stats.summary()
    );
    assert_eq!(
        stats.connections,
        stats.ok,
        "one connection per request: {}",
        stats.summary()
    );
}

/// The same churn with the hand-over switched off (fresh SO_REUSEPORT sockets): a
/// measurement for the notes, not a requirement, so it asserts nothing about failures.
/// Run with `cargo test --test tests churn_load_without_handover -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: churn across restarts with --no-handover"]
fn churn_load_without_handover_for_comparison() {
    let _serial = serial();
    let (stats, _) = load_across_restarts("churn-no-handover", LoadMode::Churn { threads: 4 }, &["--no-handover"]);
    assert!(stats.ok > 0, "{}", stats.summary());
}

/// A client socket with a small receive buffer, so that the server's writes follow the
/// client's reads closely (no autotuned 32 MiB buffer swallowing the block).
fn small_buffer_connection(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

#[test]
fn slow_64mib_get_started_before_sigterm_completes_after_takeover() {
    let _serial = serial();
    let mut generations = Generations::start(&[]);
    let data = test_bytes(64, BLOCK_BYTES_MAX);
    let hash = md5_hex(&data);
    let locator = generations.current().put_block(&data);
    drop(data);
    let small = test_bytes(65, 1000);
    let small_locator = generations.current().put_block(&small);

    // 1024 reads of 64 KiB, 2 ms apart: about 2-3 s for the block.
    let received = Arc::new(AtomicU64::new(0));
    let mut stream = small_buffer_connection(generations.addr);
    let reader = {
        let received = Arc::clone(&received);
        let locator = locator.clone();
        std::thread::spawn(move || slow_get(&mut stream, &locator, Duration::from_millis(2), &received))
    };
    assert!(
        client::eventually(Duration::from_secs(10), || received.load(Ordering::SeqCst)
            >= 1024 * 1024),
        "the slow GET did not start"
    );
    let old = generations.replace();
    let at_takeover = received.load(Ordering::SeqCst);
    wait_for_log(&generations.servers[old], PHASE_DRAINING, Duration::from_secs(5));

    // The successor serves while the old process is still sending.
    let response = generations.current().get(&small_locator);
    assert_eq!(response.status, 200, "GET from the successor: {}", response.summary());
    assert_eq!(response.body, small);

    // What the server may have written but the client not yet read: its send buffer
    // (tcp_wmem max 4 MiB), our 64 KiB receive buffer (doubled by the kernel), one chunk.
    let in_transit_max = 8 * 1024 * 1024;
    let mut received_when_old_exited = None;
    while !reader.is_finished() {
        if received_when_old_exited.is_none() && generations.servers[old].exit_status().is_some() {
            received_when_old_exited = Some(received.load(Ordering::SeqCst));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = reader.join().expect("reader thread");
    let received_when_old_exited = received_when_old_exited.unwrap_or(BLOCK_BYTES_MAX as u64);
    eprintln!(
        "[slow-get] body bytes read when the successor was ready: {at_takeover}; when the old process \
         exited: {received_when_old_exited}"
    );
    assert_eq!(result.error, None, "the slow GET broke");
    assert!(
        result.status_line.contains(" 200 "),
        "status line {:?}",
        result.status_line
    );
    assert_eq!(result.content_length, BLOCK_BYTES_MAX);
    assert_eq!(result.body_bytes, BLOCK_BYTES_MAX);
    assert_eq!(result.body_md5, hash, "wrong bytes in the 64 MiB body");
    assert!(
        at_takeover + in_transit_max < BLOCK_BYTES_MAX as u64,
        "the transfer was (nearly) over before the successor took over ({at_takeover} bytes read): \
         the test did not test anything"
    );
    assert!(
        received_when_old_exited + in_transit_max >= BLOCK_BYTES_MAX as u64,
        "the old process exited when the client had read only {received_when_old_exited} bytes"
    );
    generations.assert_exited_zero(old, "after the slow GET");
}

#[test]
fn put_in_flight_at_sigterm_is_stored_and_acknowledged() {
    let _serial = serial();
    let mut generations = Generations::start(&[]);
    let data = test_bytes(77, 8 * 1024 * 1024);
    let hash = md5_hex(&data);
    let half = data.len() / 2;
    let mut conn = generations.current().conn();
    conn.write_raw(&put_head(&hash, data.len())).expect("send PUT head");
    conn.write_raw(&data[..half]).expect("send first half");

    let old = generations.replace();
    wait_for_log(&generations.servers[old], PHASE_DRAINING, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        generations.servers[old].is_running(),
        "the old process exited with a PUT in flight"
    );
    conn.write_raw(&data[half..]).expect("send second half");
    let response = conn.read_response("PUT").expect("response to the PUT");
    expect_put_ok(&response, &hash, data.len(), "PUT across the restart");
    generations.assert_exited_zero(old, "after the PUT");

    let stored = std::fs::read(block_path(&generations.volumes[0], &hash)).expect("block file on disk");
    assert!(stored == data, "stored file differs ({} bytes)", stored.len());
    let get = generations.current().get(response.text().trim_end());
    assert_eq!(get.status, 200, "GET from the successor: {}", get.summary());
    assert!(get.body == data, "GET from the successor returned other bytes");
}

#[test]
fn drain_timeout_cuts_a_stuck_connection_and_exit_code_says_so() {
    let _serial = serial();
    let mut server = ServerBuilder::new().arg("--drain-timeout-secs").arg("1").start();
    let hash = md5_hex(b"never finished");
    let mut conn = server.conn();
    conn.write_raw(&put_head(&hash, 1000)).expect("send PUT head");
    conn.write_raw(&[b'x'; 10]).expect("send 10 body bytes");
    std::thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM with --drain-timeout-secs 1"));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(3), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the 1 s drain timeout"
    );
    // The cut warnings come before the `drained` line; the log reader may lag the exit.
    wait_for_log(&server, "phase=\"drained\"", Duration::from_secs(5));
    let lines = server.log.lines();
    let cut: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("drain timeout: cutting connection"))
        .collect();
    assert_eq!(cut.len(), 1, "one cut connection expected; log:\n{}", lines.join("\n"));
    assert!(
        cut[0].contains("PUT") && cut[0].contains(&hash),
        "the warning should name the cut request: {}",
        cut[0]
    );
    assert!(
        conn.closed_by_server_within(Duration::from_secs(2)),
        "the stuck connection is still open"
    );
}

#[test]
fn second_sigterm_does_not_cut_the_drain() {
    let _serial = serial();
    let mut server = ServerBuilder::new().arg("--drain-timeout-secs").arg("30").start();
    let data = test_bytes(91, 2 * 1024 * 1024);
    let hash = md5_hex(&data);
    let half = data.len() / 2;
    let mut conn = server.conn();
    conn.write_raw(&put_head(&hash, data.len())).expect("send PUT head");
    conn.write_raw(&data[..half]).expect("send first half");
    std::thread::sleep(Duration::from_millis(200));

    server.signal(libc::SIGTERM);
    wait_for_log(&server, PHASE_DRAINING, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(700));
    assert!(server.is_running(), "a second SIGTERM ended the drain");

    conn.write_raw(&data[half..]).expect("send second half");
    let response = conn.read_response("PUT").expect("response to the PUT");
    expect_put_ok(&response, &hash, data.len(), "PUT across two SIGTERMs");
    let status = server.wait_exit(Duration::from_secs(5)).expect("exit after the drain");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(
        std::fs::read(block_path(server.volume(0), &hash)).expect("block file"),
        data
    );
}

#[test]
fn sigquit_exits_at_once() {
    let _serial = serial();
    // Serving, with a request in flight.
    let mut server = ServerBuilder::new().start();
    let hash = md5_hex(b"quit");
    let mut conn = server.conn();
    conn.write_raw(&put_head(&hash, 1000)).expect("send PUT head");
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGQUIT);
    let status = server
        .wait_exit(Duration::from_secs(2))
        .expect("SIGQUIT did not end the process within 2 s");
    assert_eq!(
        status.code(),
        Some(131),
        "exit status {status} after {:?}",
        signalled.elapsed()
    );

    // Draining, with a request in flight (and the default 300 s drain timeout).
    let mut server = ServerBuilder::new().start();
    let mut conn = server.conn();
    conn.write_raw(&put_head(&hash, 1000)).expect("send PUT head");
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    wait_for_log(&server, PHASE_DRAINING, Duration::from_secs(5));
    server.signal(libc::SIGQUIT);
    let status = server
        .wait_exit(Duration::from_secs(2))
        .expect("SIGQUIT during a drain did not end the process within 2 s");
    assert_eq!(status.code(), Some(131), "exit status {status}");
}

/// What the small PUT to the successor got, and when.
type SmallPut = (Result<Response, String>, Instant);

/// Sets up the budget scenario: the old process (`--max-buffers 1`) holds the whole
/// budget for a 64 MiB PUT whose body is still arriving, and its successor has taken
/// over and is draining it; a 1 MiB PUT to the successor waits for budget.
struct BudgetScenario {
    generations: Generations,
    old: usize,
    big: Vec<u8>,
    big_hash: String,
    big_sent: usize,
    big_conn: client::Conn,
    small: Vec<u8>,
    small_result: std::sync::mpsc::Receiver<SmallPut>,
    small_sent_at: Instant,
}

fn budget_scenario() -> BudgetScenario {
    let mut generations = Generations::start(&["--max-buffers", "1"]);
    let big = test_bytes(101, BLOCK_BYTES_MAX);
    let big_hash = md5_hex(&big);
    let mut big_conn = generations.current().conn();
    big_conn
        .write_raw(&put_head(&big_hash, big.len()))
        .expect("send big PUT head");
    // The server leases the budget before it reads any of the body, so once 8 MiB went
    // through (more than the socket buffers hold), the lease is held.
    let eight_mib = 8 * 1024 * 1024;
    big_conn.write_raw(&big[..eight_mib]).expect("send 8 MiB of the body");

    let old = generations.replace();
    wait_for_log(&generations.servers[old], PHASE_DRAINING, Duration::from_secs(5));
    // All but the last MiB now, so that what is left once the small PUT waits (reading
    // and hashing 1 MiB, storing the block) fits well inside its 5 s wait even on a busy
    // machine running debug builds.
    let big_sent = big.len() - 1024 * 1024;
    big_conn
        .write_raw(&big[eight_mib..big_sent])
        .expect("send all but the last MiB of the body");

    let small = test_bytes(102, 1024 * 1024);
    let (sender, small_result) = std::sync::mpsc::channel();
    let addr = generations.addr;
    let small_copy = small.clone();
    let small_sent_at = Instant::now();
    std::thread::spawn(move || {
        let outcome = (|| {
            let mut conn = client::Conn::connect(addr);
            conn.send(&Request::put(&format!("/{}", md5_hex(&small_copy)), &small_copy).token(USER_TOKEN))
                .map_err(|error| format!("send: {error}"))?;
            loop {
                let response = conn.read_response("PUT").map_err(|error| format!("read: {error}"))?;
                if !(100..200).contains(&response.status) {
                    return Ok(response);
                }
            }
        })();
        let _ = sender.send((outcome, Instant::now()));
    });
    // While the old process holds the whole budget, the small PUT must wait.
    match small_result.recv_timeout(Duration::from_secs(1)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        Ok((outcome, _)) => panic!(
            "the 1 MiB PUT completed while the old process held the whole budget: {:?}",
            outcome.map(|response| response.summary())
        ),
        Err(error) => panic!("small PUT thread: {error}"),
    }
    BudgetScenario {
        generations,
        old,
        big,
        big_hash,
        big_sent,
        big_conn,
        small,
        small_result,
        small_sent_at,
    }
}

fn expect_small_put(scenario: &BudgetScenario, what: &str) -> Instant {
    let (outcome, done) = scenario
        .small_result
        .recv_timeout(Duration::from_secs(8))
        .unwrap_or_else(|_| panic!("{what}: the 1 MiB PUT did not finish"));
    let response = outcome.unwrap_or_else(|error| panic!("{what}: the 1 MiB PUT failed: {error}"));
    let hash = md5_hex(&scenario.small);
    expect_put_ok(&response, &hash, scenario.small.len(), what);
    eprintln!(
        "[{what}] the 1 MiB PUT took {:.2}s",
        done.duration_since(scenario.small_sent_at).as_secs_f64()
    );
    // It was served by the successor (its request line is logged after the response).
    let successor = scenario.generations.current();
    let logged = successor.log.wait_for(Duration::from_secs(5), |line| {
        line.contains("PUT") && line.contains(&hash) && line.contains("status=200")
    });
    assert!(
        logged.is_some(),
        "{what}: the successor's log has no 200 PUT of {hash}:\n{}",
        successor.log.lines().join("\n")
    );
    done
}

#[test]
fn buffer_budget_is_shared_across_a_restart() {
    let _serial = serial();
    let mut scenario = budget_scenario();
    let big = std::mem::take(&mut scenario.big);
    scenario
        .big_conn
        .write_raw(&big[scenario.big_sent..])
        .expect("send the rest of the big PUT");
    let response = scenario.big_conn.read_response("PUT").expect("response to the big PUT");
    let big_answered = Instant::now();
    expect_put_ok(
        &response,
        &scenario.big_hash,
        big.len(),
        "64 MiB PUT to the draining process",
    );
    let small_done = expect_small_put(&scenario, "budget-shared");
    eprintln!(
        "[budget-shared] the 1 MiB PUT finished {:+.3}s after the big PUT's answer",
        if small_done >= big_answered {
            small_done.duration_since(big_answered).as_secs_f64()
        } else {
            -big_answered.duration_since(small_done).as_secs_f64()
        }
    );
    let old = scenario.old;
    scenario.generations.assert_exited_zero(old, "after the big PUT");
}

#[test]
fn budget_of_a_killed_process_is_reclaimed() {
    let _serial = serial();
    let mut scenario = budget_scenario();
    let old = scenario.old;
    let server = &mut scenario.generations.servers[old];
    server.signal(libc::SIGKILL);
    // Reaped here, as systemd would: a zombie's pid still exists.
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("kill -9 did not end it");
    assert_eq!(status.code(), None, "killed process exit status {status}");
    expect_small_put(&scenario, "budget-killed");
    wait_for_log(
        scenario.generations.current(),
        "reclaimed buffer budget of a process that died",
        Duration::from_secs(1),
    );
}

/// systemd socket activation: the listening socket arrives as fd 3 with `LISTEN_FDS=1` and
/// `LISTEN_PID` set to the server's own pid (set by the shell that execs it).
#[test]
fn serves_a_socket_passed_by_systemd_socket_activation() {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fd = listener.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(crate::support::server::binary_path())
        .args(["--listen", &address.to_string(), "--volume"])
        .arg(dir.path().join("vol"))
        .args(["--control-socket"])
        .arg(dir.path().join("ctl.sock"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let moved = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn keepring");
    drop(listener); // only the server holds the socket now
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut listening = None;
    while let Ok(line) = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("listening on") {
            listening = Some(line);
            break;
        }
    }
    let line = listening.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no `listening on` line")
    });
    assert!(line.contains("source=Systemd"), "{line}");
    let data = test_bytes(4040, 2000);
    let mut conn = client::Conn::connect(address);
    let stored = conn.request(&Request::put(&format!("/{}", md5_hex(&data)), &data));
    assert_eq!(stored.status, 200, "{}", stored.summary());
    let read = conn.request(&Request::get(&format!("/{}+{}", md5_hex(&data), data.len())));
    assert_eq!(read.body, data);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}
