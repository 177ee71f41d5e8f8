//! Operations endpoints (keep-protocol.md §3.3, §3.5, §3.7): `DELETE /<locator>` and
//! `PUT /untrash/<locator>` (short metadata operations done here, with blocking calls:
//! admin requests, rare), `PUT /trash` and `PUT /pull` (the list is read here, parsed on a
//! helper thread and handed to the chore threads, which do the work off the cores), and
//! `GET /metrics` (the sum of every thread's counters, in Prometheus text).

use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::api::context::Core;
use crate::api::{auth, body};
use crate::chores::pull::{self, PullItem};
use crate::chores::trash::{self, TrashItem};
use crate::error::RequestError;
use crate::http::reply::{Reply, Response};
use crate::http::request::Head;
use crate::http::session::Session;
use crate::limits::{BUFFER_UNIT_BYTES, LIST_BODY_BYTES_MAX, LIST_ITEMS_MAX};
use crate::locator::Locator;
use crate::metrics::{self, Gauges, VolumeErrorKind, VolumeOp};
use crate::volume::io::free_bytes;
use crate::volume::trash::{trash_block, untrash_block, TrashOutcome};

/// DELETE: trash the block on every trash-allowed volume where it is older than the blob
/// signing TTL. 200 when some such volume has it (trashed or too young), else 404.
pub fn delete(core: &Core, head: &Head, locator_text: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let settings = core.chore_settings();
    if !settings.blob_trash {
        return Err(RequestError::MethodNotAllowed);
    }
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    let now = SystemTime::now();
    let mut found = false;
    let mut failure = None;
    for volume in state.volumes.all().iter().filter(|volume| volume.allow_trash) {
        let result = trash_block(&volume.root, locator.hash, now, &settings.trash_rules(), None);
        trash::record(&core.metrics, volume, &result);
        match result {
            Ok(TrashOutcome::Missing) => {}
            Ok(outcome) => {
                found = true;
                if outcome != TrashOutcome::Kept {
                    tracing::info!(volume = %volume.uuid, hash = locator.hash, ?outcome, "block trashed");
                }
            }
            Err(error) => {
                tracing::warn!(volume = %volume.uuid, hash = locator.hash, error = %error, "trash failed");
                failure = Some(RequestError::Internal(format!("volume error: {error}")));
            }
        }
    }
    // As keepstore: a real failure is reported even when another volume succeeded.
    match (failure, found) {
        (Some(error), _) => Err(error),
        (None, true) => Ok(Reply::empty(200)),
        (None, false) => Err(RequestError::NotFound),
    }
}

/// PUT /untrash: bring the first trashed copy back on every writable volume.
pub fn untrash(core: &Core, head: &Head, locator_text: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    let mut restored = false;
    let mut failure = None;
    for volume in state.volumes.all().iter().filter(|volume| volume.allow_write) {
        let counters = core.metrics.volume(volume);
        match untrash_block(&volume.root, locator.hash) {
            Ok(true) => {
                counters.operation(VolumeOp::Untrash);
                restored = true;
            }
            Ok(false) => {}
            Err(error) => {
                counters.error(VolumeErrorKind::Io);
                tracing::warn!(volume = %volume.uuid, hash = locator.hash, error = %error, "untrash failed");
                failure = Some(RequestError::Internal(format!("volume error: {error}")));
            }
        }
    }
    match (restored, failure) {
        (true, _) => Ok(Reply::empty(200)),
        (false, Some(error)) => Err(error),
        (false, None) => Err(RequestError::NotFound),
    }
}

/// PUT /trash: replace the trash queue.
pub async fn trash_list(core: &Core, session: &mut Session, head: &Head) -> Result<Reply<'static>, RequestError> {
    auth::require_root(&core.state(), head)?;
    let items: Vec<TrashItem> = read_list(core, session, head).await?;
    tracing::info!(items = items.len(), "trash list received");
    core.services.chores.trash.replace(items);
    Ok(Reply::empty(200))
}

