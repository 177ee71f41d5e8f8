//! One directory volume in keepstore's on-disk layout (`ROOT/xxx/<hash>`, keep-protocol.md
//! §6), and everything done on disk goes through here: its identity, flags and failure
//! marking (`Volume`), its drive health (`health`: errors in a sliding window), the pure
//! path rules (`layout`), reads and the one commit protocol for writes, on the cores
//! through io_uring and off them for the pull worker (`io`), trash, untrash and the
//! sweeps (`trash`), the index walk (`index`); where a configured volume lives, a
//! directory or an S3 bucket, as pure data (`location`). `contract` is the
//! test suite every volume kind must pass. What io_uring cannot do without waiting
//! (trash, untrash, touch, statvfs, directory listings) is plain blocking code here, run
//! by the callers on the helper pool (`blocking`) or on their own threads (chores).

#[cfg(test)]
mod contract;
pub mod health;
pub mod index;
pub mod io;
pub mod layout;
pub mod location;
pub mod page_cache;
pub mod quarantine;
pub mod s3;
pub mod scrub_state;
pub mod temp;
pub mod trash;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::limits::{DRIVE_ERROR_WINDOW_SECS, VOLUME_RETRY_MS};
use health::{Change, Health, Op, WriteStarted};

/// Name of the small file at a volume's root that holds its UUID, so `/mounts` and
/// placement stay the same across restarts and re-mounts.
pub const UUID_FILE_NAME: &str = "keepring-volume-uuid";

/// Cluster prefix of UUIDs keepring makes up for volumes it was not told a UUID for.
pub const UUID_CLUSTER_PREFIX: &str = "zzzzz";

#[derive(Debug)]
pub struct Volume {
    pub uuid: String,
    pub root: PathBuf,
    pub device_id: String,
    pub allow_write: bool,
    pub allow_trash: bool,
    pub replication: u32,
    pub storage_classes: Vec<String>,
    /// Highest priority among the volume's configured storage classes (keep-protocol §5).
    pub priority: i64,
    /// Filesystem device of the root when the volume was opened: the same path on another
    /// device (a re-mount) is another volume.
    pub device: u64,
    /// What it was opened with (a reload that changes them reopens the volume).
    pub options: VolumeOptions,
    /// When a write last failed with an I/O error (ms since the epoch; 0: never). A failed
    /// volume leaves the write rotation for `VOLUME_RETRY_MS`, then is tried again.
    failed_at_ms: AtomicU64,
    /// Read and write errors in a sliding window: past a bound the volume is unhealthy,
    /// out of the write rotation until a probe or a write shows it works (`health`).
    pub health: Health,
    /// Bytes of writes between their free-space check and their fallocate on this volume
    /// (`io::claim_space`): two writes racing for the last room see each other.
    pub(crate) claiming: AtomicU64,
    /// The last free-space reading, which writes check on the cores instead of statvfs.
    pub free_space: Arc<io::FreeSpace>,
    /// An S3 volume's bucket (`s3`); `None` for a directory volume. An S3 volume's `root`
    /// is `S3_ROOT`, under `/dev/null`: nothing can be opened or created there, so a
    /// directory operation that reached one by mistake fails instead of touching a disk.
    pub s3: Option<Arc<s3::S3Bucket>>,
}

/// The `root` of every S3 volume: no file can exist below `/dev/null`.
pub const S3_ROOT: &str = "/dev/null/keepring-s3-volume";

/// How a volume is to be served, from the command line or the cluster config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOptions {
    /// A configured UUID; otherwise the one stored at the root (created on first use).
    pub uuid: Option<String>,
    pub read_only: bool,
    /// A read-only volume still trashes and empties its trash (`AllowTrashWhenReadOnly`);
    /// never on a filesystem mounted read-only.
    pub trash_when_read_only: bool,
    pub replication: u32,
    pub storage_classes: Vec<String>,
    pub priority: i64,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            uuid: None,
            read_only: false,
            trash_when_read_only: false,
            replication: 1,
            storage_classes: vec!["default".to_string()],
            priority: 0,
        }
    }
}

