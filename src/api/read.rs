//! Block GET and HEAD (keep-protocol.md §3.1, §5): find a copy in placement order, then
//! answer with a `BlockStream` the connection loop pulls a chunk at a time. Every byte is
//! hashed on the way out (unless the verified-copy cache vouches for this exact file
//! state) and the last chunk is withheld until the MD5 is right. The first chunk is read
//! here, before the answer: a copy that cannot be read or (for a block of one chunk) fails
//! its MD5 is skipped for the next one while nothing has been sent. The first chunk leaves
//! with the head, the ones between by sendfile from the page cache, the last one from the
//! bytes just hashed. HEAD reads and checks the whole copy before answering.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio_uring::fs::File;

use crate::api::auth;
use crate::api::blocks::now_secs;
use crate::api::context::{Core, StateRef};
use crate::bufpool::{Lease, CHUNK_BUFFER_BYTES};
use crate::digest::{hex_is, FileIdentity, EMPTY_BLOCK_HASH};
use crate::error::RequestError;
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
        let mut stream = match BlockStream::open(core, &state, volume_index, locator.hash).await {
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
    File { file: File, identity: FileIdentity },
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
    /// Bytes read (and hashed) so far.
    offset: u64,
    /// `None` when the verified-copy cache vouches for this file state.
    digest: Option<LaneState>,
    /// The first chunk, read before the answer was chosen.
    first: Option<Piece>,
    /// The budget the chunk buffer is counted against, held while the body is sent.
    lease: Option<Lease>,
}

impl<'a> BlockStream<'a> {
    /// Open `hash` on the state's volume `volume_index`: `Ok(None)` when it has no copy.
    async fn open(
        core: &'a Core,
        state: &StateRef,
        volume_index: usize,
        hash: &str,
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
                    (Source::File { file, identity }, identity.size, verify)
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
            tracing::warn!(volume = %self.volume().uuid, hash = self.hash(), error = %error, "block read failed");
            self.core.metrics.volume(self.volume()).error(VolumeErrorKind::Io);
            self.volume().note_read_error(&error);
            return Err((RequestError::Internal(format!("volume error: {error}")), buffer));
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
                    fd: std::os::fd::AsRawFd::as_raw_fd(file),
                    position,
                    buffer,
                },
                _ => Piece::Bytes { buffer, from: room },
            });
        }
        if matched == Some(false) {
            tracing::error!(volume = %self.volume().uuid, hash = self.hash(), "stored copy fails its MD5 check");
            self.core.metrics.volume(self.volume()).error(VolumeErrorKind::Checksum);
            self.quarantine();
            return Err((RequestError::ChecksumMismatch, buffer));
        }
        self.completed(matched == Some(true));
        Ok(Piece::Bytes { buffer, from: room })
    }

    /// Read and check the rest of the copy after `first` (HEAD); the buffer comes back.
    async fn read_to_end(&mut self, first: Piece) -> Result<Vec<u8>, (RequestError, Vec<u8>)> {
        let mut buffer = match first {
            Piece::Bytes { buffer, .. } | Piece::File { buffer, .. } => buffer,
            Piece::End => Vec::new(),
        };
        while self.offset < self.size {
            buffer = match self.read_chunk(buffer, 0).await? {
                Piece::Bytes { buffer, .. } | Piece::File { buffer, .. } => buffer,
                Piece::End => Vec::new(),
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
        Err(spent)
    }

    fn next(&mut self, spent: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Piece, RequestError>> + '_>> {
        Box::pin(async move {
            let spent = match self.ready(spent) {
                Ok(piece) => return piece,
                Err(spent) => spent,
            };
            self.read_chunk(spent, 0).await.map_err(|(error, returned)| {
                self.core.pool.recycle(returned);
                error
            })
        })
    }
}
