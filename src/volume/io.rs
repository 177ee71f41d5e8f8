//! File operations on a directory volume, through io_uring (tokio-uring) so a slow disk
//! parks only the request that waits for it, never its core. Writes are crash-safe:
//! temp file in the block's directory, written, fdatasync'd, renamed onto the block name,
//! then the directory fsync'd (keepstore itself never fsyncs: this is stricter and
//! compatible, keep-protocol.md §6).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};

use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::fs::{File, OpenOptions};

use crate::allocator::PAGE_BYTES;
use crate::blocking::Pool;
use crate::digest::FileIdentity;
use crate::limits::{
    BLOCK_BYTES_MAX, CHUNK_BYTES, DIRECT_WRITE_STEP_BYTES, DRIVE_PROBE_BYTES, FREE_SPACE_READING_AGE_MS_MAX,
    STREAMED_WRITE_BYTES_MIN, TEMP_CREATE_ATTEMPTS_MAX, VOLUME_FREE_BYTES_MIN, WRITEBACK_QUEUE_MAX,
    WRITEBACK_STEP_BYTES, WRITE_STEP_BYTES,
};
use crate::volume::temp::{self, Claim};
use crate::volume::{layout, now_ms, Volume};
use std::sync::atomic::Ordering;

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
    let file = match open_for_read(root, hash).await {
        Ok(file) => file,
        Err(error) if is_missing(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    let identity = fstat_identity(&file)?;
    Ok(Some((file, identity)))
}

/// The longest block path built on the stack by `open_for_read` (NUL included); a volume
/// root longer than that leaves this room for its block paths (one allocation).
const STACK_PATH_BYTES: usize = 256;

/// `layout::block_path(root, hash)` NUL-terminated in `out`, without allocating: `None`
/// when it does not fit or the root holds a NUL.
fn block_c_path<'a>(root: &Path, hash: &str, out: &'a mut [u8; STACK_PATH_BYTES]) -> Option<&'a std::ffi::CStr> {
    let root = root.as_os_str().as_bytes();
    let prefix = hash.get(..3)?.as_bytes();
    let length = root.len() + 1 + prefix.len() + 1 + hash.len();
    if length >= out.len() || root.contains(&0) || hash.as_bytes().contains(&0) {
        return None;
    }
    let mut at = 0;
    for part in [root, b"/", prefix, b"/", hash.as_bytes(), b"\0"] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    std::ffi::CStr::from_bytes_with_nul(&out[..at]).ok()
}

/// Open block `hash` read-only: on this core when the whole path is in the dentry cache
/// (openat2 with RESOLVE_CACHED, which never waits on the disk: what io_uring itself
/// tries inline, minus a trip through the ring), else through io_uring, which may wait
/// on the disk elsewhere. The path is built on the stack (a GET of a small block spends
/// more on allocating it than on anything else in keepring's own code).
async fn open_for_read(root: &Path, hash: &str) -> io::Result<File> {
    let mut stack = [0u8; STACK_PATH_BYTES];
    let heap;
    let c_path = match block_c_path(root, hash, &mut stack) {
        Some(path) => path,
        None => {
            heap = c_path(&layout::block_path(root, hash))?;
            heap.as_c_str()
        }
    };
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: `c_path` is NUL-terminated and `how` is a valid open_how of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        return Ok(File::from_std(unsafe { std::fs::File::from_raw_fd(fd as RawFd) }));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // Not all in the cache (EAGAIN), or a kernel without openat2 / RESOLVE_CACHED.
        Some(libc::EAGAIN) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::E2BIG) => {
            File::open(layout::block_path(root, hash)).await
        }
        _ => Err(error),
    }
}

