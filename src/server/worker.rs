//! One core's server-side state (`Worker`): the handlers' `Core`, the live connections
//! (so a drain that times out can say what it cut), the drain gate, the `Date` cache and
//! request ids, and the one place a request is logged and counted. `!Send`: it never
//! leaves its core.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::api::context::{Core, Services};
use crate::http::request::{Framing, Head};
use crate::http::watch::Watch;
use crate::lifecycle::drain::Gate;
use crate::tls::ServerTls;

/// A connection as its worker sees it, so a drain that times out can say what it cut.
pub struct LiveConnection {
    pub fd: RawFd,
    /// `METHOD path request-id` of the request being served; empty between requests.
    pub request: RefCell<String>,
    /// When the request being served arrived, once the limiter admitted it; None between
    /// requests and while one waits in the limiter's queue.
    pub admitted: Cell<Option<Instant>>,
    /// Since when it waits for its next request (None while one is served): the least
    /// recently used idle connection is closed first when the limit is reached.
    pub idle_since: Cell<Option<Instant>>,
    pub peer: SocketAddr,
    /// The deadline of its socket operation in progress, enforced by the worker's sweeper.
    pub watch: Rc<Watch>,
}

/// One core's server side: its handler context (`core`), its connections, its drain gate.
pub struct Worker {
    /// What handlers on this core see (state copy, buffer pool, caches, counters).
    pub core: Core,
    date_cache: RefCell<(u64, String)>,
    pub(super) live: RefCell<HashMap<u64, Rc<LiveConnection>>>,
    pub(super) next_connection_id: Cell<u64>,
    pub(super) connection_closed: Notify,
    /// This core's drain gate; every session on the core holds it.
    pub gate: Rc<Gate>,
    /// Connections this core serves at once (its share of `--max-connections`).
    pub(super) connections_max: usize,
    /// When this core last warned that its connection limit was reached.
    pub(super) limit_warned: Cell<Option<Instant>>,
    /// The HTTPS listener's certificate in force (shared by every core, swapped by a
    /// reload); None: plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
}

impl Worker {
    pub fn new(
        id: usize,
        services: Arc<Services>,
        seed: u64,
        connections_max: usize,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        Worker {
            tls,
            connections_max: connections_max.max(1),
            limit_warned: Cell::new(None),
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

    /// At the connection limit: close the least recently used idle connection (shut down:
    /// its pending read ends, its task frees the slot). False when every one is busy.
    pub fn close_least_recently_used_idle(&self) -> bool {
        let live = self.live.borrow();
        let oldest = live
            .values()
            .filter_map(|connection| Some((connection.idle_since.get()?, connection)))
            .min_by_key(|(since, _)| *since);
        let Some((_, connection)) = oldest else {
            return false;
        };
        // Chosen once: it is no longer idle in the eyes of the next eviction.
        connection.idle_since.set(None);
        // SAFETY: the fd stays open until its task drops the stream; shutdown only ends I/O.
        unsafe { libc::shutdown(connection.fd, libc::SHUT_RDWR) };
        true
    }

    /// `req-` + 20 of [0-9a-z], as keepstore generates them, written over `out` (its
    /// allocation is kept from one request to the next).
    pub fn write_request_id(&self, out: &mut String) {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut id = *b"req-00000000000000000000";
        // Each digit is the next base-36 digit of `bits` read as a fraction in [0, 1): a
        // multiply instead of a division (ten digits use 52 of its 64 bits).
        let mut bits = self.core.next_random();
        for (index, digit) in id[4..].iter_mut().enumerate() {
            if index == 10 {
                bits = self.core.next_random();
            }
            let scaled = u128::from(bits) * 36;
            *digit = ALPHABET[(scaled >> 64) as usize];
            bits = scaled as u64;
        }
        out.clear();
        // ASCII by construction.
        out.push_str(std::str::from_utf8(&id).unwrap_or("req-"));
    }

    /// The `Date` header value written over `out`; formatted once per second per worker
    /// (the second from the coarse clock: no time-source read per request).
    pub fn write_http_date(&self, out: &mut String) {
        let second = coarse_unix_seconds();
        let mut cache = self.date_cache.borrow_mut();
        if cache.0 != second || cache.1.is_empty() {
            let now = UNIX_EPOCH + Duration::from_secs(second);
            *cache = (second, httpdate::fmt_http_date(now));
        }
        out.clear();
        out.push_str(&cache.1);
    }

    /// The one place a request is logged and counted.
    pub fn log_request(&self, answered: &Answered<'_>) {
        let micros = answered.elapsed.as_micros() as u64;
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

/// Whole seconds since the epoch from `CLOCK_REALTIME_COARSE` (the kernel's last tick:
/// a memory read, no time-source read; behind by at most a tick, which a one-second
/// `Date` header cannot show).
fn coarse_unix_seconds() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    match result {
        0 => now.tv_sec.max(0) as u64,
        _ => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0),
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
    /// From the head's arrival to the answer's last byte.
    pub elapsed: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_redacted() {
        assert_eq!(redact_signatures("/abc+11+Adeadbeef@123+Kx"), "/abc+11+A…+Kx");
        assert_eq!(redact_query("prefix=ab&api_token=secret"), "prefix=ab&api_token=…");
    }
}
