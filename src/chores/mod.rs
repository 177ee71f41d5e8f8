//! Background chores, off the cores' hot path: the trash list worker, the empty-trash
//! sweep, the pull list worker (keep-protocol.md §3.5, §6) and the drive probe that
//! brings unhealthy volumes back (`probe`). Each runs on its own std
//! thread with plain blocking file and socket I/O; a core worker only hands it a list
//! (`WorkQueue::replace`) and returns. The threads are daemons: they hold no state that
//! must be flushed (every file operation is a single rename, unlink or a temp file
//! renamed into place), so they simply end with the process and never delay a drain.
//!
//! This module owns the settings the chores and the DELETE/untrash handlers share and the
//! queues; `trash` owns trashing on disk, `pull` owns fetching from peers. The settings are
//! replaced whole on SIGHUP (`Chores::reload`): trash on/off, its lifetime and the
//! emptier's interval take effect at once; the worker counts stay those started with.

pub mod probe;
pub mod pull;
pub mod trash;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::bufpool::BufferBudget;
use crate::limits::{
    BLOB_SIGNING_TTL_SECS_DEFAULT, CHORE_WORKERS_DEFAULT, TRASH_CHECK_INTERVAL_SECS_DEFAULT,
    TRASH_LIFETIME_SECS_DEFAULT,
};
use crate::metrics::Registry;
use crate::signature::SigningKey;
use crate::volume::trash::TrashRules;
use crate::volumes::VolumeSet;

/// keepstore's `Collections.{BlobSigningTTL, BlobTrash, BlobTrashLifetime,
/// BlobTrashCheckInterval, BlobTrashConcurrency, BlobDeleteConcurrency,
/// BlobReplicateConcurrency}` and `TLS.Insecure` as the config and flags give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoreSettings {
    /// A block younger than this is never trashed: a client may hold a signature for it.
    pub blob_signing_ttl_secs: u64,
    /// Time from trash to deletion; 0 deletes at once.
    pub trash_lifetime_secs: u64,
    /// 0: the trash emptier does not run.
    pub trash_check_interval_secs: u64,
    /// false: DELETE answers 405 and the trash list is accepted but not acted on.
    pub blob_trash: bool,
    /// Trash list workers; 0 stores lists without acting on them, as keepstore does.
    pub trash_workers: usize,
    /// Deleting threads per volume in an emptier pass; 0 turns the emptier off.
    pub delete_workers: usize,
    /// Pull list workers (at least one runs).
    pub pull_workers: usize,
    /// `TLS.Insecure`: pulls from https peers accept any certificate (self-signed
    /// clusters); false: the peer's certificate is checked against the system's roots.
    pub tls_insecure: bool,
}

impl Default for ChoreSettings {
    fn default() -> Self {
        ChoreSettings {
            blob_signing_ttl_secs: BLOB_SIGNING_TTL_SECS_DEFAULT,
            trash_lifetime_secs: TRASH_LIFETIME_SECS_DEFAULT,
            trash_check_interval_secs: TRASH_CHECK_INTERVAL_SECS_DEFAULT,
            blob_trash: true,
            trash_workers: CHORE_WORKERS_DEFAULT,
            delete_workers: CHORE_WORKERS_DEFAULT,
            pull_workers: CHORE_WORKERS_DEFAULT,
            tls_insecure: false,
        }
    }
}

impl ChoreSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        ChoreSettings {
            blob_signing_ttl_secs: config.blob_signing_ttl_secs,
            trash_lifetime_secs: config.trash_lifetime_secs,
            trash_check_interval_secs: config.trash_check_interval_secs,
            blob_trash: config.blob_trash,
            trash_workers: config.trash_concurrency,
            delete_workers: config.delete_concurrency,
            pull_workers: config.replicate_concurrency.max(1),
            tls_insecure: config.tls_insecure,
        }
    }

    /// What `volume::trash` needs of them.
    pub fn trash_rules(&self) -> TrashRules {
        TrashRules {
            signing_ttl_secs: self.blob_signing_ttl_secs,
            lifetime_secs: self.trash_lifetime_secs,
        }
    }

    /// These settings with the signing TTL of the key in force (SIGHUP may rotate it).
    pub fn with_signing_ttl(mut self, key_ttl_secs: Option<u64>) -> Self {
        if let Some(ttl) = key_ttl_secs {
            self.blob_signing_ttl_secs = ttl;
        }
        self
    }

    /// keepstore runs its trash emptier only with `BlobTrash` on, a check interval above
    /// zero and `BlobDeleteConcurrency` above zero.
    pub fn empties_trash(&self) -> bool {
        self.blob_trash && self.trash_check_interval_secs > 0 && self.delete_workers > 0
    }

    /// The thread counts, fixed once the threads are started: (trash list, deleters per
    /// volume, pull list).
    pub fn workers(&self) -> (usize, usize, usize) {
        (self.trash_workers, self.delete_workers, self.pull_workers)
    }

    /// What the emptier's schedule depends on (a change restarts its wait).
    fn emptier_schedule(&self) -> (bool, u64) {
        (self.blob_trash, self.trash_check_interval_secs)
    }
}

