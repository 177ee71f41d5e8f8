//! The background scrubber (issue 14): every `--scrub-interval-secs` each volume is read
//! whole, every stored copy hashed and checked against its name, so a copy that rotted
//! where nobody reads it is found before a client needs it. A bad copy is set aside
//! (`volume::quarantine`), so it leaves `/index` and keep-balance has a good copy pulled
//! back through the pull list, Arvados' own repair loop.
//!
//! It runs on the cores, beside the requests, and is built to stay out of their way:
//! - each volume is scrubbed by one worker (chosen by its UUID), one chunk at a time read
//!   through io_uring and hashed through the core's own hasher (`hasher`), so scrub
//!   chunks share SIMD lanes with the requests' and never hold the core for more than
//!   one chunk's hash;
//! - reads are paced to `--scrub-rate-mb` per volume, and each chunk waits for its core
//!   to be quiet for a millisecond (up to `SCRUB_GIVE_WAY_MS_MAX`, so a pass still moves
//!   under a load that never pauses);
//! - copies nobody had cached are dropped from the page cache as they are read, 8 MiB at
//!   a time on a helper thread (`volume::page_cache`), so a pass leaves the cache to the
//!   clients' blocks;
//! - where it stands is saved at the volume's root now and then
//!   (`volume::scrub_state`), so a restart resumes the pass instead of starting over.
//!
//! A copy that cannot be read counts against the drive's health (`volume::health`) as a
//! client's failed read does. A volume that leaves the set (an unmounted drive) ends its scrub within one block; a
//! drain aborts the scrub with the worker's other background tasks.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::blocks::now_secs;
use crate::api::context::{Core, ScrubSettings};
use crate::bufpool::CHUNK_BUFFER_BYTES;
use crate::digest::state_matches;
use crate::limits::{
    BLOCK_BYTES_MAX, CHUNK_BYTES, SCRUB_GIVE_WAY_MS_MAX, SCRUB_HASH_PIECE_BYTES, SCRUB_RECHECK_MS,
    SCRUB_START_DELAY_SECS, SCRUB_STATE_SAVE_SECS, SCRUB_UNCACHE_BYTES,
};
use crate::md5lanes::LaneState;
use crate::metrics::{ScrubCount, VolumeCounters, VolumeErrorKind};
use crate::volume::scrub_state::{self, ScrubState};
use crate::volume::{io, page_cache, quarantine, Volume};

/// The worker (of `workers`) that scrubs the volume `uuid`: FNV-1a of the UUID, so the
/// choice stays put while drives come and go.
pub fn owner(uuid: &str, workers: usize) -> usize {
    let hash = uuid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % workers.max(1) as u64) as usize
}

/// The worker's scrub task: start a scrub for each current volume this worker owns, stop
/// the ones whose volume went. Returns at once when scrubbing is off. `C` is whatever
/// holds the worker's `Core` for as long as the task runs.
pub async fn run<C>(core: C)
where
    C: Deref<Target = Core> + Clone + 'static,
{
    let settings = core.services.scrub;
    if settings.interval_secs == 0 {
        return;
    }
    let started = now_secs();
    let mut running = Running::default();
    loop {
        let running = &mut running.0;
        let state = core.state();
        let owned: Vec<&Arc<Volume>> = state
            .volumes
            .all()
            .iter()
            .filter(|volume| volume.s3.is_none() && owner(&volume.uuid, settings.workers) == core.id)
            .collect();
        running.retain(|uuid, (volume, task)| {
            let current = owned.iter().any(|now| Arc::ptr_eq(now, volume));
            if !current || task.is_finished() {
                task.abort();
                tracing::debug!(volume = %uuid, "scrub stopped: the volume changed or went");
            }
            current && !task.is_finished()
        });
        for volume in owned {
            if !running.contains_key(&volume.uuid) {
                let task = tokio_uring::spawn(scrub_volume(core.clone(), volume.clone(), settings, started));
                running.insert(volume.uuid.clone(), (volume.clone(), task));
            }
        }
        drop(state);
        tokio::time::sleep(Duration::from_millis(SCRUB_RECHECK_MS)).await;
    }
}

/// A helper-pool job's result with both kinds of failure as one line of text.
async fn off_core<T: Send + 'static>(
    core: &Core,
    job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    match core.helpers.run(job).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// The volume scrubs a worker runs, each ended when the worker's scrub task ends (a
/// drain aborts it).
#[derive(Default)]
struct Running(HashMap<String, (Arc<Volume>, tokio::task::JoinHandle<()>)>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, task) in self.0.values() {
            task.abort();
        }
    }
}