/// The volume's block directories (all-hex names, as keepstore descends into), for the
/// walks that look at every file: the sweeps and the quarantine listing.
pub(crate) fn block_dirs(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut dirs = Vec::new();
    for dir in std::fs::read_dir(root)? {
        let dir = dir?;
        let is_block_dir = dir.file_name().to_str().is_some_and(layout::is_index_dir_name);
        if is_block_dir && dir.file_type()?.is_dir() {
            dirs.push(dir.path());
        }
    }
    Ok(dirs)
}

/// A file's mtime in nanoseconds since the epoch, as `/index` and trash lists carry it.
pub fn mtime_nanos(metadata: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Volume {
    /// Open (creating if missing) a writable directory volume with default flags, reading
    /// its UUID from `UUID_FILE_NAME` or storing a new one there.
    pub fn open_directory(root: &Path) -> std::io::Result<Volume> {
        std::fs::create_dir_all(root)?;
        Volume::open(root, &VolumeOptions::default())
    }

    /// Open an existing directory as a volume. A filesystem mounted read-only is served
    /// read-only whatever the options say; its UUID, if it has no stored one, is derived
    /// from its path so it stays stable.
    pub fn open(root: &Path, options: &VolumeOptions) -> std::io::Result<Volume> {
        use std::os::unix::fs::MetadataExt;
        let root = root.canonicalize()?;
        let metadata = std::fs::metadata(&root)?;
        if !metadata.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "volume root is not a directory",
            ));
        }
        let mounted_read_only = filesystem_is_read_only(&root);
        let read_only = options.read_only || mounted_read_only;
        let device_id = format!("{}:{}", hostname(), root.display());
        let uuid = match &options.uuid {
            Some(uuid) => uuid.clone(),
            None if read_only => stored_uuid(&root)?.unwrap_or_else(|| derived_uuid(&device_id)),
            None => load_or_create_uuid(&root)?,
        };
        let free_space = Arc::new(io::FreeSpace::unread(&root));
        // Opened off the cores (start-up, the watcher): the first reading is taken here;
        // a failure leaves it unread, and the first write asks the pool again.
        let _ = free_space.read();
        Ok(Volume {
            uuid,
            device_id,
            allow_write: !read_only,
            allow_trash: !mounted_read_only && (!read_only || options.trash_when_read_only),
            replication: options.replication.max(1),
            storage_classes: options.storage_classes.clone(),
            priority: options.priority,
            device: metadata.dev(),
            options: options.clone(),
            failed_at_ms: AtomicU64::new(0),
            health: Health::new(),
            claiming: AtomicU64::new(0),
            free_space,
            root,
            s3: None,
        })
    }

    /// A volume value for tests and benchmarks (and the base of an S3 volume): no disk is
    /// touched.
    pub fn unchecked(uuid: &str, root: &Path, options: &VolumeOptions) -> Volume {
        Volume {
            uuid: uuid.to_string(),
            device_id: root.display().to_string(),
            root: root.to_path_buf(),
            allow_write: !options.read_only,
            allow_trash: !options.read_only || options.trash_when_read_only,
            replication: options.replication.max(1),
            storage_classes: options.storage_classes.clone(),
            priority: options.priority,
            device: 0,
            options: options.clone(),
            failed_at_ms: AtomicU64::new(0),
            health: Health::new(),
            claiming: AtomicU64::new(0),
            free_space: Arc::new(io::FreeSpace::unread(root)),
            s3: None,
        }
    }

    /// An S3 volume (`s3`): always has a configured UUID; its device is the bucket
    /// (`s3://<endpoint>/<bucket>`, as keepstore's DeviceID).
    pub fn open_s3(parameters: &location::S3Parameters, options: &VolumeOptions) -> std::io::Result<Volume> {
        let uuid = options
            .uuid
            .clone()
            .ok_or_else(|| std::io::Error::other("an S3 volume needs a configured UUID"))?;
        let client = crate::s3::Client::new(parameters.client_config())
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        // Nothing on a disk to read: the flags as configured, under the `/dev/null` root.
        let mut volume = Volume::unchecked(&uuid, Path::new(S3_ROOT), options);
        volume.device_id = format!("s3://{}/{}", parameters.endpoint, parameters.bucket);
        volume.s3 = Some(Arc::new(s3::S3Bucket {
            client,
            parameters: parameters.clone(),
        }));
        Ok(volume)
    }

    /// Where the volume is, for log lines: its directory, or its bucket.
    pub fn describe(&self) -> String {
        match self.s3 {
            None => self.root.display().to_string(),
            Some(_) => self.device_id.clone(),
        }
    }

    /// The directory a directory volume lives in; `None` for an S3 volume.
    pub fn directory(&self) -> Option<&Path> {
        match self.s3 {
            None => Some(&self.root),
            Some(_) => None,
        }
    }

    /// Writable, healthy, and not recently failed.
    pub fn accepts_writes(&self) -> bool {
        self.allow_write && !self.is_suspect()
    }

    /// Unhealthy, or a write failed within `VOLUME_RETRY_MS`: reads try it after the
    /// others (a store that is down or hangs costs a timeout only where nothing else has
    /// the block).
    pub fn is_suspect(&self) -> bool {
        if !self.health.is_healthy() {
            return true;
        }
        let failed_at = self.failed_at_ms.load(Ordering::Relaxed);
        failed_at != 0 && now_ms().saturating_sub(failed_at) < VOLUME_RETRY_MS
    }

    /// A write failed (not for lack of space): the volume leaves the write rotation for
    /// `VOLUME_RETRY_MS`, and a drive error counts in its health window.
    pub fn mark_failed(&self, error: &std::io::Error) {
        self.failed_at_ms.store(now_ms().max(1), Ordering::Relaxed);
        if health::is_drive_error(error) {
            self.report(self.health.record_error(Op::Write, health::now_ms()));
        }
    }

    /// A read of a block failed: a drive error counts in the health window.
    pub fn note_read_error(&self, error: &std::io::Error) {
        if health::is_drive_error(error) {
            self.report(self.health.record_error(Op::Read, health::now_ms()));
        }
    }

    /// Taken as a write to this volume begins, for `mark_healthy`.
    pub fn write_started(&self) -> WriteStarted {
        self.health.write_started()
    }

    /// A write that began at `started` succeeded: the volume is back in the rotation if a
    /// failure had taken it out, and healthy again if it was unhealthy when the write
    /// began (`health::Health::write_succeeded`).
    pub fn mark_healthy(&self, started: WriteStarted) {
        if self.failed_at_ms.load(Ordering::Relaxed) != 0 {
            self.failed_at_ms.store(0, Ordering::Relaxed);
        }
        if !self.health.is_healthy() {
            self.report(self.health.write_succeeded(started, health::now_ms()));
        }
    }

    /// Log a change of health: one line when the volume turns unhealthy, one when it
    /// recovers (lifecycle lines: logged whatever `--log-level` says).
    pub fn report(&self, change: Change) {
        match change {
            Change::None => {}
            Change::Unhealthy(reason, recent) => tracing::warn!(
                target: "keepring::lifecycle",
                volume = %self.uuid,
                path = %self.describe(),
                reason = reason.name(),
                read_errors = recent.read,
                write_errors = recent.write,
                window_secs = DRIVE_ERROR_WINDOW_SECS,
                "volume unhealthy: out of the write rotation until a probe succeeds"
            ),
            Change::Recovered { out_ms } => tracing::info!(
                target: "keepring::lifecycle",
                volume = %self.uuid,
                path = %self.describe(),
                unhealthy_ms = out_ms,
                "volume healthy again: back in the write rotation"
            ),
        }
    }

    pub fn has_class(&self, class: &str) -> bool {
        self.storage_classes.iter().any(|own| own == class)
    }
}

