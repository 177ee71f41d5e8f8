//! One S3 bucket as a volume, in keepstore's layout (`services/keepstore/s3_volume.go`,
//! 3.2.1), so a bucket either of them wrote is served by the other:
//!
//! - a block is the object `<hash>`, or `<hash[..PrefixLength]>/<hash>`;
//! - an empty object `recent/<key>` is written after every write and touch: its
//!   LastModified is the block's mtime (S3 cannot set an object's time);
//! - trash is `trash/<key>`, a server-side copy made before the block is deleted; the
//!   emptier deletes it (and its `recent/` marker) once `BlobTrashLifetime` has passed;
//! - a write or touch racing with a trash leaves a `trash/` copy younger than the signing
//!   TTL relative to its `recent/` marker: keepstore's `fixRace` copies it back, and so
//!   does this module, on a read, a touch or an emptier pass that finds it.
//!
//! Everything here is async over the core's own connections (`crate::s3`); a thread that
//! is not a core (the chores, the pull worker) runs it through `run_blocking`, on a small
//! ring of its own.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::s3::{Client, GetObject, ListedObject, ObjectInfo, S3Error};
use crate::volume::location::S3Parameters;
use crate::volume::trash::{unix_nanos, TrashOutcome, TrashRules};

/// keepstore's bound on how old a copy's LastModified may be right after the copy
/// (`maxClockSkew`): older means the store did not really copy.
const COPY_CLOCK_SKEW_MAX: Duration = Duration::from_secs(600);

const RECENT: &str = "recent/";
const TRASH: &str = "trash/";

/// One S3 volume's bucket and keepstore's rules for it.
#[derive(Debug)]
pub struct S3Bucket {
    pub client: Client,
    pub parameters: S3Parameters,
}

/// What one emptier pass did on a bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmptyCounts {
    pub deleted: u64,
    pub bytes_deleted: u64,
    pub in_trash: u64,
    pub errors: u64,
}

/// One `/index` line's worth: a block, its size, its mtime (ns, whole seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i128,
}

pub fn to_io(error: S3Error) -> io::Error {
    match error {
        S3Error::NotFound => io::Error::new(io::ErrorKind::NotFound, "no such object"),
        S3Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, error.to_string()),
        other => io::Error::other(other.to_string()),
    }
}

impl S3Bucket {
    /// The object key of block `hash` (keepstore's `key`).
    pub fn key(&self, hash: &str) -> String {
        let prefix = self.parameters.prefix_length;
        if prefix > 0 && prefix + 1 < hash.len() {
            format!("{}/{hash}", &hash[..prefix])
        } else {
            hash.to_string()
        }
    }