/// fstat, not io_uring's statx: IORING_OP_STATX always runs on an io-wq thread (a context
/// switch per GET, measured), while fstat of an open fd is a cached inode read.
fn fstat_identity(file: &File) -> io::Result<FileIdentity> {
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

/// `read_exact_into` for a read of at most one chunk (a whole small block): what the page
/// cache holds is copied on this core (preadv2 RWF_NOWAIT, which never waits on the disk),
/// the rest, if any, read through io_uring. Longer transfers keep one trip through the
/// ring per chunk, which is what lets the core's other requests in between chunks.
pub async fn read_small_into(
    file: &File,
    mut buffer: Vec<u8>,
    mut start: usize,
    end: usize,
    mut position: u64,
) -> (io::Result<()>, Vec<u8>) {
    debug_assert!(end - start <= CHUNK_BYTES);
    while start < end && start == buffer.len() {
        match read_cached(file, &mut buffer, end, position) {
            Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buffer),
            Ok(read) => {
                start += read;
                position += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // EAGAIN: not (all) cached; EOPNOTSUPP: a filesystem without RWF_NOWAIT.
            Err(_) => break,
        }
    }
    read_exact_into(file, buffer, start, end, position).await
}

// `read_cached` passes the file offset whole in one register (64-bit Linux).
const _: () = assert!(usize::BITS == 64);

/// Append to `buffer` (up to `end`) what the page cache holds of `file` at `position`,
/// without waiting for the disk: EAGAIN when the first page is not cached.
fn read_cached(file: &File, buffer: &mut Vec<u8>, end: usize, position: u64) -> io::Result<usize> {
    let length = buffer.len();
    let spare = &mut buffer.spare_capacity_mut()[..end - length];
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // The raw syscall, not libc's preadv2: that one is a cancellation point, whose
    // bookkeeping around every call showed in profiles of small GETs. On 64-bit Linux
    // the offset is passed whole in `pos_l` (`pos_h` is 0).
    // SAFETY: the iovec covers spare capacity of `buffer`, which outlives the call.
    let read = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            file.as_raw_fd() as libc::c_long,
            &iov as *const libc::iovec,
            1 as libc::c_long,
            position as libc::c_long,
            0 as libc::c_long,
            libc::RWF_NOWAIT as libc::c_long,
        )
    };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised `read` bytes right after the old length.
    unsafe { buffer.set_len(length + read as usize) };
    Ok(read as usize)
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

/// Store `data` as block `hash` on `volume`, atomically and durably.
pub async fn write_block(
    volume: &Volume,
    hash: &str,
    data: Vec<u8>,
    random: u64,
    helpers: &Pool,
) -> (Result<(), WriteError>, Vec<u8>) {
    debug_assert!(data.len() as u64 <= BLOCK_BYTES_MAX);
    let mut writer = match BlockWriter::create(volume, hash, random, Some(data.len() as u64), helpers).await {
        Ok(writer) => writer,
        Err(error) => return (Err(error), data),
    };
    let (result, data) = writer.append_last(data).await;
    let result = match result {
        Ok(()) => writer.commit().await,
        Err(error) => {
            writer.abandon().await;
            Err(error.into())
        }
    };
    (result, data)
}

/// The same commit protocol as `write_block`, with blocking calls, for threads off the
/// cores (the pull worker): free-space check, temp file in the block's directory,
/// written, fdatasync'd, renamed onto the block name, directory fsync'd; on any failure
/// the temp file is removed and the error classified as a request's is (`WriteError`).
pub fn write_block_blocking(volume: &Volume, hash: &str, data: &[u8], random: u64) -> Result<(), WriteError> {
    let root = volume.root.as_path();
    // Off the cores a fresh reading costs nothing that matters.
    volume.free_space.read().map_err(WriteError::Failed)?;
    let claim = claim_space(volume, data.len() as u64)?;
    let dir = layout::block_dir(root, hash);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error.into()),
    }
    let (mut file, temp) = create_temp_blocking(root, hash, random)?;
    let written = (|| {
        use std::io::Write;
        reserve_blocking(&file, data.len() as u64)?;
        drop(claim);
        file.write_all(data)?;
        file.sync_data()?;
        // Renamed while still open and locked (see `BlockWriter::commit`).
        std::fs::rename(&temp, layout::block_path(root, hash))?;
        drop(file);
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(WriteError::from)
}

/// The block name a probe's temp file is named after: the empty block's, whose directory
/// most volumes have anyway. The file is a temp file (`tmp<hash><digits>`) like any
/// write's, so it is never listed as a block, and one a crash leaves behind is the temp
/// sweep's to remove (its lock died with the process).
const PROBE_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// Does the volume take a write and give it back? Write `DRIVE_PROBE_BYTES` to a claimed
/// temp file, fdatasync, drop its pages from the cache (so the read goes to the drive
/// where the filesystem has one), read them back, compare, remove the file. Blocking:
/// the probe thread's (`chores::probe`), never a core's.
pub fn probe_blocking(root: &Path, random: u64) -> io::Result<()> {
    use std::io::{Read, Write};
    let dir = layout::block_dir(root, PROBE_HASH);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    let (mut file, temp) = create_temp_blocking(root, PROBE_HASH, random)?;
    let pattern: Vec<u8> = (0..DRIVE_PROBE_BYTES)
        .map(|index| (random.rotate_left(index as u32 % 64) as u8) ^ index as u8)
        .collect();
    let checked = (|| {
        file.write_all(&pattern)?;
        file.sync_data()?;
        // SAFETY: plain advice on an open fd; no memory is passed. Best effort: a
        // filesystem without a page cache of its own (tmpfs) ignores it.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut back = Vec::with_capacity(DRIVE_PROBE_BYTES);
        std::fs::File::open(&temp)?.read_to_end(&mut back)?;
        match back == pattern {
            true => Ok(()),
            false => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a probe read back other bytes than it wrote",
            )),
        }
    })();
    drop(file);
    let removed = std::fs::remove_file(&temp);
    checked.and(removed)
}

