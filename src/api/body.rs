//! Reading a request body into memory under the buffer budget. A body with a
//! Content-Length is leased whole before it is read (leasing as bytes arrive would let
//! two half-received bodies each wait for the other's share: hold-and-wait); a chunked
//! body is leased a chunk ahead of what arrived. A client that trickles cannot hold its
//! lease for long: the whole body must arrive by `BODY_GRACE_MS` plus its length at
//! `BODY_RATE_BYTES_PER_SEC_MIN` (keepstore bounds a request at 5 minutes).

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::api::context::Core;
use crate::bufpool::{Lease, CHUNK_BUFFER_BYTES};
use crate::error::RequestError;
use crate::http::request::{Framing, Head};
use crate::http::session::Session;
use crate::limits::{BLOCK_BYTES_MAX, BODY_GRACE_MS, BODY_RATE_BYTES_PER_SEC_MIN, CHUNK_BYTES};

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
    core: &Core,
    session: &mut Session,
    length: Option<u64>,
    bytes_max: u64,
    mut on_data: impl FnMut(&[u8]),
) -> Result<(Vec<u8>, Lease), RequestError> {
    let mut reader = BodyReader::start(core, session, length, bytes_max).await?;
    while let Some(piece) = reader.next(core, session).await? {
        on_data(&reader.body()[piece]);
    }
    Ok(reader.finish())
}

/// A request body arriving into one leased buffer, a piece (at most one chunk) per step,
/// so the caller can hash, and write, each piece before the next one is read.
pub struct BodyReader {
    body: Vec<u8>,
    lease: Lease,
    length: Option<u64>,
    bytes_max: u64,
    leased_body_bytes: u64,
}

impl BodyReader {
    /// Lease the budget for the body (Content-Length) or its first chunk (chunked) and
    /// set the connection's body deadline.
    pub async fn start(
        core: &Core,
        session: &mut Session,
        length: Option<u64>,
        bytes_max: u64,
    ) -> Result<Self, RequestError> {
        let announced = length.unwrap_or(0).min(bytes_max);
        let lease = core.pool.lease(CHUNK_BUFFER_BYTES as u64 + announced).await?;
        let body = core.body_buffer(length.unwrap_or(CHUNK_BYTES as u64).min(bytes_max) as usize);
        let expected_bytes = length.unwrap_or(BLOCK_BYTES_MAX);
        let allowed = Duration::from_millis(BODY_GRACE_MS + expected_bytes * 1000 / BODY_RATE_BYTES_PER_SEC_MIN);
        session.set_body_deadline(Instant::now() + allowed);
        Ok(BodyReader {
            body,
            lease,
            length,
            bytes_max,
            leased_body_bytes: announced,
        })
    }

    /// Read the next piece: the range of `body()` it landed in, or `None` at the end.
    pub async fn next(&mut self, core: &Core, session: &mut Session) -> Result<Option<Range<usize>>, RequestError> {
        if self.length.is_none() && self.body.len() as u64 + CHUNK_BYTES as u64 > self.leased_body_bytes {
            core.pool.grow(&mut self.lease, CHUNK_BYTES as u64).await?;
            self.leased_body_bytes += CHUNK_BYTES as u64;
            if (self.body.capacity() as u64) < self.leased_body_bytes {
                self.body
                    .reserve_exact(self.leased_body_bytes as usize - self.body.len());
            }
        }
        let before = self.body.len();
        let (result, returned) = session
            .read_body_some(std::mem::take(&mut self.body), CHUNK_BYTES, self.bytes_max as usize + 1)
            .await;
        self.body = returned;
        if result? == 0 {
            return Ok(None);
        }
        if self.body.len() as u64 > self.bytes_max {
            return Err(RequestError::BodyTooLarge);
        }
        // At most one chunk per step: processing it holds the core about a millisecond.
        Ok(Some(before..self.body.len()))
    }

    /// The bytes received so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Lend the buffer to an operation that takes it by value (an io_uring write); it
    /// must come back through `put_back` before the next `next`.
    pub fn lend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    pub fn put_back(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    pub fn finish(self) -> (Vec<u8>, Lease) {
        (self.body, self.lease)
    }
}
