//! The volume contract, as one test suite every volume kind must pass (keepstore's
//! `volume_generic_test.go` is the model). Here, the checks every kind shares, each run
//! against a fresh volume of every kind through `Subject`, a small adapter whose methods
//! show side by side how each kind does a thing: what is written reads back whole at every
//! size and `stat`s at its size; the index lists blocks with size and mtime under a
//! prefix; touch makes a block young again and refuses a missing one; trash follows the
//! signing-TTL rule and the trash list's mtime, and untrash restores.
//!
//! What only one kind has is proven next to it, with the same habits: `directory` (temp
//! files, the sweeps, free space, drive health) and `s3` (keepstore's bucket layout and
//! `recent/` markers, Content-MD5, UnsafeDelete, the race window, fixRace, the emptier,
//! index paging). S3 checks run on the shared bucket of `crate::s3::testing::test_store`:
//! they keep apart by writing fresh random blocks (hashes never collide) and looking only
//! at their own hashes; the emptier, which walks the whole `trash/`, runs alone
//! (`trash_state`).
//!
//! Ageing differs by kind: a directory block's mtime can be set back, an S3 object's
//! LastModified cannot. An S3 volume here has a 2 s signing TTL, and `Subject::make_old`
//! waits it out: a trash copy made sooner after a block's `recent/` marker is a race that
//! a read copies back (keepstore's fixRace), so a `now` in the future would not do for
//! these checks (the S3 checks that need no real trash use one).

mod directory;
mod s3;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::blocking::Pool;
use crate::volume::index::list_blocks;
use crate::volume::io;
use crate::volume::location::S3Parameters;
use crate::volume::s3::{run_blocking, to_io, S3Bucket};
use crate::volume::trash::{self, unix_nanos, TrashOutcome, TrashRules};
use crate::volume::{layout, mtime_nanos, Volume, VolumeOptions};

const DAY_SECS: u64 = 24 * 3600;

/// An S3 volume's signing TTL in the shared checks: short enough to wait out, long
/// enough that a block just written is young though LastModified drops the fraction of
/// its second (a marker made at 12.9 s reads 12 s).
const S3_SIGNING_TTL_SECS: u64 = 2;

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    crate::signature::hex(&Md5::digest(data))
}

/// `len` bytes no other block in this or any other test run has (a header naming the
/// process, the time and a counter, then xorshift bytes): on the shared S3 bucket, a
/// check's blocks are its own.
fn fresh_block(len: usize) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut data = format!("keepring contract {} {nanos:x} {count} ", std::process::id()).into_bytes();
    assert!(len >= data.len(), "a fresh block has at least {} bytes", data.len());
    let mut state = nanos ^ (count << 32) | 1;
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.push(state as u8);
    }
    data
}

/// The helper pool the request path is given (one for the whole suite).
fn helpers() -> &'static Pool {
    static HELPERS: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    HELPERS.get_or_init(|| Pool::start(2, 16).expect("helper pool"))
}

/// The emptier lists every `trash/` copy in the shared bucket and acts on each: a check
/// that plants or expects trash copies holds this for reading, an emptier check holds
/// it for writing, so no emptier pass runs across another check's trash.
fn trash_state() -> RwLockReadGuard<'static, ()> {
    TRASH_STATE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn trash_state_alone() -> RwLockWriteGuard<'static, ()> {
    TRASH_STATE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

static TRASH_STATE: RwLock<()> = RwLock::new(());

/// How long an S3 listing may lag a delete or a write (`Subject::index_settled`).
const S3_LISTING_SETTLE: Duration = Duration::from_secs(5);

/// An S3 volume's parameters on the test store: keepstore's defaults (RaceWindow 24 h,
/// no UnsafeDelete, 1000 keys a page), short timeouts.
fn s3_parameters(prefix_length: usize) -> S3Parameters {
    let store = crate::s3::testing::test_store();
    S3Parameters {
        bucket: store.bucket,
        region: store.region,
        endpoint: store.endpoint,
        use_path_style: store.use_path_style,
        access_key_id: store.access_key_id,
        secret_access_key: store.secret_access_key,
        prefix_length,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(20),
        location_constraint: false,
        index_page_size: 1000,
        race_window: Duration::from_secs(DAY_SECS),
        unsafe_delete: false,
        tls_insecure: false,
    }
}

fn s3_volume(parameters: &S3Parameters) -> Volume {
    let options = VolumeOptions {
        uuid: Some("zzzzz-nyw5e-s3contract00000".to_string()),
        ..VolumeOptions::default()
    };
    Volume::open_s3(parameters, &options).expect("open S3 volume")
}