/// Whether `volume` is still served as it was when its scrub started.
fn still_current(core: &Core, volume: &Arc<Volume>) -> bool {
    core.state()
        .volumes
        .by_uuid(&volume.uuid)
        .is_some_and(|now| Arc::ptr_eq(now, volume))
}

/// Scrub one volume for as long as it is served: wait for a pass to be due, run it,
/// repeat. `process_started` (Unix seconds) delays the first pass after a start.
async fn scrub_volume<C: Deref<Target = Core>>(
    core: C,
    volume: Arc<Volume>,
    settings: ScrubSettings,
    process_started: u64,
) {
    let mut scrub = VolumeScrub {
        counters: core.metrics.volume(&volume),
        state: load_state(&core, &volume).await,
        saved_at: Instant::now(),
        pace: Pace::new(settings.rate_bytes_per_sec),
        requests_seen: 0,
        volume,
    };
    if scrub.state.last_pass_secs > 0 {
        scrub.counters.scrub_pass(scrub.state.last_pass_secs);
    }
    let first_due = process_started + settings.interval_secs.min(SCRUB_START_DELAY_SECS);
    if !wait_until(&core, &scrub.volume, first_due).await {
        return;
    }
    loop {
        if scrub.state.pass_started.is_none() {
            let due = if scrub.state.last_finished == 0 {
                first_due
            } else {
                (scrub.state.last_finished + settings.interval_secs).max(first_due)
            };
            if !wait_until(&core, &scrub.volume, due).await {
                return;
            }
            scrub.state.pass_started = Some(now_secs());
            scrub.state.after = None;
            tracing::info!(volume = %scrub.volume.uuid, "scrub pass started");
            scrub.save(&core).await;
        } else {
            tracing::info!(volume = %scrub.volume.uuid, after = ?scrub.state.after, "scrub pass resumed");
        }
        if !scrub.pass(&core).await {
            // The volume went: its state was saved as far as it got.
            return;
        }
    }
}

/// Sleep until `due` (Unix seconds); `false` if the volume went meanwhile.
async fn wait_until(core: &Core, volume: &Arc<Volume>, due: u64) -> bool {
    loop {
        if !still_current(core, volume) {
            return false;
        }
        let now = now_secs();
        if now >= due {
            return true;
        }
        let wait = Duration::from_secs(due - now).min(Duration::from_millis(SCRUB_RECHECK_MS));
        tokio::time::sleep(wait).await;
    }
}

async fn load_state(core: &Core, volume: &Arc<Volume>) -> ScrubState {
    let (root, device) = (volume.root.clone(), volume.device);
    match off_core(core, move || scrub_state::load(&root, device)).await {
        Ok(state) => state.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(volume = %volume.uuid, error, "cannot read the scrub state; starting afresh");
            ScrubState::default()
        }
    }
}

/// One volume's scrub in progress.
struct VolumeScrub {
    volume: Arc<Volume>,
    counters: Arc<VolumeCounters>,
    state: ScrubState,
    saved_at: Instant,
    pace: Pace,
    /// `Core::requests_begun` when the scrub last looked (`give_way`).
    requests_seen: u64,
}

/// What checking one stored copy found.
enum Checked {
    Good,
    /// It failed its MD5 check (or is too large to be any block).
    Corrupt(crate::digest::FileIdentity),
    /// Gone before it was opened (trashed, or replaced meanwhile).
    Missing,
    /// It could not be read: counted as a volume error, checked again next pass.
    Unreadable,
}

impl VolumeScrub {
    /// Walk the volume from where the pass stands to its end. `false` when the volume
    /// went before the end.
    async fn pass(&mut self, core: &Core) -> bool {
        let mut checked = 0u64;
        let root = self.volume.root.clone();
        let after = self.state.after.clone();
        let dirs = match off_core(core, move || scrub_state::dirs_from(&root, after.as_deref())).await {
            Ok(dirs) => dirs,
            Err(error) => {
                tracing::warn!(volume = %self.volume.uuid, error, "scrub cannot list the volume; trying again later");
                tokio::time::sleep(Duration::from_secs(SCRUB_STATE_SAVE_SECS)).await;
                return still_current(core, &self.volume);
            }
        };
        for dir in dirs {
            let (root, after) = (self.volume.root.clone(), self.state.after.clone());
            let listed = off_core(core, move || scrub_state::hashes_after(&root, &dir, after.as_deref())).await;
            let hashes = match listed {
                Ok(hashes) => hashes,
                Err(error) => {
                    tracing::warn!(volume = %self.volume.uuid, error, "scrub cannot list a block directory; skipped this pass");
                    continue;
                }
            };
            for hash in hashes {
                if !still_current(core, &self.volume) {
                    self.save(core).await;
                    return false;
                }
                self.check_and_act(core, &hash).await;
                checked += 1;
                self.state.after = Some(hash);
                if self.saved_at.elapsed() >= Duration::from_secs(SCRUB_STATE_SAVE_SECS) {
                    self.save(core).await;
                }
            }
        }
        let finished = now_secs();
        let took = finished
            .saturating_sub(self.state.pass_started.unwrap_or(finished))
            .max(1);
        self.state = ScrubState {
            pass_started: None,
            after: None,
            last_finished: finished,
            last_pass_secs: took,
        };
        self.counters.scrub_pass(took);
        tracing::info!(volume = %self.volume.uuid, seconds = took, blocks = checked, "scrub pass finished");
        self.save(core).await;
        true
    }

