//! What every worker shares: the published `NodeState` (volume set, keys and tokens), the
//! buffer budget and the drain flag. The state is immutable once published; a change
//! (a drive added, a config reloaded) publishes a whole new one with an atomic pointer
//! swap and bumps `generation`. Workers keep their own copy and only look at the shared
//! one when the generation moved, so the request path reads one atomic and takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::bufpool::BufferBudget;
use crate::chores::{ChoreSettings, Chores};
use crate::config::ConfigSource;
use crate::metrics::Registry;
use crate::server::limiter::RequestLimiter;
use crate::signature::SigningKey;
use crate::volumes::watcher::{WatchEvent, WatcherHandle};
use crate::volumes::VolumeSet;

/// Everything a request is judged and served by.
#[derive(Clone)]
pub struct NodeState {
    pub volumes: VolumeSet,
    /// Present when a signing key is configured: PUT answers are signed (when the request
    /// carried a token) and block reads need a valid signature.
    pub signing_key: Option<SigningKey>,
    /// Reads need a valid signature (when a key is set); a config's `BlobSigning: false`
    /// turns the check off while PUT answers are still signed, as keepstore does.
    pub enforce_signatures: bool,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    /// The cluster config file in force, for `arvados_config_*_timestamp_seconds`.
    pub config_source: Option<Arc<ConfigSource>>,
}

pub struct Node {
    state: ArcSwap<NodeState>,
    generation: AtomicU64,
    pub budget: Arc<BufferBudget>,
    draining: AtomicBool,
    watcher: Option<WatcherHandle>,
    /// Trash and pull queues and their settings (the chore threads take from them).
    pub chores: Chores,
    /// Every worker's and chore's metric counters, summed at scrape.
    pub metrics: Registry,
    /// Size of each worker's verified-copy cache; 0 hashes every read (the default).
    pub verified_cache_entries: usize,
    /// `API.MaxConcurrentRequests` / `MaxQueuedRequests`, shared by every core.
    pub limiter: RequestLimiter,
}

impl Node {
    pub fn new(state: NodeState, budget: Arc<BufferBudget>, watcher: Option<WatcherHandle>) -> Self {
        Node {
            state: ArcSwap::from_pointee(state),
            generation: AtomicU64::new(0),
            budget,
            draining: AtomicBool::new(false),
            watcher,
            chores: Chores::default(),
            metrics: Registry::default(),
            verified_cache_entries: 0,
            limiter: RequestLimiter::unlimited(),
        }
    }

    /// Serve at most `max_active` requests at once, queue `max_queued` more (before the
    /// node is shared; 0 active: no limit).
    pub fn with_request_limits(mut self, max_active: usize, max_queued: usize) -> Self {
        self.limiter = RequestLimiter::new(max_active, max_queued);
        self
    }

    /// Let each worker remember this many verified copies (before the node is shared).
    pub fn with_verified_cache(mut self, entries: usize) -> Self {
        self.verified_cache_entries = entries;
        self
    }

    /// Use these trash settings instead of keepstore's defaults (before the node is shared).
    pub fn with_chore_settings(mut self, settings: ChoreSettings) -> Self {
        self.chores.settings = settings;
        self
    }

    /// The trash settings in force now: the signing TTL (no block younger than it is ever
    /// trashed) follows the current key, which SIGHUP may have changed.
    pub fn chore_settings(&self) -> ChoreSettings {
        let mut settings = self.chores.settings;
        if let Some(key) = self.state().signing_key.as_ref() {
            settings.blob_signing_ttl_secs = key.ttl_secs();
        }
        settings
    }

    /// Ask the volume watcher to look again (a volume just failed); never blocks.
    pub fn nudge_watcher(&self, reason: &'static str) {
        if let Some(watcher) = &self.watcher {
            watcher.nudge(WatchEvent::Rescan(reason));
        }
    }

    /// The current state (for the supervisor, the watcher and background chores).
    pub fn state(&self) -> Arc<NodeState> {
        self.state.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the state; workers pick it up on their next request.
    pub fn publish(&self, state: NodeState) {
        self.state.store(Arc::new(state));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Replace the state by a function of the current one, retried if another writer
    /// published meanwhile (the watcher changes volumes, SIGHUP keys: neither may undo
    /// the other's change).
    pub fn update(&self, change: impl Fn(&NodeState) -> NodeState) {
        self.state.rcu(|current| Arc::new(change(current)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
