//! Block PUT and TOUCH (keep-protocol.md §3.2, §3.3, §5; GET and HEAD are `api::read`):
//! writes take the whole body (at most 64 MiB, leased from the buffer budget),
//! check its MD5, then store it on the first volume in placement order that takes it. A
//! body of 1 MiB or more is also written to that first volume's temp file as it arrives
//! (and its writeback started), so the disk works during the transfer: the temp file
//! becomes the block only once the MD5 matched, and is removed on any other ending.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;

use crate::api::context::Core;
use crate::api::{auth, body};
use crate::digest::state_matches;
use crate::error::RequestError;
use crate::http::reply::{Reply, TEXT_PLAIN};
use crate::http::request::Head;
use crate::http::session::Session;
use crate::http::token::tokens;
use crate::limits::{BLOCK_BYTES_MAX, HASH_HEX_LEN, STREAMED_WRITE_BYTES_MIN};
use crate::locator::Locator;
use crate::metrics::{VolumeErrorKind, VolumeOp};
use crate::shared_body::Arrived;
use crate::volume::health::WriteStarted;
use crate::volume::io::{self, WriteError};
use crate::volume::{layout, s3, Volume};

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

pub async fn write(
    core: &Core,
    session: &mut Session,
    head: &Head,
    locator_text: &str,
) -> Result<Reply<'static>, RequestError> {
    let hash = &locator_text[..HASH_HEX_LEN];
    let length = body::announced_length(head);
    // Refused from the head alone: no `100 Continue`, no byte of the body read.
    if length.is_some_and(|length| length > BLOCK_BYTES_MAX) {
        return Err(RequestError::BodyTooLarge);
    }
    let wanted_classes = head.requested_storage_classes();
    let mut candidates = write_candidates(core, hash, &wanted_classes)?;
    let mut reader = body::BodyReader::start(core, session, length, BLOCK_BYTES_MAX)
        .await?
        .hashed(&core.hasher);
    // A big body goes to its first volume while it arrives (the common case: no volume
    // holds the block yet); the others, and every fallback, are written from memory after.
    let mut streamed = match length {
        Some(length) if length >= STREAMED_WRITE_BYTES_MIN => {
            start_streamed_write(core, hash, length, &candidates).await
        }
        _ => None,
    };
    let received = match receive(core, session, &mut reader, &mut streamed).await {
        // The body is whole. Only the streamed write's rename needs its digest: its last
        // steps and its fdatasync run while the hasher takes the body's last bytes.
        Ok(()) => {
            let arrived = reader.arrived();
            let complete_write = async {
                if let Some(write) = streamed.as_mut() {
                    write.complete(arrived).await;
                }
            };
            let (digest, ()) = futures_util::future::join(reader.digest(), complete_write).await;
            match state_matches(&digest, hash) {
                true => Ok(()),
                false => Err(RequestError::HashMismatch {
                    computed: crate::signature::hex(&digest.finish()),
                    path: locator_text.to_string(),
                }),
            }
        }
        Err(error) => Err(error),
    };
    if let Err(error) = received {
        if let Some(write) = streamed {
            write.give_up(core, hash).await;
        }
        return Err(error);
    }
    let mut progress = StoreProgress::default();
    if let Some(write) = streamed {
        let volume = write.finish(core, hash, &mut reader, &mut progress).await;
        candidates.retain(|candidate| candidate.uuid != volume.uuid);
    }
    let (mut body, lease) = reader.finish().await;
    let size = body.len() as u64;
    let stored = store(core, hash, &mut body, &candidates, &wanted_classes, progress).await;
    core.keep_body_buffer(body);
    drop(lease);
    let stored = stored?;
    Ok(write_reply(core, head, hash, size, &stored))
}

/// The volumes a PUT may write to, in placement order: writable, of a wanted storage
/// class, and neither sitting out after a recent failure (retried after VOLUME_RETRY_MS)
/// nor unhealthy (`volume::health`: back after a successful probe).
fn write_candidates(core: &Core, hash: &str, wanted_classes: &[String]) -> Result<Vec<Arc<Volume>>, RequestError> {
    let state = core.state();
    let writable: Vec<&Arc<Volume>> = state
        .volumes
        .ordered_for(hash)
        .into_iter()
        .filter(|volume| volume.allow_write)
        .filter(|volume| wanted_classes.is_empty() || wanted_classes.iter().any(|class| volume.has_class(class)))
        .collect();
    if writable.is_empty() {
        return Err(RequestError::InsufficientStorage);
    }
    let healthy: Vec<Arc<Volume>> = writable
        .into_iter()
        .filter(|volume| volume.accepts_writes())
        .cloned()
        .collect();
    match healthy.is_empty() {
        true => Err(RequestError::VolumeUnavailable),
        false => Ok(healthy),
    }
}

