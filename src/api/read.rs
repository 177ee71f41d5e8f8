//! Block GET and HEAD (keep-protocol.md §3.1, §5): find a copy in placement order, then
//! answer with a `BlockStream` the connection loop pulls a chunk at a time. Every byte is
//! hashed on the way out (unless the verified-copy cache vouches for this exact file
//! state) and the last chunk is withheld until the MD5 is right. The first chunk is read
//! here, before the answer: a copy that cannot be read or (for a block of one chunk) fails
//! its MD5 is skipped for the next one while nothing has been sent. The first chunk leaves
//! with the head, the ones between by sendfile from the page cache, the last one from the
//! bytes just hashed. HEAD reads and checks the whole copy before answering.
//!
//! Hash-ahead: on a connection that sends files (not TLS), a directory volume's copy of
//! more than one chunk is read and hashed after its first chunk by a task of its own
//! (`hash_rest`), paced by the disk and the core's hasher only, not by the client; the
//! chunks between the first and the last leave as file ranges (`Piece::FileRange`:
//! sendfile, no buffer, at the client's pace) as soon as the task has hashed them.
//! Measured against reading, hashing then sending each chunk in turn (one worker,
//! clients on the other core, interleaved runs): 2 clients of 64 MiB GETs 806-811 ->
//! 853-870 MB/s (CPU per GET 80 -> 74-75 ms); 16 clients and the p99 of 4 KiB GETs
//! beside a 64 MiB GET the same within noise (sending ranges past the task's hash, as a
//! first version did, put that p99 at 1.0-1.6 ms instead of 0.7-0.8). A range never
//! runs ahead of the task, so sendfile finds its pages in the page cache (a miss would
//! read the disk on the core) and sends only bytes already hashed; the last chunk
//! leaves only once the whole copy matched, from the task's hashed buffer. As before,
//! what is sent is the page cache's copy of what was hashed: a file changed in place
//! after its bytes were hashed is not caught (block files are never modified in place;
//! the scrubber finds rot on the disk). A copy the verified-copy cache vouches for is
//! still sent chunk by chunk (read, then sent by sendfile): as one file range it cost
//! the server a third less CPU, but a client on the same machine a third more (it then
//! copies bytes no read brought into the cache) and the bench's 16-client rate fell
//! from ~3.9 to ~3.1 GB/s.

use std::cell::Cell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_uring::fs::File;

use crate::api::auth;
use crate::api::blocks::now_secs;
use crate::api::context::{Core, StateRef};
use crate::bufpool::{Lease, CHUNK_BUFFER_BYTES};
use crate::digest::{hex_is, FileIdentity, EMPTY_BLOCK_HASH};
use crate::error::RequestError;
use crate::hasher::Hasher;
use crate::http::reply::{BodySource, Piece, Reply, Streamed};
use crate::http::request::Head;
use crate::http::response::BodyFraming;
use crate::limits::{BLOCK_BYTES_MAX, CHUNK_BYTES, RESPONSE_HEAD_BYTES_MAX};
use crate::locator::Locator;
use crate::md5lanes::LaneState;
use crate::metrics::{ScrubCount, VolumeErrorKind, VolumeOp};
use crate::s3::GetObject;
use crate::volume::Volume;
use crate::volume::{io, quarantine, s3};
use crate::volumes::placement;