/// A fresh volume of one kind, and what keeps it alive.
enum Subject {
    Directory {
        volume: Volume,
        _dir: TempDir,
    },
    /// The bucket of a volume `Volume::open_s3` made (the volume kept as opened).
    S3 {
        _volume: Volume,
        bucket: Arc<S3Bucket>,
    },
}

impl Subject {
    fn directory() -> Subject {
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = Volume::open(dir.path(), &VolumeOptions::default()).expect("open directory volume");
        Subject::Directory { volume, _dir: dir }
    }

    /// An S3 volume on the test store, keepstore's `<abc>/<hash>` layout (PrefixLength 3).
    fn s3() -> Subject {
        let volume = s3_volume(&s3_parameters(3));
        let bucket = volume.s3.clone().expect("an S3 volume has a bucket");
        Subject::S3 {
            _volume: volume,
            bucket,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Subject::Directory { .. } => "directory",
            Subject::S3 { .. } => "S3",
        }
    }

    /// Write through the request path (io_uring for a directory, the core's own S3
    /// connections for a bucket).
    fn put(&self, data: &[u8]) -> String {
        match self {
            Subject::Directory { volume, .. } => directory::put(volume, data),
            Subject::S3 { bucket, .. } => s3::put(bucket, data),
        }
    }

    /// Read back through the request path; None when the volume does not have it.
    fn get(&self, hash: &str) -> Option<Vec<u8>> {
        match self {
            Subject::Directory { volume, .. } => directory::get(volume, hash),
            Subject::S3 { bucket, .. } => s3::get(bucket, hash, self.signing_ttl()),
        }
    }

