//! The set of volumes a node serves: immutable once built, shared by every worker, sorted
//! by UUID (the order `/mounts` and the index use). `placement` orders it per block.

pub mod discovery;
pub mod placement;
pub mod watcher;

use std::sync::Arc;

use crate::volume::Volume;

#[derive(Debug, Clone, Default)]
pub struct VolumeSet {
    volumes: Vec<Arc<Volume>>,
}

impl VolumeSet {
    pub fn new(mut volumes: Vec<Volume>) -> Self {
        volumes.sort_by(|left, right| left.uuid.cmp(&right.uuid));
        VolumeSet {
            volumes: volumes.into_iter().map(Arc::new).collect(),
        }
    }

    /// A set of already-open volumes (the watcher keeps the ones that did not change).
    pub fn from_shared(mut volumes: Vec<Arc<Volume>>) -> Self {
        volumes.sort_by(|left, right| left.uuid.cmp(&right.uuid));
        VolumeSet { volumes }
    }

    /// Volumes in UUID order.
    pub fn all(&self) -> &[Arc<Volume>] {
        &self.volumes
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Arc<Volume>> {
        self.volumes.iter().find(|volume| volume.uuid == uuid)
    }

    /// Volumes in the order a block is looked for and written (keep-protocol.md §5).
    /// References, not clones: bumping the shared refcounts on every request would bounce
    /// their cache lines between cores.
    pub fn ordered_for(&self, hash: &str) -> Vec<&Arc<Volume>> {
        placement::order(hash, &self.volumes)
            .into_iter()
            .map(|index| &self.volumes[index])
            .collect()
    }
}