pub async fn read<'a>(
    core: &'a Core,
    head: &Head,
    locator_text: &str,
    send_body: bool,
    sends_files: bool,
) -> Result<Reply<'a>, RequestError> {
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    // 3.x: without a size the server could not announce a length and then abort on a
    // checksum mismatch, so GET needs one (HEAD does not).
    if send_body && locator.size.unwrap_or(0) == 0 && locator.hash != EMPTY_BLOCK_HASH {
        return Err(RequestError::MethodNotAllowed);
    }
    let (remote, signed) = locator.hints().fold((false, false), |(remote, signed), hint| {
        (remote || hint.starts_with('R'), signed || hint.starts_with('A'))
    });
    if remote && !signed {
        return Err(RequestError::RemoteLocator);
    }
    let state = core.state();
    auth::check_read_permission(&state, head, &locator, now_secs)?;
    let lease = core.pool.lease(CHUNK_BUFFER_BYTES as u64).await?;
    let mut buffer = core.pool.chunk();
    let mut failure = RequestError::NotFound;
    let volumes = state.volumes.all();
    // Placement order, but volumes that are failing (a dead or hanging S3 store, a
    // failing drive) after the others. One volume: nothing to order or allocate.
    let ordered: Vec<usize>;
    let order: &[usize] = match volumes.len() {
        1 => &[0],
        _ => {
            let mut order = placement::order(locator.hash, volumes);
            order.sort_by_key(|&index| volumes[index].is_suspect());
            ordered = order;
            &ordered
        }
    };
    for &volume_index in order {
        let mut stream = match BlockStream::open(core, &state, volume_index, locator.hash, sends_files).await {
            Ok(Some(stream)) => stream,
            Ok(None) => continue,
            Err(error) => {
                failure = error;
                continue;
            }
        };
        let first = match stream.read_chunk(buffer, RESPONSE_HEAD_BYTES_MAX).await {
            Ok(piece) => piece,
            Err((error, returned)) => {
                buffer = returned;
                failure = error;
                continue;
            }
        };
        if send_body {
            stream.first = Some(first);
        } else {
            // HEAD sends nothing, so it can check the whole copy and still try the next.
            match stream.read_to_end(first).await {
                Ok(returned) => core.pool.recycle(returned),
                Err((error, returned)) => {
                    buffer = returned;
                    failure = error;
                    continue;
                }
            }
        }
        stream.lease = Some(lease);
        return Ok(Reply::Stream(Streamed {
            status: 200,
            framing: BodyFraming::Length(stream.size),
            content_type: Some("application/octet-stream"),
            // `Vary: X-Keep-Signature` comes with every answer on this route (the
            // session's `vary_signature`).
            extra: Vec::new(),
            body: Box::new(stream),
        }));
    }
    core.pool.recycle(buffer);
    Err(failure)
}

/// Where a copy's bytes come from.
enum Source {
    /// A directory volume's file, and the state it was opened in (for the verified-copy
    /// cache and the quarantine).
    File { file: Rc<File>, identity: FileIdentity },
    /// An S3 volume's object body, read in order (S3 has no sendfile and no verified-copy
    /// cache entry: its bytes are hashed every time).
    Object(Box<GetObject>),
}

/// One stored copy being sent: the file, how far it has been read and hashed, and the
/// chunk read ahead of the answer.
struct BlockStream<'a> {
    core: &'a Core,
    /// The state the copy was found in (an `Rc` clone: no shared refcount touched) and
    /// the copy's volume in it.
    state: StateRef,
    volume_index: usize,
    hash: [u8; 32],
    source: Source,
    size: u64,
    /// Bytes handed to the body so far (each read and hashed first, by this request or
    /// by its hash-ahead task).
    offset: u64,
    /// `None` when the verified-copy cache vouches for this file state.
    digest: Option<LaneState>,
    /// The first chunk, read before the answer was chosen.
    first: Option<Piece>,
    /// The budget the chunk buffer is counted against, held while the body is sent.
    lease: Option<Lease>,
    /// The connection takes `Piece::FileRange`s.
    sends_files: bool,
    /// The task reading and hashing the rest of the copy (hash-ahead, module doc).
    ahead: Option<Ahead>,
}

/// What `hash_rest` ends with: the digest (or the read's error) and the buffer holding
/// the copy's last chunk.
type AheadOutcome = (std::io::Result<[u8; 16]>, Vec<u8>);

/// How far a `hash_rest` task has got, shared with its request.
#[derive(Default)]
struct Progress {
    /// The copy's bytes before this offset were read and hashed: the body may send them.
    hashed_to: Cell<u64>,
    /// The task has ended (the digest or an error is waiting in its handle).
    ended: Cell<bool>,
    /// Notified when either changes (one waiter: the request).
    changed: Notify,
}

