//! Admin and status endpoints: `/index`, `/mounts` (keepstore's fields, then keepring's
//! drive health of each volume), `/mounts/<uuid>/blocks`, `/_health/ping`
//! (keep-protocol.md §3.4, §3.7). The index is listed on the helper pool
//! (directory listing is blocking I/O) a piece at a time: the next piece is listed while
//! this one is sent, and no helper thread waits for a slow client.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::api::auth;
use crate::api::context::Core;
use crate::blocking::{Pending, Pool};
use crate::error::RequestError;
use crate::http::reply::{BodySource, Piece, Reply, Response, Streamed, TEXT_PLAIN};
use crate::http::request::Head;
use crate::http::response::BodyFraming;
use crate::limits::{INDEX_CHUNK_BYTES, INDEX_PIECE_DIRS_MAX};
use crate::volume::health::{self, Reason};
use crate::volume::s3::{IndexLister, S3Bucket};
use crate::volume::{index, Volume};

#[derive(Serialize)]
struct MountJson<'a> {
    uuid: &'a str,
    device_id: &'a str,
    allow_write: bool,
    allow_trash: bool,
    replication: u32,
    storage_classes: BTreeMap<&'a str, bool>,
    // keepring's own (keepstore's clients ignore fields they do not know):
    // drive health (`volume::health`).
    /// `ok`, or `unhealthy`: out of the write rotation until a probe succeeds.
    health: &'static str,
    /// Why it is unhealthy (`read_errors`, `write_errors`); null when healthy.
    health_reason: Option<&'static str>,
    /// Drive errors since the volume was opened.
    read_errors: u64,
    write_errors: u64,
    /// Drive errors in the sliding window the health is decided on.
    recent_read_errors: u64,
    recent_write_errors: u64,
}

pub fn mounts(core: &Core, head: &Head) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let now_ms = health::now_ms();
    let mounts: Vec<MountJson> = state
        .volumes
        .all()
        .iter()
        .map(|volume| (volume, volume.health.totals(), volume.health.recent(now_ms)))
        .map(|(volume, totals, recent)| MountJson {
            uuid: &volume.uuid,
            device_id: &volume.device_id,
            allow_write: volume.allow_write,
            allow_trash: volume.allow_trash,
            replication: volume.replication,
            storage_classes: volume
                .storage_classes
                .iter()
                .map(|class| (class.as_str(), true))
                .collect(),
            health: if volume.health.is_healthy() { "ok" } else { "unhealthy" },
            health_reason: volume.health.reason().map(Reason::name),
            read_errors: totals.read,
            write_errors: totals.write,
            recent_read_errors: recent.read,
            recent_write_errors: recent.write,
        })
        .collect();
    let mut body = serde_json::to_vec(&mounts).map_err(|error| RequestError::Internal(error.to_string()))?;
    body.push(b'\n');
    // keepstore 3.2.1 labels it text/plain (keepstore-observed.md).
    Ok(Reply::text(200, TEXT_PLAIN, body))
}

pub fn health(core: &Core, head: &Head) -> Result<Reply<'static>, RequestError> {
    auth::require_management(&core.state(), head)?;
    Ok(Reply::Full(Response {
        status: 200,
        content_type: Some("application/json"),
        extra: Vec::new(),
        body: b"{\"health\":\"OK\"}\n".to_vec(),
        cors: false,
    }))
}

/// `GET /mounts/<uuid>/quarantine` (root token): the copies on that volume set aside after
/// failing their MD5 check, one line each: `<hash>+<size> <unix seconds set aside>`.
pub async fn quarantine(core: &Core, head: &Head, uuid: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let volume = state.volumes.by_uuid(uuid).ok_or(RequestError::NotFound)?;
    let Some(root) = volume.directory().map(PathBuf::from) else {
        // An S3 volume sets nothing aside (as keepstore): nothing to list.
        return Ok(Reply::text(200, TEXT_PLAIN, Vec::new()));
    };
    let listed = core
        .helpers
        .run(move || crate::volume::quarantine::list(&root))
        .await?
        .map_err(|error| RequestError::Internal(format!("cannot list quarantined copies: {error}")))?;
    let mut body = Vec::new();
    for copy in listed {
        let _ = writeln!(body, "{}+{} {}", copy.hash, copy.size, copy.unix_secs);
    }
    Ok(Reply::text(200, TEXT_PLAIN, body))
}

/// One piece of index text, with the walk to continue from (`None`: it is over).
struct IndexPiece {
    text: Vec<u8>,
    rest: Option<index::Walk>,
}