/// One block being written: a temp file in the block's directory that becomes the block
/// only on `commit` (fdatasync, rename, directory fsync). Bytes may be appended while the
/// body still arrives.
///
/// A block whose space was reserved (its length known, `STREAMED_WRITE_BYTES_MIN` or
/// more) is written past the page cache (`O_DIRECT`, through a second descriptor) from
/// page-aligned memory (`allocator`) in whole pages: no copy into the cache, no writeback
/// to start, and a stored block does not push blocks being read out of the cache. Its
/// last partial page, any unaligned piece, and every write on a filesystem that refuses
/// `O_DIRECT` (at open or at the first write) go through the cache as before; there the
/// writeback of each `WRITEBACK_STEP_BYTES` starts as soon as it is written, so the final
/// fdatasync (which covers both descriptors' writes: it is per file) finds little left.
/// A writer dropped before `commit` or `abandon` (a request cut short) has a helper
/// thread remove its temp file.
pub struct BlockWriter {
    helpers: Pool,
    file: Option<File>,
    /// The temp file opened again with `O_DIRECT`, while direct writes work.
    direct: Option<File>,
    temp: PathBuf,
    dir: PathBuf,
    target: PathBuf,
    written: usize,
    writeback_from: usize,
    /// `sync` succeeded: only `publish` (or `abandon`) may follow.
    synced: bool,
}

impl BlockWriter {
    /// A temp file for block `hash`; with the block's `length` when known, its space is
    /// reserved at once (`fallocate`), so a volume too full for it says so now, before the
    /// body, and other writes see the space taken (statvfs counts it).
    pub async fn create(
        volume: &Volume,
        hash: &str,
        random: u64,
        length: Option<u64>,
        helpers: &Pool,
    ) -> Result<Self, WriteError> {
        let root = volume.root.as_path();
        volume.free_space.refresh_if_old(helpers);
        let claim = claim_space(volume, length.unwrap_or(0))?;
        let dir = layout::block_dir(root, hash);
        if let Err(error) = tokio_uring::fs::create_dir(&dir).await {
            if error.kind() != io::ErrorKind::AlreadyExists {
                return Err(error.into());
            }
        }
        let (file, temp) = create_temp(root, hash, random).await?;
        let prepared = reserve(&file, length).await;
        // Reserved (or failed): statvfs now shows the space taken.
        drop(claim);
        if let Err(error) = prepared {
            let _ = file.close().await;
            let _ = tokio_uring::fs::remove_file(&temp).await;
            return Err(error.into());
        }
        let direct = match length.filter(|length| reserves_space(*length)) {
            Some(_) => open_direct(&temp).await,
            None => None,
        };
        Ok(BlockWriter {
            helpers: helpers.clone(),
            file: Some(file),
            direct,
            temp,
            dir,
            target: layout::block_path(root, hash),
            written: 0,
            writeback_from: 0,
            synced: false,
        })
    }

    /// Whether `length` bytes of the block so far are worth an `append` now: a write
    /// step's worth is waiting.
    pub fn wants(&self, length: usize) -> bool {
        length.saturating_sub(self.written) >= self.step()
    }

