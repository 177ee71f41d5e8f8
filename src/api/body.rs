//! Reading a request body into memory under the buffer budget. A body with a
//! Content-Length is leased whole before it is read (leasing as bytes arrive would let
//! two half-received bodies each wait for the other's share: hold-and-wait); a chunked
//! body is leased a chunk ahead of what arrived. A client that trickles cannot hold its
//! lease for long: the whole body must arrive by `BODY_GRACE_MS` plus its length at
//! `BODY_RATE_BYTES_PER_SEC_MIN` (keepstore bounds a request at 5 minutes), and while
//! another request waits for budget, the slowest big body below that rate is cut (408)
//! to make room (`SlowBodies`): trickling clients cannot hold the budget from honest ones.

use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::context::Core;
use crate::bufpool::{Lease, CHUNK_BUFFER_BYTES};
use crate::error::RequestError;
use crate::hasher::{BodyStream, Hasher};
use crate::http::request::{Framing, Head};
use crate::http::session::Session;
use crate::limits::{
    BLOCK_BYTES_MAX, BODY_GRACE_MS, BODY_RATE_BYTES_PER_SEC_MIN, BODY_READ_BYTES, CHUNK_BYTES, SLOW_BODY_AGE_MIN_MS,
    SLOW_BODY_CHECK_MS, STREAMED_WRITE_BYTES_MIN,
};
use crate::md5lanes::LaneState;
use crate::shared_body::{Arrived, SharedBody};

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
    Ok(reader.finish().await)
}

/// A big body in progress, as any core sees it.
pub struct BodyInFlight {
    fd: RawFd,
    started: Instant,
    received: AtomicU64,
    cut: AtomicBool,
}

/// Every big body in progress in this process (bodies of 1 MiB or more: what holds the
/// budget), so a request waiting for budget can cut the slowest. Its lock is taken when a
/// big body starts and ends and while a request waits for budget, never per piece.
#[derive(Default)]
pub struct SlowBodies {
    bodies: Mutex<Vec<Arc<BodyInFlight>>>,
}

impl SlowBodies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<BodyInFlight>>> {
        // A panic while holding it leaves a Vec that is still whole.
        self.bodies.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self, fd: RawFd) -> Arc<BodyInFlight> {
        let body = Arc::new(BodyInFlight {
            fd,
            started: Instant::now(),
            received: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        });
        self.lock().push(body.clone());
        body
    }

    fn deregister(&self, body: &Arc<BodyInFlight>) {
        self.lock().retain(|other| !Arc::ptr_eq(other, body));
    }

    /// Cut the slowest body older than `SLOW_BODY_AGE_MIN_MS` whose average rate is below
    /// `BODY_RATE_BYTES_PER_SEC_MIN`: its socket stops reading (its request answers 408
    /// and gives its lease back). False when no body is that slow.
    pub fn cut_slowest(&self) -> bool {
        let bodies = self.lock();
        let now = Instant::now();
        let rate = |body: &BodyInFlight| {
            let secs = now.duration_since(body.started).as_secs_f64().max(1e-3);
            body.received.load(Ordering::Relaxed) as f64 / secs
        };
        let slowest = bodies
            .iter()
            .filter(|body| !body.cut.load(Ordering::Relaxed))
            .filter(|body| now.duration_since(body.started) >= Duration::from_millis(SLOW_BODY_AGE_MIN_MS))
            .map(|body| (rate(body), body))
            .filter(|(rate, _)| *rate < BODY_RATE_BYTES_PER_SEC_MIN as f64)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((rate, body)) = slowest else {
            return false;
        };
        body.cut.store(true, Ordering::Relaxed);
        tracing::warn!(
            bytes_per_sec = rate as u64,
            "cutting the slowest request body to free buffer budget"
        );
        // SAFETY: the fd is open: its body deregisters (under this lock) before its
        // connection can close. SHUT_RD ends the pending read; the 408 can still be written.
        unsafe { libc::shutdown(body.fd, libc::SHUT_RD) };
        true
    }
}

