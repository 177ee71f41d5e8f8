//! The per-core batched MD5 hasher (issue 16): every request on a worker's core hands it
//! its stream state and its next chunk, and within the same ring tick it advances every
//! pending chunk together, in SIMD lanes (`md5lanes::Kernel`: 16 with AVX-512, 8 with
//! AVX2), then wakes the requests. A lone chunk takes the fastest single-stream path, so a
//! quiet node hashes as fast as before and a busy one hashes many streams for the price
//! of about one.
//!
//! How a tick is gathered: a request's `update` queues its job and wakes the hasher's own
//! task, which the current-thread scheduler runs after the tasks already woken in this tick
//! (each io_uring completion of the tick wakes its request before any of them runs); so
//! the hasher sees every chunk those requests hand it before it runs once. A job owns its
//! state and buffer while queued, as an io_uring operation does: a request dropped while
//! waiting leaves them to the hasher, which drops them after its batch.
//!
//! A PUT body does not wait for its hash (`BodyStream`): its bytes arrive into a shared
//! buffer (`shared_body`), the stream hands the hasher a view of what arrived and reads on.
//! The hasher holds such bytes back until a batch is worth running: a request waits on it
//! (a GET's chunk, a body whole or `HASH_LAG_MAX_BYTES` ahead of its hash), there are as
//! many streams waiting as lanes, or every receiving stream has bytes waiting. Eight PUTs
//! at once then fill eight lanes with equal lengths, where waiting for each chunk's hash
//! left them a third full.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::limits::{HASH_LAG_MAX_BYTES, HASH_SLICE_MAX_BYTES, HASH_SLICE_MIN_BYTES};
use crate::md5lanes::{Kernel, LaneState, Rounds};
use crate::shared_body::Arrived;

/// One queued chunk: the stream it advances and the bytes (`buffer[range]`).
struct Job {
    state: LaneState,
    buffer: Vec<u8>,
    range: Range<usize>,
    /// The chunk is the stream's last: its padding is hashed in the same batch, leaving
    /// the digest in the state (`LaneState::digest_after_padding`).
    finish: bool,
    done: bool,
    waker: Option<Waker>,
}

/// One core's hasher. `!Send`: it lives and runs on its worker's thread.
pub struct Hasher {
    kernel: Kernel,
    pending: RefCell<Vec<Rc<RefCell<Job>>>>,
    /// Finished jobs no one else holds, taken again by the next `update`s (a small GET
    /// hashes once: without these every request would allocate its job).
    spare: RefCell<Vec<Rc<RefCell<Job>>>>,
    /// Receiving PUT bodies with bytes waiting for their hash.
    streams: RefCell<Vec<Rc<RefCell<StreamJob>>>>,
    /// Receiving PUT bodies (`BodyStream`s alive), waiting bytes or not.
    receiving: Cell<usize>,
    wake: Notify,
    /// Batches run, chunks hashed in them and their bytes, for `/metrics`.
    counts: Cell<HashCounts>,
}

/// What one core's hasher has done since it started: `chunks / batches` is how many
/// streams a kernel call advanced on average, `rounds` how full its lanes ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashCounts {
    pub batches: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub rounds: Rounds,
}

