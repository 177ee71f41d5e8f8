//! What a handler may use, and nothing of the connection or the worker around it.
//!
//! `Services` is what every core shares, built once by the supervisor: the published
//! node state, the buffer budget, the chore queues, the metrics registry, the volume
//! watcher's nudge, the request limiter, the drain signal and the helper pool that takes
//! blocking work off the cores. `Core` is one worker's own handler context: its copy of
//! the published state, its buffer pool, its verified-copy cache, its metric recorder,
//! its handle on the helper pool and its random numbers. Handlers take a `&Core`, the
//! request head and the `http::session::Session`, and return a `Reply`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::api::body::SlowBodies;
use crate::api::limiter::RequestLimiter;
use crate::blocking;
use crate::bufpool::{BufferBudget, BufferPool};
use crate::chores::{ChoreSettings, Chores};
use crate::digest::VerifiedCache;
use crate::hasher::Hasher;
use crate::lifecycle::drain::Drain;
use crate::md5lanes::Kernel;
use crate::metrics::{Recorder, Registry};
use crate::node::{Node, NodeState};
use crate::volumes::watcher::{WatchEvent, WatcherHandle};

/// Shared by every core (and the supervisor), built once before the workers start.
pub struct Services {
    pub node: Arc<Node>,
    pub budget: Arc<BufferBudget>,
    /// Trash and pull queues and their settings (the chore threads take from them).
    pub chores: Arc<Chores>,
    /// Every worker's and chore's metric counters, summed at scrape.
    pub registry: Arc<Registry>,
    /// Asks the volume watcher to look again (a volume just failed).
    pub watcher: Option<WatcherHandle>,
    /// `API.MaxConcurrentRequests` / `MaxQueuedRequests`.
    pub limiter: RequestLimiter,
    pub drain: Arc<Drain>,
    /// Size of each worker's verified-copy cache; 0 hashes every read (the default).
    pub verified_cache_entries: usize,
    /// Big request bodies in progress, so a request short of budget can cut the slowest.
    pub slow_bodies: SlowBodies,
    /// The MD5 kernel every core's hasher runs (`md5lanes::Kernel::detect`).
    pub md5_kernel: Kernel,
    /// The helper threads: every blocking call a handler needs runs there.
    pub helpers: blocking::Pool,
    /// What the background scrubber (`crate::scrub`) runs by.
    pub scrub: ScrubSettings,
}

/// `--scrub-interval-secs`, `--scrub-rate-mb` and how many workers share the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSettings {
    /// 0: the scrubber does not run.
    pub interval_secs: u64,
    /// Per volume; 0: no bound.
    pub rate_bytes_per_sec: u64,
    /// Each volume is scrubbed by one worker of this many (by its UUID).
    pub workers: usize,
}

impl ScrubSettings {
    pub const OFF: ScrubSettings = ScrubSettings {
        interval_secs: 0,
        rate_bytes_per_sec: 0,
        workers: 1,
    };
}

impl Services {
    /// Services around `node` with defaults: an unlimited limiter, no watcher, default
    /// chore settings, no verified-copy cache (tests and benchmarks).
    pub fn new(node: Arc<Node>, budget: Arc<BufferBudget>, helpers: blocking::Pool) -> Services {
        Services {
            node,
            budget,
            chores: Arc::new(Chores::default()),
            registry: Arc::new(Registry::default()),
            watcher: None,
            limiter: RequestLimiter::unlimited(),
            drain: Arc::new(Drain::default()),
            verified_cache_entries: 0,
            slow_bodies: SlowBodies::default(),
            md5_kernel: Kernel::best(),
            helpers,
            scrub: ScrubSettings::OFF,
        }
    }
}

/// A request in progress on a core (`Core::serving`).
pub struct Serving<'a> {
    core: &'a Core,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let in_progress = &self.core.requests_in_progress;
        in_progress.set(in_progress.get().saturating_sub(1));
    }
}

/// One worker's handler context. `!Send`: it never leaves its core.
/// A worker's handle on the published state. The Rc around the Arc is deliberate: a
/// request clones the Rc (a plain increment) instead of the Arc, whose shared refcount
/// would bounce between cores.
#[allow(clippy::redundant_allocation)]
pub type StateRef = Rc<Arc<NodeState>>;

