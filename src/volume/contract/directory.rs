//! The contract's checks only a directory volume has: a stored copy compares equal
//! through the request path; the pull worker's blocking writer keeps the same commit
//! protocol; nothing partial or temporary is ever listed; the trash rule's directory
//! details (untrash keeps the mtime, a lifetime of 0 deletes); the sweeps; free space; a
//! failed volume leaves the write rotation and comes back.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{helpers, list_directory, md5_hex, DAY_SECS};
use crate::volume::index::list_blocks;
use crate::volume::io::{self, WriteError};
use crate::volume::temp;
use crate::volume::trash::{self, TrashOutcome, TrashRules};
use crate::volume::{layout, Volume, VolumeOptions};

fn directory() -> (tempfile::TempDir, Volume) {
    let dir = tempfile::tempdir().expect("temp dir");
    let volume = Volume::open(dir.path(), &VolumeOptions::default()).expect("open directory volume");
    (dir, volume)
}

/// A check on a fresh directory volume.
fn on_a_directory(check: impl Fn(&Volume)) {
    let (_dir, volume) = directory();
    check(&volume);
}

/// Write through the request path (io_uring).
pub(super) fn put(volume: &Volume, data: &[u8]) -> String {
    let hash = md5_hex(data);
    let owned = data.to_vec();
    tokio_uring::start(async {
        let (result, _) = io::write_block(volume, &hash, owned, 42, helpers()).await;
        result.map_err(|error| format!("{error:?}"))
    })
    .expect("write");
    hash
}

/// Read back through the request path; None when the volume does not have it.
pub(super) fn get(volume: &Volume, hash: &str) -> Option<Vec<u8>> {
    let root = volume.root.clone();
    let hash = hash.to_string();
    tokio_uring::start(async move {
        let (file, size) = io::open_block(&root, &hash).await.expect("open")?;
        let buffer = Vec::with_capacity(size as usize);
        let (result, buffer) = io::read_exact_into(&file, buffer, 0, size as usize, 0).await;
        result.expect("read");
        Some(buffer)
    })
}

/// Compare a stored copy with `data` through the request path.
fn compares_equal(volume: &Volume, hash: &str, data: &[u8]) -> bool {
    let root = volume.root.clone();
    let (hash, data) = (hash.to_string(), data.to_vec());
    tokio_uring::start(async move {
        let (file, size) = io::open_block(&root, &hash).await.expect("open").expect("stored");
        let (result, _) = io::stored_copy_equals(&file, size, &data, Vec::with_capacity(1 << 17)).await;
        result.expect("compare")
    })
}

/// `(hash, size, mtime_ns)` of every listed block under `prefix`.
pub(super) fn index(volume: &Volume, prefix: &str) -> Vec<(String, u64, i128)> {
    list_directory(volume, prefix)
}

fn names_beside(volume: &Volume, hash: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout::block_dir(&volume.root, hash))
        .expect("block dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(super) fn age(path: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to age")
        .set_modified(SystemTime::now() - Duration::from_secs(secs))
        .expect("set mtime");
}

#[test]
fn a_stored_copy_compares_equal_only_to_the_same_bytes() {
    on_a_directory(|volume| {
        let data = b"the volume contract".repeat(9000);
        let hash = put(volume, &data);
        assert_eq!(get(volume, &hash).as_deref(), Some(&data[..]));
        assert!(compares_equal(volume, &hash, &data));
        let mut other = data.clone();
        other[100] ^= 1;
        assert!(!compares_equal(volume, &hash, &other), "one flipped byte differs");
        assert!(!compares_equal(volume, &hash, &data[1..]), "another length differs");
        assert_eq!(get(volume, &md5_hex(b"never stored")), None);
        assert_eq!(
            names_beside(volume, &hash),
            std::slice::from_ref(&hash),
            "no temp file stays"
        );
    });
}

#[test]
fn the_pull_writer_keeps_the_same_commit_protocol() {
    on_a_directory(|volume| {
        let data = b"pulled from a peer".to_vec();
        let hash = md5_hex(&data);
        io::write_block_blocking(volume, &hash, &data, 7).expect("blocking write");
        assert_eq!(
            get(volume, &hash).as_deref(),
            Some(&data[..]),
            "the request path reads it"
        );
        assert_eq!(
            index(volume, &hash[..3]),
            [(hash.clone(), data.len() as u64, index(volume, "")[0].2)]
        );
        assert_eq!(
            names_beside(volume, &hash),
            std::slice::from_ref(&hash),
            "no temp file stays"
        );
        // A rewrite replaces the file whole.
        io::write_block_blocking(volume, &hash, &data, 8).expect("rewrite");
        assert_eq!(names_beside(volume, &hash), [hash]);
    });
}

