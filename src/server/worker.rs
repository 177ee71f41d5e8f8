//! One worker per core: an OS thread running its own tokio-uring runtime (ring built with
//! COOP_TASKRUN + SINGLE_ISSUER; DEFER_TASKRUN hangs tokio-uring) and accepting on its own
//! SO_REUSEPORT listener(s). Its state (`Worker`, with the handlers' `Core`) is `!Send`
//! and never shared; only the `Services` (immutable but for atomics and the chore
//! queues) and the drain signal cross cores.
//!
//! Accepting uses readiness (tokio's epoll-driven listener), not an io_uring accept: an
//! io_uring accept cannot be cancelled by dropping it, so at drain time it would still take
//! one more connection off the shared queue and strand it. Accepted sockets are then
//! served through io_uring.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::api::context::{Core, Services};
use crate::http::request::{Framing, Head};
use crate::lifecycle::drain::Gate;
use crate::limits::{ACTIVITY_COUNT_MS, CONNECTIONS_PER_WORKER_MAX};
use crate::server::connection;

/// Submission queue entries per ring: enough for every connection of a busy worker to have
/// an operation queued between two submissions.
const RING_ENTRIES: u32 = 1024;

/// A connection as its worker sees it, so a drain that times out can say what it cut.
pub struct LiveConnection {
    pub fd: RawFd,
    /// `METHOD path request-id` of the request being served; empty between requests.
    pub request: RefCell<String>,
    /// When the request being served arrived, once the limiter admitted it; None between
    /// requests and while one waits in the limiter's queue.
    pub admitted: Cell<Option<Instant>>,
    pub peer: SocketAddr,
}

/// One core's server side: its handler context (`core`), its connections, its drain gate.
pub struct Worker {
    /// What handlers on this core see (state copy, buffer pool, caches, counters).
    pub core: Core,
    date_cache: RefCell<(u64, String)>,
    live: RefCell<HashMap<u64, Rc<LiveConnection>>>,
    next_connection_id: Cell<u64>,
    connection_closed: Notify,
    /// This core's drain gate; every session on the core holds it.
    pub gate: Rc<Gate>,
}

/// How a worker ended: connections its drain had to cut at the deadline.
#[derive(Debug, Default)]
pub struct WorkerExit {
    pub cut_connections: usize,
    /// The worker thread panicked (its connections ended with it).
    pub panicked: bool,
}

impl Worker {
    pub fn new(id: usize, services: Arc<Services>, seed: u64) -> Self {
        Worker {
            core: Core::new(id, services, seed),
            date_cache: RefCell::new((0, String::new())),
            live: RefCell::new(HashMap::new()),
            next_connection_id: Cell::new(0),
            connection_closed: Notify::new(),
            gate: Rc::new(Gate::default()),
        }
    }

    pub fn id(&self) -> usize {
        self.core.id
    }

    /// `req-` + 20 of [0-9a-z], as keepstore generates them.
    pub fn new_request_id(&self) -> String {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut id = String::with_capacity(24);
        id.push_str("req-");
        let mut bits = self.core.next_random();
        for index in 0..20 {
            if index == 10 {
                bits = self.core.next_random();
            }
            id.push(ALPHABET[(bits % 36) as usize] as char);
            bits /= 36;
        }
        id
    }

    /// The `Date` header value, formatted once per second per worker.
    pub fn http_date(&self) -> String {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let mut cache = self.date_cache.borrow_mut();
        if cache.0 != second || cache.1.is_empty() {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        cache.1.clone()
    }

    /// The one place a request is logged and counted.
    pub fn log_request(&self, answered: &Answered<'_>) {
        let micros = answered.started.elapsed().as_micros() as u64;
        let head = answered.head;
        let method = if head.method.is_empty() {
            "-"
        } else {
            head.method.as_str()
        };
        self.core
            .metrics
            .request(method, answered.status, answered.bytes_in, answered.bytes_out, micros);
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        if crate::logging::json_request_lines() {
            log_json_line(answered, micros);
            return;
        }
        let path = if head.path.is_empty() { "-" } else { head.path.as_str() };
        tracing::info!(
            worker = self.core.id,
            method = %method,
            path = %redact_signatures(path),
            status = answered.status,
            bytes = answered.bytes_out,
            bytes_in = answered.bytes_in,
            micros,
            request_id = %answered.request_id,
            "request"
        );
    }
}

/// One answered request, as the log line and the counters see it.
pub struct Answered<'a> {
    /// `Head::default()` when the head could not be parsed.
    pub head: &'a Head,
    pub peer: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    pub started: Instant,
    pub request_id: &'a str,
}

/// keepstore's response log line (sdk/go/httpserver/logger.go), field for field, so log
/// pipelines built for keepstore keep working. Signatures and `api_token` values are
/// redacted.
fn log_json_line(answered: &Answered<'_>, micros: u64) {
    let head = answered.head;
    let req_bytes: i64 = match head.framing {
        Some(Framing::Length(length)) => length as i64,
        Some(Framing::Chunked) => -1,
        None => 0,
    };
    let status = if answered.status == 0 { 200 } else { answered.status };
    tracing::info!(
        RequestID = %answered.request_id,
        remoteAddr = %answered.peer.map(|peer| peer.to_string()).unwrap_or_default(),
        reqForwardedFor = %head.forwarded_for.as_deref().unwrap_or(""),
        reqMethod = %head.method,
        reqHost = %head.host.as_deref().unwrap_or(""),
        reqPath = %redact_signatures(head.path.strip_prefix('/').unwrap_or(&head.path)),
        reqQuery = %redact_query(&head.query),
        reqBytes = req_bytes,
        respStatusCode = status,
        respStatus = crate::error::reason_phrase(status),
        respBytes = answered.bytes_out,
        timeTotal = (micros as f64 / 1e6),
        "response"
    );
}

