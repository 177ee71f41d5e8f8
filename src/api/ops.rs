//! Operations endpoints (keep-protocol.md §3.3, §3.5, §3.7): `DELETE /<locator>` and
//! `PUT /untrash/<locator>` (the volume's trash rule, run on the helper pool: one job per
//! request for all its volumes), `PUT /trash` and `PUT /pull` (the list is read here,
//! parsed on the helper pool and handed to the chore threads, which do the work off the
//! cores), and `GET /metrics` (the sum of every thread's counters, in Prometheus text,
//! with free space read on the helper pool and each volume's drive health).

use std::io;
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
use crate::metrics::{self, Gauges, VolumeErrorKind, VolumeGauges, VolumeOp};
use crate::volume::health::Reason;
use crate::volume::s3::{self, S3Bucket};
use crate::volume::trash::{trash_block, untrash_block, TrashOutcome};
use crate::volume::Volume;

/// DELETE: trash the block on every trash-allowed volume where it is older than the blob
/// signing TTL. 200 when some such volume has it (trashed or too young), else 404.
pub async fn delete(core: &Core, head: &Head, locator_text: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let settings = core.chore_settings();
    if !settings.blob_trash {
        return Err(RequestError::MethodNotAllowed);
    }
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    let now = SystemTime::now();
    let rules = settings.trash_rules();
    let mut results = on_each_volume(
        core,
        locator.hash,
        |volume| volume.allow_trash,
        move |root, hash| trash_block(root, hash, now, &rules, None),
    )
    .await?;
    for (volume, bucket) in s3_volumes(core, |volume| volume.allow_trash) {
        let result = bucket.trash(locator.hash, now, &rules, None).await;
        results.push((volume, result));
    }
    let mut found = false;
    let mut failure = None;
    for (volume, result) in &results {
        trash::record(&core.metrics, volume, result);
        match result {
            Ok(TrashOutcome::Missing) => {}
            Ok(outcome) => {
                found = true;
                if *outcome != TrashOutcome::Kept {
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
pub async fn untrash(core: &Core, head: &Head, locator_text: &str) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_root(&state, head)?;
    let locator = Locator::parse(locator_text).map_err(|_| RequestError::InvalidLocator)?;
    let mut results = on_each_volume(core, locator.hash, |volume| volume.allow_write, untrash_block).await?;
    for (volume, bucket) in s3_volumes(core, |volume| volume.allow_write) {
        results.push((volume, bucket.untrash(locator.hash).await.map_err(s3::to_io)));
    }
    let mut restored = false;
    let mut failure = None;
    for (volume, result) in results {
        let counters = core.metrics.volume(&volume);
        match result {
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

/// The S3 volumes `chosen` picks, with their buckets: their trash rules run on the core,
/// over its own connections.
fn s3_volumes(core: &Core, chosen: impl Fn(&Volume) -> bool) -> Vec<(Arc<Volume>, Arc<S3Bucket>)> {
    core.state()
        .volumes
        .all()
        .iter()
        .filter(|volume| chosen(volume))
        .filter_map(|volume| Some((volume.clone(), volume.s3.clone()?)))
        .collect()
}

/// Run `operation` (a volume's blocking trash rule) for block `hash` on every directory
/// volume `chosen` picks, all in one helper job; each volume with its result.
async fn on_each_volume<T: Send + 'static>(
    core: &Core,
    hash: &str,
    chosen: impl Fn(&Volume) -> bool,
    operation: impl Fn(&std::path::Path, &str) -> io::Result<T> + Send + 'static,
) -> Result<Vec<(Arc<Volume>, io::Result<T>)>, RequestError> {
    let volumes: Vec<Arc<Volume>> = core
        .state()
        .volumes
        .all()
        .iter()
        .filter(|volume| chosen(volume) && volume.s3.is_none())
        .cloned()
        .collect();
    let hash = hash.to_string();
    let job = move || {
        let each = volumes.into_iter().map(|volume| {
            let result = operation(&volume.root, &hash);
            (volume, result)
        });
        each.collect()
    };
    Ok(core.helpers.run(job).await?)
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

/// Read a JSON list body (bounded, leased from the buffer budget) and parse it on the
/// helper pool: a 64 MiB list takes a few hundred ms to parse, which must not stall the
/// core.
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
    let parse = move || serde_json::from_slice::<Vec<T>>(&body).map_err(|error| error.to_string());
    let parsed = core.helpers.run(parse).await?;
    drop(lease);
    let items = parsed.map_err(RequestError::UnreadableList)?;
    if items.len() > LIST_ITEMS_MAX {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(items)
}

/// GET /metrics (Prometheus text) and /metrics.json: open when no management token is
/// configured (keepstore-observed.md).
pub async fn metrics(core: &Core, head: &Head) -> Result<Reply<'static>, RequestError> {
    let state = core.state();
    auth::require_metrics(&state, head)?;
    let volumes = volume_gauges(core, state.volumes.all()).await;
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
        volumes,
        max_concurrent_requests: services.limiter.max_active() as u64,
        max_queued_requests: services.limiter.max_queued() as u64,
        queued_requests: services.limiter.queued() as u64,
        config: state
            .config_source
            .as_ref()
            .map(|source| (source.sha256.clone(), source.modified_secs, source.loaded_secs)),
        now_micros: crate::metrics::unix_micros(std::time::SystemTime::now()),
        md5_kernel: (services.md5_kernel.name(), services.md5_kernel.lanes() as u64),
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

/// Each volume's free space, read now on the helper pool (which also refreshes the
/// readings writes check); with the pool's queue full, the last readings: a scrape is
/// answered whatever the admin traffic. With each volume's drive health.
async fn volume_gauges(core: &Core, volumes: &[Arc<Volume>]) -> Vec<VolumeGauges> {
    let spaces: Vec<_> = volumes.iter().map(|volume| volume.free_space.clone()).collect();
    let read_now = core
        .helpers
        .run(move || spaces.iter().map(|space| space.read().ok()).collect::<Vec<_>>())
        .await;
    let free: Vec<Option<u64>> = match read_now {
        Ok(free) => free,
        Err(_) => volumes.iter().map(|volume| volume.free_space.bytes()).collect(),
    };
    volumes
        .iter()
        .zip(free)
        .map(|(volume, free_bytes)| {
            let reason = volume.health.reason();
            let errors = volume.health.totals();
            VolumeGauges {
                uuid: volume.uuid.clone(),
                device_id: volume.device_id.clone(),
                free_bytes,
                unhealthy: Reason::all()
                    .into_iter()
                    .map(|each| (each.name(), reason == Some(each)))
                    .collect(),
                read_errors: errors.read,
                write_errors: errors.write,
            }
        })
        .collect()
}
