//! One volume's drive health: its read and write errors counted in a sliding window
//! (`DRIVE_ERROR_WINDOW_SECS`), and whether it is healthy. Past `DRIVE_ERRORS_MAX` read
//! errors or write errors in the window the volume is unhealthy: it leaves the write
//! rotation (reads are still tried on it: a block may be nowhere else) until a probe
//! (`io::probe_blocking`, run by the `chores::probe` thread) or a client write that began
//! while it was unhealthy succeeds; either clears the window and the reason. A volume
//! that cannot be written (read-only) cannot be probed: it is healthy again once its
//! errors have aged out of the window.
//!
//! This is apart from `Volume::mark_failed`'s rule (any write I/O error keeps the volume
//! out for `VOLUME_RETRY_MS`), which stays as it was: the window adds what a drive that
//! keeps failing deserves, a stay out until it is shown to work, and a reason.
//!
//! Recording is an error path and the check on every write (`is_healthy`) is one atomic
//! load: no lock anywhere. The window is `DRIVE_ERROR_BUCKETS` buckets, each one atomic
//! word holding which time slot it counts and its count. Times are passed in (monotonic
//! milliseconds, `now_ms`), so the rules are tested without waiting.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::limits::{DRIVE_ERRORS_MAX, DRIVE_ERROR_BUCKETS, DRIVE_ERROR_WINDOW_SECS};

/// Milliseconds one bucket spans.
const BUCKET_MS: u64 = DRIVE_ERROR_WINDOW_SECS * 1000 / DRIVE_ERROR_BUCKETS as u64;

/// A bucket word: the time slot (`ms / BUCKET_MS`) above `COUNT_BITS`, its count below.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Monotonic milliseconds since the process first asked (never 0: 0 means "never").
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Which operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// Why a volume is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ReadErrors,
    WriteErrors,
}

impl Reason {
    /// The word `/mounts`, the metrics and the log use.
    pub fn name(self) -> &'static str {
        match self {
            Reason::ReadErrors => "read_errors",
            Reason::WriteErrors => "write_errors",
        }
    }

    const ALL: [Reason; 2] = [Reason::ReadErrors, Reason::WriteErrors];

    fn code(self) -> u8 {
        match self {
            Reason::ReadErrors => 1,
            Reason::WriteErrors => 2,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// Every reason, for the metrics' series.
    pub fn all() -> [Reason; 2] {
        Reason::ALL
    }
}

/// Whether an I/O error says something about the drive. Not counted: the block is not
/// there (ENOENT, ENOTDIR), the file changed under a read (`UnexpectedEof`), the volume is
/// full (ENOSPC, EDQUOT: the write goes to the next volume, as keepstore does), and this
/// process's own limits or cancellations (EMFILE, ENFILE, ENOMEM, EAGAIN, EINTR,
/// ECANCELED), which would take every volume out at once. Everything else is: EIO above
/// all, EROFS (a filesystem that remounted itself read-only after errors), EUCLEAN and
/// EBADMSG (corrupt metadata), ENXIO and ENODEV (a drive gone), EACCES and EPERM (the
/// volume refuses us: not the drive, but the volume cannot take what it is asked).
pub fn is_drive_error(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return false;
    }
    !matches!(
        error.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::ENOTDIR
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EINTR
                | libc::ECANCELED
        )
    )
}

/// Errors of one kind in the last `DRIVE_ERROR_WINDOW_SECS` (55 to 60 s: whole buckets).
#[derive(Debug)]
struct Window {
    buckets: [AtomicU64; DRIVE_ERROR_BUCKETS],
}

impl Window {
    fn new() -> Self {
        Window {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Count one error at `now_ms`.
    fn add(&self, now_ms: u64) {
        let slot = now_ms / BUCKET_MS;
        let bucket = &self.buckets[(slot % DRIVE_ERROR_BUCKETS as u64) as usize];
        let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let count = match word >> COUNT_BITS == slot {
                true => ((word & COUNT_MASK) + 1).min(COUNT_MASK),
                false => 1,
            };
            Some(slot << COUNT_BITS | count)
        });
    }