/// Read the whole body, hashing it and feeding the streamed write as it arrives.
async fn receive(
    core: &Core,
    session: &mut Session,
    reader: &mut body::BodyReader<'_>,
    streamed: &mut Option<StreamedWrite>,
) -> Result<(), RequestError> {
    while reader.next(core, session).await?.is_some() {
        if let Some(write) = streamed.as_mut() {
            write.advance(reader);
        }
    }
    Ok(())
}

/// A PUT body being written to its first volume as it arrives. Each step's write runs
/// as a task of its own while the body keeps arriving (it reads bytes that arrived, the
/// socket fills the buffer past them: `shared_body`); a request cut short leaves the task
/// to finish its write, and its writer's drop removes the temp file.
struct StreamedWrite {
    volume: Arc<Volume>,
    started: WriteStarted,
    step: WriteStep,
    /// The first write error: the rest of the body is still read (and hashed), then the
    /// copy goes to the other volumes from memory.
    failure: Option<std::io::Error>,
}

enum WriteStep {
    Idle(io::BlockWriter),
    Writing(tokio::task::JoinHandle<(io::BlockWriter, std::io::Result<()>)>),
    /// The write task ended without giving its writer back (it panicked): its drop
    /// removed the temp file.
    Lost,
}

impl StreamedWrite {
    /// The request ends without a block (body cut short, MD5 mismatch): remove the temp
    /// file, and still account for a write error the volume gave meanwhile.
    async fn give_up(mut self, core: &Core, hash: &str) {
        if let Some(writer) = self.writer().await {
            writer.abandon().await;
        }
        if let Some(error) = self.failure {
            note_write_failure(core, &self.volume, hash, error.into());
        }
    }

    /// The body arrived whole: write its rest and make the temp file durable, while the
    /// caller still waits for the digest (`finish` renames it once that matched). Does
    /// nothing more once the writer is synced or a write failed.
    async fn complete(&mut self, arrived: Arrived) {
        let Some(mut writer) = self.writer().await else {
            return;
        };
        if self.failure.is_none() && !writer.is_synced() {
            let (result, _) = writer.append_last(arrived).await;
            self.failure = result.err();
            if self.failure.is_none() {
                self.failure = writer.sync().await.err();
            }
        }
        self.step = WriteStep::Idle(writer);
    }

    /// The body arrived whole and matched: name the written copy the block (or, after a
    /// failure, abandon it), and record the outcome; returns the volume written to.
    async fn finish(
        mut self,
        core: &Core,
        hash: &str,
        reader: &mut body::BodyReader<'_>,
        progress: &mut StoreProgress,
    ) -> Arc<Volume> {
        self.complete(reader.arrived()).await;
        let result = match self.writer().await {
            None => Err(self.failure.take().unwrap_or_else(write_task_lost).into()),
            Some(writer) => match self.failure.take() {
                Some(error) => {
                    writer.abandon().await;
                    Err(error.into())
                }
                None => writer.publish().await,
            },
        };
        let size = reader.body().len();
        let outcome = account_write(core, &self.volume, hash, result, size, self.started);
        progress.any_failed |= outcome.record(&self.volume, &mut progress.stored);
        // The streamed write started only after finding no copy on any candidate.
        progress.copies_absent = true;
        self.volume
    }

    /// Start writing what arrived, unless a write is still running or a step's worth has
    /// not arrived yet (nothing more once a write failed).
    fn advance(&mut self, reader: &body::BodyReader<'_>) {
        if let WriteStep::Writing(task) = &mut self.step {
            if !task.is_finished() {
                return;
            }
            // Finished: its output is there to take without waiting.
            let Some(outcome) = task.now_or_never() else { return };
            self.step = match outcome {
                Ok((writer, result)) => {
                    if let Err(error) = result {
                        self.failure.get_or_insert(error);
                    }
                    WriteStep::Idle(writer)
                }
                Err(_) => {
                    self.failure.get_or_insert_with(write_task_lost);
                    WriteStep::Lost
                }
            };
        }
        let wanted = matches!(&self.step, WriteStep::Idle(writer) if writer.wants(reader.len()));
        if self.failure.is_some() || !wanted {
            return;
        }
        let WriteStep::Idle(mut writer) = std::mem::replace(&mut self.step, WriteStep::Lost) else {
            return;
        };
        let arrived = reader.arrived();
        self.step = WriteStep::Writing(tokio_uring::spawn(async move {
            let (result, _) = writer.append(arrived).await;
            (writer, result)
        }));
    }