/// A running `hash_rest`, aborted when dropped (a client gone mid-body): its read or its
/// queued hash is left to the ring or the hasher, which own the buffer until they finish.
struct Ahead {
    task: tokio::task::JoinHandle<AheadOutcome>,
    progress: Rc<Progress>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read and hash `file` from `offset` to `size` a chunk at a time into `buffer`, each
/// chunk in the core's hasher batches, telling `progress` after each; the digest and the
/// buffer with the last chunk come back.
async fn hash_rest(
    hasher: Rc<Hasher>,
    file: Rc<File>,
    mut digest: LaneState,
    mut buffer: Vec<u8>,
    mut offset: u64,
    size: u64,
    progress: Rc<Progress>,
) -> AheadOutcome {
    let outcome = loop {
        let want = (size - offset).min(CHUNK_BYTES as u64) as usize;
        buffer.clear();
        let (result, returned) = io::read_exact_into(&file, buffer, 0, want, offset).await;
        buffer = returned;
        if let Err(error) = result {
            break (Err(error), buffer);
        }
        offset += want as u64;
        if offset == size {
            let (digest, buffer) = hasher.finish(digest, buffer, 0..want).await;
            break (Ok(digest), buffer);
        }
        (digest, buffer) = hasher.update(digest, buffer, 0..want).await;
        progress.hashed_to.set(offset);
        progress.changed.notify_one();
    };
    progress.ended.set(true);
    progress.changed.notify_one();
    outcome
}

impl<'a> BlockStream<'a> {
    /// Open `hash` on the state's volume `volume_index`: `Ok(None)` when it has no copy.
    async fn open(
        core: &'a Core,
        state: &StateRef,
        volume_index: usize,
        hash: &str,
        sends_files: bool,
    ) -> Result<Option<Self>, RequestError> {
        let volume = &state.volumes.all()[volume_index];
        let (source, size, verify) = match &volume.s3 {
            Some(bucket) => {
                let signing_ttl = Duration::from_secs(core.chore_settings().blob_signing_ttl_secs);
                match bucket.open(hash, signing_ttl).await {
                    Ok(Some(object)) => {
                        let size = object.info.size;
                        (Source::Object(Box::new(object)), size, true)
                    }
                    Ok(None) => return Ok(None),
                    Err(error) => {
                        let error = s3::to_io(error);
                        tracing::warn!(volume = %volume.uuid, hash, error = %error, "block open failed");
                        volume.note_read_error(&error);
                        return Err(RequestError::Internal(format!("volume error: {error}")));
                    }
                }
            }
            None => match io::open_block_identified(&volume.root, hash).await {
                Ok(Some((file, identity))) => {
                    let verify = !core.verified.borrow().contains(hash, identity);
                    (
                        Source::File {
                            file: Rc::new(file),
                            identity,
                        },
                        identity.size,
                        verify,
                    )
                }
                Ok(None) => return Ok(None),
                Err(error) => {
                    tracing::warn!(volume = %volume.uuid, hash, error = %error, "block open failed");
                    volume.note_read_error(&error);
                    return Err(RequestError::Internal(format!("volume error: {error}")));
                }
            },
        };
        if size > BLOCK_BYTES_MAX {
            return Err(RequestError::BodyTooLarge);
        }
        let mut hash_bytes = [0u8; 32];
        hash_bytes.copy_from_slice(hash.as_bytes());
        Ok(Some(BlockStream {
            core,
            state: Rc::clone(state),
            volume_index,
            hash: hash_bytes,
            source,
            size,
            offset: 0,
            digest: verify.then(LaneState::new),
            first: None,
            lease: None,
            sends_files,
            ahead: None,
        }))
    }

    fn volume(&self) -> &Arc<Volume> {
        &self.state.volumes.all()[self.volume_index]
    }

    fn hash(&self) -> &str {
        // Built from a `&str` of ASCII hex in `open`.
        std::str::from_utf8(&self.hash).unwrap_or_default()
    }

    /// Read and hash the next chunk into `buffer` after `room` bytes of space; the last
    /// chunk only comes back once the whole copy matched its hash. On an error the buffer
    /// comes back with it.
    async fn read_chunk(&mut self, mut buffer: Vec<u8>, room: usize) -> Result<Piece, (RequestError, Vec<u8>)> {
        let want = (self.size - self.offset).min(CHUNK_BYTES as u64) as usize;
        buffer.clear();
        buffer.resize(room, 0);
        let (result, returned) = match &mut self.source {
            Source::Object(object) => s3::read_exact(object, buffer, room, room + want).await,
            Source::File { file, .. } if self.size <= CHUNK_BYTES as u64 => {
                io::read_small_into(file, buffer, room, room + want, self.offset).await
            }
            Source::File { file, .. } => io::read_exact_into(file, buffer, room, room + want, self.offset).await,
        };
        buffer = returned;
        if let Err(error) = result {
            return Err((self.read_failed(&error), buffer));
        }
        let position = self.offset;
        let last = position + want as u64 == self.size;
        // Hashed with every other chunk pending on this core (`hasher`); the last chunk
        // comes back with the digest. `matched`: None when the copy is not being hashed.
        let mut matched = None;
        match self.digest.take() {
            Some(digest) if last => {
                let (digest, returned) = self.core.hasher.finish(digest, buffer, room..room + want).await;
                buffer = returned;
                matched = Some(hex_is(&digest, &self.hash));
            }
            Some(digest) => {
                let (digest, returned) = self.core.hasher.update(digest, buffer, room..room + want).await;
                self.digest = Some(digest);
                buffer = returned;
            }
            None => {}
        }
        self.offset += want as u64;
        if !last {
            return Ok(match (&self.source, room) {
                (Source::File { file, .. }, 0) => Piece::File {
                    fd: file.as_raw_fd(),
                    position,
                    buffer,
                },
                _ => Piece::Bytes { buffer, from: room },
            });
        }
        if matched == Some(false) {
            return Err((self.checksum_failed(), buffer));
        }
        self.completed(matched == Some(true));
        Ok(Piece::Bytes { buffer, from: room })
    }

