//! Trash on a directory volume, with plain blocking file calls (keep-protocol.md §3.3,
//! §3.5, §6): trash one block (rename to `<hash>.trash.<deadline>`, or unlink when the
//! trash lifetime is 0), untrash it (rename the first trashed copy back), and sweep a
//! volume of expired trash and of the temp files of writes that died. Callers: the trash
//! list worker, the trash emptier and the temp sweep (`chores`, their own threads) and
//! the DELETE and untrash handlers (short metadata operations).
//!
//! The safety rule throughout: a block whose mtime is newer than now − blob signing TTL
//! is never trashed, because a client may still hold a valid signature for it.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits::TEMP_FILE_STALE_SECS;
use crate::volume::io::is_missing;
use crate::volume::temp::{self, Sweep};
use crate::volume::{layout, mtime_nanos};

/// What decides whether and how a block is trashed (keepstore's `BlobSigningTTL` and
/// `BlobTrashLifetime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrashRules {
    /// A block younger than this is never trashed: a client may hold a signature for it.
    pub signing_ttl_secs: u64,
    /// Time from trash to deletion; 0 deletes at once.
    pub lifetime_secs: u64,
}

/// What trashing one copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrashOutcome {
    /// Renamed to `<hash>.trash.<deadline>`.
    Trashed,
    /// Unlinked (trash lifetime 0).
    Deleted,
    /// Present, but younger than the signing TTL (or not at the mtime asked for): kept.
    Kept,
    Missing,
}

pub fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// Trash block `hash` on the volume at `root` if it is older than the signing TTL and,
/// when `expected_mtime_ns` is given (a trash list item), its mtime is exactly that.
pub fn trash_block(
    root: &Path,
    hash: &str,
    now: SystemTime,
    rules: &TrashRules,
    expected_mtime_ns: Option<i128>,
) -> io::Result<TrashOutcome> {
    let path = layout::block_path(root, hash);
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if is_missing(&error) => return Ok(TrashOutcome::Missing),
        Err(error) => return Err(error),
    };
    let ttl_ns = rules.signing_ttl_secs as i128 * 1_000_000_000;
    let mtime = mtime_nanos(&metadata);
    let too_young = unix_nanos(now) - mtime < ttl_ns;
    if too_young || expected_mtime_ns.is_some_and(|expected| expected != mtime) {
        return Ok(TrashOutcome::Kept);
    }
    // Lifetime 0 deletes, but through a trash name with an expired deadline, so the same
    // re-check below protects a block a PUT touched meanwhile (and a crash in between
    // leaves trash the sweep removes).
    let now_secs = now.duration_since(UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0);
    let deadline = if rules.lifetime_secs == 0 {
        0
    } else {
        now_secs + rules.lifetime_secs
    };
    let trashed = layout::trash_path(root, hash, deadline);
    match std::fs::rename(&path, &trashed) {
        Ok(()) => {}
        Err(error) if is_missing(&error) => return Ok(TrashOutcome::Missing),
        Err(error) => return Err(error),
    }
    // A PUT of the same block may have touched it between the check and the rename: it
    // was then promised to a client, so it goes back.
    let touched_meanwhile = std::fs::metadata(&trashed).is_ok_and(|after| mtime_nanos(&after) != mtime);
    if touched_meanwhile {
        std::fs::rename(&trashed, &path)?;
        return Ok(TrashOutcome::Kept);
    }
    if rules.lifetime_secs == 0 {
        return match std::fs::remove_file(&trashed) {
            Ok(()) => Ok(TrashOutcome::Deleted),
            Err(error) if is_missing(&error) => Ok(TrashOutcome::Missing),
            Err(error) => Err(error),
        };
    }
    Ok(TrashOutcome::Trashed)
}

