//! A load generator for the restart tests: std threads and blocking sockets, 127.0.0.1
//! only, bounded by a duration and optionally a request count. It counts every failure
//! itself instead of trusting the server's logs.
//!
//! Over HTTPS (`LoadTarget::tls`) every connection shakes hands first (OpenSSL); a
//! failed handshake counts as a `Connect` failure.
//!
//! Two modes:
//! - `KeepAlive`: N connections, each keeping `depth` GETs in flight (pipelined). A
//!   response carrying `Connection: close` ends the connection; the requests pipelined
//!   behind it were never answered and are re-sent on a new connection (RFC 9112 §9.6:
//!   a retry, counted in `retried`, not a failure).
//! - `Churn`: a few threads, each doing connect → one GET with `Connection: close` → read
//!   the response → close, as fast as it goes.
//!
//! Every response is checked: status 200 and a body byte-for-byte equal to the expected
//! block. Anything else is a failure of one `FailureKind`: connect error, reset, the
//! connection closed without answering (no `Connection: close` announced), a response cut
//! short, wrong bytes, a non-2xx status, a timeout, or an unparsable response. When a
//! connection breaks, every request still unanswered on it counts as one failure.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use openssl::ssl::SslConnector;

use super::client::Stream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A read, write or connect that makes no progress for this long is a `Timeout` failure.
pub const LOAD_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head accepted.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Failure descriptions kept for the report (the counts are always complete).
const FAILURE_SAMPLES_MAX: usize = 20;
/// A thread whose connects keep failing gives up after this many in a row, so a dead
/// server cannot make it spin until the deadline (each one is still counted).
const CONNECT_FAILURES_IN_A_ROW_MAX: u64 = 200;

/// What to request and what must come back.
#[derive(Clone, Debug)]
pub struct LoadTarget {
    pub addr: SocketAddr,
    /// Request target, e.g. `/<signed locator>`.
    pub path: String,
    /// Sent as `Authorization: Bearer <token>` if set.
    pub token: Option<String>,
    /// The exact body every 200 response must carry.
    pub expected_body: Arc<Vec<u8>>,
    /// Speak HTTPS with this client (None: plain HTTP).
    pub tls: Option<SslConnector>,
}

#[derive(Clone, Copy, Debug)]
pub enum LoadMode {
    /// `connections` keep-alive connections, each with `depth` pipelined GETs in flight.
    KeepAlive { connections: usize, depth: usize },
    /// `threads` threads, each opening a new connection per request.
    Churn { threads: usize },
}

/// Bounds of a run: it stops by itself after `duration` or once `requests_max` requests
/// were sent, whichever comes first (and earlier if `LoadHandle::stop` is called).
#[derive(Clone, Copy, Debug)]
pub struct LoadLimits {
    pub duration: Duration,
    pub requests_max: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// `connect` failed (refused, timed out, ...).
    Connect,
    /// ECONNRESET / EPIPE / ECONNABORTED while reading.
    Reset,
    /// EOF before any byte of a response, without a `Connection: close` announced.
    ClosedWithoutAnswer,
    /// EOF in the middle of a response head or body.
    ShortRead,
    /// 2xx but the body differs from the expected block.
    WrongBytes,
    /// A status other than 2xx.
    BadStatus,
    /// No progress within `LOAD_IO_TIMEOUT`.
    Timeout,
    /// A response that cannot be parsed (or is not framed by Content-Length).
    Malformed,
    /// Any other I/O error.
    OtherIo,
}

/// Counts of one run. `failures()` is the sum of every failure kind.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Requests answered 200 with the right bytes.
    pub ok: u64,
    /// Requests re-sent because the response before them said `Connection: close`.
    pub retried: u64,
    /// Connections established.
    pub connections: u64,
    pub connect_failures: u64,
    pub resets: u64,
    pub closed_without_answer: u64,
    pub short_reads: u64,
    pub wrong_bytes: u64,
    pub bad_status: u64,
    pub timeouts: u64,
    pub malformed: u64,
    pub other_io: u64,
    /// Responses that said `Connection: close`.
    pub close_responses: u64,
    /// The first few failures, described, with the time since the run started.
    pub samples: Vec<String>,
    pub elapsed: Duration,
}