/// PUT /pull: replace the pull queue.
pub async fn pull_list(core: &Core, session: &mut Session, head: &Head) -> Result<Reply<'static>, RequestError> {
    auth::require_root(&core.state(), head)?;
    let items: Vec<PullItem> = read_list(core, session, head).await?;
    if pull::first_item_lacks_size(&items) {
        return Err(RequestError::UnsizedPullList);
    }
    tracing::info!(items = items.len(), "pull list received");
    core.services.chores.pull.replace(items);
    Ok(Reply::empty(200))
}

/// Read a JSON list body (bounded, leased from the buffer budget) and parse it on a helper
/// thread: a 64 MiB list takes a few hundred ms to parse, which must not stall the core.
async fn read_list<T: DeserializeOwned + Send + 'static>(
    core: &Core,
    session: &mut Session,
    head: &Head,
) -> Result<Vec<T>, RequestError> {
    let length = body::announced_length(head);
    if length.is_some_and(|length| length > LIST_BODY_BYTES_MAX) {
        return Err(RequestError::BodyTooLarge);
    }
    let (body, lease) = body::read_leased(core, session, length, LIST_BODY_BYTES_MAX, |_| {}).await?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("keepring-list".into())
        .spawn(move || {
            let _ = sender.send(serde_json::from_slice::<Vec<T>>(&body).map_err(|error| error.to_string()));
        })
        .map_err(|error| RequestError::Internal(format!("cannot start the list parser: {error}")))?;
    let parsed = receiver
        .await
        .map_err(|_| RequestError::Internal("the list parser stopped".into()))?;
    drop(lease);
    let items = parsed.map_err(RequestError::UnreadableList)?;
    if items.len() > LIST_ITEMS_MAX {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(items)
}

/// GET /metrics (Prometheus text) and /metrics.json: open when no management token is
/// configured (keepstore-observed.md).
pub fn metrics(core: &Core, head: &Head) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_metrics(&state, head)?;
    let services = &core.services;
    let gauges = Gauges {
        buffer_unit_bytes: BUFFER_UNIT_BYTES,
        buffer_total_bytes: services.budget.total_bytes(),
        buffer_in_use_bytes: services.budget.in_use_bytes(),
        buffer_own_bytes: services.budget.own_bytes(),
        trash_pending: services.chores.trash.pending(),
        trash_in_progress: services.chores.trash.in_progress(),
        pull_pending: services.chores.pull.pending(),
        pull_in_progress: services.chores.pull.in_progress(),
        draining: services.drain.is_draining(),
        volumes_free: volumes_free(state.volumes.all()),
        max_concurrent_requests: services.limiter.max_active() as u64,
        max_queued_requests: services.limiter.max_queued() as u64,
        queued_requests: services.limiter.queued() as u64,
        config: state
            .config_source
            .as_ref()
            .map(|source| (source.sha256.clone(), source.modified_secs, source.loaded_secs)),
        now_micros: crate::metrics::unix_micros(std::time::SystemTime::now()),
    };
    // keepstore serves the same registry as JSON MetricFamily messages at /metrics.json.
    let json = head.path.split('?').next() == Some("/metrics.json");
    let (content_type, body) = match json {
        true => ("application/json", metrics::render_json(&services.registry, &gauges)),
        false => (metrics::CONTENT_TYPE, metrics::render(&services.registry, &gauges)),
    };
    Ok(Reply::Full(Response {
        status: 200,
        content_type: Some(content_type),
        extra: Vec::new(),
        body: body.into_bytes(),
        cors: false,
    }))
}

fn volumes_free(volumes: &[Arc<crate::volume::Volume>]) -> Vec<(String, String, Option<u64>)> {
    volumes
        .iter()
        .map(|volume| {
            let free = free_bytes(&volume.root).ok();
            (volume.uuid.clone(), volume.device_id.clone(), free)
        })
        .collect()
}