    /// The block hash an object key names, if it names one (keepstore's `isKeepBlock`).
    pub fn block_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let prefix = self.parameters.prefix_length;
        let hash = if prefix > 0 && key.len() == prefix + 33 && key[..prefix] == key[prefix + 1..prefix * 2 + 1] {
            &key[prefix + 1..]
        } else {
            key
        };
        crate::locator::is_hash(hash).then_some(hash)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        self.client.head(key).await
    }

    /// An empty `recent/` marker for `key`: the block's mtime is now.
    async fn mark_recent(&self, key: &str) -> Result<(), S3Error> {
        let (result, _) = self.client.put(&format!("{RECENT}{key}"), Vec::new(), None).await;
        result
    }

    /// keepstore's `safeCopy`: a copy whose answer carries an old LastModified did not
    /// happen.
    async fn copy(&self, to: &str, from: &str) -> Result<(), S3Error> {
        let modified = self.client.copy(from, to).await?;
        if let Some(modified) = modified {
            if SystemTime::now().duration_since(modified).unwrap_or_default() > COPY_CLOCK_SKEW_MAX {
                return Err(S3Error::Protocol(format!(
                    "copy {from} to {to} answered an old LastModified (clock skew over {}s)",
                    COPY_CLOCK_SKEW_MAX.as_secs()
                )));
            }
        }
        Ok(())
    }

    /// keepstore's `fixRace`: a `trash/` copy made less than the signing TTL after the
    /// block's last write or touch was a trash racing with that write; copy it back.
    /// True when the block was restored.
    async fn fix_race(&self, key: &str, signing_ttl: Duration) -> bool {
        let trashed = match self.head(&format!("{TRASH}{key}")).await {
            Ok(Some(trashed)) => trashed,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(key, error = %error, "S3 volume: fixRace: HEAD of the trash copy failed");
                return false;
            }
        };
        let recent = match self.head(&format!("{RECENT}{key}")).await {
            Ok(Some(recent)) => recent,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(key, error = %error, "S3 volume: fixRace: HEAD of the recent marker failed");
                return false;
            }
        };
        let age_when_trashed = trashed
            .last_modified
            .duration_since(recent.last_modified)
            .unwrap_or_default();
        if age_when_trashed >= signing_ttl {
            return false;
        }
        tracing::info!(
            key,
            "S3 volume: trashed while being written or touched; copying the trash copy back"
        );
        match self.copy(key, &format!("{TRASH}{key}")).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(key, error = %error, "S3 volume: fixRace: copy back failed");
                false
            }
        }
    }

    /// Open block `hash` for reading: `None` when the bucket has no such block (after
    /// restoring one a racing trash took away, as keepstore's `BlockRead`).
    pub async fn open(&self, hash: &str, signing_ttl: Duration) -> Result<Option<GetObject>, S3Error> {
        let key = self.key(hash);
        if let Some(object) = self.client.get(&key).await? {
            return Ok(Some(object));
        }
        if self.head(&format!("{RECENT}{key}")).await?.is_none() {
            return Ok(None);
        }
        if !self.fix_race(&key, signing_ttl).await {
            return Ok(None);
        }
        self.client.get(&key).await
    }

    /// Whether the bucket holds block `hash` (its size), without reading it.
    pub async fn stat(&self, hash: &str) -> Result<Option<u64>, S3Error> {
        Ok(self.head(&self.key(hash)).await?.map(|info| info.size))
    }

    /// Store block `hash` (the store checks the bytes against it: Content-MD5), then its
    /// `recent/` marker. The buffer comes back.
    pub async fn write(&self, hash: &str, body: Vec<u8>) -> (Result<(), S3Error>, Vec<u8>) {
        let key = self.key(hash);
        let md5 = match decode_hash(hash) {
            Some(md5) => md5,
            None => return (Err(S3Error::Protocol(format!("{hash} is not a block hash"))), body),
        };
        let (result, body) = self.client.put(&key, body, Some(md5)).await;
        if let Err(error) = result {
            return (Err(error), body);
        }
        (self.mark_recent(&key).await, body)
    }

    /// keepstore's `BlockTouch`: `Err(NotFound)` when the block is not there.
    pub async fn touch(&self, hash: &str, signing_ttl: Duration) -> Result<(), S3Error> {
        let key = self.key(hash);
        if self.head(&key).await?.is_none() && !self.fix_race(&key, signing_ttl).await {
            return Err(S3Error::NotFound);
        }
        self.mark_recent(&key).await
    }

    /// Renew the `recent/` marker of a block the bucket holds; false (and nothing written)
    /// when it holds none. A PUT's first pass: a missing block is written after, so no
    /// race fix is tried here (`touch` does that for TOUCH requests).
    pub async fn touch_if_present(&self, hash: &str) -> Result<bool, S3Error> {
        let key = self.key(hash);
        if self.head(&key).await?.is_none() {
            return Ok(false);
        }
        self.mark_recent(&key).await?;
        Ok(true)
    }

    /// keepstore's `Mtime`: the `recent/` marker's time, made now for a block written
    /// without one (a bucket from before markers). `None`: no such block.
    pub async fn mtime(&self, hash: &str) -> Result<Option<SystemTime>, S3Error> {
        let key = self.key(hash);
        if self.head(&key).await?.is_none() {
            return Ok(None);
        }
        let recent_key = format!("{RECENT}{key}");
        if let Some(recent) = self.head(&recent_key).await? {
            return Ok(Some(recent.last_modified));
        }
        self.mark_recent(&key).await?;
        tracing::info!(key, "S3 volume: recent marker created for a block that had none");
        match self.head(&recent_key).await? {
            Some(recent) => Ok(Some(recent.last_modified)),
            None => Err(S3Error::Protocol(format!(
                "{recent_key} missing right after it was written"
            ))),
        }
    }

    /// keepstore's `BlockTrash` with the trash list's mtime check: a copy whose mtime is
    /// not `expected_mtime_ns` (when given) or younger than the signing TTL is kept.
    pub async fn trash(
        &self,
        hash: &str,
        now: SystemTime,
        rules: &TrashRules,
        expected_mtime_ns: Option<i128>,
    ) -> io::Result<TrashOutcome> {
        let Some(mtime) = self.mtime(hash).await.map_err(to_io)? else {
            return Ok(TrashOutcome::Missing);
        };
        if expected_mtime_ns.is_some_and(|expected| expected != unix_nanos(mtime)) {
            return Ok(TrashOutcome::Kept);
        }
        if now.duration_since(mtime).unwrap_or_default() < Duration::from_secs(rules.signing_ttl_secs) {
            return Ok(TrashOutcome::Kept);
        }
        let key = self.key(hash);
        if rules.lifetime_secs == 0 {
            if !self.parameters.unsafe_delete {
                return Err(io::Error::other(
                    "trash is off on this S3 volume: BlobTrashLifetime is 0 and DriverParameters.UnsafeDelete is false",
                ));
            }
            self.client.delete(&key).await.map_err(to_io)?;
            return Ok(TrashOutcome::Deleted);
        }
        self.check_race_window(&key, rules, now).await?;
        self.copy(&format!("{TRASH}{key}"), &key).await.map_err(to_io)?;
        self.client.delete(&key).await.map_err(to_io)?;
        Ok(TrashOutcome::Trashed)
    }

    /// keepstore's `checkRaceWindow`: a block already in the trash whose deletion is
    /// nearer than `RaceWindow` is not trashed again (the emptier may be deleting it).
    async fn check_race_window(&self, key: &str, rules: &TrashRules, now: SystemTime) -> io::Result<()> {
        let Some(trashed) = self.head(&format!("{TRASH}{key}")).await.map_err(to_io)? else {
            return Ok(());
        };
        let deleted_at = trashed.last_modified + Duration::from_secs(rules.lifetime_secs);
        if deleted_at <= now + self.parameters.race_window {
            return Err(io::Error::other(format!(
                "{key}: the same block is already in the trash and its safe window has ended"
            )));
        }
        Ok(())
    }

    /// keepstore's `BlockUntrash`: false when there is no trash copy.
    pub async fn untrash(&self, hash: &str) -> Result<bool, S3Error> {
        let key = self.key(hash);
        match self.copy(&key, &format!("{TRASH}{key}")).await {
            Ok(()) => {}
            Err(S3Error::NotFound) => return Ok(false),
            Err(error) => return Err(error),
        }
        self.mark_recent(&key).await?;
        Ok(true)
    }

    /// keepstore's `EmptyTrash`: every `trash/` copy past `BlobTrashLifetime` is deleted,
    /// with its `recent/` marker; a race found on the way is fixed instead. Up to
    /// `concurrency` copies are worked on at once (keepstore's `BlobDeleteConcurrency`).
    /// Stops between pages once `go_on` says no.
    pub async fn empty_trash(
        &self,
        now: SystemTime,
        rules: &TrashRules,
        concurrency: usize,
        go_on: &dyn Fn() -> bool,
    ) -> EmptyCounts {
        use futures_util::stream::{self, StreamExt};
        let mut counts = EmptyCounts::default();
        let mut lister = Lister::new(TRASH.to_string(), self.parameters.index_page_size);
        loop {
            let page = match lister.next_page(&self.client).await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(error = %error, "S3 volume: listing the trash failed; the pass stops");
                    counts.errors += 1;
                    break;
                }
            };
            let blocks = page
                .iter()
                .filter_map(|trashed| Some((trashed, self.block_of(&trashed.key[TRASH.len()..])?)));
            let outcomes: Vec<_> = stream::iter(blocks)
                .map(|(trashed, hash)| async move { (trashed, self.empty_one(trashed, hash, now, rules).await) })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            for (trashed, (deleted, result)) in outcomes {
                counts.in_trash += 1;
                if deleted {
                    counts.deleted += 1;
                    counts.bytes_deleted += trashed.size;
                }
                if let Err(error) = result {
                    tracing::warn!(key = %trashed.key, error = %error, "S3 volume: emptying a trash copy failed");
                    counts.errors += 1;
                }
            }
            if !go_on() {
                break;
            }
        }
        counts
    }

    /// One trash copy of block `hash`: whether it was deleted, and how the rest went.
    async fn empty_one(
        &self,
        trashed: &ListedObject,
        hash: &str,
        now: SystemTime,
        rules: &TrashRules,
    ) -> (bool, Result<(), S3Error>) {
        let key = &trashed.key[TRASH.len()..];
        let signing_ttl = Duration::from_secs(rules.signing_ttl_secs);
        let recent = match self.head(&format!("{RECENT}{key}")).await {
            Ok(Some(recent)) => recent,
            Ok(None) => {
                tracing::warn!(key, "S3 volume: a trash copy without its recent marker; untrashing it");
                return (false, self.untrash(hash).await.map(|_| ()));
            }
            Err(error) => return (false, Err(error)),
        };
        let trashed_at = trashed.last_modified;
        if trashed_at.duration_since(recent.last_modified).unwrap_or_default() < signing_ttl {
            let age = now.duration_since(recent.last_modified).unwrap_or_default();
            if age >= signing_ttl.saturating_sub(self.parameters.race_window) {
                tracing::info!(
                    key,
                    "S3 volume: an old race found by the emptier; fixing it and touching the block"
                );
                self.fix_race(key, signing_ttl).await;
                return (false, self.touch(hash, signing_ttl).await);
            }
            match self.head(key).await {
                Ok(None) => {
                    tracing::info!(key, "S3 volume: a recent race found by the emptier; fixing it");
                    self.fix_race(key, signing_ttl).await;
                    return (false, Ok(()));
                }
                Ok(Some(_)) => {}
                Err(error) => return (false, Err(error)),
            }
        }
        if now.duration_since(trashed_at).unwrap_or_default() < Duration::from_secs(rules.lifetime_secs) {
            return (false, Ok(()));
        }
        if let Err(error) = self.client.delete(&trashed.key).await {
            return (false, Err(error));
        }
        match self.head(&trashed.key).await {
            Ok(None) => (true, self.client.delete(&format!("{RECENT}{key}")).await),
            Ok(Some(_)) => {
                tracing::warn!(key = %trashed.key, "S3 volume: a deleted trash copy is still there; its marker stays");
                (true, Ok(()))
            }
            Err(error) => (true, Err(error)),
        }
    }

    /// The block index under `prefix`, listed a page at a time.
    pub fn index(&self, prefix: &str) -> IndexLister {
        let data_prefix = self.index_key_prefix(prefix);
        IndexLister {
            data: Lister::new(data_prefix.clone(), self.parameters.index_page_size),
            recent: Lister::new(format!("{RECENT}{data_prefix}"), self.parameters.index_page_size),
            recent_page: std::collections::VecDeque::new(),
        }
    }

    /// Where the keys of blocks under index prefix `prefix` start. keepstore lists under
    /// `key(prefix)`, which for a prefix one digit longer than PrefixLength (`abcd` with
    /// 3) is `abcd`, not `abc/abcd`: it lists nothing of the `abc/` directory. Any prefix
    /// longer than PrefixLength gets its directory here.
    fn index_key_prefix(&self, prefix: &str) -> String {
        let length = self.parameters.prefix_length;
        match prefix.get(..length) {
            Some(directory) if length > 0 && prefix.len() > length => format!("{directory}/{prefix}"),
            _ => prefix.to_string(),
        }
    }

    /// A cheap request that shows the bucket answers (the drive probe's part).
    pub async fn probe(&self) -> Result<(), S3Error> {
        self.client.list(RECENT, None, None, 1).await.map(|_| ())
    }
}