pub struct Core {
    pub id: usize,
    pub services: Arc<Services>,
    pub pool: BufferPool,
    rng_state: Cell<u64>,
    /// This worker's copy of the published state and the generation it was taken at. The
    /// Rc around the Arc is deliberate: requests clone the Rc (a plain increment) instead
    /// of the Arc, whose shared refcount would bounce between cores.
    #[allow(clippy::redundant_allocation)]
    state_cache: RefCell<(u64, Rc<Arc<NodeState>>)>,
    /// Stored copies this worker verified (`--verified-cache-entries`; empty when off).
    pub verified: RefCell<VerifiedCache>,
    /// This worker's metric counters (written only here, summed at scrape).
    pub metrics: Recorder,
    /// This core's batched MD5 hasher (its task runs beside the connections).
    pub hasher: Rc<Hasher>,
    /// This worker's handle on the helper pool (`Services::helpers`).
    pub helpers: blocking::Pool,
    /// Requests begun so far on this core and requests in progress now: what background
    /// work (the scrubber) looks at to give way to clients.
    requests_begun: Cell<u64>,
    requests_in_progress: Cell<u32>,
}

impl Core {
    pub fn new(id: usize, services: Arc<Services>, seed: u64) -> Core {
        Core {
            id,
            pool: BufferPool::new(services.budget.clone()),
            rng_state: Cell::new(seed | 1),
            state_cache: RefCell::new((services.node.generation(), Rc::new(services.node.state()))),
            verified: RefCell::new(VerifiedCache::new(services.verified_cache_entries)),
            metrics: services.registry.register(),
            hasher: Hasher::new(services.md5_kernel),
            helpers: services.helpers.clone(),
            services,
            requests_begun: Cell::new(0),
            requests_in_progress: Cell::new(0),
        }
    }

    /// A request was admitted on this core: it counts as in progress until the guard is
    /// dropped (its answer went, or its connection ended).
    pub fn serving(&self) -> Serving<'_> {
        self.requests_begun.set(self.requests_begun.get() + 1);
        self.requests_in_progress.set(self.requests_in_progress.get() + 1);
        Serving { core: self }
    }

    /// Requests begun so far, to compare with a later reading: the core is idle between
    /// two readings when the count did not move and nothing is in progress.
    pub fn requests_begun(&self) -> u64 {
        self.requests_begun.get()
    }

    pub fn is_serving(&self) -> bool {
        self.requests_in_progress.get() > 0
    }

    /// The node state this request is served by: the worker's own copy, refreshed only
    /// when the published generation moved (one atomic load; no lock, no shared refcount).
    #[allow(clippy::redundant_allocation)]
    pub fn state(&self) -> StateRef {
        let generation = self.services.node.generation();
        let mut cache = self.state_cache.borrow_mut();
        if cache.0 != generation {
            *cache = (generation, Rc::new(self.services.node.state()));
        }
        cache.1.clone()
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

    /// An empty buffer for a body of up to `capacity` bytes: the budget's spare one if it
    /// fits (its pages are already mapped), else a new one.
    pub fn body_buffer(&self, capacity: usize) -> Vec<u8> {
        self.services
            .budget
            .take_spare(capacity)
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Offer a finished PUT's buffer to the budget as its spare.
    pub fn keep_body_buffer(&self, buffer: Vec<u8>) {
        // A draining process leaves the shared budget to its successor.
        if !self.services.drain.is_draining() {
            self.services.budget.keep_spare(buffer);
        }
    }

    /// The trash settings in force now: the signing TTL (no block younger than it is ever
    /// trashed) follows the current key, which SIGHUP may have changed.
    pub fn chore_settings(&self) -> ChoreSettings {
        let key_ttl = self.state().signing_key.as_ref().map(|key| key.ttl_secs());
        self.services.chores.settings().with_signing_ttl(key_ttl)
    }

    /// Ask the volume watcher to look again (a volume just failed); never blocks.
    pub fn nudge_watcher(&self, reason: &'static str) {
        if let Some(watcher) = &self.services.watcher {
            watcher.nudge(WatchEvent::Rescan(reason));
        }
    }
}