    /// The writer, once its running write (if any) ended.
    async fn writer(&mut self) -> Option<io::BlockWriter> {
        match std::mem::replace(&mut self.step, WriteStep::Lost) {
            WriteStep::Idle(writer) => Some(writer),
            WriteStep::Writing(task) => match task.await {
                Ok((writer, result)) => {
                    if let Err(error) = result {
                        self.failure.get_or_insert(error);
                    }
                    Some(writer)
                }
                Err(_) => {
                    self.failure.get_or_insert_with(write_task_lost);
                    None
                }
            },
            WriteStep::Lost => None,
        }
    }
}

fn write_task_lost() -> std::io::Error {
    std::io::Error::other("the block's write task ended early")
}

/// The streamed write of a new block to the first candidate, unless a candidate already
/// holds the block (`store` then touches or repairs that copy) or the file cannot be
/// created (`store` then retries the volume and accounts for the failure).
async fn start_streamed_write(
    core: &Core,
    hash: &str,
    length: u64,
    candidates: &[Arc<Volume>],
) -> Option<StreamedWrite> {
    // An S3 volume takes the whole body in one request, after the MD5 matched: nothing to
    // stream to, and nothing to look up here that `store` would not look up again.
    let volume = candidates.first().filter(|volume| volume.s3.is_none())?.clone();
    for volume in candidates {
        match has_copy(volume, hash).await {
            Ok(false) => {}
            Ok(true) | Err(_) => return None,
        }
    }
    let started = volume.write_started();
    let writer = io::BlockWriter::create(&volume, hash, core.next_random(), Some(length), &core.helpers)
        .await
        .ok()?;
    Some(StreamedWrite {
        volume,
        started,
        step: WriteStep::Idle(writer),
        failure: None,
    })
}

/// What a PUT achieved before `store`: copies already stored (a streamed write), whether a
/// write failed for another reason than space, and whether the candidates are known to
/// hold no copy (then `store` does not look for one again).
#[derive(Default)]
struct StoreProgress {
    stored: Vec<Arc<Volume>>,
    any_failed: bool,
    copies_absent: bool,
}

/// Pass 1: a volume that already holds the block keeps it (touched) or, if its copy is
/// damaged, gets the good bytes. Pass 2: write to the next volumes in placement order
/// until the request is satisfied (one copy, or every requested class).
async fn store(
    core: &Core,
    hash: &str,
    body: &mut Vec<u8>,
    candidates: &[Arc<Volume>],
    wanted_classes: &[String],
    progress: StoreProgress,
) -> Result<Vec<Arc<Volume>>, RequestError> {
    let StoreProgress {
        mut stored,
        mut any_failed,
        copies_absent,
    } = progress;
    let mut scratch = core.pool.chunk();
    for volume in candidates.iter().filter(|_| !copies_absent) {
        if !is_wanted(&stored, wanted_classes, volume) {
            continue;
        }
        if let Some(bucket) = &volume.s3 {
            // The store checked the copy's bytes against its Content-MD5 when it took it:
            // a copy there only needs its `recent/` marker renewed (one HEAD, one PUT).
            match bucket.touch_if_present(hash).await {
                Ok(true) => {
                    core.metrics.volume(volume).operation(VolumeOp::Touch);
                    stored.push(volume.clone());
                }
                Ok(false) => {}
                Err(error) => {
                    let error = s3::to_io(error);
                    tracing::warn!(volume = %volume.uuid, hash, error = %error, "block lookup failed");
                    volume.note_read_error(&error);
                }
            }
            if is_satisfied(&stored, wanted_classes) {
                break;
            }
            continue;
        }
        let existing = match io::open_block(&volume.root, hash).await {
            Ok(existing) => existing,
            Err(error) => {
                tracing::warn!(volume = %volume.uuid, hash, error = %error, "block open failed");
                volume.note_read_error(&error);
                continue;
            }
        };
        let Some((file, size)) = existing else { continue };
        let (same, returned) = io::stored_copy_equals(&file, size, body, scratch).await;
        scratch = returned;
        drop(file);
        if let Err(error) = &same {
            // Rewritten below, as a copy that differs.
            tracing::warn!(volume = %volume.uuid, hash, error = %error, "stored copy unreadable");
            volume.note_read_error(error);
        }
        if matches!(same, Ok(true)) {
            // Trashed since it was compared (or the helper queue was full): not stored,
            // so pass 2 writes it again.
            if touched(core, volume, hash).await {
                stored.push(volume.clone());
            }
        } else {
            tracing::warn!(volume = %volume.uuid, hash, "stored copy differs from a verified PUT: rewriting it");
            let (outcome, returned) = write_copy(core, volume, hash, std::mem::take(body)).await;
            *body = returned;
            any_failed |= outcome.record(volume, &mut stored);
        }
        if is_satisfied(&stored, wanted_classes) {
            break;
        }
    }
    core.pool.recycle(scratch);
    for volume in candidates {
        if is_satisfied(&stored, wanted_classes) {
            break;
        }
        if !is_wanted(&stored, wanted_classes, volume) {
            continue;
        }
        let (outcome, returned) = write_copy(core, volume, hash, std::mem::take(body)).await;
        *body = returned;
        any_failed |= outcome.record(volume, &mut stored);
    }
    if stored.is_empty() {
        return Err(if any_failed {
            RequestError::VolumeUnavailable
        } else {
            RequestError::InsufficientStorage
        });
    }
    Ok(stored)
}

