//! The drive probe: a thread that looks at the current volumes every
//! `DRIVE_PROBE_INTERVAL_MS` and brings back the unhealthy ones that work again
//! (`volume::health`). A writable volume is probed by `volume::io::probe_blocking` (a
//! small temp file written, synced, read back and removed) on a short-lived thread of its
//! own, so a drive that hangs holds up only its own probe, never the others' nor a core;
//! one probe per volume at a time. A read-only volume cannot be probed: it is healthy
//! again once its errors have aged out of the window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::chores::ChoreContext;
use crate::limits::DRIVE_PROBE_INTERVAL_MS;
use crate::volume::{health, io, s3, Volume};

/// The probe loop, as long as the process lives.
pub fn run_probes(context: Arc<ChoreContext>) {
    loop {
        std::thread::sleep(Duration::from_millis(DRIVE_PROBE_INTERVAL_MS));
        for volume in context.state.volumes().all() {
            look_at(volume);
        }
    }
}

/// Probe `volume` if it is unhealthy and due (or, read-only, see if its errors aged out).
fn look_at(volume: &Arc<Volume>) {
    let now = health::now_ms();
    if volume.health.is_healthy() {
        return;
    }
    if !volume.allow_write {
        volume.report(volume.health.recover_if_quiet(now));
        return;
    }
    // Spaced a little under the loop's own period, so each pass finds the volume due.
    if !volume.health.start_probe(now, DRIVE_PROBE_INTERVAL_MS / 2) {
        return;
    }
    let probed = Arc::clone(volume);
    let spawned = std::thread::Builder::new()
        .name("keepring-probe".to_string())
        .spawn(move || probe(&probed));
    if let Err(error) = spawned {
        tracing::warn!(volume = %volume.uuid, error = %error, "cannot start a drive probe");
        volume.health.probe_finished(false, now);
    }
}

fn probe(volume: &Volume) {
    let result = match &volume.s3 {
        Some(bucket) => s3::run_blocking(bucket.probe()).and_then(|answer| answer.map_err(s3::to_io)),
        None => io::probe_blocking(&volume.root, probe_random()),
    };
    if let Err(error) = &result {
        // At debug: a dead drive fails its probe every few seconds; /mounts and the
        // metrics say it is still out.
        tracing::debug!(volume = %volume.uuid, error = %error, "drive probe failed");
    }
    volume.report(volume.health.probe_finished(result.is_ok(), health::now_ms()));
}

/// A temp-name suffix no other writer of this process is using now (two probes of one
/// volume never run at once; request writers draw theirs from their own generators).
fn probe_random() -> u64 {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(1);
    nanos
        ^ PROBES
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
