//! A connection's deadline, checked by its worker's sweeper instead of a timer per socket
//! operation. A session arms its `Watch` with a deadline before it awaits a read or a
//! write and disarms it after; the worker's sweeper (`server::runtime`) looks at every
//! connection's watch every `WATCH_SWEEP_MS` and shuts down the socket of one whose
//! armed operation is past its deadline, or which waits between requests once a drain's
//! grace is over. The pending io_uring operation then completes (tokio-uring cannot
//! cancel it), and the session, seeing its watch fired, treats the connection as gone.
//!
//! Why not a tokio timer per operation: a small GET awaits a read and a write, and a
//! `tokio::time::timeout` around each (registering, polling and dropping its timer entry,
//! moving the larger future) cost about a twentieth of the instructions keepring spends
//! per request (callgrind); here arming is two stores. The deadlines are tens of seconds
//! (the drain grace, the shortest, 300 ms), so a sweep every 100 ms is precise enough.
//!
//! Times are milliseconds on `CLOCK_MONOTONIC_COARSE` (the kernel's last tick, read from
//! the vDSO without touching the time source).

use std::cell::Cell;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Milliseconds on the coarse monotonic clock (never 0: 0 means "not armed").
pub fn now_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    let ms = match result {
        0 => now.tv_sec.max(0) as u64 * 1000 + now.tv_nsec.max(0) as u64 / 1_000_000,
        // Not on Linux ≥ 2.6.32: the process's own clock still moves forward.
        _ => process_start().elapsed().as_millis() as u64,
    };
    ms.max(1)
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// `now_ms()` plus `after`.
pub fn deadline_after(after: Duration) -> u64 {
    now_ms().saturating_add(after.as_millis() as u64)
}

/// One connection's watch (see the module doc). `!Send`: it lives on its worker's core.
#[derive(Debug)]
pub struct Watch {
    fd: RawFd,
    /// When the armed operation is cut (ms on `now_ms`'s clock); 0: nothing armed.
    deadline_ms: Cell<u64>,
    /// The armed operation is the wait for a next request: a drain may cut it early.
    between_requests: Cell<bool>,
    /// The sweeper cut the armed operation.
    fired: Cell<bool>,
}

impl Watch {
    /// A watch over the socket `fd` (which must stay open as long as the watch is swept:
    /// the connection's task owns both).
    pub fn new(fd: RawFd) -> Self {
        Watch {
            fd,
            deadline_ms: Cell::new(0),
            between_requests: Cell::new(false),
            fired: Cell::new(false),
        }
    }

    /// Cut the operation about to be awaited if it is still pending at `deadline_ms`
    /// (`between_requests`: it is the wait for the next request).
    pub fn arm(&self, deadline_ms: u64, between_requests: bool) {
        self.fired.set(false);
        self.between_requests.set(between_requests);
        self.deadline_ms.set(deadline_ms.max(1));
    }

    /// The operation ended; true when the sweeper cut it (the socket is shut down).
    pub fn disarm(&self) -> bool {
        self.deadline_ms.set(0);
        self.fired.get()
    }