/// The UUID stored at `root`, if any.
fn stored_uuid(root: &Path) -> std::io::Result<Option<String>> {
    let path = root.join(UUID_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_volume_uuid(text.trim()) => Ok(Some(text.trim().to_string())),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} does not hold a volume UUID", path.display()),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// A stable UUID for a volume that cannot store one (read-only filesystem).
fn derived_uuid(device_id: &str) -> String {
    use md5::{Digest, Md5};
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let digest = Md5::digest(device_id.as_bytes());
    let suffix: String = digest
        .iter()
        .take(15)
        .map(|byte| ALPHABET[*byte as usize % 36] as char)
        .collect();
    format!("{UUID_CLUSTER_PREFIX}-nyw5e-{suffix}")
}

fn filesystem_is_read_only(root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statvfs is a valid out-parameter; `path` is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    result == 0 && stats.f_flag & libc::ST_RDONLY != 0
}

fn load_or_create_uuid(root: &Path) -> std::io::Result<String> {
    if let Some(uuid) = stored_uuid(root)? {
        return Ok(uuid);
    }
    let uuid = format!("{UUID_CLUSTER_PREFIX}-nyw5e-{}", random_base36(15)?);
    // Written whole under a name of this process's, then linked to the real name, which
    // fails if it exists: a crash never leaves a half-written identity, and of two
    // processes opening a new volume at once (a restart's old and new one) the first
    // identity stored is the one both use.
    let temp = root.join(format!(
        ".{UUID_FILE_NAME}.{}.{}",
        std::process::id(),
        random_base36(8)?
    ));
    std::fs::write(&temp, format!("{uuid}\n"))?;
    std::fs::File::open(&temp)?.sync_all()?;
    let linked = std::fs::hard_link(&temp, root.join(UUID_FILE_NAME));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            std::fs::File::open(root)?.sync_all()?;
            Ok(uuid)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            stored_uuid(root)?.ok_or_else(|| std::io::Error::other("volume UUID file vanished"))
        }
        Err(error) => Err(error),
    }
}

