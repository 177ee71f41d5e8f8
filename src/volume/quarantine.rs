//! A stored copy that fails its MD5 check is renamed aside, never deleted (issue 14): to
//! `<hash>.corrupt.<unix seconds>` in its directory, so `/index`, keep-balance and GETs no
//! longer see it (keep-balance then counts one replica fewer and has it pulled again from
//! a good copy), and an operator can still inspect it.
//!
//! Only the exact file that was read and found bad is moved: a PUT may have renamed a new
//! copy onto the block's name since. The file at the name must be the one read (device,
//! inode, size, mtime); the rename never replaces anything; and if the file moved turns
//! out not to be the one read (a PUT won the race between the check and the rename), it
//! is put back under the block's name.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::digest::FileIdentity;
use crate::volume::io::{c_path, is_missing};
use crate::volume::{block_dirs, layout, mtime_nanos, Volume};

/// Names tried when a copy of the same block was already quarantined in the same second.
const CORRUPT_NAME_ATTEMPTS_MAX: u64 = 8;

/// Set aside the copy of `hash` on `volume` found failing its MD5 check, if it is still
/// the file `seen`, and say so: one error line per copy moved (hash, volume, path), or
/// why it stayed. A volume that may not be changed (read-only without
/// `trash_when_read_only`) keeps the copy in place. Returns whether it was moved.
pub fn set_aside(volume: &Volume, hash: &str, seen: FileIdentity, now_secs: u64) -> bool {
    if !volume.allow_trash {
        tracing::error!(volume = %volume.uuid, hash, "copy failed its MD5 check; left in place: the volume is read-only");
        return false;
    }
    match quarantine_block(&volume.root, hash, seen, now_secs) {
        Ok(Some(path)) => {
            tracing::error!(volume = %volume.uuid, hash, path = %path.display(), "copy failed its MD5 check: quarantined");
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(volume = %volume.uuid, hash, error = %error, "cannot quarantine a bad copy");
            false
        }
    }
}

/// Move the copy of `hash` on the volume at `root` aside if it is still the file `seen`
/// identified; returns where it went, or `None` when the file changed or went meanwhile.
pub fn quarantine_block(root: &Path, hash: &str, seen: FileIdentity, now_secs: u64) -> io::Result<Option<PathBuf>> {
    let path = layout::block_path(root, hash);
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if is_file_seen(&metadata, seen) => {}
        Ok(_) => return Ok(None),
        Err(error) if is_missing(&error) => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut moved_to = None;
    for attempt in 0..CORRUPT_NAME_ATTEMPTS_MAX {
        let target = layout::corrupt_path(root, hash, now_secs + attempt);
        match rename_without_replacing(&path, &target) {
            Ok(()) => {
                moved_to = Some(target);
                break;
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) if is_missing(&error) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
    let Some(target) = moved_to else {
        return Err(io::Error::other("no free quarantine name"));
    };
    if !std::fs::symlink_metadata(&target).is_ok_and(|metadata| is_file_seen(&metadata, seen)) {
        // A PUT's new copy took the name between the check and the rename: it is not known
        // to be bad, so it goes back (unless an even newer one holds the name by now).
        let _ = rename_without_replacing(&target, &path);
        return Ok(None);
    }
    Ok(Some(target))
}

/// One quarantined copy: its block, when it was set aside, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub hash: String,
    pub unix_secs: u64,
    pub size: u64,
}

/// Every quarantined copy on the volume at `root`, by hash then time (blocking: a walk of
/// the block directories, for a helper thread).
pub fn list(root: &Path) -> io::Result<Vec<Quarantined>> {
    let mut found = Vec::new();
    for dir in block_dirs(root)? {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((hash, secs)) = name.to_str().and_then(layout::parse_corrupt_name) else {
                continue;
            };
            if let Ok(metadata) = entry.metadata() {
                found.push(Quarantined {
                    hash: hash.to_string(),
                    unix_secs: secs,
                    size: metadata.len(),
                });
            }
        }
    }
    found.sort_by(|left, right| (&left.hash, left.unix_secs).cmp(&(&right.hash, right.unix_secs)));
    Ok(found)
}

/// The same file as `seen` (a rename changes only its ctime).
fn is_file_seen(metadata: &std::fs::Metadata, seen: FileIdentity) -> bool {
    metadata.dev() == seen.device
        && metadata.ino() == seen.inode
        && metadata.size() == seen.size
        && mtime_nanos(metadata) == seen.mtime_ns
}

/// rename(2) that fails with `AlreadyExists` instead of replacing the target.
fn rename_without_replacing(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated and live across the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";

    fn identity_of(path: &Path) -> FileIdentity {
        let metadata = std::fs::metadata(path).expect("stat");
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            mtime_ns: mtime_nanos(&metadata),
            ctime_ns: 0,
        }
    }

    fn stored(root: &Path, bytes: &[u8]) -> PathBuf {
        std::fs::create_dir_all(layout::block_dir(root, HASH)).expect("dir");
        let path = layout::block_path(root, HASH);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn the_copy_read_is_renamed_aside_and_a_second_one_the_same_second_too() {
        let dir = tempfile::tempdir().expect("dir");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let path = stored(dir.path(), b"rotten");
        let moved = quarantine_block(dir.path(), HASH, identity_of(&path), now).expect("quarantine");
        assert_eq!(moved, Some(layout::corrupt_path(dir.path(), HASH, now)));
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(layout::corrupt_path(dir.path(), HASH, now)).expect("kept"),
            b"rotten"
        );
        let again = stored(dir.path(), b"rotten again");
        let moved = quarantine_block(dir.path(), HASH, identity_of(&again), now).expect("quarantine");
        assert_eq!(
            moved,
            Some(layout::corrupt_path(dir.path(), HASH, now + 1)),
            "never replaces one"
        );
        std::fs::write(dir.path().join(&HASH[..3]).join(format!("{HASH}.trash.5")), b"x").expect("trash");
        let listed = list(dir.path()).expect("list");
        let found: Vec<(u64, u64)> = listed.iter().map(|copy| (copy.unix_secs, copy.size)).collect();
        assert_eq!(found, [(now, 6), (now + 1, 12)], "{listed:?}");
        assert!(listed.iter().all(|copy| copy.hash == HASH));
    }

    #[test]
    fn a_copy_rewritten_since_it_was_read_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let path = stored(dir.path(), b"rotten");
        let seen = identity_of(&path);
        // A PUT renames a fresh copy over the name (a new inode).
        let fresh = dir.path().join("fresh");
        std::fs::write(&fresh, b"good bytes").expect("write");
        std::fs::rename(&fresh, &path).expect("rename");
        assert_eq!(quarantine_block(dir.path(), HASH, seen, 1).expect("quarantine"), None);
        assert_eq!(std::fs::read(&path).expect("still there"), b"good bytes");
        assert_eq!(
            quarantine_block(dir.path(), "0123456789abcdef0123456789abcdef", seen, 1).expect("absent"),
            None
        );
    }
}