    /// Check one copy and set it aside if it is bad.
    async fn check_and_act(&mut self, core: &Core, hash: &str) {
        match self.check(core, hash).await {
            Checked::Good => self.counters.scrub(ScrubCount::Blocks, 1),
            Checked::Corrupt(identity) => {
                self.counters.scrub(ScrubCount::Blocks, 1);
                self.counters.scrub(ScrubCount::Corrupt, 1);
                self.counters.error(VolumeErrorKind::Checksum);
                let (volume, hash_owned) = (self.volume.clone(), hash.to_string());
                let moved = core
                    .helpers
                    .run(move || quarantine::set_aside(&volume, &hash_owned, identity, now_secs()))
                    .await;
                match moved {
                    Ok(true) => self.counters.scrub(ScrubCount::Quarantined, 1),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(volume = %self.volume.uuid, hash, error = %error, "scrub cannot quarantine now; next pass will")
                    }
                }
            }
            Checked::Missing | Checked::Unreadable => {}
        }
    }

    /// Read and hash one stored copy, paced.
    async fn check(&mut self, core: &Core, hash: &str) -> Checked {
        let (file, identity) = match io::open_block_identified(&self.volume.root, hash).await {
            Ok(Some(opened)) => opened,
            Ok(None) => return Checked::Missing,
            Err(error) => {
                tracing::warn!(volume = %self.volume.uuid, hash, error = %error, "scrub cannot open a block");
                self.counters.error(VolumeErrorKind::Io);
                self.volume.note_read_error(&error);
                return Checked::Unreadable;
            }
        };
        if identity.size > BLOCK_BYTES_MAX {
            return Checked::Corrupt(identity);
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let uncache = !page_cache::any_cached(fd);
        let Ok(_lease) = core.pool.lease(CHUNK_BUFFER_BYTES as u64).await else {
            return Checked::Unreadable;
        };
        let mut buffer = core.pool.chunk();
        let mut digest = LaneState::new();
        let mut offset = 0u64;
        let mut result = Checked::Good;
        while offset < identity.size {
            self.give_way(core).await;
            let want = (identity.size - offset).min(CHUNK_BYTES as u64) as usize;
            buffer.clear();
            let (read, returned) = io::read_exact_into(&file, buffer, 0, want, offset).await;
            buffer = returned;
            if let Err(error) = read {
                tracing::warn!(volume = %self.volume.uuid, hash, error = %error, "scrub read failed");
                self.counters.error(VolumeErrorKind::Io);
                self.volume.note_read_error(&error);
                result = Checked::Unreadable;
                break;
            }
            // Hashed a piece at a time: a request's chunk batched with a scrub piece waits
            // for the piece, so the piece is kept short.
            let mut hashed = 0;
            while hashed < want {
                let piece = hashed..want.min(hashed + SCRUB_HASH_PIECE_BYTES);
                hashed = piece.end;
                let (advanced, returned) = core.hasher.update(digest, buffer, piece).await;
                (digest, buffer) = (advanced, returned);
            }
            offset += want as u64;
            if uncache && offset.is_multiple_of(SCRUB_UNCACHE_BYTES) {
                uncache_off_core(core, fd, offset - SCRUB_UNCACHE_BYTES, SCRUB_UNCACHE_BYTES);
            }
            self.counters.scrub(ScrubCount::Bytes, want as u64);
            self.pace.spent(want as u64).await;
        }
        core.pool.recycle(buffer);
        if uncache {
            // The rest, and whatever readahead brought in beyond the last chunk read.
            let from = offset - offset % SCRUB_UNCACHE_BYTES;
            uncache_off_core(core, fd, from, 0);
        }
        match result {
            Checked::Good if !state_matches(&digest, hash) => Checked::Corrupt(identity),
            other => other,
        }
    }

    /// Give way to clients: while requests began on this core since the last look (or one
    /// is in progress), wait a millisecond at a time, up to `SCRUB_GIVE_WAY_MS_MAX`. A
    /// core quiet for a millisecond is read at once; under a load that never pauses the
    /// pass still moves, one chunk per `SCRUB_GIVE_WAY_MS_MAX`.
    async fn give_way(&mut self, core: &Core) {
        let mut waited = 0;
        while waited < SCRUB_GIVE_WAY_MS_MAX && (core.is_serving() || core.requests_begun() != self.requests_seen) {
            self.requests_seen = core.requests_begun();
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        self.requests_seen = core.requests_begun();
    }

    /// Save where the pass stands, off the core. A volume that may not be written keeps
    /// it in memory only (a restart then begins that pass again).
    async fn save(&mut self, core: &Core) {
        self.saved_at = Instant::now();
        if !self.volume.allow_write {
            return;
        }
        let (root, device, state) = (self.volume.root.clone(), self.volume.device, self.state.clone());
        if let Err(error) = off_core(core, move || scrub_state::save(&root, device, &state)).await {
            tracing::warn!(volume = %self.volume.uuid, error, "cannot save the scrub state");
        }
    }
}

/// Drop `length` bytes at `offset` of the open file `fd` from the page cache (0: to the
/// end), on a helper thread: `POSIX_FADV_DONTNEED` may wait for every CPU to drain its
/// page lists, which a core must not. A full helper queue leaves the pages to the
/// kernel's own reclaim.
fn uncache_off_core(core: &Core, fd: std::os::fd::RawFd, offset: u64, length: u64) {
    // SAFETY: `fd` is open for this call; the duplicate is owned by the job.
    let duplicate = unsafe { libc::dup(fd) };
    if duplicate < 0 {
        return;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(duplicate) };
    let job = move || page_cache::drop_range(std::os::fd::AsRawFd::as_raw_fd(&owned), offset, length);
    let _ = core.helpers.detach(job);
}

/// Reads paced to a rate: after each chunk, wait until the bytes so far are due. A
/// scrub that fell behind (it waited on a slow disk or a busy core) does not burst to
/// catch up by more than one second's worth.
struct Pace {
    bytes_per_sec: u64,
    since: Instant,
    bytes: u64,
}

impl Pace {
    fn new(bytes_per_sec: u64) -> Self {
        Pace {
            bytes_per_sec,
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait after `bytes` more, at `now`.
    fn wait_after(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.bytes += bytes;
        let due = self.since + Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        if due > now {
            return due - now;
        }
        if now - due > Duration::from_secs(1) {
            self.since = now;
            self.bytes = 0;
        }
        Duration::ZERO
    }

    async fn spent(&mut self, bytes: u64) {
        match self.wait_after(bytes, Instant::now()) {
            Duration::ZERO => tokio::task::yield_now().await,
            wait => tokio::time::sleep(wait).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_volume_has_one_owner_and_they_spread() {
        let uuids: Vec<String> = (0..64).map(|index| format!("zzzzz-nyw5e-{index:015}")).collect();
        for workers in 1..=4 {
            let mut per_worker = vec![0; workers];
            for uuid in &uuids {
                let chosen = owner(uuid, workers);
                assert_eq!(chosen, owner(uuid, workers), "stable");
                per_worker[chosen] += 1;
            }
            assert!(per_worker.iter().all(|&count| count > 0), "{per_worker:?}");
        }
        assert_eq!(owner("anything", 0), 0);
    }

    #[test]
    fn pace_holds_the_rate_and_does_not_burst_after_a_stall() {
        let start = Instant::now();
        let mut pace = Pace::new(1_000_000);
        pace.since = start;
        assert_eq!(pace.wait_after(500_000, start), Duration::from_millis(500));
        // Half a second later the next 500 kB are due at 1 s.
        let later = start + Duration::from_millis(500);
        assert_eq!(pace.wait_after(500_000, later), Duration::from_millis(500));
        // A long stall: the debt is forgiven, not repaid as a burst.
        let stalled = start + Duration::from_secs(10);
        assert_eq!(pace.wait_after(1, stalled), Duration::ZERO);
        assert_eq!(pace.wait_after(1_000_000, stalled), Duration::from_secs(1));
        let mut unbounded = Pace::new(0);
        assert_eq!(unbounded.wait_after(u64::MAX / 2, start), Duration::ZERO);
    }
}