impl Hasher {
    pub fn new(kernel: Kernel) -> Rc<Hasher> {
        Rc::new(Hasher {
            kernel,
            pending: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            streams: RefCell::new(Vec::new()),
            receiving: Cell::new(0),
            wake: Notify::new(),
            counts: Cell::new(HashCounts::default()),
        })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Batches run, chunks and bytes hashed so far on this core.
    pub fn counts(&self) -> HashCounts {
        self.counts.get()
    }

    /// The hasher's task: spawn it once on the worker's runtime; it runs until the
    /// runtime ends.
    pub async fn run(self: Rc<Self>) {
        loop {
            self.wake.notified().await;
            // A batch takes a slice of each stream's waiting bytes: while more is due,
            // other tasks run between batches.
            while self.run_batch() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Whether a batch should run now (see the module's comment).
    fn due(&self) -> bool {
        if !self.pending.borrow().is_empty() {
            return true;
        }
        let streams = self.streams.borrow();
        !streams.is_empty()
            && (streams.len() >= self.kernel.lanes()
                || streams.len() >= self.receiving.get()
                || streams.iter().any(|stream| stream.borrow().waiter.is_some()))
    }

    fn wake_if_due(&self) {
        if self.due() {
            self.wake.notify_one();
        }
    }

    /// Advance `state` by `buffer[range]`, batched with every other chunk pending on this
    /// core; the state and the buffer come back.
    pub async fn update(&self, state: LaneState, buffer: Vec<u8>, range: Range<usize>) -> (LaneState, Vec<u8>) {
        self.queue(state, buffer, range, false).await
    }

    /// `update` with the stream's last chunk, and its MD5 digest: the padding that ends
    /// the stream is hashed in the batch's lanes too (for a small block, whose message is a
    /// few dozen blocks, that one more block on the single-stream path cost as much as a
    /// tenth of its hashing).
    pub async fn finish(&self, state: LaneState, buffer: Vec<u8>, range: Range<usize>) -> ([u8; 16], Vec<u8>) {
        let (state, buffer) = self.queue(state, buffer, range, true).await;
        (state.digest_after_padding(), buffer)
    }

    async fn queue(
        &self,
        state: LaneState,
        buffer: Vec<u8>,
        range: Range<usize>,
        finish: bool,
    ) -> (LaneState, Vec<u8>) {
        assert!(range.end <= buffer.len(), "a hash range past its buffer");
        let fresh = Job {
            state,
            buffer,
            range,
            finish,
            done: false,
            waker: None,
        };
        let job = match self.spare.borrow_mut().pop() {
            Some(job) => {
                *job.borrow_mut() = fresh;
                job
            }
            None => Rc::new(RefCell::new(fresh)),
        };
        self.pending.borrow_mut().push(Rc::clone(&job));
        self.wake.notify_one();
        Finished {
            hasher: self,
            job: Some(job),
        }
        .await
    }

    /// Hash every pending chunk and a slice of every waiting stream in one batch, and wake
    /// the requests that waited; true when another batch is due.
    fn run_batch(&self) -> bool {
        let mut jobs = std::mem::take(&mut *self.pending.borrow_mut());
        let streams = std::mem::take(&mut *self.streams.borrow_mut());
        if jobs.is_empty() && streams.is_empty() {
            return false;
        }
        let mut borrowed: Vec<_> = jobs.iter().map(|job| job.borrow_mut()).collect();
        let mut receiving: Vec<_> = streams.iter().map(|stream| stream.borrow_mut()).collect();
        // Equal lengths from every stream, so every round of the batch is full.
        let least_waiting = receiving.iter().map(|stream| stream.waiting()).min().unwrap_or(0);
        let slice = least_waiting.clamp(HASH_SLICE_MIN_BYTES, HASH_SLICE_MAX_BYTES);
        let taken: Vec<usize> = receiving.iter().map(|stream| stream.waiting().min(slice)).collect();
        let mut rounds = Rounds::default();
        {
            let mut batch: Vec<(&mut LaneState, &[u8])> = borrowed
                .iter_mut()
                .map(|job| {
                    let Job {
                        state, buffer, range, ..
                    } = &mut **job;
                    (state, &buffer[range.clone()])
                })
                .collect();
            for (stream, take) in receiving.iter_mut().zip(&taken) {
                let StreamJob {
                    state, arrived, hashed, ..
                } = &mut **stream;
                if let Some(arrived) = arrived {
                    batch.push((state, &arrived.bytes()[*hashed..*hashed + take]));
                }
            }
            rounds += self.kernel.update_batch(&mut batch);
        }
        if borrowed.iter().any(|job| job.finish) {
            // The streams that end here take their padding in one more batch.
            let paddings: Vec<_> = borrowed
                .iter()
                .filter(|job| job.finish)
                .map(|job| job.state.padding())
                .collect();
            let mut batch: Vec<(&mut LaneState, &[u8])> = borrowed
                .iter_mut()
                .filter(|job| job.finish)
                .zip(&paddings)
                .map(|(job, (padding, length))| (&mut job.state, &padding[..*length]))
                .collect();
            rounds += self.kernel.update_batch(&mut batch);
        }
        let bytes = borrowed.iter().map(|job| job.range.len()).sum::<usize>() + taken.iter().sum::<usize>();
        let mut counts = self.counts.get();
        counts.batches += 1;
        counts.chunks += (borrowed.len() + receiving.len()) as u64;
        counts.bytes += bytes as u64;
        counts.rounds += rounds;
        self.counts.set(counts);
        for job in borrowed.iter_mut() {
            job.done = true;
            if let Some(waker) = job.waker.take() {
                waker.wake();
            }
        }
        drop(borrowed);
        let mut still_waiting = Vec::new();
        for (mut stream, take) in receiving.into_iter().zip(taken) {
            stream.hashed += take;
            if stream.waiting() == 0 {
                // Nothing of the body is held for the hash: the buffer can be taken back.
                stream.arrived = None;
            }
            if stream.waiting() <= stream.waits_for {
                if let Some(waker) = stream.waiter.take() {
                    waker.wake();
                }
            }
            still_waiting.push(stream.waiting() > 0);
        }
        {
            let mut queued = self.streams.borrow_mut();
            for (stream, waiting) in streams.into_iter().zip(still_waiting) {
                if waiting {
                    queued.push(stream);
                } else {
                    stream.borrow_mut().queued = false;
                }
            }
        }
        // The queue's allocation serves the next tick (nothing was queued meanwhile: this
        // runs without yielding).
        jobs.clear();
        {
            let mut pending = self.pending.borrow_mut();
            if pending.is_empty() {
                *pending = jobs;
            }
        }
        self.due()
    }
}

/// A receiving PUT body's stream, as the hasher holds it.
struct StreamJob {
    state: LaneState,
    /// The body so far, while some of it waits for the hash.
    arrived: Option<Arrived>,
    /// Bytes of the body hashed.
    hashed: usize,
    /// In the hasher's `streams`.
    queued: bool,
    /// The request waiting until at most `waits_for` bytes wait for the hash.
    waiter: Option<Waker>,
    waits_for: usize,
}

impl StreamJob {
    fn waiting(&self) -> usize {
        // (Without a view, every byte fed was hashed.)
        self.arrived.as_ref().map_or(0, |arrived| arrived.len() - self.hashed)
    }
}

/// A PUT body hashed while it arrives (see the module's comment): `feed` it the body so
/// far as it grows, `finish` for its MD5 state once it is whole.
pub struct BodyStream<'a> {
    hasher: &'a Hasher,
    job: Rc<RefCell<StreamJob>>,
}

impl<'a> BodyStream<'a> {
    pub fn new(hasher: &'a Hasher) -> Self {
        hasher.receiving.set(hasher.receiving.get() + 1);
        BodyStream {
            hasher,
            job: Rc::new(RefCell::new(StreamJob {
                state: LaneState::new(),
                arrived: None,
                hashed: 0,
                queued: false,
                waiter: None,
                waits_for: 0,
            })),
        }
    }

    /// The body so far (`arrived`: everything fed before, and more): its new bytes are
    /// hashed in a batch to come. Returns at once unless the stream is `HASH_LAG_MAX_BYTES`
    /// ahead of its hash; then it waits until it is not.
    pub async fn feed(&mut self, arrived: Arrived) {
        {
            let mut job = self.job.borrow_mut();
            assert!(arrived.len() >= job.hashed, "a body fed shorter than it was");
            job.arrived = Some(arrived);
            if job.waiting() == 0 {
                job.arrived = None;
                return;
            }
            if !job.queued {
                job.queued = true;
                self.hasher.streams.borrow_mut().push(Rc::clone(&self.job));
            }
        }
        self.hasher.wake_if_due();
        self.wait_until(HASH_LAG_MAX_BYTES).await;
    }

    /// Wait until all that was fed is hashed (the hasher holds no view of the body).
    pub async fn settle(&mut self) {
        self.wait_until(0).await;
    }

    /// `settle`, then the MD5 state of the body so far.
    pub async fn finish(mut self) -> LaneState {
        self.settle().await;
        std::mem::take(&mut self.job.borrow_mut().state)
    }

    /// Return once at most `bytes` wait for the hash.
    async fn wait_until(&mut self, bytes: usize) {
        std::future::poll_fn(|context| {
            {
                let mut job = self.job.borrow_mut();
                if job.waiting() <= bytes {
                    job.waiter = None;
                    return Poll::Ready(());
                }
                job.waits_for = bytes;
                job.waiter = Some(context.waker().clone());
            }
            // A stream waiting makes a batch due.
            self.hasher.wake_if_due();
            Poll::Pending
        })
        .await;
    }
}

impl Drop for BodyStream<'_> {
    fn drop(&mut self) {
        self.hasher.receiving.set(self.hasher.receiving.get() - 1);
        self.hasher
            .streams
            .borrow_mut()
            .retain(|job| !Rc::ptr_eq(job, &self.job));
        // The others may be all that receive now.
        self.hasher.wake_if_due();
    }
}

/// The most finished jobs a hasher keeps for reuse (one per stream a busy core runs at
/// once is plenty; more would only hold memory).
const SPARE_JOBS_MAX: usize = 256;

/// Waits for a job's batch, then takes its state and buffer back and leaves the emptied
/// job to the hasher for the next `update`.
struct Finished<'a> {
    hasher: &'a Hasher,
    /// `None` once the result was taken.
    job: Option<Rc<RefCell<Job>>>,
}

impl Future for Finished<'_> {
    type Output = (LaneState, Vec<u8>);

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(job) = self.job.take() else {
            panic!("Finished polled after it returned");
        };
        let output = {
            let mut inner = job.borrow_mut();
            if !inner.done {
                inner.waker = Some(context.waker().clone());
                None
            } else {
                Some((std::mem::take(&mut inner.state), std::mem::take(&mut inner.buffer)))
            }
        };
        let Some(output) = output else {
            self.job = Some(job);
            return Poll::Pending;
        };
        // Done: the hasher let go of it after its batch, so this is the only holder.
        let mut spare = self.hasher.spare.borrow_mut();
        if Rc::strong_count(&job) == 1 && spare.len() < SPARE_JOBS_MAX {
            spare.push(job);
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_body::SharedBody;
    use md5::{Digest, Md5};

    /// Each finished stream's message and digest.
    type Digests = Rc<RefCell<Vec<(Vec<u8>, [u8; 16])>>>;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Many streams on one core, fed in ragged pieces, joining and leaving at different
    /// times, through every kernel this CPU has: each digest equals md-5's.
    #[test]
    fn concurrent_streams_hash_as_one_stream_each() {
        for kernel in Kernel::ALL.into_iter().filter(|kernel| kernel.is_available()) {
            let hasher = Hasher::new(kernel);
            let local = tokio::task::LocalSet::new();
            let results: Digests = Rc::default();
            local.spawn_local(Rc::clone(&hasher).run());
            for stream in 0..40usize {
                let hasher = Rc::clone(&hasher);
                let results = Rc::clone(&results);
                local.spawn_local(async move {
                    let length = (stream * 7919) % 300_000 + stream;
                    let message: Vec<u8> = (0..length).map(|i| (i * 31 + stream) as u8).collect();
                    for _ in 0..stream % 5 {
                        tokio::task::yield_now().await;
                    }
                    let mut state = LaneState::new();
                    let mut buffer = message.clone();
                    let mut offset = 0;
                    let mut piece = 1 + stream * 13;
                    // Half the streams end through `finish` (their padding hashed in the
                    // batch's lanes beside other streams' chunks), half alone afterwards.
                    let finish_in_batch = stream % 2 == 0;
                    loop {
                        let end = (offset + piece).min(length);
                        if end == length && finish_in_batch {
                            let (digest, _) = hasher.finish(state, buffer, offset..end).await;
                            results.borrow_mut().push((message, digest));
                            return;
                        }
                        if offset == length {
                            break;
                        }
                        (state, buffer) = hasher.update(state, buffer, offset..end).await;
                        offset = end;
                        piece = piece * 3 % 70_001 + 1;
                    }
                    results.borrow_mut().push((message, state.finish()));
                });
            }
            runtime().block_on(local.run_until(async {
                while results.borrow().len() < 40 {
                    tokio::task::yield_now().await;
                }
            }));
            for (message, digest) in results.borrow().iter() {
                assert_eq!(digest[..], Md5::digest(message)[..], "{}", kernel.name());
            }
            let HashCounts { batches, chunks, .. } = hasher.counts();
            assert!(
                batches < chunks,
                "{}: chunks were batched ({batches} batches, {chunks} chunks)",
                kernel.name()
            );
        }
    }

    /// PUT bodies hashed while they arrive: streams fed in ragged pieces through shared
    /// buffers, joining and leaving at different times, some dropped half way, beside GET
    /// chunks; every finished body's state equals md-5's of its bytes, and the hasher let go
    /// of every buffer (each comes back as a `Vec`).
    #[test]
    fn bodies_hashed_while_they_arrive_equal_md5() {
        for kernel in Kernel::ALL.into_iter().filter(|kernel| kernel.is_available()) {
            let hasher = Hasher::new(kernel);
            let local = tokio::task::LocalSet::new();
            let results: Digests = Rc::default();
            let dropped = Rc::new(Cell::new(0));
            local.spawn_local(Rc::clone(&hasher).run());
            const STREAMS: usize = 24;
            for stream in 0..STREAMS {
                let hasher = Rc::clone(&hasher);
                let results = Rc::clone(&results);
                let dropped = Rc::clone(&dropped);
                local.spawn_local(async move {
                    let length = (stream * 104_729) % 3_000_000 + stream;
                    let message: Vec<u8> = (0..length).map(|i| (i * 17 + stream) as u8).collect();
                    for _ in 0..stream % 7 {
                        tokio::task::yield_now().await;
                    }
                    let mut body = SharedBody::new(Vec::with_capacity(length));
                    let mut hash = BodyStream::new(&hasher);
                    let mut piece = 1 + stream * 97;
                    while body.len() < length {
                        let end = (body.len() + piece).min(length);
                        body.extend_from_slice(&message[body.len()..end]);
                        hash.feed(body.arrived(body.len())).await;
                        if stream % 5 == 4 && body.len() > length / 2 {
                            // A request cut short: its stream and buffer go mid-body.
                            drop(hash);
                            dropped.set(dropped.get() + 1);
                            return;
                        }
                        if stream % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                        piece = piece * 7 % 300_007 + 1;
                    }
                    let state = hash.finish().await;
                    let Ok(vec) = body.take_vec() else {
                        panic!("the hasher holds no view once finished")
                    };
                    assert_eq!(vec, message);
                    results.borrow_mut().push((message, state.finish()));
                });
            }
            // GET-style chunks beside them.
            for get in 0..8usize {
                let hasher = Rc::clone(&hasher);
                let results = Rc::clone(&results);
                local.spawn_local(async move {
                    let message: Vec<u8> = (0..5000 + get * 999).map(|i| (i * 3 + get) as u8).collect();
                    let range = 0..message.len();
                    let (digest, _) = hasher.finish(LaneState::new(), message.clone(), range).await;
                    results.borrow_mut().push((message, digest));
                });
            }
            let cut = (0..STREAMS).filter(|stream| stream % 5 == 4).count();
            let expected = STREAMS - cut + 8;
            runtime().block_on(local.run_until(async {
                while results.borrow().len() + dropped.get() < expected + cut {
                    tokio::task::yield_now().await;
                }
            }));
            assert_eq!(results.borrow().len(), expected);
            for (message, digest) in results.borrow().iter() {
                assert_eq!(digest[..], Md5::digest(message)[..], "{}", kernel.name());
            }
            assert_eq!(hasher.receiving.get(), 0);
            assert!(hasher.streams.borrow().is_empty());
            let HashCounts { batches, chunks, .. } = hasher.counts();
            assert!(
                batches < chunks,
                "{}: {batches} batches, {chunks} chunks",
                kernel.name()
            );
        }
    }

    /// A request dropped while its chunk waits: the hasher still runs the batch safely and
    /// the others get their digests.
    #[test]
    fn a_dropped_request_does_not_disturb_the_batch() {
        let hasher = Hasher::new(Kernel::best());
        let local = tokio::task::LocalSet::new();
        local.spawn_local(Rc::clone(&hasher).run());
        let kept = local.block_on(&runtime(), async {
            let mut dropped = Box::pin(hasher.update(LaneState::new(), vec![1u8; 100_000], 0..100_000));
            // Polled once: its job is queued with its buffer, then the request goes away.
            std::future::poll_fn(|context| {
                assert!(dropped.as_mut().poll(context).is_pending());
                Poll::Ready(())
            })
            .await;
            drop(dropped);
            assert_eq!(hasher.pending.borrow().len(), 1);
            hasher.update(LaneState::new(), b"hello keep\n".to_vec(), 0..11).await
        });
        assert_eq!(kept.0.finish()[..], Md5::digest(b"hello keep\n")[..]);
        assert_eq!(kept.1, b"hello keep\n");
    }
}
