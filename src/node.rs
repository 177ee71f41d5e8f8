//! What every worker shares: the volume set, keys and tokens, the buffer budget and the
//! drain flag. Built once by the supervisor and handed to each worker in an `Arc`;
//! immutable but for atomics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::bufpool::BufferBudget;
use crate::signature::SigningKey;
use crate::volumes::VolumeSet;

pub struct Node {
    pub volumes: VolumeSet,
    /// Present when `--blob-signing-key-file` was given: PUT answers are signed (when the
    /// request carried a token) and block reads need a valid signature.
    pub signing_key: Option<SigningKey>,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    pub budget: Arc<BufferBudget>,
    draining: AtomicBool,
}

impl Node {
    pub fn new(
        volumes: VolumeSet,
        signing_key: Option<SigningKey>,
        system_root_token: Option<String>,
        management_token: Option<String>,
        budget: Arc<BufferBudget>,
    ) -> Self {
        Node {
            volumes,
            signing_key,
            system_root_token,
            management_token,
            budget,
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
