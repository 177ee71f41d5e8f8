//! Reading a request body into memory under the buffer budget. A body with a
//! Content-Length is leased whole before it is read (leasing as bytes arrive would let
//! two half-received bodies each wait for the other's share: hold-and-wait); a chunked
//! body is leased a chunk ahead of what arrived. A client that trickles cannot hold its
//! lease for long: the whole body must arrive by `BODY_GRACE_MS` plus its length at
//! `BODY_RATE_BYTES_PER_SEC_MIN` (keepstore bounds a request at 5 minutes).

use std::time::{Duration, Instant};

use crate::bufpool::{Lease, CHUNK_BUFFER_BYTES};
use crate::error::RequestError;
use crate::http::request::{Framing, Head};
use crate::limits::{BLOCK_BYTES_MAX, BODY_GRACE_MS, BODY_RATE_BYTES_PER_SEC_MIN, CHUNK_BYTES};
use crate::server::connection::Connection;
use crate::server::worker::Worker;

/// The body's announced length: `None` for chunked, 0 when there is no body.
pub fn announced_length(head: &Head) -> Option<u64> {
    match head.framing {
        Some(Framing::Length(length)) => Some(length),
        Some(Framing::Chunked) => None,
        None => Some(0),
    }
}

/// Read the whole body (at most `bytes_max`), feeding each piece to `on_data` as it
/// arrives. The returned lease covers the body plus one chunk buffer for the caller.
pub async fn read_leased(
    worker: &Worker,
    connection: &mut Connection,
    length: Option<u64>,
    bytes_max: u64,
    mut on_data: impl FnMut(&[u8]),
) -> Result<(Vec<u8>, Lease), RequestError> {
    let announced = length.unwrap_or(0).min(bytes_max);
    let mut lease = worker.pool.lease(CHUNK_BUFFER_BYTES as u64 + announced).await?;
    let mut body = worker.body_buffer(length.unwrap_or(CHUNK_BYTES as u64).min(bytes_max) as usize);
    let mut leased_body_bytes = announced;
    let expected_bytes = length.unwrap_or(BLOCK_BYTES_MAX);
    let allowed = Duration::from_millis(BODY_GRACE_MS + expected_bytes * 1000 / BODY_RATE_BYTES_PER_SEC_MIN);
    connection.set_body_deadline(Instant::now() + allowed);
    loop {
        if length.is_none() && body.len() as u64 + CHUNK_BYTES as u64 > leased_body_bytes {
            worker.pool.grow(&mut lease, CHUNK_BYTES as u64).await?;
            leased_body_bytes += CHUNK_BYTES as u64;
            if (body.capacity() as u64) < leased_body_bytes {
                body.reserve_exact(leased_body_bytes as usize - body.len());
            }
        }
        let before = body.len();
        let (result, returned) = connection
            .read_body_some(body, CHUNK_BYTES, bytes_max as usize + 1)
            .await;
        body = returned;
        if result? == 0 {
            return Ok((body, lease));
        }
        if body.len() as u64 > bytes_max {
            return Err(RequestError::BodyTooLarge);
        }
        // At most one chunk per step: processing it holds the core about a millisecond.
        on_data(&body[before..]);
    }
}