    fn step(&self) -> usize {
        match self.direct {
            Some(_) => DIRECT_WRITE_STEP_BYTES,
            None => WRITE_STEP_BYTES,
        }
    }

    /// Whether this block is being written past the page cache (tests).
    #[cfg(test)]
    pub fn writes_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// Whether `sync` succeeded (only `publish` or `abandon` may follow).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Bytes written so far (the file holds `data[..written()]`).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Write what arrived of `data` (the block so far) beyond `written()`, more to come:
    /// while writing directly, only whole pages (the rest waits for more bytes, or for
    /// `append_last`).
    pub async fn append<T: IoBuf>(&mut self, data: T) -> (io::Result<()>, T) {
        let end = match self.direct {
            Some(_) => data.bytes_init() / PAGE_BYTES * PAGE_BYTES,
            None => data.bytes_init(),
        };
        self.write_through(data, end).await
    }

    /// Write all of `data` beyond `written()`: the block is whole.
    pub async fn append_last<T: IoBuf>(&mut self, data: T) -> (io::Result<()>, T) {
        let end = data.bytes_init();
        self.write_through(data, end).await
    }

    /// Write `data[written()..end]` at its offset, a step per write (`WRITE_STEP_BYTES`
    /// through the cache: a 64 MiB copy into it in one go would hold the submitting core
    /// for tens of milliseconds; `DIRECT_WRITE_STEP_BYTES` past it).
    async fn write_through<T: IoBuf>(&mut self, mut data: T, end: usize) -> (io::Result<()>, T) {
        debug_assert!(end <= data.bytes_init());
        debug_assert!(!self.synced, "a block appended to after its sync");
        while self.written < end {
            let start_aligned = (data.stable_ptr() as usize + self.written).is_multiple_of(PAGE_BYTES);
            // Through the cache a step is a copy that holds the core: the short step.
            let step = match self.direct.is_some() && start_aligned {
                true => DIRECT_WRITE_STEP_BYTES,
                false => WRITE_STEP_BYTES,
            };
            let mut step_end = (self.written + step).min(end);
            let whole_pages = (step_end - self.written) / PAGE_BYTES * PAGE_BYTES;
            let direct = self.direct.as_ref().filter(|_| start_aligned && whole_pages > 0);
            if direct.is_some() {
                // The whole pages directly; a partial last page next, through the cache.
                step_end = self.written + whole_pages;
            }
            // `file` is only taken by `commit` and `abandon`, which consume the writer.
            let Some(file) = direct.or(self.file.as_ref()) else {
                return (Err(io::ErrorKind::NotConnected.into()), data);
            };
            let (result, slice) = file
                .write_all_at(data.slice(self.written..step_end), self.written as u64)
                .await;
            data = slice.into_inner();
            match result {
                Ok(()) => {}
                // The filesystem took the O_DIRECT open but not the write (its block size
                // is above a page, say): this block goes through the cache from here on,
                // from `written` (a direct step that failed half way is written again).
                Err(error)
                    if direct.is_some()
                        && matches!(error.raw_os_error(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) =>
                {
                    self.direct = None;
                    continue;
                }
                Err(error) => return (Err(error), data),
            }
            self.written = step_end;
            match direct.is_some() {
                // Nothing of this range waits in the cache.
                true => self.writeback_from = self.written,
                false if self.written - self.writeback_from >= WRITEBACK_STEP_BYTES => {
                    if let Some(file) = self.file.as_ref() {
                        start_writeback(file, self.writeback_from, self.written - self.writeback_from);
                    }
                    self.writeback_from = self.written;
                }
                false => {}
            }
        }
        (Ok(()), data)
    }

    /// Make the written bytes the block, durably; on failure nothing stays behind.
    pub async fn commit(mut self) -> Result<(), WriteError> {
        match self.sync().await {
            Ok(()) => self.publish().await,
            Err(error) => {
                self.abandon().await;
                Err(error.into())
            }
        }
    }

    /// Make the written bytes durable (fdatasync) without naming them the block yet:
    /// `publish` does that, once the caller knows they are the block (a PUT syncs while
    /// the last of its body is still being hashed). Nothing more may be appended.
    pub async fn sync(&mut self) -> io::Result<()> {
        // A close can report a write the filesystem had still buffered for that
        // descriptor (FUSE, NFS flush on close): then the block is not stored.
        if let Some(direct) = self.direct.take() {
            direct.close().await?;
        }
        // One fdatasync covers what both descriptors wrote (it is per file).
        match self.file.as_ref() {
            Some(file) => file.sync_data().await?,
            None => return Err(io::ErrorKind::NotConnected.into()),
        }
        self.synced = true;
        Ok(())
    }

    /// Name the synced temp file the block, durably (rename, directory fsync); on failure
    /// nothing stays behind. Only after `sync` succeeded.
    pub async fn publish(mut self) -> Result<(), WriteError> {
        if !self.synced {
            // Never named the block before its bytes are durable.
            self.abandon().await;
            return Err(WriteError::Failed(io::Error::other(
                "a block published before its sync",
            )));
        }
        let Some(file) = self.file.take() else {
            return Err(WriteError::Failed(io::ErrorKind::NotConnected.into()));
        };
        // Renamed while still open, so the temp file's lock (`temp::claim`, an OFD lock,
        // which closing the other descriptor leaves alone) holds until it has its block
        // name: the sweep can never take it in between.
        let result = commit(&self.temp, &self.target, &self.dir).await;
        // The bytes were synced before the rename; a close error after it changes nothing.
        let _ = file.close().await;
        if result.is_err() {
            // Nothing partial may stay visible or pile up; the block name was never touched.
            let _ = tokio_uring::fs::remove_file(&self.temp).await;
        }
        self.temp.clear();
        result.map_err(WriteError::from)
    }

    /// Give up: close and remove the temp file.
    pub async fn abandon(mut self) {
        if let Some(direct) = self.direct.take() {
            let _ = direct.close().await;
        }
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
        }
        let _ = tokio_uring::fs::remove_file(&self.temp).await;
        self.temp.clear();
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if self.temp.as_os_str().is_empty() {
            return;
        }
        // A request future dropped mid-body: no await is possible here, so a helper thread
        // unlinks. With the helper queue full the file stays, unlocked once closed, and the
        // next temp sweep removes it (`temp`: the lock alone decides).
        let temp = std::mem::take(&mut self.temp);
        let unlinked = self.helpers.detach(move || {
            let _ = std::fs::remove_file(temp);
        });
        if let Err(error) = unlinked {
            tracing::warn!(error = %error, "a cut-short write's temp file is left to the sweep");
        }
    }
}