impl LoadStats {
    pub fn failures(&self) -> u64 {
        self.connect_failures
            + self.resets
            + self.closed_without_answer
            + self.short_reads
            + self.wrong_bytes
            + self.bad_status
            + self.timeouts
            + self.malformed
            + self.other_io
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "requests_ok={} failures={} retried={} connections={} close_responses={} elapsed={:.2}s rate={:.0}/s \
             [connect={} reset={} closed_without_answer={} short_read={} wrong_bytes={} bad_status={} timeout={} \
             malformed={} other_io={}]",
            self.ok,
            self.failures(),
            self.retried,
            self.connections,
            self.close_responses,
            seconds,
            self.ok as f64 / seconds,
            self.connect_failures,
            self.resets,
            self.closed_without_answer,
            self.short_reads,
            self.wrong_bytes,
            self.bad_status,
            self.timeouts,
            self.malformed,
            self.other_io,
        )
    }

    fn merge(&mut self, other: LoadStats) {
        self.ok += other.ok;
        self.retried += other.retried;
        self.connections += other.connections;
        self.connect_failures += other.connect_failures;
        self.resets += other.resets;
        self.closed_without_answer += other.closed_without_answer;
        self.short_reads += other.short_reads;
        self.wrong_bytes += other.wrong_bytes;
        self.bad_status += other.bad_status;
        self.timeouts += other.timeouts;
        self.malformed += other.malformed;
        self.other_io += other.other_io;
        self.close_responses += other.close_responses;
        for sample in other.samples {
            if self.samples.len() < FAILURE_SAMPLES_MAX {
                self.samples.push(sample);
            }
        }
    }

    fn counter(&mut self, kind: FailureKind) -> &mut u64 {
        match kind {
            FailureKind::Connect => &mut self.connect_failures,
            FailureKind::Reset => &mut self.resets,
            FailureKind::ClosedWithoutAnswer => &mut self.closed_without_answer,
            FailureKind::ShortRead => &mut self.short_reads,
            FailureKind::WrongBytes => &mut self.wrong_bytes,
            FailureKind::BadStatus => &mut self.bad_status,
            FailureKind::Timeout => &mut self.timeouts,
            FailureKind::Malformed => &mut self.malformed,
            FailureKind::OtherIo => &mut self.other_io,
        }
    }
}

/// State shared by the load threads and the handle.
struct Shared {
    target: LoadTarget,
    started: Instant,
    deadline: Instant,
    requests_max: Option<u64>,
    stop: AtomicBool,
    sent: AtomicU64,
    ok: AtomicU64,
    failures: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// Claims one request of the budget; false when the run should send no more.
    fn may_send(&self) -> bool {
        if self.stopping() {
            return false;
        }
        let sent = self.sent.fetch_add(1, Ordering::SeqCst);
        self.requests_max.is_none_or(|max| sent < max)
    }

