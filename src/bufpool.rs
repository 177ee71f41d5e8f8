//! Block buffers: a byte budget shared by every worker (`--max-buffers` × 64 MiB, as
//! keepstore's `MaxKeepBlobBuffers`) and per-worker free lists of chunk buffers.
//! A request reserves only what it holds (a streaming GET one chunk, a PUT its body), so a
//! small block never pins 64 MiB. When the budget is spent a request waits up to
//! `BUFFER_WAIT_MS_MAX` and then gets 503. The budget is one atomic: no lock is shared.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::RequestError;
use crate::limits::{BUFFER_WAIT_MS_MAX, CHUNK_BYTES, FREE_CHUNKS_PER_WORKER_MAX, RESPONSE_HEAD_BYTES_MAX};

/// Capacity of one chunk buffer: a response head plus one chunk of block data.
pub const CHUNK_BUFFER_BYTES: usize = RESPONSE_HEAD_BYTES_MAX + CHUNK_BYTES;

#[derive(Debug)]
pub struct BufferBudget {
    total_bytes: u64,
    available_bytes: AtomicU64,
}

impl BufferBudget {
    pub fn new(total_bytes: u64) -> Arc<Self> {
        Arc::new(BufferBudget {
            total_bytes,
            available_bytes: AtomicU64::new(total_bytes),
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn in_use_bytes(&self) -> u64 {
        self.total_bytes - self.available_bytes.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.available_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                available.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        let before = self.available_bytes.fetch_add(bytes, Ordering::AcqRel);
        assert!(
            before + bytes <= self.total_bytes,
            "buffer budget returned more than was taken"
        );
    }
}

/// Bytes of the budget held by one request; returned when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Lease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// One worker's view of the budget and its own free chunk buffers (`!Send` by design).
pub struct BufferPool {
    budget: Arc<BufferBudget>,
    free_chunks: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new(budget: Arc<BufferBudget>) -> Self {
        BufferPool {
            budget,
            free_chunks: RefCell::new(Vec::new()),
        }
    }

    /// Reserve `bytes`, waiting up to `BUFFER_WAIT_MS_MAX` for other requests to finish.
    pub async fn lease(&self, bytes: u64) -> Result<Lease, RequestError> {
        self.wait_for(bytes).await?;
        Ok(Lease {
            budget: self.budget.clone(),
            bytes,
        })
    }

    /// Reserve `more` bytes on top of an existing lease (a chunked body that keeps coming).
    pub async fn grow(&self, lease: &mut Lease, more: u64) -> Result<(), RequestError> {
        self.wait_for(more).await?;
        lease.bytes += more;
        Ok(())
    }

    async fn wait_for(&self, bytes: u64) -> Result<(), RequestError> {
        if bytes > self.budget.total_bytes {
            return Err(RequestError::Busy);
        }
        let deadline = Instant::now() + Duration::from_millis(BUFFER_WAIT_MS_MAX);
        // Releases happen on any core; polling every millisecond keeps this lock-free and
        // costs nothing while the budget is not exhausted.
        while !self.budget.try_take(bytes) {
            if Instant::now() >= deadline {
                return Err(RequestError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// An empty buffer of `CHUNK_BUFFER_BYTES` capacity (the caller holds a lease for it).
    pub fn chunk(&self) -> Vec<u8> {
        match self.free_chunks.borrow_mut().pop() {
            Some(buffer) => buffer,
            None => Vec::with_capacity(CHUNK_BUFFER_BYTES),
        }
    }

    /// Give a chunk buffer back for reuse; other sizes go back to the allocator.
    pub fn recycle(&self, mut buffer: Vec<u8>) {
        let mut free = self.free_chunks.borrow_mut();
        if buffer.capacity() == CHUNK_BUFFER_BYTES && free.len() < FREE_CHUNKS_PER_WORKER_MAX {
            buffer.clear();
            free.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_returned() {
        let budget = BufferBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(60));
        assert_eq!(budget.in_use_bytes(), 60);
        budget.give(60);
        assert!(budget.try_take(100));
    }

    #[test]
    fn lease_waits_then_answers_busy() {
        tokio_uring::start(async {
            let pool = BufferPool::new(BufferBudget::new(10));
            let held = pool.lease(10).await.unwrap();
            assert!(
                matches!(pool.lease(11).await, Err(RequestError::Busy)),
                "larger than the budget"
            );
            drop(held);
            let mut lease = pool.lease(4).await.unwrap();
            pool.grow(&mut lease, 6).await.unwrap();
            assert_eq!(lease.bytes(), 10);
        });
    }
}