/// Lease `bytes`, cutting the slowest trickling body every `SLOW_BODY_CHECK_MS` while the
/// budget is short, until the lease is granted or the wait gives up (503).
async fn lease_giving_way(core: &Core, bytes: u64) -> Result<Lease, RequestError> {
    let lease = core.pool.lease(bytes);
    tokio::pin!(lease);
    loop {
        tokio::select! {
            biased;
            result = &mut lease => return result,
            _ = tokio::time::sleep(Duration::from_millis(SLOW_BODY_CHECK_MS)) => {
                core.services.slow_bodies.cut_slowest();
            }
        }
    }
}

/// A request body arriving into one leased buffer, a piece (at most one chunk) per step,
/// so the caller can write each piece (and, with `hashed`, the hasher hash it) while the
/// next one is read. A body with a Content-Length (within `bytes_max`) is read straight
/// into the free end of its buffer (`shared_body`), so the hash and a volume write can work
/// on what arrived meanwhile; a chunked body grows its buffer, which nothing may be
/// looking at then: it waits for its hash before each read.
pub struct BodyReader<'a> {
    body: SharedBody,
    hash: Option<BodyStream<'a>>,
    lease: Lease,
    length: Option<u64>,
    bytes_max: u64,
    leased_body_bytes: u64,
    /// A big body's entry in `SlowBodies` (removed when the reader is dropped).
    tracked: Option<(Arc<BodyInFlight>, Arc<crate::api::context::Services>)>,
}

impl Drop for BodyReader<'_> {
    fn drop(&mut self) {
        if let Some((body, services)) = &self.tracked {
            services.slow_bodies.deregister(body);
        }
        // Dropped before `finish` (the request was cut short): a write task may still be
        // reading a Content-Length body's buffer, so its lease goes back when the memory
        // does, not now. (A chunked body cut inside `read_growing` has its Vec in the
        // read, not here: that lease goes back at once, as before; nothing writes those
        // while they arrive.)
        if self.lease.bytes() > 0 {
            let empty = Lease::empty(&self.lease);
            let lease = std::mem::replace(&mut self.lease, empty);
            self.body.keep_with_memory(Box::new(lease));
        }
    }
}

impl<'a> BodyReader<'a> {
    /// Lease the budget for the body (Content-Length) or its first chunk (chunked) and
    /// set the connection's body deadline.
    pub async fn start(
        core: &Core,
        session: &mut Session,
        length: Option<u64>,
        bytes_max: u64,
    ) -> Result<Self, RequestError> {
        let announced = length.unwrap_or(0).min(bytes_max);
        let lease = lease_giving_way(core, CHUNK_BUFFER_BYTES as u64 + announced).await?;
        let tracked = (announced >= STREAMED_WRITE_BYTES_MIN).then(|| {
            let services = core.services.clone();
            (services.slow_bodies.register(session.raw_fd()), services)
        });
        let body = core.body_buffer(length.unwrap_or(CHUNK_BYTES as u64).min(bytes_max) as usize);
        let expected_bytes = length.unwrap_or(BLOCK_BYTES_MAX);
        let allowed = Duration::from_millis(BODY_GRACE_MS + expected_bytes * 1000 / BODY_RATE_BYTES_PER_SEC_MIN);
        session.set_body_deadline(allowed);
        Ok(BodyReader {
            body: SharedBody::new(body),
            hash: None,
            lease,
            length,
            bytes_max,
            leased_body_bytes: announced,
            tracked,
        })
    }

    /// Hash the body as it arrives, on `hasher`; `digest` gives the result.
    pub fn hashed(mut self, hasher: &'a Hasher) -> Self {
        self.hash = Some(BodyStream::new(hasher));
        self
    }