    /// Errors in the buckets of the window that ends at `now_ms`.
    fn count(&self, now_ms: u64) -> u64 {
        let slot = now_ms / BUCKET_MS;
        let oldest = slot.saturating_sub(DRIVE_ERROR_BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .filter(|word| (oldest..=slot).contains(&(word >> COUNT_BITS)))
            .map(|word| word & COUNT_MASK)
            .sum()
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

/// What recording an error or a success changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Just turned unhealthy; the errors in the window then.
    Unhealthy(Reason, Counts),
    /// Healthy again after `out_ms` unhealthy.
    Recovered {
        out_ms: u64,
    },
}

/// Read and write errors: in the window, or since the volume was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub read: u64,
    pub write: u64,
}

/// A write's start: `Health::write_started`. A write that began before the volume turned
/// unhealthy does not bring it back by succeeding (it may have been in flight past the
/// very errors that took the volume out).
#[derive(Debug, Clone, Copy)]
pub struct WriteStarted {
    episode: u64,
}

/// One volume's health record (`Volume::health`).
#[derive(Debug)]
pub struct Health {
    reads: Window,
    writes: Window,
    read_total: AtomicU64,
    write_total: AtomicU64,
    /// 0: healthy; else the `Reason` code.
    state: AtomicU8,
    /// When it last turned unhealthy (`now_ms`).
    unhealthy_since_ms: AtomicU64,
    /// Times it turned unhealthy (`WriteStarted`).
    episode: AtomicU64,
    /// A probe is running.
    probing: AtomicBool,
    /// When the last probe started (`now_ms`; 0: never).
    probed_at_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            reads: Window::new(),
            writes: Window::new(),
            read_total: AtomicU64::new(0),
            write_total: AtomicU64::new(0),
            state: AtomicU8::new(0),
            unhealthy_since_ms: AtomicU64::new(0),
            episode: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probed_at_ms: AtomicU64::new(0),
        }
    }

    /// One atomic load: checked by every write.
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 0
    }

    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.state.load(Ordering::Relaxed))
    }

    /// Count a drive error (see `is_drive_error`) at `now_ms`; the volume turns unhealthy
    /// when the window holds more than `DRIVE_ERRORS_MAX` of that kind.
    pub fn record_error(&self, op: Op, now_ms: u64) -> Change {
        let (window, total, reason) = match op {
            Op::Read => (&self.reads, &self.read_total, Reason::ReadErrors),
            Op::Write => (&self.writes, &self.write_total, Reason::WriteErrors),
        };
        total.fetch_add(1, Ordering::Relaxed);
        window.add(now_ms);
        if window.count(now_ms) <= DRIVE_ERRORS_MAX {
            return Change::None;
        }
        // Only the error that makes the change reports it.
        match self
            .state
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                self.unhealthy_since_ms.store(now_ms, Ordering::Relaxed);
                self.episode.fetch_add(1, Ordering::AcqRel);
                Change::Unhealthy(reason, self.recent(now_ms))
            }
            Err(_) => Change::None,
        }
    }

    /// Errors in the window ending at `now_ms`.
    pub fn recent(&self, now_ms: u64) -> Counts {
        Counts {
            read: self.reads.count(now_ms),
            write: self.writes.count(now_ms),
        }
    }

    /// Errors since the volume was opened.
    pub fn totals(&self) -> Counts {
        Counts {
            read: self.read_total.load(Ordering::Relaxed),
            write: self.write_total.load(Ordering::Relaxed),
        }
    }

    /// Taken when a write to the volume begins, handed back to `write_succeeded`.
    pub fn write_started(&self) -> WriteStarted {
        WriteStarted {
            episode: self.episode.load(Ordering::Acquire),
        }
    }

    /// A client write (or pull) succeeded: it counts as a successful probe when it began
    /// while the volume was already unhealthy.
    pub fn write_succeeded(&self, started: WriteStarted, now_ms: u64) -> Change {
        if self.is_healthy() || self.episode.load(Ordering::Acquire) != started.episode {
            return Change::None;
        }
        self.recover(now_ms)
    }

    /// Should a probe start now? True (and the probe is then this caller's to finish with
    /// `probe_finished`) when the volume is unhealthy, no probe runs and the last one
    /// started at least `interval_ms` ago.
    pub fn start_probe(&self, now_ms: u64, interval_ms: u64) -> bool {
        if self.is_healthy() {
            return false;
        }
        let last = self.probed_at_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < interval_ms {
            return false;
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.probed_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        true
    }

    /// A probe `start_probe` allowed is over: success clears the window and the reason.
    pub fn probe_finished(&self, succeeded: bool, now_ms: u64) -> Change {
        let change = match succeeded {
            true => self.recover(now_ms),
            false => Change::None,
        };
        self.probing.store(false, Ordering::Release);
        change
    }

    /// For a volume that cannot be probed (read-only): healthy again once every error
    /// has aged out of the window.
    pub fn recover_if_quiet(&self, now_ms: u64) -> Change {
        if self.is_healthy() || self.recent(now_ms) != Counts::default() {
            return Change::None;
        }
        self.recover(now_ms)
    }

    fn recover(&self, now_ms: u64) -> Change {
        self.reads.clear();
        self.writes.clear();
        match self.state.swap(0, Ordering::AcqRel) {
            0 => Change::None,
            _ => Change::Recovered {
                out_ms: now_ms.saturating_sub(self.unhealthy_since_ms.load(Ordering::Relaxed)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::DRIVE_PROBE_INTERVAL_MS;

    const WINDOW_MS: u64 = DRIVE_ERROR_WINDOW_SECS * 1000;
    /// A time well past 0, as the monotonic clock gives after a while.
    const T0: u64 = 1_000_000;

    fn errors(health: &Health, op: Op, count: u64, at_ms: u64) -> Vec<Change> {
        (0..count).map(|_| health.record_error(op, at_ms)).collect()
    }

    #[test]
    fn errors_up_to_the_bound_keep_the_volume_healthy_and_one_more_takes_it_out() {
        let health = Health::new();
        let changes = errors(&health, Op::Write, DRIVE_ERRORS_MAX, T0);
        assert!(changes.iter().all(|change| *change == Change::None));
        assert!(health.is_healthy());
        let counts = Counts {
            read: 0,
            write: DRIVE_ERRORS_MAX + 1,
        };
        assert_eq!(
            health.record_error(Op::Write, T0 + 1),
            Change::Unhealthy(Reason::WriteErrors, counts)
        );
        assert!(!health.is_healthy());
        assert_eq!(health.reason(), Some(Reason::WriteErrors));
        // Only the crossing reports; later errors still count.
        assert_eq!(health.record_error(Op::Write, T0 + 2), Change::None);
        assert_eq!(health.totals().write, DRIVE_ERRORS_MAX + 2);
    }

    #[test]
    fn reads_and_writes_are_counted_apart() {
        let health = Health::new();
        errors(&health, Op::Write, DRIVE_ERRORS_MAX, T0);
        errors(&health, Op::Read, DRIVE_ERRORS_MAX, T0);
        assert!(health.is_healthy(), "{:?}", health.recent(T0));
        assert_eq!(
            health.recent(T0),
            Counts {
                read: DRIVE_ERRORS_MAX,
                write: DRIVE_ERRORS_MAX
            }
        );
        assert!(matches!(
            health.record_error(Op::Read, T0),
            Change::Unhealthy(Reason::ReadErrors, _)
        ));
        assert_eq!(health.reason().map(Reason::name), Some("read_errors"));
    }

    #[test]
    fn errors_age_out_of_the_window() {
        let health = Health::new();
        errors(&health, Op::Write, DRIVE_ERRORS_MAX, T0);
        assert_eq!(health.recent(T0 + WINDOW_MS - BUCKET_MS).write, DRIVE_ERRORS_MAX);
        assert_eq!(health.recent(T0 + WINDOW_MS).write, 0, "gone a window later");
        // So one more error then is only one.
        assert_eq!(health.record_error(Op::Write, T0 + WINDOW_MS), Change::None);
        assert!(health.is_healthy());
        assert_eq!(health.recent(T0 + WINDOW_MS).write, 1);
        assert_eq!(health.totals().write, DRIVE_ERRORS_MAX + 1, "totals never age");
    }

    #[test]
    fn a_volume_failing_each_retried_write_goes_out_within_the_window() {
        // One failed write per VOLUME_RETRY_MS, as `mark_failed` lets them through.
        let health = Health::new();
        let outcomes: Vec<Change> = (0..=DRIVE_ERRORS_MAX)
            .map(|index| health.record_error(Op::Write, T0 + index * crate::limits::VOLUME_RETRY_MS))
            .collect();
        assert!(matches!(
            outcomes.last(),
            Some(Change::Unhealthy(Reason::WriteErrors, _))
        ));
    }

    #[test]
    fn a_bucket_reused_a_window_later_starts_from_zero() {
        let health = Health::new();
        errors(&health, Op::Read, 3, T0);
        // The same bucket index, one whole window later.
        health.record_error(Op::Read, T0 + WINDOW_MS);
        assert_eq!(health.recent(T0 + WINDOW_MS).read, 1);
    }

    #[test]
    fn a_successful_probe_clears_the_window_and_the_reason() {
        let health = Health::new();
        errors(&health, Op::Read, DRIVE_ERRORS_MAX + 1, T0);
        assert!(!health.is_healthy());
        assert!(health.start_probe(T0, DRIVE_PROBE_INTERVAL_MS));
        assert_eq!(health.probe_finished(false, T0), Change::None);
        assert!(!health.is_healthy(), "a failed probe changes nothing");
        let later = T0 + DRIVE_PROBE_INTERVAL_MS;
        assert!(health.start_probe(later, DRIVE_PROBE_INTERVAL_MS));
        assert!(
            !health.start_probe(later, DRIVE_PROBE_INTERVAL_MS),
            "one probe at a time"
        );
        assert_eq!(
            health.probe_finished(true, later + 3),
            Change::Recovered {
                out_ms: DRIVE_PROBE_INTERVAL_MS + 3
            }
        );
        assert!(health.is_healthy() && health.reason().is_none());
        assert_eq!(health.recent(later), Counts::default(), "the window starts afresh");
        assert_eq!(health.totals().read, DRIVE_ERRORS_MAX + 1);
        assert!(!health.start_probe(later + 2 * DRIVE_PROBE_INTERVAL_MS, DRIVE_PROBE_INTERVAL_MS));
    }

    #[test]
    fn probes_are_spaced_by_the_interval() {
        let health = Health::new();
        errors(&health, Op::Write, DRIVE_ERRORS_MAX + 1, T0);
        assert!(health.start_probe(T0, DRIVE_PROBE_INTERVAL_MS));
        assert_eq!(health.probe_finished(false, T0 + 1), Change::None);
        assert!(!health.start_probe(T0 + DRIVE_PROBE_INTERVAL_MS - 1, DRIVE_PROBE_INTERVAL_MS));
        assert!(health.start_probe(T0 + DRIVE_PROBE_INTERVAL_MS, DRIVE_PROBE_INTERVAL_MS));
    }

    #[test]
    fn only_a_write_begun_while_unhealthy_brings_the_volume_back() {
        let health = Health::new();
        let before = health.write_started();
        errors(&health, Op::Write, DRIVE_ERRORS_MAX + 1, T0);
        assert_eq!(
            health.write_succeeded(before, T0 + 1),
            Change::None,
            "in flight across the errors"
        );
        assert!(!health.is_healthy());
        let after = health.write_started();
        assert!(matches!(
            health.write_succeeded(after, T0 + 2),
            Change::Recovered { .. }
        ));
        assert!(health.is_healthy());
        // A success while healthy leaves the window alone: errors still add up.
        errors(&health, Op::Write, DRIVE_ERRORS_MAX, T0 + 3);
        assert_eq!(health.write_succeeded(health.write_started(), T0 + 4), Change::None);
        assert!(matches!(
            health.record_error(Op::Write, T0 + 5),
            Change::Unhealthy(Reason::WriteErrors, _)
        ));
    }

    #[test]
    fn a_volume_that_cannot_be_probed_recovers_once_its_errors_aged_out() {
        let health = Health::new();
        errors(&health, Op::Read, DRIVE_ERRORS_MAX + 1, T0);
        assert_eq!(health.recover_if_quiet(T0 + WINDOW_MS - BUCKET_MS), Change::None);
        assert!(matches!(
            health.recover_if_quiet(T0 + WINDOW_MS),
            Change::Recovered { .. }
        ));
        assert!(health.is_healthy());
    }

    #[test]
    fn which_errors_speak_of_the_drive() {
        let os = io::Error::from_raw_os_error;
        for counted in [
            libc::EIO,
            libc::EROFS,
            libc::EUCLEAN,
            libc::ENXIO,
            libc::EACCES,
            libc::EPERM,
        ] {
            assert!(is_drive_error(&os(counted)), "{counted}");
        }
        for ignored in [
            libc::ENOENT,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EMFILE,
            libc::EAGAIN,
            libc::ECANCELED,
        ] {
            assert!(!is_drive_error(&os(ignored)), "{ignored}");
        }
        assert!(!is_drive_error(&io::ErrorKind::UnexpectedEof.into()));
    }
}
