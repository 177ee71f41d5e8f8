//! One worker per core: an OS thread running its own tokio-uring runtime (ring built with
//! COOP_TASKRUN + SINGLE_ISSUER; DEFER_TASKRUN hangs tokio-uring) and accepting on its own
//! SO_REUSEPORT listener. Its state (`Worker`) is `!Send` and never shared; only the
//! `Node` (immutable but for atomics) crosses cores.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_uring::net::TcpListener;

use crate::bufpool::BufferPool;
use crate::limits::CONNECTIONS_PER_WORKER_MAX;
use crate::node::Node;
use crate::server::connection;

/// Submission queue entries per ring: enough for every connection of a busy worker to have
/// an operation queued between two submissions.
const RING_ENTRIES: u32 = 1024;

pub struct Worker {
    pub id: usize,
    pub node: Arc<Node>,
    pub pool: BufferPool,
    rng_state: Cell<u64>,
    date_cache: RefCell<(u64, String)>,
    connections: Cell<usize>,
    connection_closed: Notify,
}

impl Worker {
    pub fn new(id: usize, node: Arc<Node>, seed: u64) -> Self {
        Worker {
            id,
            pool: BufferPool::new(node.budget.clone()),
            node,
            rng_state: Cell::new(seed | 1),
            date_cache: RefCell::new((0, String::new())),
            connections: Cell::new(0),
            connection_closed: Notify::new(),
        }
    }

    /// xorshift64*: request ids and temp-file names need uniqueness, not secrecy.
    pub fn next_random(&self) -> u64 {
        let mut state = self.rng_state.get();
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        self.rng_state.set(state);
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `req-` + 20 of [0-9a-z], as keepstore generates them.
    pub fn new_request_id(&self) -> String {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut id = String::with_capacity(24);
        id.push_str("req-");
        let mut bits = self.next_random();
        for index in 0..20 {
            if index == 10 {
                bits = self.next_random();
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

    pub fn log_request(&self, method: &str, path: &str, status: u16, bytes: u64, started: Instant, request_id: &str) {
        tracing::info!(
            worker = self.id,
            method = %method,
            path = %redact_signatures(path),
            status,
            bytes,
            micros = started.elapsed().as_micros() as u64,
            request_id = %request_id,
            "request"
        );
    }
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

/// Build this thread's ring and serve `listener` until the process exits.
pub fn run(id: usize, node: Arc<Node>, listener: std::net::TcpListener, ready: crossbeam_channel::Sender<usize>) {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(7)
        ^ ((id as u64 + 1) << 48);
    tokio_uring::builder()
        .entries(RING_ENTRIES)
        .uring_builder(&ring)
        .start(async move {
            let listener = TcpListener::from_std(listener);
            let worker = Rc::new(Worker::new(id, node, seed));
            let _ = ready.send(id);
            accept_loop(&listener, worker).await;
        });
}

async fn accept_loop(listener: &TcpListener, worker: Rc<Worker>) {
    loop {
        while worker.connections.get() >= CONNECTIONS_PER_WORKER_MAX {
            worker.connection_closed.notified().await;
        }
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        worker.connections.set(worker.connections.get() + 1);
        let worker = worker.clone();
        tokio_uring::spawn(async move {
            connection::serve(stream, &worker).await;
            worker.connections.set(worker.connections.get() - 1);
            worker.connection_closed.notify_one();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_redacted() {
        assert_eq!(redact_signatures("/abc+11+Adeadbeef@123+Kx"), "/abc+11+A…+Kx");
    }
}
