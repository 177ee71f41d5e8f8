//! File operations on a directory volume, through io_uring (tokio-uring) so a slow disk
//! parks only the request that waits for it, never its core. Writes are crash-safe:
//! temp file in the block's directory, written, fdatasync'd, renamed onto the block name,
//! then the directory fsync'd (keepstore itself never fsyncs: this is stricter and
//! compatible, keep-protocol.md §6).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::fs::{File, OpenOptions};

use crate::digest::FileIdentity;
use crate::limits::{BLOCK_BYTES_MAX, CHUNK_BYTES, VOLUME_FREE_BYTES_MIN};
use crate::volume::layout;

/// Why a write to one volume did not happen; decides between 507 and 503.
#[derive(Debug)]
pub enum WriteError {
    Full,
    Failed(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(error: io::Error) -> Self {
        if error.raw_os_error() == Some(libc::ENOSPC) || error.raw_os_error() == Some(libc::EDQUOT) {
            WriteError::Full
        } else {
            WriteError::Failed(error)
        }
    }
}

/// Open a stored block for reading: `Ok(None)` when this volume does not have it.
pub async fn open_block(root: &Path, hash: &str) -> io::Result<Option<(File, u64)>> {
    Ok(open_block_identified(root, hash)
        .await?
        .map(|(file, identity)| (file, identity.size)))
}

/// Open a stored block and say exactly which file state it is.
pub async fn open_block_identified(root: &Path, hash: &str) -> io::Result<Option<(File, FileIdentity)>> {
    let path = layout::block_path(root, hash);
    let file = match File::open(&path).await {
        Ok(file) => file,
        Err(error) if is_missing(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    let identity = fstat_identity(&file)?;
    Ok(Some((file, identity)))
}

/// fstat, not io_uring's statx: IORING_OP_STATX always runs on an io-wq thread (a context
/// switch per GET, measured), while fstat of an open fd is a cached inode read.
fn fstat_identity(file: &File) -> io::Result<FileIdentity> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed stat is a valid out-parameter and the fd is open for this call.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let nanos = |secs: i64, nsec: i64| secs as i128 * 1_000_000_000 + nsec as i128;
    Ok(FileIdentity {
        device: stat.st_dev,
        inode: stat.st_ino,
        size: stat.st_size as u64,
        mtime_ns: nanos(stat.st_mtime, stat.st_mtime_nsec),
        ctime_ns: nanos(stat.st_ctime, stat.st_ctime_nsec),
    })
}

pub fn is_missing(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Fill `buffer[start..end]` from `file` at `position`; a file shorter than that is an
/// `UnexpectedEof` error (the block changed or was truncated under us).
pub async fn read_exact_into(
    file: &File,
    mut buffer: Vec<u8>,
    mut start: usize,
    end: usize,
    mut position: u64,
) -> (io::Result<()>, Vec<u8>) {
    debug_assert!(end <= buffer.capacity() && start <= buffer.len());
    while start < end {
        let (result, slice) = file.read_at(buffer.slice(start..end), position).await;
        buffer = slice.into_inner();
        match result {
            Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buffer),
            Ok(read) => {
                start += read;
                position += read as u64;
            }
            Err(error) => return (Err(error), buffer),
        }
    }
    (Ok(()), buffer)
}

/// Whether the stored copy holds exactly `data`, read through `scratch` in chunks.
pub async fn stored_copy_equals(
    file: &File,
    size: u64,
    data: &[u8],
    mut scratch: Vec<u8>,
) -> (io::Result<bool>, Vec<u8>) {
    if size != data.len() as u64 {
        return (Ok(false), scratch);
    }
    let mut offset = 0usize;
    while offset < data.len() {
        let want = (data.len() - offset).min(CHUNK_BYTES).min(scratch.capacity());
        scratch.clear();
        let (result, returned) = read_exact_into(file, scratch, 0, want, offset as u64).await;
        scratch = returned;
        if let Err(error) = result {
            return (Err(error), scratch);
        }
        if scratch[..want] != data[offset..offset + want] {
            return (Ok(false), scratch);
        }
        offset += want;
    }
    (Ok(true), scratch)
}

/// Store `data` as block `hash` on the volume at `root`, atomically and durably.
pub async fn write_block(root: &Path, hash: &str, data: Vec<u8>, random: u64) -> (Result<(), WriteError>, Vec<u8>) {
    debug_assert!(data.len() as u64 <= BLOCK_BYTES_MAX);
    if let Err(error) = check_free_space(root) {
        return (Err(error), data);
    }
    let dir = layout::block_dir(root, hash);
    if let Err(error) = tokio_uring::fs::create_dir(&dir).await {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return (Err(error.into()), data);
        }
    }
    let temp = layout::temp_path(root, hash, random);
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .await
    {
        Ok(file) => file,
        Err(error) => return (Err(error.into()), data),
    };
    let (result, data) = write_and_sync(&file, data).await;
    let closed = file.close().await;
    let result = result.and(closed);
    let result = match result {
        Ok(()) => commit(&temp, &layout::block_path(root, hash), &dir).await,
        Err(error) => Err(error),
    };
    if result.is_err() {
        // Nothing partial may stay visible or pile up; the block name was never touched.
        let _ = tokio_uring::fs::remove_file(&temp).await;
    }
    (result.map_err(WriteError::from), data)
}

async fn write_and_sync(file: &File, mut data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut offset = 0;
    // One chunk per write: a 64 MiB copy into the page cache in one go would hold the
    // submitting core for tens of milliseconds.
    while offset < data.len() {
        let end = (offset + CHUNK_BYTES).min(data.len());
        let (result, slice) = file.write_all_at(data.slice(offset..end), offset as u64).await;
        data = slice.into_inner();
        if let Err(error) = result {
            return (Err(error), data);
        }
        offset = end;
    }
    (file.sync_data().await, data)
}

async fn commit(temp: &Path, target: &Path, dir: &Path) -> io::Result<()> {
    tokio_uring::fs::rename(temp, target).await?;
    // The rename is durable only once the directory entry is on disk.
    let dir_file = File::open(dir).await?;
    let synced = dir_file.sync_all().await;
    let closed = dir_file.close().await;
    synced.and(closed)
}

/// keepstore refuses writes to a volume with less than one block of free space.
fn check_free_space(root: &Path) -> Result<(), WriteError> {
    match free_bytes(root) {
        Ok(free) if free < VOLUME_FREE_BYTES_MIN => Err(WriteError::Full),
        Ok(_) => Ok(()),
        Err(error) => Err(WriteError::Failed(error)),
    }
}

/// Bytes available to an unprivileged writer on the volume's filesystem.
pub fn free_bytes(root: &Path) -> io::Result<u64> {
    let path = c_path(root)?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stats` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Set a stored block's mtime (and atime) to now: the block was written again or touched.
pub fn touch(path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: a NULL `times` means "now" for both timestamps; `path` is NUL-terminated.
    if unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
