//! The published `NodeState` (volume set, keys and tokens, the config in force) and its
//! generation, and nothing else. The state is immutable once published; a change
//! (a drive added, a config reloaded) publishes a whole new one with an atomic pointer
//! swap and bumps `generation`. Workers keep their own copy and only look at the shared
//! one when the generation moved, so the request path reads one atomic and takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::chores::CurrentState;
use crate::config::ConfigSource;
use crate::signature::SigningKey;
use crate::volumes::watcher::VolumePublisher;
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

/// The published state and its generation; nothing else.
pub struct Node {
    state: ArcSwap<NodeState>,
    generation: AtomicU64,
}

impl Node {
    pub fn new(state: NodeState) -> Self {
        Node {
            state: ArcSwap::from_pointee(state),
            generation: AtomicU64::new(0),
        }
    }

    /// The current state (for the supervisor, the watcher and background chores).
    pub fn state(&self) -> Arc<NodeState> {
        self.state.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the state by a function of the current one, retried if another writer
    /// published meanwhile (the watcher changes volumes, SIGHUP keys: neither may undo
    /// the other's change).
    pub fn update(&self, change: impl Fn(&NodeState) -> NodeState) {
        self.state.rcu(|current| Arc::new(change(current)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the chores read of the state.
impl CurrentState for Node {
    fn volumes(&self) -> VolumeSet {
        self.state.load().volumes.clone()
    }

    fn signing_key(&self) -> Option<SigningKey> {
        self.state.load().signing_key.clone()
    }
}

/// The watcher changes the volumes and nothing else.
impl VolumePublisher for Node {
    fn current_volumes(&self) -> VolumeSet {
        self.state.load().volumes.clone()
    }

    fn publish_volumes(&self, volumes: VolumeSet) {
        self.update(|current| NodeState {
            volumes: volumes.clone(),
            ..current.clone()
        });
    }
}