/// `xxxxx-nyw5e-` + 15 of [0-9a-z].
pub fn is_volume_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 27
        && bytes[5] == b'-'
        && &text[6..12] == "nyw5e-"
        && text[..5]
            .bytes()
            .chain(text[12..].bytes())
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

pub fn random_base36(len: usize) -> std::io::Result<String> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; len];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| ALPHABET[*b as usize % 36] as char).collect())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let first = Volume::open_directory(&dir.path().join("v")).unwrap();
        let second = Volume::open_directory(&dir.path().join("v")).unwrap();
        assert!(is_volume_uuid(&first.uuid), "{}", first.uuid);
        assert_eq!(first.uuid, second.uuid);
    }

    #[test]
    fn volumes_opened_at_once_agree_on_one_uuid() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("v");
            let uuids: Vec<String> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| Volume::open_directory(&root).map(|volume| volume.uuid)))
                    .collect();
                openers
                    .into_iter()
                    .map(|opener| opener.join().unwrap().expect("every opener succeeds"))
                    .collect()
            });
            assert!(uuids.iter().all(|uuid| *uuid == uuids[0]), "{uuids:?}");
            let leftovers = std::fs::read_dir(&root).unwrap().count();
            assert_eq!(leftovers, 1, "only the UUID file stays");
        }
    }

    #[test]
    fn uuid_shape() {
        assert!(is_volume_uuid("zzzzz-nyw5e-000000000000000"));
        assert!(!is_volume_uuid("zzzzz-nyw5e-00000000000000"));
        assert!(!is_volume_uuid("zzzzz-4zz18-000000000000000"));
    }
}
