//! The main thread: open volumes, bind, start one worker per core, say `listening on`
//! once every worker accepts, then wait for a signal. (Draining on SIGTERM and the
//! listener hand-over are the zero-downtime issue; today SIGTERM/SIGINT exit at once.)

use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::bufpool::BufferBudget;
use crate::config::Config;
use crate::lifecycle::listeners;
use crate::limits::BUFFER_UNIT_BYTES;
use crate::node::Node;
use crate::server::worker;
use crate::signature::SigningKey;
use crate::volume::Volume;
use crate::volumes::VolumeSet;

/// How long workers get to build their rings and start accepting.
const WORKERS_READY_TIMEOUT_MS: u64 = 10_000;

/// Start-up failures that are the operator's to fix (exit code 2).
pub struct StartError(pub String);

pub fn run(config: Config) -> Result<(), StartError> {
    let mut volumes = Vec::new();
    for dir in &config.volume_dirs {
        let volume = Volume::open_directory(dir)
            .map_err(|error| StartError(format!("cannot use volume {}: {error}", dir.display())))?;
        tracing::info!(volume = %volume.uuid, path = %volume.root.display(), "volume added");
        volumes.push(volume);
    }
    let signing_key = config
        .signing_key
        .as_deref()
        .map(|key| SigningKey::new(key, config.blob_signing_ttl_secs));
    let node = Arc::new(Node::new(
        VolumeSet::new(volumes),
        signing_key,
        config.system_root_token.clone(),
        config.management_token.clone(),
        BufferBudget::new(config.max_buffers * BUFFER_UNIT_BYTES),
    ));
    let (address, sockets) = listeners::bind_all(config.listen, config.workers)
        .map_err(|error| StartError(format!("cannot listen on {}: {error}", config.listen)))?;
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|error| StartError(format!("cannot install signal handlers: {error}")))?;

    let (ready_sender, ready_receiver) = crossbeam_channel::bounded(config.workers);
    for (id, socket) in sockets.into_iter().enumerate() {
        let node = node.clone();
        let ready = ready_sender.clone();
        std::thread::Builder::new()
            .name(format!("keepring-worker-{id}"))
            .spawn(move || worker::run(id, node, socket, ready))
            .map_err(|error| StartError(format!("cannot start worker {id}: {error}")))?;
    }
    for _ in 0..config.workers {
        ready_receiver
            .recv_timeout(Duration::from_millis(WORKERS_READY_TIMEOUT_MS))
            .map_err(|_| StartError("a worker did not start (io_uring unavailable?)".into()))?;
    }
    tracing::info!(workers = config.workers, "listening on {address}");

    let mut signals = signals;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "stopping");
    }
    Ok(())
}