    /// A read of the copy failed: log and count it; the request's error.
    fn read_failed(&self, error: &std::io::Error) -> RequestError {
        tracing::warn!(volume = %self.volume().uuid, hash = self.hash(), error = %error, "block read failed");
        self.core.metrics.volume(self.volume()).error(VolumeErrorKind::Io);
        self.volume().note_read_error(error);
        RequestError::Internal(format!("volume error: {error}"))
    }

    /// The copy failed its MD5 check: log, count and quarantine it; the request's error.
    fn checksum_failed(&self) -> RequestError {
        tracing::error!(volume = %self.volume().uuid, hash = self.hash(), "stored copy fails its MD5 check");
        self.core.metrics.volume(self.volume()).error(VolumeErrorKind::Checksum);
        self.quarantine();
        RequestError::ChecksumMismatch
    }

    /// After the first chunk, on a connection that sends files, of a directory volume's
    /// copy being hashed: start a task reading and hashing the rest into `spent` (module
    /// doc). `Err(spent)`: this copy is sent chunk by chunk.
    fn start_ahead(&mut self, spent: Vec<u8>) -> Result<(), Vec<u8>> {
        let Source::File { file, .. } = &self.source else {
            return Err(spent);
        };
        if !self.sends_files {
            return Err(spent);
        }
        let Some(digest) = self.digest.take() else {
            return Err(spent);
        };
        let buffer = match spent.capacity() >= CHUNK_BYTES {
            true => spent,
            false => self.core.pool.chunk(),
        };
        let progress = Rc::new(Progress::default());
        let task = hash_rest(
            Rc::clone(&self.core.hasher),
            Rc::clone(file),
            digest,
            buffer,
            self.offset,
            self.size,
            Rc::clone(&progress),
        );
        self.ahead = Some(Ahead {
            task: tokio_uring::spawn(task),
            progress,
        });
        Ok(())
    }

    /// Where the copy's last chunk begins: the chunks before it may leave as file ranges.
    fn last_chunk_start(&self) -> u64 {
        (self.size.max(1) - 1) / CHUNK_BYTES as u64 * CHUNK_BYTES as u64
    }

    /// The chunks between the first and the last that the hash-ahead task has hashed and
    /// the body has not sent yet, as one file range. Sent only once hashed: a send never
    /// runs ahead of the task's read (on a cold page cache sendfile would read the disk on
    /// the core itself) nor of its hash.
    fn hashed_range(&mut self) -> Option<Piece> {
        let (Some(ahead), Source::File { file, .. }) = (&self.ahead, &self.source) else {
            return None;
        };
        let to = ahead.progress.hashed_to.get().min(self.last_chunk_start());
        if to <= self.offset {
            return None;
        }
        let range = Piece::FileRange {
            fd: file.as_raw_fd(),
            position: self.offset,
            length: to - self.offset,
        };
        self.offset = to;
        Some(range)
    }

