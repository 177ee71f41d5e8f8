//! The trash chores, each on its own thread: the trash list worker, the trash emptier
//! and the temp-file sweep. What they do on disk is `volume::trash`; this module decides
//! when, on which volumes, and counts it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::chores::{ChoreContext, ChoreSettings};
use crate::limits::{PREDECESSOR_EXIT_POLL_MS, TEMP_SWEEP_INTERVAL_SECS};
use crate::locator::Locator;
use crate::metrics::{Recorder, VolumeErrorKind, VolumeOp};
use crate::volume::s3::{self, S3Bucket};
use crate::volume::trash::{sweep_volume_while, trash_block, unix_nanos, TrashOutcome};
use crate::volume::Volume;

/// One `PUT /trash` item: `{"locator":"<hash>+<size>","block_mtime":<ns>,"mount_uuid":""}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrashItem {
    pub locator: String,
    pub block_mtime: i64,
    /// Empty: every trash-allowed volume.
    #[serde(default)]
    pub mount_uuid: String,
}

/// Count a trash attempt in the volume's metrics.
pub fn record(recorder: &Recorder, volume: &Volume, result: &io::Result<TrashOutcome>) {
    let counters = recorder.volume(volume);
    match result {
        Ok(TrashOutcome::Trashed) => counters.operation(VolumeOp::Trash),
        Ok(TrashOutcome::Deleted) => counters.operation(VolumeOp::Unlink),
        Ok(_) => {}
        Err(_) => counters.error(VolumeErrorKind::Io),
    }
}

/// The trash list worker: one item at a time, as long as the process lives.
pub fn run_trash_list(context: Arc<ChoreContext>) {
    let recorder = context.registry.register();
    loop {
        let taken = context.chores.trash.next();
        let settings = context.settings();
        if !settings.blob_trash {
            // keepstore runs no trash worker then; the list is accepted and dropped.
            continue;
        }
        process_item(&context, &recorder, &settings, &taken.item);
    }
}