/// Start writeback of a written range without waiting for it (sync_file_range WRITE), on
/// the writeback thread: starting writeback can wait (block allocation, the journal, free
/// device request slots), which must not hold a worker's core. Only a head start for the
/// fdatasync in `commit`, which reports any error and writes whatever is left: so a range
/// skipped (the thread is behind, or a dup fails) changes nothing but timing.
fn start_writeback(file: &File, offset: usize, length: usize) {
    let Some(sender) = writeback_thread() else { return };
    // SAFETY: F_DUPFD_CLOEXEC on an open fd; the new fd is owned below.
    let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = sender.try_send((fd, offset as u64, length as u64));
}

/// The writeback thread's queue, started on first use (`None` if it cannot start).
fn writeback_thread() -> Option<&'static SyncSender<(OwnedFd, u64, u64)>> {
    static QUEUE: OnceLock<Option<SyncSender<(OwnedFd, u64, u64)>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<(OwnedFd, u64, u64)>(WRITEBACK_QUEUE_MAX);
            let started = std::thread::Builder::new()
                .name("keepring-writeback".to_string())
                .spawn(move || {
                    for (fd, offset, length) in receiver {
                        // SAFETY: plain syscall on an fd this thread owns; no memory passed.
                        unsafe {
                            libc::sync_file_range(
                                fd.as_raw_fd(),
                                offset as libc::off64_t,
                                length as libc::off64_t,
                                libc::SYNC_FILE_RANGE_WRITE,
                            );
                        }
                    }
                });
            match started {
                Ok(_) => Some(sender),
                Err(error) => {
                    tracing::warn!(error = %error, "no writeback thread: fdatasync does all the writeback");
                    None
                }
            }
        })
        .as_ref()
}

