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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::md5lanes::{Kernel, LaneState};

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
    wake: Notify,
    /// Batches run, chunks hashed in them and their bytes, for `/metrics`.
    counts: Cell<HashCounts>,
}

/// What one core's hasher has done since it started: `chunks / batches` is how many
/// streams a kernel call advanced on average.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashCounts {
    pub batches: u64,
    pub chunks: u64,
    pub bytes: u64,
}

impl Hasher {
    pub fn new(kernel: Kernel) -> Rc<Hasher> {
        Rc::new(Hasher {
            kernel,
            pending: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
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
            self.run_batch();
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

    /// Hash every pending chunk in one batch and wake their requests.
    fn run_batch(&self) {
        let mut jobs = std::mem::take(&mut *self.pending.borrow_mut());
        if jobs.is_empty() {
            return;
        }
        let mut borrowed: Vec<_> = jobs.iter().map(|job| job.borrow_mut()).collect();
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
            self.kernel.update_batch(&mut batch);
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
            self.kernel.update_batch(&mut batch);
        }
        let bytes: usize = borrowed.iter().map(|job| job.range.len()).sum();
        let counts = self.counts.get();
        self.counts.set(HashCounts {
            batches: counts.batches + 1,
            chunks: counts.chunks + borrowed.len() as u64,
            bytes: counts.bytes + bytes as u64,
        });
        for job in borrowed.iter_mut() {
            job.done = true;
            if let Some(waker) = job.waker.take() {
                waker.wake();
            }
        }
        drop(borrowed);
        // The queue's allocation serves the next tick (nothing was queued meanwhile: this
        // runs without yielding).
        jobs.clear();
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            *pending = jobs;
        }
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
