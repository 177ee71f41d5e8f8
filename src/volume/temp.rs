//! Temp files of writes in progress (`tmp<hash><digits>`, keepstore's names): who owns
//! one, and when the sweep may remove it.
//!
//! The rule, with no age in it: a writer holds an open-file-description write lock on its
//! temp file from just after creating it until it has renamed it onto the block name (its
//! process dying releases it); the sweep removes a temp file only while holding that lock
//! itself. The gap between a writer's create and its lock is closed from the writer's side:
//! once it holds the lock it checks that its file still has a name (`claim`), and starts
//! over under a new name if a sweep took it first. So a killed writer's file goes at the
//! next sweep, however young, and a live writer's never does, however old.
//!
//! A filesystem without locks (NFS without lockd) cannot tell: there the writer goes on
//! unlocked, and the sweep leaves the file to the one-day rule (`TEMP_FILE_STALE_SECS`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What a writer learns from `claim` about the temp file it just created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Locked and still named: the file is the writer's until it closes it.
    Owned,
    /// The filesystem has no locks: written unlocked, the sweep keeps it for a day.
    Unlocked,
    /// A sweep took it between create and lock: close it and create another.
    Lost,
}

/// Take the lock on a temp file just created as `fd`, then make sure a sweep did not
/// remove it in between. Non-blocking: a lock a sweep holds is `Lost`, never waited for.
pub fn claim(fd: RawFd) -> io::Result<Claim> {
    match set_write_lock(fd) {
        Ok(()) => {}
        Err(error) if is_lock_busy(&error) => return Ok(Claim::Lost),
        Err(error) if is_lock_unsupported(&error) => return Ok(Claim::Unlocked),
        Err(error) => return Err(error),
    }
    // A sweep unlinks only while it holds the lock; holding it now, a name still there
    // stays there until this writer renames it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `stat` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if stat.st_nlink == 0 { Claim::Lost } else { Claim::Owned })
}

/// What the sweep did with one temp file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// No writer held it: removed.
    Removed,
    /// A live writer holds it (or it was renamed or removed meanwhile): left alone.
    Kept,
    /// The filesystem cannot say (no locks): the caller's age rule decides.
    Unknown,
}

/// Remove the temp file at `path` if no writer holds it, holding its lock while doing so
/// (see the module's rule). Never waits for a lock.
pub fn remove_if_abandoned(path: &Path) -> io::Result<Sweep> {
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Sweep::Kept),
        Err(error) => return Err(error),
    };
    match set_write_lock(file.as_raw_fd()) {
        Ok(()) => {}
        Err(error) if is_lock_busy(&error) => return Ok(Sweep::Kept),
        Err(error) if is_lock_unsupported(&error) => return Ok(Sweep::Unknown),
        Err(error) => return Err(error),
    }
    // Between the open and the lock a writer may have committed it (the name is gone) and
    // another taken the same name (a different file): remove only the file locked here.
    let locked = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(named) if named.dev() == locked.dev() && named.ino() == locked.ino() => {}
        Ok(_) => return Ok(Sweep::Kept),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Sweep::Kept),
        Err(error) => return Err(error),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Sweep::Removed),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Sweep::Kept),
        Err(error) => Err(error),
    }
    // `file` closes here, releasing the lock on an inode that no longer has a name.
}

/// Does a live writer hold the temp file at `path`? (Tests only: the sweep uses
/// `remove_if_abandoned`, which decides and removes under one lock.)
#[cfg(test)]
pub fn is_held_by_a_writer(path: &Path) -> io::Result<bool> {
    let file = std::fs::File::open(path)?;
    let mut lock = whole_file_write_lock();
    // SAFETY: the fd is open; F_OFD_GETLK only tests and fills `lock` in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// An open-file-description write lock over the whole file, without waiting: held until
/// that description is closed, by its owner or by its process dying.
fn set_write_lock(fd: RawFd) -> io::Result<()> {
    let lock = whole_file_write_lock();
    // SAFETY: `fd` is open; `lock` is a valid flock for F_OFD_SETLK.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A write lock over the whole file (length 0: to its end, whatever it grows to).
fn whole_file_write_lock() -> libc::flock {
    // SAFETY: a zeroed flock is valid; the fields that matter are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

fn is_lock_busy(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

fn is_lock_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn temp_file(dir: &Path, name: &str) -> (File, std::path::PathBuf) {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        (file, path)
    }

    #[test]
    fn a_claimed_file_is_kept_and_an_unclaimed_one_removed_whatever_their_age() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, held) = temp_file(dir.path(), "tmp-held");
        assert_eq!(claim(writer.as_raw_fd()).expect("claim"), Claim::Owned);
        let (killed, dead) = temp_file(dir.path(), "tmp-dead");
        drop(killed);
        assert_eq!(remove_if_abandoned(&held).expect("sweep"), Sweep::Kept);
        assert!(held.exists() && is_held_by_a_writer(&held).expect("probe"));
        assert_eq!(remove_if_abandoned(&dead).expect("sweep"), Sweep::Removed);
        assert!(!dead.exists());
        drop(writer);
        assert!(!is_held_by_a_writer(&held).expect("probe"));
        assert_eq!(remove_if_abandoned(&held).expect("sweep"), Sweep::Removed);
        assert_eq!(remove_if_abandoned(&held).expect("gone"), Sweep::Kept);
    }

    #[test]
    fn a_writer_whose_file_a_sweep_took_before_its_lock_learns_it_lost() {
        let dir = tempfile::tempdir().expect("dir");
        // The sweep runs between the writer's create and its lock.
        let (writer, path) = temp_file(dir.path(), "tmp-raced");
        assert_eq!(remove_if_abandoned(&path).expect("sweep"), Sweep::Removed);
        assert_eq!(claim(writer.as_raw_fd()).expect("claim"), Claim::Lost);
    }

    #[test]
    fn a_writer_that_finds_the_sweep_holding_its_lock_learns_it_lost() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, path) = temp_file(dir.path(), "tmp-busy");
        // The sweep's side of the race, stopped while it holds the lock.
        let sweeper = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        set_write_lock(sweeper.as_raw_fd()).expect("sweep lock");
        assert_eq!(claim(writer.as_raw_fd()).expect("claim"), Claim::Lost);
    }

    #[test]
    fn a_file_renamed_onto_its_block_name_is_not_the_sweeps() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, path) = temp_file(dir.path(), "tmp-committed");
        assert_eq!(claim(writer.as_raw_fd()).expect("claim"), Claim::Owned);
        std::fs::rename(&path, dir.path().join("block")).expect("rename");
        // Another writer reuses the name: the sweep must judge that file, not the block.
        let (other, _) = temp_file(dir.path(), "tmp-committed");
        assert_eq!(claim(other.as_raw_fd()).expect("claim"), Claim::Owned);
        drop(writer);
        assert_eq!(remove_if_abandoned(&path).expect("sweep"), Sweep::Kept);
        assert!(dir.path().join("block").exists() && path.exists());
    }
}