pub async fn index(
    core: &Core,
    head: &Head,
    uuid: Option<&str>,
    path_prefix: &str,
) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    // `?prefix=` wins when it is not empty (keep-protocol.md §3.4).
    let prefix = head
        .query_values("prefix")
        .find(|prefix| !prefix.is_empty())
        .unwrap_or_else(|| path_prefix.to_string());
    let volumes: Vec<Arc<Volume>> = match uuid {
        Some(uuid) => vec![state.volumes.by_uuid(uuid).ok_or(RequestError::NotFound)?.clone()],
        None => state.volumes.all().to_vec(),
    };
    let roots: Vec<PathBuf> = volumes
        .iter()
        .filter_map(|volume| volume.directory().map(PathBuf::from))
        .collect();
    let buckets: VecDeque<(Arc<S3Bucket>, IndexLister)> = volumes
        .iter()
        .filter_map(|volume| volume.s3.clone())
        .map(|bucket| {
            let lister = bucket.index(&prefix);
            (bucket, lister)
        })
        .collect();
    let walk = index::Walk::new(roots, prefix);
    // Asked before the head is sent: a full helper queue is a 503, not a cut index.
    let listing = core.helpers.submit(move || list_piece(walk))?;
    Ok(Reply::Stream(Streamed {
        status: 200,
        framing: BodyFraming::Chunked,
        content_type: Some(TEXT_PLAIN),
        extra: Vec::new(),
        body: Box::new(IndexStream {
            helpers: core.helpers.clone(),
            listing: Some(listing),
            buckets,
            ended: false,
        }),
    }))
}

/// The index text as helper jobs list it from the directory volumes, then the S3
/// volumes' listings page by page (on the core, over its connections), ending with the
/// blank line that tells keep-balance the index is whole (left out when a walk or a
/// listing failed or was refused).
struct IndexStream {
    helpers: Pool,
    /// The piece being listed; `None` once the walk is over or stopped.
    listing: Option<Pending<std::io::Result<IndexPiece>>>,
    /// The S3 volumes still to list.
    buckets: VecDeque<(Arc<S3Bucket>, IndexLister)>,
    /// The index is over (whole or cut): nothing more is sent.
    ended: bool,
}

impl IndexStream {
    /// The next page of S3 index text; `Ok(None)` once every bucket is listed.
    async fn next_bucket_page(&mut self) -> Result<Option<Vec<u8>>, crate::s3::S3Error> {
        while let Some((bucket, lister)) = self.buckets.front_mut() {
            match lister.next_page(bucket).await? {
                Some(entries) => {
                    let mut text = Vec::with_capacity(entries.len() * 60);
                    for entry in entries {
                        let _ = writeln!(text, "{}+{} {}", entry.hash, entry.size, entry.mtime_ns);
                    }
                    return Ok(Some(text));
                }
                None => {
                    self.buckets.pop_front();
                }
            }
        }
        Ok(None)
    }
}

impl BodySource for IndexStream {
    fn next(&mut self, _spent: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Piece, RequestError>> + '_>> {
        Box::pin(async move {
            if self.ended {
                return Ok(Piece::End);
            }
            // A piece may hold no block (directories without any under the prefix): an
            // empty chunk would end the body, so wait for one with text or the end.
            while let Some(listing) = self.listing.take() {
                let IndexPiece { text, rest } = match listing.wait().await {
                    Ok(Ok(piece)) => piece,
                    Ok(Err(error)) => return Ok(self.cut_short(&error)),
                    Err(error) => return Ok(self.cut_short(&error)),
                };
                if let Some(walk) = rest {
                    // The next piece is listed while this one is on its way.
                    match self.helpers.submit(move || list_piece(walk)) {
                        Ok(next) => self.listing = Some(next),
                        Err(error) => {
                            let end = self.cut_short(&error);
                            return Ok(match text.is_empty() {
                                true => end,
                                false => Piece::Bytes { buffer: text, from: 0 },
                            });
                        }
                    }
                }
                if !text.is_empty() {
                    return Ok(Piece::Bytes { buffer: text, from: 0 });
                }
            }
            loop {
                match self.next_bucket_page().await {
                    Ok(Some(text)) if text.is_empty() => continue,
                    Ok(Some(text)) => return Ok(Piece::Bytes { buffer: text, from: 0 }),
                    Ok(None) => break,
                    Err(error) => return Ok(self.cut_short(&error)),
                }
            }
            self.ended = true;
            Ok(Piece::Bytes {
                buffer: b"\n".to_vec(),
                from: 0,
            })
        })
    }
}

impl IndexStream {
    /// Log why an index stops before its end; it goes out without its blank line, so
    /// keep-balance knows it is not whole.
    fn cut_short(&mut self, reason: &dyn std::fmt::Display) -> Piece {
        tracing::error!(reason = %reason, "index listing failed; the index ends without its blank line");
        self.ended = true;
        self.buckets.clear();
        Piece::End
    }
}

/// Runs on a helper thread: list `walk` on until the text reaches `INDEX_CHUNK_BYTES` or
/// `INDEX_PIECE_DIRS_MAX` steps are taken, whichever is first.
fn list_piece(mut walk: index::Walk) -> std::io::Result<IndexPiece> {
    let mut text = Vec::with_capacity(INDEX_CHUNK_BYTES + 4 * 1024);
    for _ in 0..INDEX_PIECE_DIRS_MAX {
        let more = walk.step(|block| {
            let _ = writeln!(text, "{}+{} {}", block.hash, block.size, block.mtime_ns);
        })?;
        if !more {
            return Ok(IndexPiece { text, rest: None });
        }
        if text.len() >= INDEX_CHUNK_BYTES {
            break;
        }
    }
    Ok(IndexPiece { text, rest: Some(walk) })
}