enum WriteOutcome {
    Stored,
    Full,
    Failed,
}

impl WriteOutcome {
    /// Add a stored copy to `stored`; true when the write failed for another reason than
    /// a full volume (which decides 503 over 507 when nothing was stored).
    fn record(self, volume: &Arc<Volume>, stored: &mut Vec<Arc<Volume>>) -> bool {
        match self {
            WriteOutcome::Stored => stored.push(volume.clone()),
            WriteOutcome::Full => {}
            WriteOutcome::Failed => return true,
        }
        false
    }
}

/// Touch a copy found in pass 1; true when it is stored (counted) after that.
async fn touched(core: &Core, volume: &Volume, hash: &str) -> bool {
    match touch_copy(core, volume, hash).await {
        Ok(Ok(())) => {
            core.metrics.volume(volume).operation(VolumeOp::Touch);
            true
        }
        Ok(Err(error)) => {
            tracing::warn!(volume = %volume.uuid, hash, error = %error, "touch failed");
            false
        }
        Err(error) => {
            tracing::warn!(volume = %volume.uuid, hash, error = %error, "touch failed");
            false
        }
    }
}

/// Whether `volume` holds a copy of `hash`.
async fn has_copy(volume: &Volume, hash: &str) -> std::io::Result<bool> {
    match &volume.s3 {
        Some(bucket) => bucket.stat(hash).await.map(|size| size.is_some()).map_err(s3::to_io),
        None => io::open_block(&volume.root, hash).await.map(|copy| copy.is_some()),
    }
}

/// Write one copy and account for it.
async fn write_copy(core: &Core, volume: &Volume, hash: &str, body: Vec<u8>) -> (WriteOutcome, Vec<u8>) {
    let started = volume.write_started();
    let (result, body) = match &volume.s3 {
        Some(bucket) => {
            let (result, body) = bucket.write(hash, body).await;
            (result.map_err(|error| WriteError::Failed(s3::to_io(error))), body)
        }
        None => io::write_block(volume, hash, body, core.next_random(), &core.helpers).await,
    };
    (account_write(core, volume, hash, result, body.len(), started), body)
}

/// A finished write's health, metrics, and the log line of a failure.
fn account_write(
    core: &Core,
    volume: &Volume,
    hash: &str,
    result: Result<(), WriteError>,
    bytes: usize,
    started: WriteStarted,
) -> WriteOutcome {
    match result {
        Ok(()) => {
            volume.mark_healthy(started);
            count_write(core, volume, bytes);
            WriteOutcome::Stored
        }
        Err(error) => match note_write_failure(core, volume, hash, error) {
            true => WriteOutcome::Failed,
            false => WriteOutcome::Full,
        },
    }
}