#[test]
fn write_errors_are_classified_alike_on_both_paths() {
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        assert!(matches!(
            WriteError::from(std::io::Error::from_raw_os_error(errno)),
            WriteError::Full
        ));
    }
    assert!(matches!(
        WriteError::from(std::io::Error::from_raw_os_error(libc::EIO)),
        WriteError::Failed(_)
    ));
    on_a_directory(|volume| {
        // A block directory that is a file: both writers fail, and leave nothing behind.
        let hash = md5_hex(b"cannot be written");
        std::fs::write(layout::block_dir(&volume.root, &hash), b"in the way").expect("obstacle");
        let blocking = io::write_block_blocking(volume, &hash, b"cannot be written", 1);
        assert!(matches!(blocking, Err(WriteError::Failed(_))), "{blocking:?}");
        let streamed = tokio_uring::start(io::write_block(
            volume,
            &hash,
            b"cannot be written".to_vec(),
            2,
            helpers(),
        ));
        let streamed = streamed.0;
        assert!(matches!(streamed, Err(WriteError::Failed(_))), "{streamed:?}");
    });
}

#[test]
fn the_index_lists_every_block_once_and_no_trash_or_temp_file() {
    on_a_directory(|volume| {
        let blocks: Vec<Vec<u8>> = (0..24u8).map(|seed| vec![seed; 100 + seed as usize]).collect();
        let hashes: Vec<String> = blocks.iter().map(|data| put(volume, data)).collect();
        let trashed = put(volume, b"trashed");
        std::fs::rename(
            layout::block_path(&volume.root, &trashed),
            layout::trash_path(&volume.root, &trashed, 1),
        )
        .expect("trash by hand");
        let temp = md5_hex(b"half written");
        std::fs::create_dir_all(layout::block_dir(&volume.root, &temp)).expect("dir");
        std::fs::write(layout::temp_path(&volume.root, &temp, 3), b"half").expect("temp file");
        let listed = index(volume, "");
        let mut expected: Vec<&String> = hashes.iter().collect();
        expected.sort();
        let mut listed_hashes: Vec<&String> = listed.iter().map(|(hash, _, _)| hash).collect();
        listed_hashes.sort();
        assert_eq!(listed_hashes, expected, "every block, once; no trash, no temp file");
        for (hash, size, mtime_ns) in &listed {
            let data = &blocks[hashes.iter().position(|known| known == hash).expect("known")];
            assert_eq!(*size, data.len() as u64);
            assert!(*mtime_ns > 0);
        }
        let prefix = &hashes[0][..2];
        let under = index(volume, prefix);
        assert!(!under.is_empty() && under.iter().all(|(hash, _, _)| hash.starts_with(prefix)));
        let mut seen = 0;
        let stopped = list_blocks(&volume.root, "", |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .expect("index");
        assert!(!stopped && seen == 1, "the walk stops when asked");
    });
}

#[test]
fn untrash_keeps_the_mtime_and_a_lifetime_of_zero_deletes() {
    let rules = TrashRules {
        signing_ttl_secs: DAY_SECS,
        lifetime_secs: 3600,
    };
    on_a_directory(|volume| {
        let old = put(volume, b"written long ago");
        age(&layout::block_path(&volume.root, &old), 2 * DAY_SECS);
        let listed_mtime = index(volume, &old)[0].2;
        let now = SystemTime::now();
        let trashed = trash::trash_block(&volume.root, &old, now, &rules, Some(listed_mtime)).expect("trash");
        assert_eq!(trashed, TrashOutcome::Trashed);
        assert!(trash::untrash_block(&volume.root, &old).expect("untrash"));
        assert_eq!(
            index(volume, &old),
            [(old.clone(), 16, listed_mtime)],
            "back, mtime kept"
        );
        assert!(
            !trash::untrash_block(&volume.root, &old).expect("untrash again"),
            "the trash file was renamed back: none is left"
        );
        let at_once = TrashRules {
            lifetime_secs: 0,
            ..rules
        };
        let deleted = trash::trash_block(&volume.root, &old, now, &at_once, None).expect("delete");
        assert_eq!(deleted, TrashOutcome::Deleted);
        assert!(names_beside(volume, &old).is_empty());
    });
}

#[test]
fn the_emptier_deletes_expired_trash_and_dead_temp_files_only() {
    on_a_directory(|volume| {
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let expired = md5_hex(b"expired");
        let pending = md5_hex(b"pending");
        for (hash, deadline) in [(&expired, now_secs - 10), (&pending, now_secs + 3600)] {
            std::fs::create_dir_all(layout::block_dir(&volume.root, hash)).expect("dir");
            std::fs::write(layout::trash_path(&volume.root, hash, deadline), b"x").expect("trash");
        }
        let live = put(volume, b"a live block");
        let swept = trash::sweep_volume(&volume.root, now_secs, true, false, 3).expect("sweep");
        assert_eq!(swept.trash, 1);
        assert!(names_beside(volume, &expired).is_empty());
        assert_eq!(names_beside(volume, &pending).len(), 1);
        assert_eq!(get(volume, &live).as_deref(), Some(&b"a live block"[..]));
    });
}

#[test]
fn free_space_is_reported_and_failure_takes_a_volume_out_for_a_while() {
    on_a_directory(|volume| {
        let free = io::free_bytes(&volume.root).expect("free space");
        assert!(free > 0);
        let reading = volume.free_space.bytes().expect("read when opened");
        assert!(reading > 0 && reading.abs_diff(free) < free / 10, "{reading} vs {free}");
        // A fresh reading, then a write: the write takes its length off it at once (the
        // next statvfs, a second away, is not waited for).
        let before = volume.free_space.read().expect("read again");
        let written = vec![5u8; 2 * 1024 * 1024];
        put(volume, &written);
        let after = volume.free_space.bytes().expect("still read");
        assert!(
            after <= before - written.len() as u64,
            "a write takes its length off the reading: {before} → {after}"
        );
        assert!(volume.accepts_writes());
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let started = volume.write_started();
        volume.mark_failed(&eio);
        assert!(!volume.accepts_writes(), "out of the write rotation");
        volume.mark_healthy(started);
        assert!(volume.accepts_writes());
    });
}

#[test]
fn a_volume_whose_writes_keep_failing_stays_out_until_a_probe_succeeds() {
    use crate::limits::{DRIVE_ERRORS_MAX, DRIVE_PROBE_INTERVAL_MS};
    use crate::volume::health::{self, Reason};
    on_a_directory(|volume| {
        let in_flight = volume.write_started();
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        for _ in 0..=DRIVE_ERRORS_MAX {
            volume.mark_failed(&eio);
        }
        assert_eq!(volume.health.reason(), Some(Reason::WriteErrors));
        // A write in flight across the errors does not vouch for the volume; the
        // VOLUME_RETRY_MS rule alone would have let it back in.
        volume.mark_healthy(in_flight);
        assert!(!volume.accepts_writes(), "unhealthy: out until a probe succeeds");
        // Full is not a drive error.
        volume.mark_failed(&std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(volume.health.totals().write, DRIVE_ERRORS_MAX + 1);
        let now = health::now_ms();
        assert!(volume.health.start_probe(now, DRIVE_PROBE_INTERVAL_MS));
        let probed = io::probe_blocking(&volume.root, 77);
        assert!(probed.is_ok(), "{probed:?}");
        volume.report(volume.health.probe_finished(true, now));
        volume.mark_healthy(volume.write_started());
        assert!(volume.accepts_writes(), "back in the write rotation");
        assert!(index(volume, "").is_empty(), "a probe leaves no block behind");
        assert!(
            names_beside(volume, "d41d8cd98f00b204e9800998ecf8427e").is_empty(),
            "nor a temp file"
        );
    });
    assert!(io::probe_blocking(Path::new("/nonexistent/keepring/volume"), 1).is_err());
}

#[test]
fn the_sweep_spares_temp_files_a_writer_holds_and_removes_dead_ones() {
    use std::os::fd::AsRawFd;
    on_a_directory(|volume| {
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let (held, dead) = (md5_hex(b"being written"), md5_hex(b"writer killed"));
        let mut open_writer = None;
        for hash in [&held, &dead] {
            std::fs::create_dir_all(layout::block_dir(&volume.root, hash)).expect("dir");
            let path = layout::temp_path(&volume.root, hash, 5);
            let file = std::fs::File::create(&path).expect("temp file");
            age(&path, 120);
            if hash == &held {
                assert_eq!(temp::claim(file.as_raw_fd()).expect("lock"), temp::Claim::Owned);
                open_writer = Some(file);
            }
        }
        assert!(temp::is_held_by_a_writer(&layout::temp_path(&volume.root, &held, 5)).expect("probe"));
        let swept = trash::sweep_volume(&volume.root, now_secs, false, true, 1).expect("sweep");
        assert_eq!(swept.temp, 1);
        assert!(names_beside(volume, &dead).is_empty(), "the dead write's file goes");
        assert_eq!(names_beside(volume, &held).len(), 1, "the live write's file stays");
        drop(open_writer);
        assert!(!temp::is_held_by_a_writer(&layout::temp_path(&volume.root, &held, 5)).expect("probe"));
    });
}

#[test]
fn a_big_block_reserves_its_space_and_is_written_whole() {
    on_a_directory(|volume| {
        let data = vec![7u8; 3 * 1024 * 1024 + 5];
        let hash = put(volume, &data);
        assert_eq!(get(volume, &hash).as_deref(), Some(&data[..]));
        let blocking = vec![9u8; 2 * 1024 * 1024 + 3];
        let blocking_hash = md5_hex(&blocking);
        io::write_block_blocking(volume, &blocking_hash, &blocking, 11).expect("blocking write");
        assert_eq!(get(volume, &blocking_hash).as_deref(), Some(&blocking[..]));
    });
}

/// Pages of `path` in the page cache now.
fn cached_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open");
    crate::volume::page_cache::cached_pages(file.as_raw_fd()).expect("cachestat (Linux 6.5+)") as usize
}

/// Whether `path` is on tmpfs, where every page of a file is memory (and "cached").
fn on_tmpfs(path: &Path) -> bool {
    let path = crate::volume::io::c_path(path).expect("path");
    // SAFETY: statfs fills the struct it is given.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    }
}

#[test]
fn a_big_block_arriving_in_ragged_pieces_is_written_past_the_page_cache() {
    use crate::limits::{DIRECT_WRITE_STEP_BYTES, STREAMED_WRITE_BYTES_MIN};
    on_a_directory(|volume| {
        // More than one direct step, ending in a partial page; and whole pages only.
        for length in [
            DIRECT_WRITE_STEP_BYTES + 3 * 1024 * 1024 + 1000,
            DIRECT_WRITE_STEP_BYTES + 2 * 1024 * 1024,
        ] {
            let block = super::fresh_block(length);
            let hash = md5_hex(&block);
            let directly = tokio_uring::start(async {
                let mut writer = io::BlockWriter::create(volume, &hash, 7, Some(block.len() as u64), helpers())
                    .await
                    .expect("create");
                let directly = writer.writes_directly();
                // As a body arrives: pieces of odd sizes, an append whenever a step waits.
                let mut body = Vec::with_capacity(block.len());
                for piece in block.chunks(128 * 1024 + 7) {
                    body.extend_from_slice(piece);
                    if writer.wants(body.len()) {
                        let (result, returned) = writer.append(body).await;
                        result.expect("append");
                        body = returned;
                        assert!(writer.written() <= body.len());
                    }
                }
                let (result, _) = writer.append_last(body).await;
                result.expect("append the rest");
                assert_eq!(writer.written(), block.len());
                writer.commit().await.expect("commit");
                directly
            });
            let path = layout::block_path(&volume.root, &hash);
            if !on_tmpfs(&volume.root) {
                assert!(directly, "ext4, xfs and btrfs take O_DIRECT");
                // At most the last, partial page went through the cache.
                let cached = cached_pages(&path);
                assert!(
                    cached <= 1,
                    "{cached} pages of a {length}-byte block are in the page cache"
                );
            }
            assert!(
                std::fs::read(&path).expect("read") == block,
                "the stored bytes are the block's"
            );
        }
        // A small block goes through the cache as before.
        let small = super::fresh_block(STREAMED_WRITE_BYTES_MIN as usize - 1);
        let small_hash = md5_hex(&small);
        let small_directly = tokio_uring::start(async {
            let writer = io::BlockWriter::create(volume, &small_hash, 8, Some(small.len() as u64), helpers())
                .await
                .expect("create");
            let directly = writer.writes_directly();
            writer.abandon().await;
            directly
        });
        assert!(!small_directly);
        assert_eq!(put(volume, &small), small_hash);
        assert!(std::fs::read(layout::block_path(&volume.root, &small_hash)).expect("read") == small);
    });
}