/// A list of work a new list replaces whole (keep-balance sends the complete current list
/// each time; an empty list cancels what is queued). Items being worked on finish.
pub struct WorkQueue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
    in_progress: AtomicU64,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            in_progress: AtomicU64::new(0),
        }
    }
}

impl<T> WorkQueue<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A panic while holding this lock leaves a VecDeque that is still whole.
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn replace(&self, items: Vec<T>) {
        *self.lock() = items.into();
        self.ready.notify_all();
    }

    /// Wait for the next item; it counts as in progress until the guard is dropped.
    pub fn next(&self) -> InProgress<'_, T> {
        let mut items = self.lock();
        loop {
            if let Some(item) = items.pop_front() {
                // Counted under the lock, so pending + in progress never loses an item.
                self.in_progress.fetch_add(1, Ordering::Relaxed);
                return InProgress { queue: self, item };
            }
            items = self.ready.wait(items).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub fn pending(&self) -> u64 {
        self.lock().len() as u64
    }

    pub fn in_progress(&self) -> u64 {
        self.in_progress.load(Ordering::Relaxed)
    }
}

/// An item taken from a `WorkQueue`.
pub struct InProgress<'a, T> {
    queue: &'a WorkQueue<T>,
    pub item: T,
}

impl<T> Drop for InProgress<'_, T> {
    fn drop(&mut self) {
        self.queue.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The chore settings in force and the two queues (shared with the handlers that fill
/// them). The settings are read on every DELETE and trash list item: one atomic load.
pub struct Chores {
    settings: ArcSwap<ChoreSettings>,
    /// Bumped (under this lock) each time the emptier's schedule changes; the emptier
    /// waits on `emptier_wake` for it.
    emptier_changes: Mutex<u64>,
    emptier_wake: Condvar,
    pub trash: WorkQueue<trash::TrashItem>,
    pub pull: WorkQueue<pull::PullItem>,
}

impl Default for Chores {
    fn default() -> Self {
        Chores::new(ChoreSettings::default())
    }
}

/// What `Chores::reload` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// The settings in force from now on.
    pub in_force: ChoreSettings,
    /// The new configuration asks for other worker counts: they need a restart.
    pub workers_differ: bool,
}

impl Chores {
    pub fn new(settings: ChoreSettings) -> Self {
        Chores {
            settings: ArcSwap::from_pointee(settings),
            emptier_changes: Mutex::new(0),
            emptier_wake: Condvar::new(),
            trash: WorkQueue::default(),
            pull: WorkQueue::default(),
        }
    }

    /// The settings in force now (as configured: `ChoreContext::settings` and
    /// `Core::chore_settings` add the current key's signing TTL).
    pub fn settings(&self) -> ChoreSettings {
        **self.settings.load()
    }

    fn emptier_changes(&self) -> MutexGuard<'_, u64> {
        // A counter cannot be left half-written by a panic.
        self.emptier_changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Put a re-read configuration's settings in force (SIGHUP): `BlobTrash`,
    /// `BlobTrashLifetime`, `BlobTrashCheckInterval` and `BlobSigningTTL` apply from the
    /// next DELETE, trash list item and emptier wait; the worker counts stay those the
    /// threads were started with. Wakes the emptier when its schedule changed.
    pub fn reload(&self, configured: ChoreSettings) -> Reloaded {
        let mut changes = self.emptier_changes();
        let running = self.settings();
        let in_force = ChoreSettings {
            trash_workers: running.trash_workers,
            delete_workers: running.delete_workers,
            pull_workers: running.pull_workers,
            ..configured
        };
        self.settings.store(Arc::new(in_force));
        if in_force.emptier_schedule() != running.emptier_schedule() {
            *changes += 1;
            self.emptier_wake.notify_all();
        }
        Reloaded {
            in_force,
            workers_differ: configured.workers() != running.workers(),
        }
    }

    /// How many times the emptier's schedule has changed; read before the settings, then
    /// passed to `wait_for_emptier_change`, no change is missed.
    pub fn emptier_generation(&self) -> u64 {
        *self.emptier_changes()
    }

    /// Wait until the emptier's schedule changes from generation `seen`, or `timeout`
    /// passes (`None`: no timeout). Returns the generation now.
    pub fn wait_for_emptier_change(&self, seen: u64, timeout: Option<Duration>) -> u64 {
        let changes = self.emptier_changes();
        let unchanged = |generation: &mut u64| *generation == seen;
        let changes = match timeout {
            None => self
                .emptier_wake
                .wait_while(changes, unchanged)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(timeout) => {
                self.emptier_wake
                    .wait_timeout_while(changes, timeout, unchanged)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        };
        *changes
    }
}

/// What the chores read of the node's published state (the node implements it; the
/// chores never name it).
pub trait CurrentState: Send + Sync {
    fn volumes(&self) -> VolumeSet;
    fn signing_key(&self) -> Option<SigningKey>;
}

/// Everything a chore thread works with, passed explicitly.
pub struct ChoreContext {
    pub state: Arc<dyn CurrentState>,
    pub chores: Arc<Chores>,
    pub registry: Arc<Registry>,
    /// Pulled blocks are leased from the buffer budget like a request's.
    pub budget: Arc<BufferBudget>,
    /// The process this one replaces (`--term-pid`): the temp sweep starts after it exits.
    pub predecessor_pid: Option<u32>,
}

impl ChoreContext {
    /// The settings in force now: the signing TTL follows the current key.
    pub fn settings(&self) -> ChoreSettings {
        let key_ttl = self.state.signing_key().map(|key| key.ttl_secs());
        self.chores.settings().with_signing_ttl(key_ttl)
    }
}

/// Start the chore threads, as many as the settings ask, and the trash emptier (idle while
/// the settings turn it off). They run until the process exits.
pub fn start(context: &Arc<ChoreContext>) -> std::io::Result<()> {
    let settings = context.chores.settings();
    let spawn = |name: &str, body: fn(Arc<ChoreContext>)| {
        let context = context.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(context))
            .map(drop)
    };
    for _ in 0..settings.trash_workers {
        spawn("keepring-trash", trash::run_trash_list)?;
    }
    spawn("keepring-empty-trash", trash::run_empty_trash)?;
    if !settings.empties_trash() {
        tracing::info!(
            blob_trash = settings.blob_trash,
            interval_secs = settings.trash_check_interval_secs,
            delete_workers = settings.delete_workers,
            "trash emptier idle: disabled by configuration"
        );
    }
    spawn("keepring-temp-sweep", trash::run_temp_sweep)?;
    spawn("keepring-drive-probe", probe::run_probes)?;
    for _ in 0..settings.pull_workers.max(1) {
        spawn("keepring-pull", pull::run_pull_list)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_list_replaces_the_queue_and_in_progress_is_counted() {
        let queue: WorkQueue<u32> = WorkQueue::default();
        queue.replace(vec![1, 2, 3]);
        queue.replace(vec![7, 8]);
        assert_eq!(queue.pending(), 2);
        let taken = queue.next();
        assert_eq!(taken.item, 7);
        assert_eq!((queue.pending(), queue.in_progress()), (1, 1));
        drop(taken);
        assert_eq!(queue.in_progress(), 0);
        queue.replace(Vec::new());
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn a_waiting_worker_wakes_for_a_new_list() {
        let queue: Arc<WorkQueue<u32>> = Arc::new(WorkQueue::default());
        let waiter = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.next().item)
        };
        queue.replace(vec![42]);
        assert_eq!(waiter.join().unwrap(), 42);
    }

    fn settings(blob_trash: bool, lifetime: u64, interval: u64) -> ChoreSettings {
        ChoreSettings {
            blob_trash,
            trash_lifetime_secs: lifetime,
            trash_check_interval_secs: interval,
            ..ChoreSettings::default()
        }
    }

    #[test]
    fn reload_puts_the_trash_settings_in_force_and_keeps_the_worker_counts() {
        let chores = Chores::new(settings(true, 1_209_600, 86_400));
        let reloaded = chores.reload(settings(false, 0, 1));
        assert_eq!(reloaded.in_force, settings(false, 0, 1));
        assert!(!reloaded.workers_differ);
        assert_eq!(chores.settings(), settings(false, 0, 1));
        assert!(!chores.settings().empties_trash());

        let more_workers = ChoreSettings {
            trash_workers: 9,
            delete_workers: 0,
            pull_workers: 7,
            ..settings(true, 60, 5)
        };
        let reloaded = chores.reload(more_workers);
        assert!(reloaded.workers_differ, "worker counts need a restart");
        assert_eq!(
            reloaded.in_force,
            settings(true, 60, 5),
            "only the live settings change"
        );
        assert_eq!(chores.settings().workers(), ChoreSettings::default().workers());
        assert!(chores.settings().empties_trash());
    }

    #[test]
    fn the_emptier_is_woken_when_its_schedule_changes_and_only_then() {
        let chores = Arc::new(Chores::new(settings(true, 1_209_600, 86_400)));
        let seen = chores.emptier_generation();
        chores.reload(settings(true, 0, 86_400));
        assert_eq!(chores.emptier_generation(), seen, "a new lifetime needs no new wait");
        assert_eq!(
            chores.wait_for_emptier_change(seen, Some(Duration::from_millis(10))),
            seen,
            "times out without a change"
        );
        let waiter = {
            let chores = chores.clone();
            std::thread::spawn(move || chores.wait_for_emptier_change(seen, None))
        };
        std::thread::sleep(Duration::from_millis(50));
        let waited_since = std::time::Instant::now();
        chores.reload(settings(true, 0, 1));
        assert_eq!(waiter.join().unwrap(), seen + 1);
        assert!(waited_since.elapsed() < Duration::from_secs(5));
        chores.reload(settings(false, 0, 1));
        assert_eq!(chores.emptier_generation(), seen + 2, "BlobTrash off wakes it too");
        assert_eq!(
            chores.wait_for_emptier_change(seen + 1, Some(Duration::from_secs(60))),
            seen + 2,
            "a change made before the wait is not missed"
        );
    }

    /// A config read as the process reads it, from `collections` lines under
    /// `Collections:` (no environment, no packaged file).
    fn config_with(dir: &std::path::Path, collections: &str, args: &[&str]) -> crate::config::Config {
        use clap::Parser;
        let path = dir.join("config.yml");
        let text = format!(
            "Clusters:\n  zzzzz:\n    Collections:\n      BlobSigningKey: abcdefghijklmnopqrstuvwxyz0123456789\n{collections}\
             \x20   Volumes:\n      zzzzz-nyw5e-000000000000000:\n        Driver: Directory\n        \
             DriverParameters: {{Root: {}}}\n",
            dir.display()
        );
        std::fs::write(&path, text).unwrap();
        let mut argv = vec![
            "keepring",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        let env = crate::config::Environment {
            arvados_config: None,
            service_internal_url: None,
            default_config: "/nonexistent/arvados/config.yml".into(),
        };
        crate::config::Config::resolve(crate::config::Cli::parse_from(argv), &env, None).unwrap()
    }

    #[test]
    fn the_trash_emptier_follows_keepstore() {
        let dir = tempfile::tempdir().unwrap();
        let with = |collections: &str| config_with(dir.path(), collections, &[]);
        let empties = |config: &crate::config::Config| ChoreSettings::from_config(config).empties_trash();
        let config = with("");
        assert!(empties(&config));
        assert_eq!(config.trash_check_interval_secs, 86_400);
        assert!(!empties(&with("      BlobTrashCheckInterval: 0s\n")));
        assert!(!empties(&with("      BlobTrashCheckInterval: -1s\n")));
        assert!(!empties(&with("      BlobTrash: false\n")));
        assert!(!empties(&with("      BlobDeleteConcurrency: 0\n")));
        let config = with("      BlobTrashCheckInterval: 2400h\n      BlobReplicateConcurrency: 0\n");
        assert_eq!(config.trash_check_interval_secs, 8_640_000);
        assert_eq!(config.replicate_concurrency, 1, "at least one pull worker");
        assert!(!empties(&config_with(
            dir.path(),
            "",
            &["--trash-check-interval-secs", "0"]
        )));
    }
}