/// The temp file at `path` opened again for direct writes; `None` where the filesystem
/// has no `O_DIRECT` (tmpfs before Linux 6.6, some FUSE filesystems): the block is then
/// written through the cache.
async fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .await
        .ok()
}

/// A new temp file for block `hash`, created exclusively and claimed (`temp::claim`):
/// locked, so no sweep removes it until it is renamed or closed.
async fn create_temp(root: &Path, hash: &str, random: u64) -> io::Result<(File, PathBuf)> {
    for attempt in 0..TEMP_CREATE_ATTEMPTS_MAX {
        let path = layout::temp_path(root, hash, random.wrapping_add(attempt));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        let claimed = temp::claim(file.as_raw_fd());
        if let Ok(Claim::Owned | Claim::Unlocked) = claimed {
            return Ok((file, path));
        }
        let _ = file.close().await;
        if let Err(error) = claimed {
            let _ = tokio_uring::fs::remove_file(&path).await;
            return Err(error);
        }
        // Lost to a sweep between create and lock: the sweep removes that one.
    }
    Err(temp_files_lost())
}

/// `create_temp` with blocking calls (the pull worker's thread).
fn create_temp_blocking(root: &Path, hash: &str, random: u64) -> io::Result<(std::fs::File, PathBuf)> {
    for attempt in 0..TEMP_CREATE_ATTEMPTS_MAX {
        let path = layout::temp_path(root, hash, random.wrapping_add(attempt));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        match temp::claim(file.as_raw_fd()) {
            Ok(Claim::Owned | Claim::Unlocked) => return Ok((file, path)),
            Ok(Claim::Lost) => {}
            Err(error) => {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(error);
            }
        }
    }
    Err(temp_files_lost())
}

fn temp_files_lost() -> io::Error {
    io::Error::other("every new temp file was swept before its writer could lock it")
}

async fn commit(temp: &Path, target: &Path, dir: &Path) -> io::Result<()> {
    tokio_uring::fs::rename(temp, target).await?;
    // The rename is durable only once the directory entry is on disk.
    let dir_file = File::open(dir).await?;
    let synced = dir_file.sync_all().await;
    let closed = dir_file.close().await;
    synced.and(closed)
}

/// Blocks of at least this size have their space reserved before they are written.
fn reserves_space(length: u64) -> bool {
    length >= STREAMED_WRITE_BYTES_MIN
}

/// Reserve `length` bytes for the temp file (fallocate through the ring). A filesystem
/// without fallocate is written without a reservation, as before.
async fn reserve(file: &File, length: Option<u64>) -> io::Result<()> {
    match length.filter(|length| reserves_space(*length)) {
        Some(length) => match file.fallocate(0, length, 0).await {
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        },
        None => Ok(()),
    }
}

/// `reserve` with a blocking call (the pull worker's thread).
fn reserve_blocking(file: &std::fs::File, length: u64) -> io::Result<()> {
    if !reserves_space(length) {
        return Ok(());
    }
    // SAFETY: the fd is open for writing; mode 0 allocates and extends the file.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length as libc::off_t) };
    match result {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            error if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            error => Err(error),
        },
    }
}

/// A write's claim on a volume's free space, from its check until its fallocate is done;
/// dropping it gives the claim back and takes the write's length off the volume's last
/// free-space reading, which knows nothing of it until its next refresh.
struct SpaceClaim<'a> {
    volume: &'a Volume,
    bytes: u64,
    length: u64,
}

impl Drop for SpaceClaim<'_> {
    fn drop(&mut self) {
        self.volume.free_space.take(self.length);
        self.volume.claiming.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// keepstore refuses writes to a volume with less than one block of free space; a write
/// of a known larger length needs that much, beyond what other writes have claimed and not
/// yet reserved (concurrent fallocates can otherwise both fail where one fits). Checked
/// against the last reading (`FreeSpace`): no statvfs on the core. A volume never read yet
/// (a test's unchecked volume) is not refused: its writes' own ENOSPC decides.
fn claim_space(volume: &Volume, length: u64) -> Result<SpaceClaim<'_>, WriteError> {
    let bytes = if reserves_space(length) { length } else { 0 };
    let claimed_before = volume.claiming.fetch_add(bytes, Ordering::AcqRel);
    let mut claim = SpaceClaim { volume, bytes, length };
    match volume.free_space.bytes() {
        Some(free) if free.saturating_sub(claimed_before) < VOLUME_FREE_BYTES_MIN.max(length) => {
            claim.length = 0;
            Err(WriteError::Full)
        }
        _ => Ok(claim),
    }
}