    /// The stored block's size, without reading it.
    fn stat(&self, hash: &str) -> Option<u64> {
        match self {
            Subject::Directory { volume, .. } => match std::fs::metadata(layout::block_path(&volume.root, hash)) {
                Ok(metadata) => Some(metadata.len()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => panic!("stat {hash}: {error}"),
            },
            Subject::S3 { bucket, .. } => in_ring(bucket.stat(hash)).expect("S3 stat"),
        }
    }

    /// `(hash, size, mtime_ns)` of every listed block under `prefix`.
    fn index(&self, prefix: &str) -> Vec<(String, u64, i128)> {
        match self {
            Subject::Directory { volume, .. } => directory::index(volume, prefix),
            Subject::S3 { bucket, .. } => s3::index(bucket, prefix),
        }
    }

    /// The index under `prefix` once `settled` says it shows what just happened. A directory
    /// is listed once (its listing is exact); an S3 bucket is listed again for up to
    /// `S3_LISTING_SETTLE`: Garage's ListObjectsV2 was seen still naming a just-deleted
    /// object (7 of 150 deletes in a row, boto3 against the test cluster), while its
    /// GET and HEAD were already right.
    fn index_settled(
        &self,
        prefix: &str,
        settled: impl Fn(&[(String, u64, i128)]) -> bool,
    ) -> Vec<(String, u64, i128)> {
        let started = std::time::Instant::now();
        loop {
            let listed = self.index(prefix);
            let give_up = matches!(self, Subject::Directory { .. }) || started.elapsed() > S3_LISTING_SETTLE;
            if settled(&listed) || give_up {
                return listed;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The block's mtime as the trash rule sees it; None when there is no such block.
    fn mtime_ns(&self, hash: &str) -> Option<i128> {
        match self {
            Subject::Directory { volume, .. } => match std::fs::metadata(layout::block_path(&volume.root, hash)) {
                Ok(metadata) => Some(mtime_nanos(&metadata)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => panic!("stat {hash}: {error}"),
            },
            Subject::S3 { bucket, .. } => in_ring(bucket.mtime(hash)).expect("S3 mtime").map(unix_nanos),
        }
    }

    fn touch(&self, hash: &str) -> std::io::Result<()> {
        match self {
            Subject::Directory { volume, .. } => io::touch(&layout::block_path(&volume.root, hash)),
            Subject::S3 { bucket, .. } => in_ring(bucket.touch(hash, self.signing_ttl())).map_err(to_io),
        }
    }

    fn trash(
        &self,
        hash: &str,
        now: SystemTime,
        rules: &TrashRules,
        expected_mtime_ns: Option<i128>,
    ) -> std::io::Result<TrashOutcome> {
        match self {
            Subject::Directory { volume, .. } => trash::trash_block(&volume.root, hash, now, rules, expected_mtime_ns),
            Subject::S3 { bucket, .. } => in_ring(bucket.trash(hash, now, rules, expected_mtime_ns)),
        }
    }

    fn untrash(&self, hash: &str) -> std::io::Result<bool> {
        match self {
            Subject::Directory { volume, .. } => trash::untrash_block(&volume.root, hash),
            Subject::S3 { bucket, .. } => in_ring(bucket.untrash(hash)).map_err(to_io),
        }
    }

    /// The trash rules the shared checks trash with: keepstore's signing TTL for a
    /// directory, a short one for S3 (see the module doc); an hour in the trash.
    fn rules(&self) -> TrashRules {
        let signing_ttl_secs = match self {
            Subject::Directory { .. } => DAY_SECS,
            Subject::S3 { .. } => S3_SIGNING_TTL_SECS,
        };
        TrashRules {
            signing_ttl_secs,
            lifetime_secs: 3600,
        }
    }

    fn signing_ttl(&self) -> Duration {
        Duration::from_secs(self.rules().signing_ttl_secs)
    }

    /// Make block `hash` older than the signing TTL: a directory block's mtime is set
    /// back two TTLs; an S3 block's LastModified cannot be set, so the TTL is waited out.
    /// The moment to trash it at comes back.
    fn make_old(&self, hash: &str) -> SystemTime {
        match self {
            Subject::Directory { volume, .. } => {
                directory::age(
                    &layout::block_path(&volume.root, hash),
                    2 * self.rules().signing_ttl_secs,
                );
            }
            Subject::S3 { .. } => std::thread::sleep(self.signing_ttl() + Duration::from_millis(100)),
        }
        SystemTime::now()
    }

    /// How long to wait for a new mtime to differ from one taken before: a file's is in
    /// nanoseconds (the kernel's clock tick, a few ms), an S3 LastModified in seconds.
    fn mtime_step(&self) -> Duration {
        match self {
            Subject::Directory { .. } => Duration::from_millis(20),
            Subject::S3 { .. } => Duration::from_millis(1100),
        }
    }
}

/// Run S3 operations on this thread's own ring (the tests are not cores).
fn in_ring<T>(operation: impl std::future::Future<Output = T>) -> T {
    run_blocking(operation).expect("a ring for S3 requests")
}

/// Every shared check, against a fresh volume of every kind.
fn for_every_kind(check: impl Fn(&Subject)) {
    for fresh in [Subject::directory, Subject::s3] {
        let subject = fresh();
        eprintln!("volume contract on a {} volume", subject.name());
        check(&subject);
    }
}

#[test]
fn what_is_written_reads_back_whole_at_every_size() {
    for_every_kind(|subject| {
        for len in [4096, 3 * 1024 * 1024 + 5] {
            let data = fresh_block(len);
            let hash = subject.put(&data);
            assert_eq!(subject.get(&hash).as_deref(), Some(&data[..]), "{len} bytes read back");
            assert_eq!(subject.stat(&hash), Some(len as u64));
        }
        let empty = subject.put(b"");
        assert_eq!(empty, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(subject.get(&empty).as_deref(), Some(&b""[..]), "the empty block");
        assert_eq!(subject.stat(&empty), Some(0));
        let never = md5_hex(&fresh_block(100));
        assert_eq!(subject.get(&never), None, "a block never written is not found");
        assert_eq!(subject.stat(&never), None);
    });
}

#[test]
fn the_index_lists_blocks_under_a_prefix_with_size_and_mtime() {
    for_every_kind(|subject| {
        let blocks: Vec<Vec<u8>> = (0..4).map(|seed| fresh_block(100 + seed * 37)).collect();
        let hashes: Vec<String> = blocks.iter().map(|data| subject.put(data)).collect();
        for (hash, data) in hashes.iter().zip(&blocks) {
            for digits in [2, 3, 5, 32] {
                let prefix = &hash[..digits];
                let under = subject.index(prefix);
                assert!(
                    under.iter().all(|(listed, _, _)| listed.starts_with(prefix)),
                    "{prefix}: {under:?}"
                );
                let own: Vec<_> = under.iter().filter(|(listed, _, _)| listed == hash).collect();
                let mtime_ns = subject.mtime_ns(hash).expect("mtime");
                assert_eq!(own, [&(hash.clone(), data.len() as u64, mtime_ns)], "under {prefix}");
            }
        }
        let _trash = trash_state();
        let trashed = subject.put(&fresh_block(200));
        let now = subject.make_old(&trashed);
        let trash = subject.trash(&trashed, now, &subject.rules(), None).expect("trash");
        assert_eq!(trash, TrashOutcome::Trashed);
        let not_trashed = |listed: &[(String, u64, i128)]| listed.iter().all(|(hash, _, _)| hash != &trashed);
        assert!(
            not_trashed(&subject.index_settled(&trashed[..3], not_trashed)),
            "trash is not listed"
        );
    });
}

#[test]
fn touch_makes_a_block_young_again_and_refuses_a_missing_one() {
    for_every_kind(|subject| {
        let missing = md5_hex(&fresh_block(100));
        let refused = subject.touch(&missing).expect_err("touch of a missing block");
        assert_eq!(refused.kind(), std::io::ErrorKind::NotFound, "{refused}");
        let hash = subject.put(&fresh_block(100));
        let before = subject.mtime_ns(&hash).expect("mtime");
        std::thread::sleep(subject.mtime_step());
        subject.touch(&hash).expect("touch");
        let after = subject.mtime_ns(&hash).expect("mtime");
        let now_ns = unix_nanos(SystemTime::now());
        assert!(after > before && now_ns - after < 60_000_000_000, "{before} → {after}");
        assert_eq!(subject.index(&hash)[0].2, after, "the index shows the new mtime");
    });
}

#[test]
fn trash_follows_the_signing_ttl_and_untrash_restores() {
    let _trash = trash_state();
    for_every_kind(|subject| {
        let rules = subject.rules();
        let young_data = fresh_block(300);
        let young = subject.put(&young_data);
        let kept = subject.trash(&young, SystemTime::now(), &rules, None).expect("trash");
        assert_eq!(kept, TrashOutcome::Kept, "younger than the signing TTL");
        assert_eq!(subject.get(&young).as_deref(), Some(&young_data[..]));
        let data = fresh_block(400);
        let old = subject.put(&data);
        let now = subject.make_old(&old);
        let listed_mtime = subject.index(&old)[0].2;
        let wrong = Some(listed_mtime + 1_000_000_000);
        let kept = subject.trash(&old, now, &rules, wrong).expect("trash");
        assert_eq!(kept, TrashOutcome::Kept, "not at the mtime the trash list named");
        assert_eq!(subject.stat(&old), Some(400));
        let trashed = subject.trash(&old, now, &rules, Some(listed_mtime)).expect("trash");
        assert_eq!(trashed, TrashOutcome::Trashed);
        let listed = subject.index_settled(&old, |listed| listed.is_empty());
        assert!(listed.is_empty(), "trash is not listed: {listed:?}");
        assert_eq!(subject.get(&old), None, "nor read");
        assert_eq!(subject.stat(&old), None);
        let missing = subject.trash(&old, now, &rules, None).expect("trash again");
        assert_eq!(missing, TrashOutcome::Missing);
        assert!(subject.untrash(&old).expect("untrash"));
        assert_eq!(subject.get(&old).as_deref(), Some(&data[..]), "back");
        assert_eq!(
            subject.index_settled(&old, |listed| listed.len() == 1).len(),
            1,
            "and listed"
        );
        let never = md5_hex(&fresh_block(100));
        assert!(
            !subject.untrash(&never).expect("untrash"),
            "no trash copy: nothing to untrash"
        );
        assert_eq!(subject.stat(&never), None);
    });
}

/// Both kinds report their kind's flags alike: a read-only volume takes no writes.
#[test]
fn a_read_only_volume_takes_no_writes_and_trashes_only_when_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let read_only = VolumeOptions {
        uuid: Some("zzzzz-nyw5e-s3contract00000".to_string()),
        read_only: true,
        ..VolumeOptions::default()
    };
    let trash_allowed = VolumeOptions {
        trash_when_read_only: true,
        ..read_only.clone()
    };
    let parameters = s3_parameters(0);
    let opened = [
        Volume::open(dir.path(), &read_only).expect("open"),
        Volume::open_s3(&parameters, &read_only).expect("open S3"),
    ];
    for volume in &opened {
        assert!(!volume.accepts_writes() && !volume.allow_trash, "{}", volume.describe());
    }
    let opened = [
        Volume::open(dir.path(), &trash_allowed).expect("open"),
        Volume::open_s3(&parameters, &trash_allowed).expect("open S3"),
    ];
    for volume in &opened {
        assert!(
            !volume.allow_write && volume.allow_trash,
            "AllowTrashWhenReadOnly: {}",
            volume.describe()
        );
    }
    assert!(
        s3_volume(&parameters).accepts_writes(),
        "writable unless told otherwise"
    );
}

/// The walk a directory index takes, for `directory`'s checks.
fn list_directory(volume: &Volume, prefix: &str) -> Vec<(String, u64, i128)> {
    let mut listed = Vec::new();
    let complete = list_blocks(&volume.root, prefix, |block| {
        listed.push((block.hash.to_string(), block.size, block.mtime_ns));
        ControlFlow::Continue(())
    })
    .expect("index");
    assert!(complete);
    listed
}