    fn record_failure(&self, stats: &mut LoadStats, kind: FailureKind, count: u64, detail: &str) {
        if count == 0 {
            return;
        }
        *stats.counter(kind) += count;
        self.failures.fetch_add(count, Ordering::SeqCst);
        let mut samples = self.samples.lock().expect("samples lock");
        if samples.len() < FAILURE_SAMPLES_MAX {
            samples.push(format!(
                "t={:.3}s {kind:?} x{count}: {detail}",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn record_ok(&self, stats: &mut LoadStats) {
        stats.ok += 1;
        self.ok.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running load; `stop` ends it and returns the counts. Dropping it also stops it.
pub struct LoadHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<LoadStats>>,
}

impl LoadHandle {
    /// Starts the load threads at once.
    pub fn start(target: LoadTarget, mode: LoadMode, limits: LoadLimits) -> LoadHandle {
        assert!(
            target.addr.ip().is_loopback(),
            "the load generator only talks to loopback, not {}",
            target.addr
        );
        let started = Instant::now();
        let shared = Arc::new(Shared {
            target,
            started,
            deadline: started + limits.duration,
            requests_max: limits.requests_max,
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        });
        let (count, name) = match mode {
            LoadMode::KeepAlive { connections, .. } => (connections, "load-keepalive"),
            LoadMode::Churn { threads } => (threads, "load-churn"),
        };
        let threads = (0..count)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || match mode {
                        LoadMode::KeepAlive { depth, .. } => keepalive_connection(&shared, depth.max(1)),
                        LoadMode::Churn { .. } => churn_thread(&shared),
                    })
                    .expect("spawn load thread")
            })
            .collect();
        LoadHandle { shared, threads }
    }

    /// Requests answered correctly so far.
    pub fn ok_so_far(&self) -> u64 {
        self.shared.ok.load(Ordering::SeqCst)
    }

    /// Failures counted so far.
    pub fn failures_so_far(&self) -> u64 {
        self.shared.failures.load(Ordering::SeqCst)
    }

    /// Waits until `more` further requests were answered correctly; false at `within`.
    pub fn wait_for_more_ok(&self, more: u64, within: Duration) -> bool {
        let target = self.ok_so_far() + more;
        let deadline = Instant::now() + within;
        while self.ok_so_far() < target {
            if Instant::now() >= deadline || self.all_finished() {
                return self.ok_so_far() >= target;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn all_finished(&self) -> bool {
        self.threads.iter().all(|thread| thread.is_finished())
    }

    /// Stops sending, lets every thread collect the answers it still waits for, and
    /// returns the totals.
    pub fn stop(mut self) -> LoadStats {
        self.finish()
    }

    fn finish(&mut self) -> LoadStats {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut total = LoadStats::default();
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(stats) => total.merge(stats),
                Err(_) => {
                    total.other_io += 1;
                    total.samples.push("a load thread panicked".to_string());
                }
            }
        }
        total.samples = self.shared.samples.lock().expect("samples lock").clone();
        total.elapsed = self.shared.started.elapsed();
        total
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.finish();
        }
    }
}

fn request_bytes(target: &LoadTarget, close: bool) -> Vec<u8> {
    let mut text = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", target.path);
    if let Some(token) = &target.token {
        text.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if close {
        text.push_str("Connection: close\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn connect(target: &LoadTarget) -> io::Result<Stream> {
    if let Some(connector) = &target.tls {
        let stream = super::tls::connect(target.addr, connector, LOAD_IO_TIMEOUT)?;
        return Ok(Stream::Tls(Box::new(stream)));
    }
    let stream = TcpStream::connect_timeout(&target.addr, LOAD_IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(LOAD_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(LOAD_IO_TIMEOUT))?;
    Ok(Stream::Plain(stream))
}

fn classify(error: &io::Error) -> FailureKind {
    match error.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            FailureKind::Reset
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FailureKind::Timeout,
        io::ErrorKind::UnexpectedEof => FailureKind::ShortRead,
        _ => FailureKind::OtherIo,
    }
}

/// One parsed response; the body was compared in place.
struct Answer {
    status: u16,
    close: bool,
    body_matches: bool,
    body_len: usize,
}

/// Reads pipelined responses off one connection.
struct Reader {
    stream: Stream,
    pending: Vec<u8>,
    buffer: Vec<u8>,
}

impl Reader {
    fn new(stream: Stream) -> Reader {
        Reader {
            stream,
            pending: Vec::with_capacity(64 * 1024),
            buffer: vec![0u8; 64 * 1024],
        }
    }

    /// Reads more bytes; Ok(false) on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            match self.stream.read(&mut self.buffer) {
                Ok(0) => return Ok(false),
                Ok(count) => {
                    self.pending.extend_from_slice(&self.buffer[..count]);
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn read_answer(&mut self, expected: &[u8]) -> Result<Answer, (FailureKind, String)> {
        let head_end = loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                break end;
            }
            if self.pending.len() > RESPONSE_HEAD_BYTES_MAX {
                return Err((FailureKind::Malformed, "response head too large".to_string()));
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) if self.pending.is_empty() => {
                    return Err((
                        FailureKind::ClosedWithoutAnswer,
                        "EOF before a response, no Connection: close seen".to_string(),
                    ))
                }
                Ok(false) => {
                    return Err((
                        FailureKind::ShortRead,
                        format!(
                            "EOF inside a response head: {:?}",
                            String::from_utf8_lossy(&self.pending)
                        ),
                    ))
                }
                Err(error) => return Err((classify(&error), format!("reading a response head: {error}"))),
            }
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| (FailureKind::Malformed, format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err((FailureKind::Malformed, format!("bad header line {line:?}")));
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"));
            }
        }
        let Some(length) = length else {
            return Err((FailureKind::Malformed, format!("no usable Content-Length in {head:?}")));
        };
        let body_start = head_end + 4;
        while self.pending.len() < body_start + length {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    return Err((
                        FailureKind::ShortRead,
                        format!(
                            "EOF after {} of {length} body bytes (status {status})",
                            self.pending.len() - body_start
                        ),
                    ))
                }
                Err(error) => {
                    return Err((
                        classify(&error),
                        format!(
                            "after {} of {length} body bytes (status {status}): {error}",
                            self.pending.len() - body_start
                        ),
                    ))
                }
            }
        }
        let body = &self.pending[body_start..body_start + length];
        let answer = Answer {
            status,
            close,
            body_matches: body == expected,
            body_len: length,
        };
        self.pending.drain(..body_start + length);
        Ok(answer)
    }
}

/// Counts one answer as ok or as a failure.
fn judge(shared: &Shared, stats: &mut LoadStats, answer: &Answer) {
    if answer.close {
        stats.close_responses += 1;
    }
    if !(200..300).contains(&answer.status) {
        shared.record_failure(stats, FailureKind::BadStatus, 1, &format!("status {}", answer.status));
    } else if !answer.body_matches {
        shared.record_failure(
            stats,
            FailureKind::WrongBytes,
            1,
            &format!(
                "status {} body of {} bytes differs from the expected {} bytes",
                answer.status,
                answer.body_len,
                shared.target.expected_body.len()
            ),
        );
    } else {
        shared.record_ok(stats);
    }
}

/// One keep-alive connection at a time, keeping `depth` GETs in flight, reconnecting
/// after `Connection: close` and re-sending what was not answered.
fn keepalive_connection(shared: &Shared, depth: usize) -> LoadStats {
    let mut stats = LoadStats::default();
    let request = request_bytes(&shared.target, false);
    let expected = Arc::clone(&shared.target.expected_body);
    // Requests a `Connection: close` left unanswered; they must be sent again.
    let mut to_resend = 0usize;
    let mut connect_failures_in_a_row = 0u64;
    loop {
        if to_resend == 0 && shared.stopping() {
            break;
        }
        let stream = match connect(&shared.target) {
            Ok(stream) => stream,
            Err(error) => {
                shared.record_failure(&mut stats, FailureKind::Connect, 1, &format!("connect: {error}"));
                connect_failures_in_a_row += 1;
                if connect_failures_in_a_row >= CONNECT_FAILURES_IN_A_ROW_MAX {
                    // The unanswered requests will never be answered now.
                    shared.record_failure(
                        &mut stats,
                        FailureKind::Connect,
                        to_resend as u64,
                        "given up re-sending",
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        connect_failures_in_a_row = 0;
        stats.connections += 1;
        // One thread writes and reads in turn, so one stream serves both (a TLS stream
        // cannot be split).
        let mut reader = Reader::new(stream);
        // Re-sent requests first, then new ones up to the depth.
        let mut outstanding = to_resend;
        stats.retried += to_resend as u64;
        to_resend = 0;
        while outstanding < depth && shared.may_send() {
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        // A write error is not yet a failure: a `Connection: close` response may already
        // be waiting to be read (then the unanswered requests are retried). The read
        // decides.
        let mut write_broken = reader.stream.write_all(&request.repeat(outstanding)).is_err();
        loop {
            match reader.read_answer(&expected) {
                Ok(answer) => {
                    outstanding -= 1;
                    judge(shared, &mut stats, &answer);
                    if answer.close {
                        to_resend = outstanding;
                        break;
                    }
                    if !write_broken && shared.may_send() {
                        outstanding += 1;
                        write_broken = reader.stream.write_all(&request).is_err();
                    }
                    if outstanding == 0 {
                        break;
                    }
                }
                Err((kind, detail)) => {
                    shared.record_failure(
                        &mut stats,
                        kind,
                        outstanding as u64,
                        &format!("{outstanding} unanswered on a connection: {detail}"),
                    );
                    break;
                }
            }
        }
    }
    stats
}

/// A new connection per request until the run stops.
fn churn_thread(shared: &Shared) -> LoadStats {
    let mut stats = LoadStats::default();
    let request = request_bytes(&shared.target, true);
    let expected = Arc::clone(&shared.target.expected_body);
    let mut connect_failures_in_a_row = 0u64;
    while shared.may_send() {
        let mut stream = match connect(&shared.target) {
            Ok(stream) => stream,
            Err(error) => {
                shared.record_failure(&mut stats, FailureKind::Connect, 1, &format!("connect: {error}"));
                connect_failures_in_a_row += 1;
                if connect_failures_in_a_row >= CONNECT_FAILURES_IN_A_ROW_MAX {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        connect_failures_in_a_row = 0;
        stats.connections += 1;
        // As for keep-alive: a failed write is judged by what can be read.
        let _ = stream.write_all(&request);
        let mut reader = Reader::new(stream);
        match reader.read_answer(&expected) {
            Ok(answer) => judge(shared, &mut stats, &answer),
            Err((kind, detail)) => shared.record_failure(&mut stats, kind, 1, &detail),
        }
    }
    stats
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
