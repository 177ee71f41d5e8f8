//! Admin and status endpoints: `/index`, `/mounts`, `/mounts/<uuid>/blocks`,
//! `/_health/ping` (keep-protocol.md §3.4, §3.7). The index walk runs on its own thread
//! (directory listing is blocking I/O) and streams its text back through a bounded channel.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::auth;
use crate::api::context::Core;
use crate::error::RequestError;
use crate::http::reply::{BodySource, Piece, Reply, Response, Streamed, TEXT_PLAIN};
use crate::http::request::Head;
use crate::http::response::BodyFraming;
use crate::limits::{INDEX_CHANNEL_CHUNKS_MAX, INDEX_CHUNK_BYTES};
use crate::volume::{index, Volume};

#[derive(Serialize)]
struct MountJson<'a> {
    uuid: &'a str,
    device_id: &'a str,
    allow_write: bool,
    allow_trash: bool,
    replication: u32,
    storage_classes: BTreeMap<&'a str, bool>,
}

pub fn mounts(core: &Core, head: &Head) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let mounts: Vec<MountJson> = state
        .volumes
        .all()
        .iter()
        .map(|volume| MountJson {
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

/// One piece of index text, or the reason the walk stopped early.
type IndexPiece = Result<Vec<u8>, String>;

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
    let (sender, receiver) = mpsc::channel::<IndexPiece>(INDEX_CHANNEL_CHUNKS_MAX);
    let roots: Vec<PathBuf> = volumes.iter().map(|volume| volume.root.clone()).collect();
    std::thread::Builder::new()
        .name("keepring-index".into())
        .spawn(move || walk_index(&roots, &prefix, &sender))
        .map_err(|error| RequestError::Internal(format!("cannot start index walk: {error}")))?;
    Ok(Reply::Stream(Streamed {
        status: 200,
        framing: BodyFraming::Chunked,
        content_type: Some(TEXT_PLAIN),
        extra: Vec::new(),
        body: Box::new(IndexStream { receiver, ended: false }),
    }))
}

/// The index text as the walk produces it, ending with the blank line that tells
/// keep-balance the index is whole (left out when the walk failed).
struct IndexStream {
    receiver: mpsc::Receiver<IndexPiece>,
    ended: bool,
}

impl BodySource for IndexStream {
    fn next(&mut self, _spent: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Piece, RequestError>> + '_>> {
        Box::pin(async move {
            if self.ended {
                return Ok(Piece::End);
            }
            match self.receiver.recv().await {
                Some(Ok(text)) if text.is_empty() => {
                    self.ended = true;
                    Ok(Piece::Bytes {
                        buffer: b"\n".to_vec(),
                        from: 0,
                    })
                }
                Some(Ok(text)) => Ok(Piece::Bytes { buffer: text, from: 0 }),
                Some(Err(reason)) => {
                    tracing::error!(reason, "index walk failed; the index ends without its blank line");
                    Ok(Piece::End)
                }
                None => {
                    tracing::error!("index walk stopped; the index ends without its blank line");
                    Ok(Piece::End)
                }
            }
        })
    }
}

/// Runs on its own thread. Sends text pieces, then an empty piece when every volume was
/// listed, or an error; stops early if the client went away (the receiver closed).
fn walk_index(roots: &[PathBuf], prefix: &str, sender: &mpsc::Sender<IndexPiece>) {
    let mut text = Vec::with_capacity(INDEX_CHUNK_BYTES + 128);
    for root in roots {
        if let Err(error) = walk_volume(root, prefix, &mut text, sender) {
            let _ = sender.blocking_send(Err(format!("{}: {error}", root.display())));
            return;
        }
    }
    if !text.is_empty() && sender.blocking_send(Ok(std::mem::take(&mut text))).is_err() {
        return;
    }
    let _ = sender.blocking_send(Ok(Vec::new()));
}

fn walk_volume(
    root: &std::path::Path,
    prefix: &str,
    text: &mut Vec<u8>,
    sender: &mpsc::Sender<IndexPiece>,
) -> std::io::Result<()> {
    let complete = index::list_blocks(root, prefix, |block| {
        let _ = writeln!(text, "{}+{} {}", block.hash, block.size, block.mtime_ns);
        let full = text.len() >= INDEX_CHUNK_BYTES;
        match full && sender.blocking_send(Ok(std::mem::take(text))).is_err() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })?;
    match complete {
        true => Ok(()),
        false => Err(std::io::Error::other("client went away")),
    }
}