/// Block hash → the 16 bytes Content-MD5 carries.
fn decode_hash(hash: &str) -> Option<[u8; 16]> {
    if !crate::locator::is_hash(hash) {
        return None;
    }
    let mut md5 = [0u8; 16];
    for (index, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hash[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(md5)
}

/// ListObjectsV2 under one prefix, a page at a time.
struct Lister {
    prefix: String,
    page_size: u32,
    continuation: Option<String>,
    done: bool,
}

impl Lister {
    fn new(prefix: String, page_size: usize) -> Lister {
        Lister {
            prefix,
            page_size: u32::try_from(page_size).unwrap_or(u32::MAX).max(1),
            continuation: None,
            done: false,
        }
    }

    /// The next page of objects under the prefix; `None` once the listing is over.
    async fn next_page(&mut self, client: &Client) -> Result<Option<Vec<ListedObject>>, S3Error> {
        if self.done {
            return Ok(None);
        }
        let page = client
            .list(&self.prefix, None, self.continuation.as_deref(), self.page_size)
            .await?;
        self.continuation = page.next;
        self.done = self.continuation.is_none();
        let objects = page
            .objects
            .into_iter()
            .filter(|object| object.key.starts_with(&self.prefix))
            .collect();
        Ok(Some(objects))
    }
}

/// keepstore's `Index`: the block objects merged with their `recent/` markers (both
/// listings in key order), each block's mtime its marker's (else its own).
pub struct IndexLister {
    data: Lister,
    recent: Lister,
    recent_page: std::collections::VecDeque<ListedObject>,
}

impl IndexLister {
    /// The next page of index entries; `None` once the index is over.
    pub async fn next_page(&mut self, parent: &S3Bucket) -> Result<Option<Vec<IndexEntry>>, S3Error> {
        let client = &parent.client;
        let Some(page) = self.data.next_page(client).await? else {
            return Ok(None);
        };
        let mut entries = Vec::with_capacity(page.len());
        for object in page {
            // `recent/` and `trash/` sort after every block key.
            if object.key.as_str() >= "g" {
                self.data.done = true;
                break;
            }
            let Some(hash) = parent.block_of(&object.key) else {
                continue;
            };
            let stamp = self.recent_stamp(client, &object.key).await?;
            entries.push(IndexEntry {
                hash: hash.to_string(),
                size: object.size,
                mtime_ns: whole_seconds_ns(stamp.unwrap_or(object.last_modified)),
            });
        }
        Ok(Some(entries))
    }

    /// The `recent/` marker of `key`, walking the marker listing alongside.
    async fn recent_stamp(&mut self, client: &Client, key: &str) -> Result<Option<SystemTime>, S3Error> {
        loop {
            if self.recent_page.is_empty() {
                match self.recent.next_page(client).await? {
                    Some(page) => self.recent_page.extend(page),
                    None => return Ok(None),
                }
                continue;
            }
            let Some(front) = self.recent_page.front() else {
                return Ok(None);
            };
            let marked = &front.key[RECENT.len()..];
            match marked.cmp(key) {
                std::cmp::Ordering::Less => {
                    self.recent_page.pop_front();
                }
                std::cmp::Ordering::Equal => {
                    let stamp = front.last_modified;
                    self.recent_page.pop_front();
                    return Ok(Some(stamp));
                }
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// keepstore prints `LastModified.Unix() * 1e9`: whole seconds.
fn whole_seconds_ns(time: SystemTime) -> i128 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() as i128 * 1_000_000_000)
        .unwrap_or(0)
}

thread_local! {
    /// A ring for a thread that is not a core (chores, the pull worker), made on first use.
    static RUNTIME: RefCell<Option<tokio_uring::Runtime>> = const { RefCell::new(None) };
}

/// Run an S3 operation to its end on a thread that is not a core.
pub fn run_blocking<T>(operation: impl Future<Output = T>) -> io::Result<T> {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut ring = tokio_uring::uring_builder();
            ring.setup_coop_taskrun().setup_single_issuer();
            let mut builder = tokio_uring::builder();
            builder.entries(64).uring_builder(&ring);
            let runtime = tokio_uring::Runtime::new(&builder)?;
            *slot = Some(runtime);
        }
        match slot.as_ref() {
            Some(runtime) => Ok(runtime.block_on(operation)),
            None => Err(io::Error::other("no ring for S3 requests")),
        }
    })
}

/// Fill `buffer[from..to]` from the object's body (the buffer comes back either way).
pub async fn read_exact(
    object: &mut GetObject,
    mut buffer: Vec<u8>,
    from: usize,
    to: usize,
) -> (io::Result<()>, Vec<u8>) {
    buffer.truncate(from);
    buffer.reserve(to - from);
    while buffer.len() < to {
        let room = to - buffer.len();
        let (result, returned) = object.read_at_most(buffer, room).await;
        buffer = returned;
        match result {
            Ok(0) => {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "S3 object body ended early",
                    )),
                    buffer,
                )
            }
            Ok(_) => {}
            Err(error) => return (Err(error), buffer),
        }
    }
    (Ok(()), buffer)
}