    /// The next piece while the hash-ahead task runs: what it has hashed since the last
    /// range, else (every chunk before the last sent, or the task ended on an error) the
    /// last chunk from its buffer, once the whole copy matched.
    async fn next_ahead(&mut self) -> Result<Piece, RequestError> {
        loop {
            if let Some(range) = self.hashed_range() {
                return Ok(range);
            }
            let Some(ahead) = self.ahead.as_ref() else {
                return Err(RequestError::Internal("no hash-ahead task".into()));
            };
            if ahead.progress.ended.get() || self.offset == self.last_chunk_start() {
                break;
            }
            let progress = Rc::clone(&ahead.progress);
            progress.changed.notified().await;
        }
        match self.ahead.take() {
            Some(ahead) => self.last_chunk_ahead(ahead).await,
            None => Err(RequestError::Internal("no hash-ahead task".into())),
        }
    }

    /// The last chunk from the hash-ahead task, once the whole copy matched.
    async fn last_chunk_ahead(&mut self, mut ahead: Ahead) -> Result<Piece, RequestError> {
        let (result, buffer) = (&mut ahead.task)
            .await
            .map_err(|error| RequestError::Internal(format!("hash-ahead task failed: {error}")))?;
        let error = match result {
            Ok(digest) if hex_is(&digest, &self.hash) => {
                self.offset = self.size;
                self.completed(true);
                return Ok(Piece::Bytes { buffer, from: 0 });
            }
            Ok(_) => self.checksum_failed(),
            Err(error) => self.read_failed(&error),
        };
        self.core.pool.recycle(buffer);
        Err(error)
    }

    /// Read and check the rest of the copy after `first` (HEAD); the buffer comes back.
    async fn read_to_end(&mut self, first: Piece) -> Result<Vec<u8>, (RequestError, Vec<u8>)> {
        let mut buffer = match first {
            Piece::Bytes { buffer, .. } | Piece::File { buffer, .. } => buffer,
            Piece::FileRange { .. } | Piece::End => Vec::new(),
        };
        while self.offset < self.size {
            buffer = match self.read_chunk(buffer, 0).await? {
                Piece::Bytes { buffer, .. } | Piece::File { buffer, .. } => buffer,
                Piece::FileRange { .. } | Piece::End => Vec::new(),
            };
        }
        Ok(buffer)
    }

    /// Move this copy aside, off the core (`volume::quarantine`): it failed its MD5 check,
    /// so `/index` must stop offering it and keep-balance will have a good copy pulled.
    fn quarantine(&self) {
        let Source::File { identity, .. } = self.source else {
            // keepstore leaves a bad S3 object in place too; the store keeps its own checks.
            return;
        };
        let volume = self.volume().clone();
        let counters = self.core.metrics.volume(&volume);
        let hash = self.hash().to_string();
        let job = move || {
            if quarantine::set_aside(&volume, &hash, identity, now_secs()) {
                counters.scrub(ScrubCount::Quarantined, 1);
            }
        };
        if self.core.helpers.detach(job).is_err() {
            tracing::warn!(volume = %self.volume().uuid, hash = self.hash(), "helper queue full: the bad copy stays until read again");
        }
    }

    /// The whole copy was read and matched (`hashed`: its bytes were hashed now, not
    /// vouched for by the verified-copy cache): remember it and count the read.
    fn completed(&self, hashed: bool) {
        if let (true, Source::File { identity, .. }) = (hashed, &self.source) {
            self.core.verified.borrow_mut().insert(self.hash(), *identity);
        }
        let counters = self.core.metrics.volume(self.volume());
        counters.operation(VolumeOp::Read);
        counters.read(self.size);
    }
}

impl BodySource for BlockStream<'_> {
    fn ready(&mut self, spent: Vec<u8>) -> Result<Result<Piece, RequestError>, Vec<u8>> {
        if let Some(first) = self.first.take() {
            return Ok(Ok(first));
        }
        if self.offset == self.size {
            self.core.pool.recycle(spent);
            return Ok(Ok(Piece::End));
        }
        if let Some(range) = self.hashed_range() {
            self.core.pool.recycle(spent);
            return Ok(Ok(range));
        }
        Err(spent)
    }

    fn next(&mut self, spent: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Piece, RequestError>> + '_>> {
        Box::pin(async move {
            let spent = match self.ready(spent) {
                Ok(piece) => return piece,
                Err(spent) => spent,
            };
            if self.ahead.is_none() {
                match self.start_ahead(spent) {
                    Ok(()) => return self.next_ahead().await,
                    Err(spent) => {
                        return self.read_chunk(spent, 0).await.map_err(|(error, returned)| {
                            self.core.pool.recycle(returned);
                            error
                        })
                    }
                }
            }
            self.core.pool.recycle(spent);
            self.next_ahead().await
        })
    }
}
