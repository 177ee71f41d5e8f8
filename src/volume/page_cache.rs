//! Reading a whole volume without pushing the hot blocks out of the page cache (the
//! scrubber): before reading a copy, ask whether any of it is cached (`cachestat`, Linux
//! 6.5+; else one `RWF_NOWAIT` probe of the first page); a copy nobody had cached is
//! dropped from the cache again as it is read (`POSIX_FADV_DONTNEED`, range by range), so
//! after a pass the cache holds what clients read, not what the scrubber read. A copy that
//! was cached stays (dropping it would evict what a client is using). Buffered reads,
//! not O_DIRECT: O_DIRECT needs aligned buffers and is refused by some filesystems
//! (tmpfs before 6.6), and bypassing the cache would also bypass the dirty pages of a
//! copy just written. Each call is one syscall that never waits on the disk.

use std::os::fd::RawFd;

/// `cachestat`'s number: one syscall table for every architecture since 425.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    offset: u64,
    length: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    cached: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

/// Whether any page of the file is in the page cache now. An unknown answer counts as
/// cached: never evict what might be hot.
pub fn any_cached(fd: RawFd) -> bool {
    match cached_pages(fd) {
        Some(pages) => pages > 0,
        None => first_page_cached(fd),
    }
}

/// How many pages of the file are in the page cache now (`cachestat`); `None` on a
/// kernel without it. Also how tests see that a block was written past the cache.
pub fn cached_pages(fd: RawFd) -> Option<u64> {
    let range = CachestatRange { offset: 0, length: 0 };
    let mut stat = Cachestat::default();
    // SAFETY: both pointers are valid for the call; length 0 means "to the end".
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    (result == 0).then_some(stat.cached)
}

/// A one-byte read that fails with EAGAIN rather than wait for the disk.
fn first_page_cached(fd: RawFd) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: one valid iovec of one byte.
    let read = unsafe { libc::preadv2(fd, &iov, 1, 0, libc::RWF_NOWAIT) };
    read >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
}

/// Drop `length` bytes at `offset` of the file from the page cache (clean pages only;
/// dirty ones stay until written back, which is what the kernel does anyway).
pub fn drop_range(fd: RawFd, offset: u64, length: u64) {
    // SAFETY: advice only; no memory is passed.
    unsafe {
        libc::posix_fadvise(
            fd,
            offset as libc::off_t,
            length as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// The cache state seen is the one produced: a file just written is cached; after
    /// dropping it (fdatasync first, so its pages are clean) it is not; reading it back
    /// caches it again. Where the filesystem keeps no page cache of its own (tmpfs: the
    /// cache is the storage) the drop cannot take effect and only "cached" is checked.
    #[test]
    fn sees_what_is_cached_and_drops_it() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("block");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(&vec![7u8; 1 << 20]).unwrap();
        file.sync_data().unwrap();
        let fd = file.as_raw_fd();
        assert!(any_cached(fd), "a file just written is in the cache");
        drop_range(fd, 0, 1 << 20);
        // SAFETY: a zeroed statfs is a valid out-parameter.
        let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatfs(fd, &mut stats) }, 0);
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        if stats.f_type as i64 != TMPFS_MAGIC {
            assert!(!any_cached(fd), "dropped from the cache");
            let reread = std::fs::read(&path).unwrap();
            assert_eq!(reread.len(), 1 << 20);
            assert!(any_cached(fd), "read back, it is cached again");
        }
        assert!(first_page_cached(fd));
    }
}