/// `api_token=<secret>` → `api_token=…` in a query string.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("api_token", _)) => "api_token=…".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Permission signatures are credentials: logs show `+A…` instead.
pub fn redact_signatures(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (index, part) in path.split('+').enumerate() {
        if index > 0 {
            out.push('+');
        }
        if index > 0 && part.starts_with('A') {
            out.push_str("A…");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Everything a worker thread is started with.
pub struct WorkerStart {
    pub id: usize,
    pub services: Arc<Services>,
    pub listeners: Vec<std::net::TcpListener>,
    pub ready: crossbeam_channel::Sender<usize>,
    pub drain_timeout: Duration,
}

/// Build this thread's ring, serve until a drain completes (or times out).
pub fn run(start: WorkerStart) -> WorkerExit {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(7)
        ^ ((start.id as u64 + 1) << 48);
    tokio_uring::builder()
        .entries(RING_ENTRIES)
        .uring_builder(&ring)
        .start(async move {
            let services = start.services;
            let worker = Rc::new(Worker::new(start.id, services.clone(), seed));
            let mut accept_tasks = Vec::new();
            for listener in start.listeners {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_tasks.push(tokio_uring::spawn(accept_loop(listener, worker.clone()))),
                    Err(error) => tracing::error!(worker = worker.id(), error = %error, "cannot watch listener"),
                }
            }
            let activity = tokio_uring::spawn(count_activity(worker.clone()));
            let _ = start.ready.send(start.id);
            services.drain.begun().await;
            worker.gate.open();
            // The accept loops end at once and drop this worker's copies of the listeners.
            for task in accept_tasks {
                task.abort();
            }
            activity.abort();
            finish_drain(&worker, start.drain_timeout).await
        })
}

/// Every `ACTIVITY_COUNT_MS`, count this worker's requests in progress and the oldest one
/// for `/metrics` (`arvados_concurrent_requests`, `arvados_max_active_request_age_seconds`),
/// as keepstore refreshes those gauges every second: the request path itself pays nothing.
async fn count_activity(worker: Rc<Worker>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(ACTIVITY_COUNT_MS));
    loop {
        ticks.tick().await;
        let live = worker.live.borrow();
        let started = live.values().filter_map(|connection| connection.admitted.get());
        let (count, oldest) = started.fold((0u64, None), |(count, oldest): (u64, Option<Instant>), at| {
            (count + 1, Some(oldest.map_or(at, |oldest| oldest.min(at))))
        });
        let oldest_micros = oldest.map_or(0, |oldest| {
            let now = crate::metrics::unix_micros(SystemTime::now());
            now.saturating_sub(oldest.elapsed().as_micros() as u64).max(1)
        });
        worker.core.metrics.set_activity(count, oldest_micros);
    }
}

/// Wait for every connection to end; at the deadline cut the rest and say which.
async fn finish_drain(worker: &Worker, timeout: Duration) -> WorkerExit {
    let deadline = tokio::time::Instant::now() + timeout;
    while !worker.live.borrow().is_empty() {
        if tokio::time::timeout_at(deadline, worker.connection_closed.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let live: Vec<Rc<LiveConnection>> = worker.live.borrow().values().cloned().collect();
    for connection in &live {
        let request = connection.request.borrow();
        let state = if request.is_empty() { "idle" } else { request.as_str() };
        tracing::warn!(worker = worker.id(), request = %redact_signatures(state), "drain timeout: cutting connection");
        // SAFETY: the fd stays open until its task drops the stream; shutdown only ends I/O.
        unsafe { libc::shutdown(connection.fd, libc::SHUT_RDWR) };
    }
    WorkerExit {
        cut_connections: live.len(),
        panicked: false,
    }
}

/// A connection's entry in its worker's live set, removed when the task ends (or unwinds).
struct Registered<'a> {
    worker: &'a Worker,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.worker.live.borrow_mut().remove(&self.id);
        self.worker.connection_closed.notify_waiters();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, worker: Rc<Worker>) {
    loop {
        while worker.live.borrow().len() >= CONNECTIONS_PER_WORKER_MAX {
            worker.connection_closed.notified().await;
        }
        let (stream, peer) = match listener
            .accept()
            .await
            .and_then(|(stream, peer)| Ok((stream.into_std()?, peer)))
        {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id(), error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Non-blocking, as tokio's `into_std` documents, and relied upon: a GET's sendfile
        // must stop at a full socket instead of blocking the core
        // (`Connection::write_file_chunk`).
        let id = worker.next_connection_id.get();
        worker.next_connection_id.set(id + 1);
        let live = Rc::new(LiveConnection {
            fd: stream.as_raw_fd(),
            request: RefCell::new(String::new()),
            admitted: Cell::new(None),
            peer,
        });
        worker.live.borrow_mut().insert(id, live.clone());
        let worker = worker.clone();
        tokio_uring::spawn(async move {
            // Deregisters even if serving panics, so a drain never waits for a dead task.
            let _registered = Registered { worker: &worker, id };
            let stream = tokio_uring::net::TcpStream::from_std(stream);
            connection::serve(stream, &worker, &live).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_redacted() {
        assert_eq!(redact_signatures("/abc+11+Adeadbeef@123+Kx"), "/abc+11+A…+Kx");
        assert_eq!(redact_query("prefix=ab&api_token=secret"), "prefix=ab&api_token=…");
    }
}