/// Rename the first trashed copy of `hash` (in name order) back; false if there is none.
pub fn untrash_block(root: &Path, hash: &str) -> io::Result<bool> {
    let dir = layout::block_dir(root, hash);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if is_missing(&error) => return Ok(false),
        Err(error) => return Err(error),
    };
    let mut trashed: Vec<String> = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str() {
            if layout::parse_trash_name(name).is_some_and(|(trashed_hash, _)| trashed_hash == hash) {
                trashed.push(name.to_string());
            }
        }
    }
    trashed.sort();
    let Some(first) = trashed.first() else {
        return Ok(false);
    };
    match std::fs::rename(dir.join(first), layout::block_path(root, hash)) {
        Ok(()) => Ok(true),
        // Swept or untrashed by someone else meanwhile.
        Err(error) if is_missing(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// What one sweep of a volume removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Trashed copies past their deadline.
    pub trash: u64,
    /// Temp files of writes that died (a crash or a kill mid-PUT): no writer held them.
    pub temp: u64,
}

/// Sweep one volume, descending only into all-hex directories (as keepstore): delete every
/// trashed file whose deadline is ≤ `now_secs` (when `trash`), and every temp file whose
/// writer is gone (when `temp`; the lock rule of `volume::temp`, whatever the file's age,
/// or a day untouched where the filesystem has no locks). `workers` threads share the directories
/// (keepstore's `BlobDeleteConcurrency`).
pub fn sweep_volume(root: &Path, now_secs: u64, trash: bool, temp: bool, workers: usize) -> io::Result<Swept> {
    sweep_volume_while(root, now_secs, trash, temp, workers, &|| true)
}

/// `sweep_volume`, asking `go_on` before each directory: once it says no, the sweep ends
/// with what it removed so far (the trash emptier turned off mid-pass).
pub fn sweep_volume_while(
    root: &Path,
    now_secs: u64,
    trash: bool,
    temp: bool,
    workers: usize,
    go_on: &(dyn Fn() -> bool + Sync),
) -> io::Result<Swept> {
    let dirs = crate::volume::block_dirs(root)?;
    let next = AtomicUsize::new(0);
    let sweep_some = || -> io::Result<Swept> {
        let mut swept = Swept::default();
        while go_on() {
            let Some(dir) = dirs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let found = sweep_dir(dir, now_secs, trash, temp)?;
            swept.trash += found.trash;
            swept.temp += found.temp;
        }
        Ok(swept)
    };
    let results: Vec<io::Result<Swept>> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..workers.max(1)).map(|_| scope.spawn(sweep_some)).collect();
        let mut results = vec![sweep_some()];
        for helper in helpers {
            results.push(
                helper
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a sweep thread panicked"))),
            );
        }
        results
    });
    let mut total = Swept::default();
    for result in results {
        let swept = result?;
        total.trash += swept.trash;
        total.temp += swept.temp;
    }
    Ok(total)
}

fn sweep_dir(dir: &Path, now_secs: u64, trash: bool, temp: bool) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let stale_before = unix_nanos(UNIX_EPOCH + Duration::from_secs(now_secs.saturating_sub(TEMP_FILE_STALE_SECS)));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Removed meanwhile (a volume going away): nothing left to sweep there.
        Err(error) if is_missing(&error) => return Ok(swept),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if trash && layout::parse_trash_name(name).is_some_and(|(_, deadline)| deadline <= now_secs) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => swept.trash += 1,
                Err(error) if is_missing(&error) => {}
                Err(error) => return Err(error),
            }
        } else if temp && layout::is_temp_name(name) && sweep_temp(&entry, stale_before)? {
            swept.temp += 1;
        }
    }
    Ok(swept)
}

