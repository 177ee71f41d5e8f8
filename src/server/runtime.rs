//! One worker per core: an OS thread running its own tokio-uring runtime (ring built with
//! COOP_TASKRUN + SINGLE_ISSUER; DEFER_TASKRUN hangs tokio-uring) and accepting on its own
//! SO_REUSEPORT listener(s), each connection served by `connection::serve`. Only the
//! `Services` (immutable but for atomics and the chore queues) and the drain signal cross
//! cores.
//!
//! Accepting uses readiness (tokio's epoll-driven listener), not an io_uring accept: an
//! io_uring accept cannot be cancelled by dropping it, so at drain time it would still take
//! one more connection off the shared queue and strand it. Accepted sockets are then
//! served through io_uring.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::context::Services;
use crate::http::watch::Watch;
use crate::limits::{ACTIVITY_COUNT_MS, DRAIN_IDLE_GRACE_MS, LIMIT_WARNING_INTERVAL_MS, WATCH_SWEEP_MS};
use crate::limits::{RING_ENTRIES, SEND_NOTSENT_LOWAT_BYTES};
use crate::server::connection;
use crate::server::worker::{redact_signatures, LiveConnection, Worker};

/// How a worker ended: connections its drain had to cut at the deadline.
#[derive(Debug, Default)]
pub struct WorkerExit {
    pub cut_connections: usize,
    /// The worker thread panicked (its connections ended with it).
    pub panicked: bool,
}

/// Everything a worker thread is started with.
pub struct WorkerStart {
    pub id: usize,
    pub services: Arc<Services>,
    pub listeners: Vec<std::net::TcpListener>,
    pub ready: crossbeam_channel::Sender<usize>,
    pub drain_timeout: Duration,
    /// Connections this worker serves at once.
    pub connections_max: usize,
    /// The listeners serve HTTPS with this certificate (None: plain HTTP).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
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
            let worker = Rc::new(Worker::new(
                start.id,
                services.clone(),
                seed,
                start.connections_max,
                start.tls,
            ));
            let mut accept_tasks = Vec::new();
            for listener in start.listeners {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_tasks.push(tokio_uring::spawn(accept_loop(listener, worker.clone()))),
                    Err(error) => tracing::error!(worker = worker.id(), error = %error, "cannot watch listener"),
                }
            }
            let activity = tokio_uring::spawn(count_activity(worker.clone()));
            // Runs through the drain too: it ends idle connections and stalled transfers.
            let sweeper = tokio_uring::spawn(sweep_deadlines(worker.clone()));
            let hasher = tokio_uring::spawn(worker.core.hasher.clone().run());
            let scrub = tokio_uring::spawn(crate::scrub::run(CoreOf(worker.clone())));
            let _ = start.ready.send(start.id);
            services.drain.begun().await;
            worker.gate.open();
            // The accept loops end at once and drop this worker's copies of the listeners.
            for task in accept_tasks {
                task.abort();
            }
            activity.abort();
            scrub.abort();
            let exit = finish_drain(&worker, start.drain_timeout).await;
            sweeper.abort();
            hasher.abort();
            exit
        })
}

/// The worker's `Core`, held for a task that outlives no worker (the scrubber's).
#[derive(Clone)]
struct CoreOf(Rc<Worker>);

impl std::ops::Deref for CoreOf {
    type Target = crate::api::context::Core;

    fn deref(&self) -> &Self::Target {
        &self.0.core
    }
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
        worker.core.metrics.set_open_connections(live.len() as u64);
        worker.core.metrics.set_md5_counts(worker.core.hasher.counts());
    }
}

/// Every `WATCH_SWEEP_MS`, cut each connection whose socket operation is past its
/// deadline, and once a drain's grace is over, each one waiting for a next request
/// (`http::watch`: a per-operation timer cost a twentieth of a small GET's instructions).
async fn sweep_deadlines(worker: Rc<Worker>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(WATCH_SWEEP_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = crate::http::watch::now_ms();
        let draining_past_grace = worker
            .gate
            .began()
            .is_some_and(|began| began.elapsed() >= Duration::from_millis(DRAIN_IDLE_GRACE_MS));
        for connection in worker.live.borrow().values() {
            connection.watch.sweep(now, draining_past_grace);
        }
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

/// At the limit, make room as nginx does with keep-alive connections: close the least
/// recently used idle one, and say so (a warning at most every `LIMIT_WARNING_INTERVAL_MS`,
/// counters always). With every connection busy, wait for one to end.
async fn make_room(worker: &Worker) {
    let mut closed = 0u64;
    while worker.live.borrow().len() >= worker.connections_max {
        let closing = worker.close_least_recently_used_idle();
        closed += u64::from(closing);
        worker.connection_closed.notified().await;
    }
    worker.core.metrics.connection_limit_reached(closed);
    let now = Instant::now();
    let quiet = worker
        .limit_warned
        .get()
        .is_some_and(|last| now.duration_since(last) < Duration::from_millis(LIMIT_WARNING_INTERVAL_MS));
    if !quiet {
        worker.limit_warned.set(Some(now));
        tracing::warn!(
            worker = worker.id(),
            limit = worker.connections_max,
            closed_idle = closed,
            "connection limit reached: closing idle keep-alive connections to admit new clients"
        );
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, worker: Rc<Worker>) {
    loop {
        if worker.live.borrow().len() >= worker.connections_max {
            make_room(&worker).await;
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
        if let Err(error) = limit_unsent(&stream) {
            tracing::debug!(worker = worker.id(), error = %error, "cannot set TCP_NOTSENT_LOWAT");
        }
        // Non-blocking, as tokio's `into_std` documents, and relied upon: a GET's sendfile
        // must stop at a full socket instead of blocking the core
        // (`Session::write_file_chunk`).
        let id = worker.next_connection_id.get();
        worker.next_connection_id.set(id + 1);
        let live = Rc::new(LiveConnection {
            watch: Rc::new(Watch::new(stream.as_raw_fd())),
            fd: stream.as_raw_fd(),
            request: RefCell::new(String::new()),
            admitted: Cell::new(None),
            idle_since: Cell::new(Some(Instant::now())),
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

/// Bound what a client connection queues unsent (`SEND_NOTSENT_LOWAT_BYTES`).
fn limit_unsent(stream: &impl AsRawFd) -> std::io::Result<()> {
    set_notsent_lowat(stream, SEND_NOTSENT_LOWAT_BYTES)
}

fn set_notsent_lowat(stream: &impl AsRawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid pointer.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notsent_lowat(stream: &impl AsRawFd) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `length` bytes into `value`.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
        value
    }

    #[test]
    fn an_accepted_connection_queues_little_unsent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        // Another value first, so the check cannot pass on a host whose default is ours.
        let other: libc::c_int = 1;
        set_notsent_lowat(&accepted, other).expect("setsockopt");
        assert_eq!(notsent_lowat(&accepted), other);
        limit_unsent(&accepted).expect("setsockopt");
        assert_eq!(notsent_lowat(&accepted), SEND_NOTSENT_LOWAT_BYTES);
    }
}