/// A volume's last free-space reading (statvfs), shared by every core and refreshed on the
/// helper pool when older than `FREE_SPACE_READING_AGE_MS_MAX`. Writes take their length
/// off it as their claims end, so back-to-back writes see each other before the next
/// reading does. A refresh that read statvfs just before a write's fallocate and stores
/// just after its claim ended loses that write until the following refresh: the fallocate
/// itself (or ENOSPC) still refuses what does not fit.
#[derive(Debug)]
pub struct FreeSpace {
    root: PathBuf,
    /// Bytes free at the last reading, less writes since; `NEVER_READ` before the first.
    bytes: AtomicU64,
    read_at_ms: AtomicU64,
    /// A refresh is queued or running.
    refreshing: AtomicBool,
}

const NEVER_READ: u64 = u64::MAX;

impl FreeSpace {
    /// Not read yet: `read` (blocking) or `refresh_if_old` (on the pool) fills it in.
    pub fn unread(root: &Path) -> FreeSpace {
        FreeSpace {
            root: root.to_path_buf(),
            bytes: AtomicU64::new(NEVER_READ),
            read_at_ms: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The last reading less the writes since; None before the first reading.
    pub fn bytes(&self) -> Option<u64> {
        Some(self.bytes.load(Ordering::Acquire)).filter(|bytes| *bytes != NEVER_READ)
    }

    /// Read statvfs now and keep it (blocking: a helper thread, the pull worker, start-up).
    pub fn read(&self) -> io::Result<u64> {
        let result = free_bytes(&self.root);
        // A failed reading is retried at the next refresh, not at every write: the
        // write's own calls meet the same failing filesystem and say so.
        self.read_at_ms.store(now_ms().max(1), Ordering::Release);
        if let Ok(free) = result {
            self.bytes.store(free.min(NEVER_READ - 1), Ordering::Release);
        }
        result
    }

    /// Queue a fresh reading on the helper pool if the last one is too old and none is
    /// queued; never waits (a full queue skips it: the next write asks again).
    pub fn refresh_if_old(self: &Arc<Self>, helpers: &Pool) {
        let age_ms = now_ms().saturating_sub(self.read_at_ms.load(Ordering::Acquire));
        if age_ms < FREE_SPACE_READING_AGE_MS_MAX || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let space = self.clone();
        let queued = helpers.detach(move || {
            if let Err(error) = space.read() {
                tracing::warn!(volume = %space.root.display(), error = %error, "statvfs failed");
            }
            space.refreshing.store(false, Ordering::Release);
        });
        if queued.is_err() {
            self.refreshing.store(false, Ordering::Release);
        }
    }

    /// Take `bytes` a write is about to use off the reading.
    fn take(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            (free != NEVER_READ).then(|| free.saturating_sub(bytes))
        });
    }
}

/// Bytes available to an unprivileged writer on the volume's filesystem (blocking: a
/// helper thread's call, or the pull worker's; the cores use `FreeSpace`).
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
/// Blocking (io_uring has no utimensat): the handlers run it on the helper pool.
pub fn touch(path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: a NULL `times` means "now" for both timestamps; `path` is NUL-terminated.
    if unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_path_is_the_block_path_or_nothing() {
        let hash = "acbd18db4cc2f85cedef654fccc4a4d8";
        let mut stack = [0u8; STACK_PATH_BYTES];
        let root = Path::new("/srv/keep/vol1");
        let built = block_c_path(root, hash, &mut stack).expect("fits");
        assert_eq!(built.to_bytes(), layout::block_path(root, hash).as_os_str().as_bytes());
        // Too long for the stack: the caller builds it on the heap.
        let long = PathBuf::from(format!("/{}", "d".repeat(STACK_PATH_BYTES)));
        assert!(block_c_path(&long, hash, &mut stack).is_none());
        // Not a hash at all (too short for its directory), and a NUL: never a path.
        assert!(block_c_path(root, "ab", &mut stack).is_none());
        assert!(block_c_path(root, "abc\0def", &mut stack).is_none());
    }
}