    /// Read the next piece: the range of `body()` it landed in, or `None` at the end.
    pub async fn next(&mut self, core: &Core, session: &mut Session) -> Result<Option<Range<usize>>, RequestError> {
        let before = self.body.len();
        let into_room = self.length.is_some_and(|length| length <= self.bytes_max);
        let result = match into_room {
            true => {
                let room = self.body.room(BODY_READ_BYTES);
                let (result, room) = session.read_body_room(room, BODY_READ_BYTES).await;
                self.body.fill(room);
                result
            }
            false => self.read_growing(core, session).await,
        };
        if let Some((body, _)) = &self.tracked {
            body.received.store(self.body.len() as u64, Ordering::Relaxed);
            if result.is_err() && body.cut.load(Ordering::Relaxed) {
                return Err(RequestError::BodyTooSlow);
            }
        }
        if result? == 0 {
            return Ok(None);
        }
        if self.body.len() as u64 > self.bytes_max {
            return Err(RequestError::BodyTooLarge);
        }
        if let Some(hash) = self.hash.as_mut() {
            hash.feed(self.body.arrived(self.body.len())).await;
        }
        Ok(Some(before..self.body.len()))
    }

    /// A read of a chunked body (or of one longer than `bytes_max`), into a buffer that
    /// grows with the lease: it has the buffer to itself.
    async fn read_growing(&mut self, core: &Core, session: &mut Session) -> Result<usize, RequestError> {
        let mut body = self.exclusive().await;
        if self.length.is_none() && body.len() as u64 + CHUNK_BYTES as u64 > self.leased_body_bytes {
            if let Err(error) = core.pool.grow(&mut self.lease, CHUNK_BYTES as u64).await {
                self.body = SharedBody::new(body);
                return Err(error);
            }
            self.leased_body_bytes += CHUNK_BYTES as u64;
            if (body.capacity() as u64) < self.leased_body_bytes {
                // Doubled, not grown a chunk at a time: growing a big buffer copies it
                // (`allocator`). Pages past the lease stay untouched, so not resident.
                let doubled = (2 * body.capacity()).min(self.bytes_max as usize + 1);
                let want = (self.leased_body_bytes as usize).max(doubled);
                body.reserve_exact(want - body.len());
            }
        }
        let (result, returned) = session
            .read_body_some(body, CHUNK_BYTES, self.bytes_max as usize + 1)
            .await;
        self.body = SharedBody::new(returned);
        result
    }

    /// The buffer as a `Vec`, once the hash is done with it (the caller holds no view).
    async fn exclusive(&mut self) -> Vec<u8> {
        if let Some(hash) = self.hash.as_mut() {
            hash.settle().await;
        }
        let body = std::mem::replace(&mut self.body, SharedBody::new(Vec::new()));
        body.take_vec().unwrap_or_else(|shared| {
            // A view still out (none should be): the bytes are copied, nothing is lost.
            debug_assert!(false, "a body view outlived its hash");
            tracing::warn!("a request body was copied: a view of its buffer was still out");
            let mut copy = Vec::with_capacity(shared.capacity());
            copy.extend_from_slice(shared.filled());
            copy
        })
    }

    /// The bytes received so far.
    pub fn body(&self) -> &[u8] {
        self.body.filled()
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The body so far, for an operation that reads it (a volume write) while more
    /// arrives.
    pub fn arrived(&self) -> Arrived {
        self.body.arrived(self.body.len())
    }

    /// The MD5 state of the whole body (hashed with `hashed`: else of nothing).
    pub async fn digest(&mut self) -> LaneState {
        match self.hash.take() {
            Some(hash) => hash.finish().await,
            None => LaneState::new(),
        }
    }

    /// The body and its lease; every view handed out must be gone.
    pub async fn finish(mut self) -> (Vec<u8>, Lease) {
        let body = self.exclusive().await;
        let empty = Lease::empty(&self.lease);
        let lease = std::mem::replace(&mut self.lease, empty);
        (body, lease)
    }
}