fn process_item(context: &ChoreContext, recorder: &Recorder, settings: &ChoreSettings, item: &TrashItem) {
    let Ok(locator) = Locator::parse(&item.locator) else {
        tracing::warn!(locator = %item.locator, "trash list: invalid locator ignored");
        return;
    };
    let now = SystemTime::now();
    let ttl_ns = settings.blob_signing_ttl_secs as i128 * 1_000_000_000;
    if unix_nanos(now) - (item.block_mtime as i128) < ttl_ns {
        tracing::warn!(
            hash = locator.hash,
            block_mtime = item.block_mtime,
            "trash list: block younger than the signing TTL skipped"
        );
        return;
    }
    let current = context.state.volumes();
    let volumes: Vec<Arc<Volume>> = if item.mount_uuid.is_empty() {
        current
            .all()
            .iter()
            .filter(|volume| volume.allow_trash)
            .cloned()
            .collect()
    } else {
        match current.by_uuid(&item.mount_uuid) {
            Some(volume) if volume.allow_trash => vec![volume.clone()],
            Some(_) => {
                tracing::warn!(mount = %item.mount_uuid, "trash list: volume does not allow trash");
                return;
            }
            None => {
                tracing::warn!(mount = %item.mount_uuid, "trash list: no such volume");
                return;
            }
        }
    };
    for volume in volumes {
        let rules = settings.trash_rules();
        let expected = Some(item.block_mtime as i128);
        let result = match &volume.s3 {
            Some(bucket) => {
                s3::run_blocking(bucket.trash(locator.hash, now, &rules, expected)).and_then(|outcome| outcome)
            }
            None => trash_block(&volume.root, locator.hash, now, &rules, expected),
        };
        record(recorder, &volume, &result);
        match result {
            Ok(TrashOutcome::Trashed | TrashOutcome::Deleted) => {
                tracing::info!(volume = %volume.uuid, hash = locator.hash, "block trashed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(volume = %volume.uuid, hash = locator.hash, error = %error, "trash failed"),
        }
    }
}

/// The trash emptier, as keepstore's: a pass every `BlobTrashCheckInterval`, the first
/// one interval after start (never at start: Arvados' recovery procedure raises the
/// interval and restarts to keep expired trash for untrashing), over every volume that
/// allows trash, `BlobDeleteConcurrency` deleters per volume.
///
/// It always runs, and idles while `ChoreSettings::empties_trash` is false. A SIGHUP that
/// changes `BlobTrash` or the interval wakes it and restarts its wait, as a restart would:
/// a shorter interval counts from then (not after the old wait), a longer one never brings
/// a pass forward, and turning trash back on empties nothing before one interval. A pass
/// stops between directories as soon as the settings turn emptying off.
pub fn run_empty_trash(context: Arc<ChoreContext>) {
    let recorder = context.registry.register();
    let chores = &context.chores;
    let mut seen = chores.emptier_generation();
    let mut since = Instant::now();
    loop {
        let settings = chores.settings();
        let wait = settings
            .empties_trash()
            .then(|| Duration::from_secs(settings.trash_check_interval_secs).saturating_sub(since.elapsed()));
        if wait == Some(Duration::ZERO) {
            let go_on = || chores.settings().empties_trash();
            sweep_all(&context, &recorder, true, settings.delete_workers, &go_on);
            if !go_on() {
                tracing::info!("trash emptier: emptying turned off during a pass; it stopped there");
            }
            since = Instant::now();
            continue;
        }
        let now = chores.wait_for_emptier_change(seen, wait);
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
}

/// The temp-file sweep, on its own schedule (at start, then every
/// `TEMP_SWEEP_INTERVAL_SECS`): it deletes nothing recoverable, only the temp files of
/// writes that died, on every writable volume.
///
/// After a hand-over the first sweep waits for the predecessor to exit (at most one
/// interval): a binary from before temp-file locks writes unlocked, and its last writes
/// must not look dead to this one.
pub fn run_temp_sweep(context: Arc<ChoreContext>) {
    let recorder = context.registry.register();
    if let Some(pid) = context.predecessor_pid {
        let waited_since = Instant::now();
        let interval = Duration::from_secs(TEMP_SWEEP_INTERVAL_SECS);
        while is_running(pid) && waited_since.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(PREDECESSOR_EXIT_POLL_MS));
        }
    }
    loop {
        sweep_all(&context, &recorder, false, 1, &|| true);
        std::thread::sleep(Duration::from_secs(TEMP_SWEEP_INTERVAL_SECS));
    }
}

fn is_running(pid: u32) -> bool {
    // A zombie still has its /proc entry but no live writers: its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// One pass over the current volumes: expired trash (`trash`) where trash is allowed, or
/// stale temp files where writes are; it ends early once `go_on` says no.
fn sweep_all(
    context: &ChoreContext,
    recorder: &Recorder,
    trash: bool,
    workers: usize,
    go_on: &(dyn Fn() -> bool + Sync),
) {
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let current = context.state.volumes();
    for volume in current.all().iter() {
        let wanted = match trash {
            true => volume.allow_trash,
            false => volume.allow_write,
        };
        if !wanted {
            continue;
        }
        if !go_on() {
            return;
        }
        let counters = recorder.volume(volume);
        if let Some(bucket) = &volume.s3 {
            // An S3 volume has no temp files (a PUT is one request); its trash is emptied
            // by keepstore's rules, race fixes included.
            if trash {
                empty_bucket(context, volume, bucket, &counters, workers, go_on);
            }
            continue;
        }
        match sweep_volume_while(&volume.root, now_secs, trash, !trash, workers, go_on) {
            Ok(swept) => {
                for _ in 0..swept.trash + swept.temp {
                    counters.operation(VolumeOp::Unlink);
                }
                if swept.trash > 0 {
                    tracing::info!(volume = %volume.uuid, deleted = swept.trash, "expired trash deleted");
                }
                if swept.temp > 0 {
                    tracing::warn!(volume = %volume.uuid, removed = swept.temp, "stale temp files of dead writes removed");
                }
            }
            Err(error) => {
                counters.error(VolumeErrorKind::Io);
                tracing::warn!(volume = %volume.uuid, error = %error, "sweeping the volume failed");
            }
        }
    }
}

/// One emptier pass over an S3 volume's `trash/`, on this thread's own ring.
fn empty_bucket(
    context: &ChoreContext,
    volume: &Volume,
    bucket: &S3Bucket,
    counters: &crate::metrics::VolumeCounters,
    workers: usize,
    go_on: &(dyn Fn() -> bool + Sync),
) {
    let rules = context.settings().trash_rules();
    match s3::run_blocking(bucket.empty_trash(SystemTime::now(), &rules, workers, go_on)) {
        Ok(counts) => {
            for _ in 0..counts.deleted {
                counters.operation(VolumeOp::Unlink);
            }
            for _ in 0..counts.errors {
                counters.error(VolumeErrorKind::Io);
            }
            if counts.deleted > 0 || counts.errors > 0 {
                tracing::info!(
                    volume = %volume.uuid,
                    deleted = counts.deleted,
                    bytes = counts.bytes_deleted,
                    left = counts.in_trash - counts.deleted,
                    errors = counts.errors,
                    "expired trash deleted"
                );
            }
        }
        Err(error) => {
            counters.error(VolumeErrorKind::Io);
            tracing::warn!(volume = %volume.uuid, error = %error, "emptying the S3 volume's trash failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";

    struct Fixed(crate::volumes::VolumeSet);

    impl crate::chores::CurrentState for Fixed {
        fn volumes(&self) -> crate::volumes::VolumeSet {
            self.0.clone()
        }
        fn signing_key(&self) -> Option<crate::signature::SigningKey> {
            None
        }
    }

    fn expired_trash(root: &std::path::Path, hash: &str) -> std::path::PathBuf {
        let path = crate::volume::layout::trash_path(root, hash, 1000);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"x").unwrap();
        path
    }

    fn gone_within(path: &std::path::Path, within: Duration) -> bool {
        let since = Instant::now();
        while since.elapsed() < within {
            if !path.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn the_emptier_follows_reloaded_settings_at_once() {
        use crate::chores::{ChoreSettings, Chores};
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::open_directory(dir.path()).unwrap();
        let root = volume.root.clone();
        let chores = Arc::new(Chores::new(ChoreSettings::default()));
        let context = Arc::new(ChoreContext {
            state: Arc::new(Fixed(crate::volumes::VolumeSet::new(vec![volume]))),
            chores: chores.clone(),
            registry: Default::default(),
            budget: crate::bufpool::BufferBudget::new(1 << 20).unwrap(),
            predecessor_pid: None,
        });
        let first = expired_trash(&root, HASH);
        // A daemon, as in the process: it ends with the test binary.
        std::thread::spawn(move || run_empty_trash(context));
        let settings = |blob_trash: bool, interval: u64| ChoreSettings {
            blob_trash,
            trash_check_interval_secs: interval,
            ..ChoreSettings::default()
        };
        assert!(!gone_within(&first, Duration::from_millis(300)), "no pass before a day");
        chores.reload(settings(true, 1));
        assert!(
            gone_within(&first, Duration::from_secs(5)),
            "a shorter interval applies at once"
        );

        chores.reload(settings(false, 1));
        let second = expired_trash(&root, "37b51d194a7513e45b56f6524f2d51f2");
        assert!(
            !gone_within(&second, Duration::from_millis(2500)),
            "BlobTrash off empties nothing"
        );
        chores.reload(settings(true, 1));
        assert!(
            gone_within(&second, Duration::from_secs(5)),
            "BlobTrash on again empties"
        );
    }

    #[test]
    fn trash_item_json() {
        let items: Vec<TrashItem> =
            serde_json::from_str(&format!(r#"[{{"locator":"{HASH}+11","block_mtime":123}}]"#)).unwrap();
        assert_eq!(items[0].mount_uuid, "");
        assert_eq!(items[0].block_mtime, 123);
    }
}