    /// The sweeper's look at this connection at `now` (`draining_past_grace`: the
    /// worker's drain began more than `DRAIN_IDLE_GRACE_MS` ago). Cuts the armed
    /// operation when it is due: a wait between requests by shutting the read side only
    /// (a TLS session can still say close_notify), anything else both sides (a write
    /// blocked on a peer that does not read ends only so). A wait between requests still
    /// pending at the next sweep (a TLS read can be writing: its handshake reply, an
    /// alert, to a peer that does not read) is cut on both sides then. True when it cut.
    pub fn sweep(&self, now: u64, draining_past_grace: bool) -> bool {
        let deadline = self.deadline_ms.get();
        if deadline == 0 {
            return false;
        }
        if self.fired.get() {
            if !self.between_requests.replace(false) {
                return false;
            }
            // SAFETY: as below.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            return true;
        }
        let between_requests = self.between_requests.get();
        if now < deadline && !(between_requests && draining_past_grace) {
            return false;
        }
        self.fired.set(true);
        let how = if between_requests {
            libc::SHUT_RD
        } else {
            libc::SHUT_RDWR
        };
        // SAFETY: the fd is the connection's socket, open while its task (which owns
        // this watch's other end) lives; shutdown only ends its I/O.
        unsafe { libc::shutdown(self.fd, how) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (server, client)
    }

    #[test]
    fn the_coarse_clock_moves_forward_and_deadlines_add_up() {
        let before = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let after = now_ms();
        assert!(after >= before + 20, "{before} → {after}");
        let deadline = deadline_after(Duration::from_secs(10));
        assert!(deadline >= after + 10_000 && deadline <= now_ms() + 10_000);
    }

    #[test]
    fn a_sweep_cuts_only_an_armed_operation_past_its_deadline() {
        let (server, mut client) = pair();
        let watch = Watch::new(server.as_raw_fd());
        let now = now_ms();
        assert!(!watch.sweep(now + 1_000_000, true), "nothing armed: nothing cut");
        watch.arm(now + 5_000, false);
        assert!(
            !watch.sweep(now + 4_999, true),
            "not due, and not a wait between requests"
        );
        assert!(!watch.disarm(), "not fired");
        // Still usable: the sweep did not touch the socket.
        client.write_all(b"x").expect("write");
        let mut byte = [0u8; 1];
        (&server).read_exact(&mut byte).expect("read");
        watch.arm(now + 5_000, false);
        assert!(watch.sweep(now + 5_000, false));
        assert!(!watch.sweep(now + 6_000, false), "cut once");
        assert!(watch.disarm(), "the session learns it was cut");
        // Both sides shut: the server reads end of stream, the client sees the FIN.
        assert_eq!((&server).read(&mut byte).expect("read after shutdown"), 0);
        assert_eq!(client.read(&mut byte).expect("client read"), 0);
    }

    #[test]
    fn a_drain_past_its_grace_cuts_a_wait_between_requests_on_its_read_side_only() {
        let (server, mut client) = pair();
        let watch = Watch::new(server.as_raw_fd());
        let now = now_ms();
        watch.arm(now + 65_000, false);
        assert!(!watch.sweep(now, true), "a request's I/O is not cut by the drain");
        watch.disarm();
        watch.arm(now + 65_000, true);
        assert!(!watch.sweep(now, false), "idle but not draining yet");
        assert!(watch.sweep(now, true));
        assert!(watch.disarm());
        let mut byte = [0u8; 1];
        assert_eq!((&server).read(&mut byte).expect("read after shutdown"), 0);
        // The write side stays open (a TLS close_notify can still go out).
        (&server).write_all(b"y").expect("write after a read-side shutdown");
        client.read_exact(&mut byte).expect("client read");
        assert_eq!(&byte, b"y");
    }

    /// A wait between requests that is still pending a sweep after its read side was
    /// shut (a TLS read writing to a peer that does not read) is cut on both sides, once.
    #[test]
    fn a_wait_between_requests_still_pending_at_the_next_sweep_is_cut_on_both_sides() {
        let (server, mut client) = pair();
        let watch = Watch::new(server.as_raw_fd());
        let now = now_ms();
        watch.arm(now + 10, true);
        assert!(watch.sweep(now + 10, false), "due: read side cut");
        (&server).write_all(b"z").expect("the write side is still open");
        assert!(watch.sweep(now + 110, false), "still pending a sweep later: both sides");
        assert!(!watch.sweep(now + 210, false), "cut once more, not again");
        assert!(watch.disarm());
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).expect("the byte sent before");
        assert_eq!(client.read(&mut byte).expect("client read"), 0, "then the FIN");
        assert!((&server).write_all(b"w").is_err(), "the write side is shut now");
    }
}