/// Log a failed write; true when it failed for another reason than lack of space.
fn note_write_failure(core: &Core, volume: &Volume, hash: &str, error: WriteError) -> bool {
    match error {
        WriteError::Full => {
            core.metrics.volume(volume).error(VolumeErrorKind::Full);
            tracing::warn!(volume = %volume.uuid, hash, "volume full, trying the next one");
            false
        }
        WriteError::Failed(error) => {
            core.metrics.volume(volume).error(VolumeErrorKind::Io);
            tracing::error!(volume = %volume.uuid, hash, error = %error, "block write failed; volume leaves the write rotation");
            volume.mark_failed(&error);
            core.nudge_watcher("write error");
            true
        }
    }
}

fn count_write(core: &Core, volume: &Volume, bytes: usize) {
    let counters = core.metrics.volume(volume);
    counters.operation(VolumeOp::Write);
    counters.wrote(bytes as u64);
}

/// keepstore's `putProgress.Want`: a volume is wanted while the request is not satisfied,
/// it holds no copy yet, and (when classes were asked for) it has a class still missing.
fn is_wanted(stored: &[Arc<Volume>], wanted_classes: &[String], volume: &Volume) -> bool {
    if is_satisfied(stored, wanted_classes) || stored.iter().any(|done| done.uuid == volume.uuid) {
        return false;
    }
    wanted_classes.is_empty()
        || wanted_classes
            .iter()
            .any(|class| volume.has_class(class) && !stored.iter().any(|done| done.has_class(class)))
}

fn is_satisfied(stored: &[Arc<Volume>], wanted_classes: &[String]) -> bool {
    if wanted_classes.is_empty() {
        return !stored.is_empty();
    }
    wanted_classes
        .iter()
        .all(|class| stored.iter().any(|volume| volume.has_class(class)))
}

fn write_reply(core: &Core, head: &Head, hash: &str, size: u64, stored: &[Arc<Volume>]) -> Reply<'static> {
    let mut locator = format!("{hash}+{size}");
    if let (Some(key), Some(token)) = (core.state().signing_key.as_ref(), tokens(head).first()) {
        locator.push_str(&key.sign_hint(hash, token, now_secs()));
    }
    locator.push('\n');
    let replicas: u32 = stored.iter().map(|volume| volume.replication).sum();
    let mut classes: BTreeMap<&str, u32> = BTreeMap::new();
    for volume in stored {
        for class in &volume.storage_classes {
            *classes.entry(class).or_default() += volume.replication;
        }
    }
    let confirmed: Vec<String> = classes
        .iter()
        .map(|(class, count)| format!("{class}={count}"))
        .collect();
    let Reply::Full(mut response) = Reply::text(200, TEXT_PLAIN, locator.into_bytes()) else {
        unreachable!("Reply::text is a full reply")
    };
    response
        .extra
        .push(format!("X-Keep-Replicas-Stored: {replicas}").into());
    response
        .extra
        .push(format!("X-Keep-Storage-Classes-Confirmed: {}", confirmed.join(", ")).into());
    Reply::Full(response)
}

/// Set a stored copy's mtime to now: on the helper pool (io_uring has no utimensat), or
/// an S3 volume's `recent/` marker on the core.
async fn touch_copy(core: &Core, volume: &Volume, hash: &str) -> Result<std::io::Result<()>, RequestError> {
    if let Some(bucket) = &volume.s3 {
        let signing_ttl = std::time::Duration::from_secs(core.chore_settings().blob_signing_ttl_secs);
        return Ok(bucket.touch(hash, signing_ttl).await.map_err(s3::to_io));
    }
    let path = layout::block_path(&volume.root, hash);
    Ok(core.helpers.run(move || io::touch(&path)).await?)
}

/// TOUCH: set the mtime of the block on the first writable volume (UUID order) holding it.
pub async fn touch(core: &Core, head: &Head, locator_text: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    for volume in state.volumes.all().iter().filter(|volume| volume.allow_write) {
        match touch_copy(core, volume, locator.hash).await? {
            Ok(()) => {
                core.metrics.volume(volume).operation(VolumeOp::Touch);
                return Ok(Reply::empty(200));
            }
            Err(error) if io::is_missing(&error) => continue,
            Err(error) => return Err(RequestError::Internal(format!("volume error: {error}"))),
        }
    }
    Err(RequestError::NotFound)
}