/// Remove one temp file if its write is dead: no writer holds its lock (`volume::temp`),
/// or, where the filesystem has no locks, it is untouched since `stale_before`.
fn sweep_temp(entry: &std::fs::DirEntry, stale_before: i128) -> io::Result<bool> {
    match temp::remove_if_abandoned(&entry.path())? {
        Sweep::Removed => Ok(true),
        Sweep::Kept => Ok(false),
        Sweep::Unknown => {
            // An entry that cannot be looked at is left for the next sweep.
            if !entry
                .metadata()
                .is_ok_and(|metadata| mtime_nanos(&metadata) < stale_before)
            {
                return Ok(false);
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => Ok(true),
                Err(error) if is_missing(&error) => Ok(false),
                Err(error) => Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";
    const DAY_SECS: u64 = 24 * 3600;

    fn settings(lifetime: u64) -> TrashRules {
        TrashRules {
            signing_ttl_secs: DAY_SECS,
            lifetime_secs: lifetime,
        }
    }

    /// A block file whose mtime is `age_secs` ago; returns its mtime in ns.
    fn block(root: &Path, age_secs: u64) -> i128 {
        let path = layout::block_path(root, HASH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"hello keep\n").unwrap();
        let mtime = SystemTime::now() - Duration::from_secs(age_secs);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        mtime_nanos(&std::fs::metadata(&path).unwrap())
    }

    fn names(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(layout::block_dir(root, HASH))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn old_block_is_renamed_with_its_deadline_and_untrashed_back() {
        let dir = tempfile::tempdir().unwrap();
        block(dir.path(), 2 * DAY_SECS);
        let now = SystemTime::now();
        let outcome = trash_block(dir.path(), HASH, now, &settings(100), None).unwrap();
        assert_eq!(outcome, TrashOutcome::Trashed);
        let deadline = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 100;
        assert_eq!(names(dir.path()), [format!("{HASH}.trash.{deadline}")]);
        assert!(untrash_block(dir.path(), HASH).unwrap());
        assert_eq!(names(dir.path()), [HASH]);
        assert!(!untrash_block(dir.path(), HASH).unwrap());
    }

    #[test]
    fn young_block_and_wrong_mtime_are_kept_and_lifetime_zero_unlinks() {
        let dir = tempfile::tempdir().unwrap();
        block(dir.path(), 60);
        let now = SystemTime::now();
        assert_eq!(
            trash_block(dir.path(), HASH, now, &settings(100), None).unwrap(),
            TrashOutcome::Kept
        );
        let mtime = block(dir.path(), 2 * DAY_SECS);
        let wrong = Some(mtime + 1);
        assert_eq!(
            trash_block(dir.path(), HASH, now, &settings(100), wrong).unwrap(),
            TrashOutcome::Kept
        );
        assert_eq!(names(dir.path()), [HASH]);
        let exact = Some(mtime);
        assert_eq!(
            trash_block(dir.path(), HASH, now, &settings(0), exact).unwrap(),
            TrashOutcome::Deleted
        );
        assert!(names(dir.path()).is_empty());
        assert_eq!(
            trash_block(dir.path(), HASH, now, &settings(0), None).unwrap(),
            TrashOutcome::Missing
        );
    }

    #[test]
    fn a_sweep_told_to_stop_deletes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let expired = layout::trash_path(dir.path(), HASH, 100);
        std::fs::create_dir_all(expired.parent().unwrap()).unwrap();
        std::fs::write(&expired, b"x").unwrap();
        assert_eq!(
            sweep_volume_while(dir.path(), 200, true, false, 3, &|| false).unwrap(),
            Swept::default()
        );
        assert!(expired.exists());
        assert_eq!(
            sweep_volume_while(dir.path(), 200, true, false, 3, &|| true)
                .unwrap()
                .trash,
            1
        );
    }

    #[test]
    fn sweep_deletes_only_expired_trash() {
        let dir = tempfile::tempdir().unwrap();
        block(dir.path(), 0);
        let block_dir = layout::block_dir(dir.path(), HASH);
        for name in [
            format!("{HASH}.trash.100"),
            format!("{HASH}.trash.300"),
            format!("tmp{HASH}.trash.1"),
        ] {
            std::fs::write(block_dir.join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("full.trash.1")).unwrap();
        assert_eq!(
            sweep_volume(dir.path(), 200, true, false, 3).unwrap(),
            Swept { trash: 1, temp: 0 }
        );
        assert_eq!(
            names(dir.path()),
            [
                HASH.to_string(),
                format!("{HASH}.trash.300"),
                format!("tmp{HASH}.trash.1")
            ]
        );
    }

    #[test]
    fn sweep_removes_only_stale_temp_files_of_the_write_pattern() {
        let dir = tempfile::tempdir().unwrap();
        block(dir.path(), 0);
        let block_dir = layout::block_dir(dir.path(), HASH);
        let now = SystemTime::now();
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let aged = |name: &str, age_secs: u64| {
            let file = File::create(block_dir.join(name)).unwrap();
            file.set_modified(now - Duration::from_secs(age_secs)).unwrap();
        };
        aged(&format!("tmp{HASH}123"), TEMP_FILE_STALE_SECS + 60);
        // Brand new and unlocked: its writer died (or will find it gone: `temp::claim`).
        aged(&format!("tmp{HASH}456"), 0);
        aged(&format!("tmp{HASH}.trash.1"), TEMP_FILE_STALE_SECS + 60);
        aged("tmpnothex", TEMP_FILE_STALE_SECS + 60);
        // Held by a live writer: kept however old it looks.
        let held_path = block_dir.join(format!("tmp{HASH}789"));
        let held = File::create_new(&held_path).unwrap();
        assert_eq!(
            crate::volume::temp::claim(std::os::fd::AsRawFd::as_raw_fd(&held)).unwrap(),
            crate::volume::temp::Claim::Owned
        );
        held.set_modified(now - Duration::from_secs(TEMP_FILE_STALE_SECS * 2))
            .unwrap();
        assert_eq!(
            sweep_volume(dir.path(), now_secs, false, false, 1).unwrap(),
            Swept::default(),
            "nothing asked, nothing removed"
        );
        assert_eq!(
            sweep_volume(dir.path(), now_secs, false, true, 2).unwrap(),
            Swept { trash: 0, temp: 2 }
        );
        assert_eq!(
            names(dir.path()),
            [
                HASH.to_string(),
                format!("tmp{HASH}.trash.1"),
                format!("tmp{HASH}789"),
                "tmpnothex".to_string()
            ]
        );
        drop(held);
    }
}
