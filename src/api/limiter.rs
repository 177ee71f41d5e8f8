//! keepstore's request limiter (`API.MaxConcurrentRequests`, `API.MaxQueuedRequests`;
//! sdk/go/httpserver/request_limiter.go): at most `max_active` requests are served at
//! once, up to `max_queued` more wait for a slot in arrival order, and past that a request
//! is answered 503 with an empty body at once. `/metrics`, `/metrics.json` and
//! `/_health/ping` are never limited (keepstore serves them outside its limiter too).
//!
//! The slots are one semaphore shared by every core. Its fast path is one atomic
//! compare-and-swap on admission and one add on release, and its lock is taken only when
//! a request must wait, which happens only under overload. With no limit configured
//! (`max_active` 0, the default without a cluster config) admission touches nothing
//! shared at all. Not built: keepstore's priorities (requests with an `Origin` header
//! first); every request here has the normal priority.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

pub struct RequestLimiter {
    max_active: usize,
    max_queued: usize,
    slots: Semaphore,
    queued: AtomicUsize,
}

/// A request's slot, given back when dropped; `None` inside when nothing is limited.
pub struct Admitted<'a>(#[allow(dead_code)] Option<SemaphorePermit<'a>>);

/// The queue was full: answer 503.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected;

impl RequestLimiter {
    /// `max_active` 0: no limit.
    pub fn new(max_active: usize, max_queued: usize) -> Self {
        RequestLimiter {
            max_active,
            max_queued,
            slots: Semaphore::new(max_active.min(Semaphore::MAX_PERMITS)),
            queued: AtomicUsize::new(0),
        }
    }

    pub fn unlimited() -> Self {
        RequestLimiter::new(0, 0)
    }

    pub fn is_limited(&self) -> bool {
        self.max_active > 0
    }

    /// A slot now, a slot after waiting in the queue, or `Rejected` when the queue is full.
    pub async fn admit(&self) -> Result<Admitted<'_>, Rejected> {
        if !self.is_limited() {
            return Ok(Admitted(None));
        }
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(Admitted(Some(permit)));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejected);
        }
        // Leaves the queue count however this ends (a slot, or the connection dropped).
        let _waiting = Waiting(&self.queued);
        match self.slots.acquire().await {
            Ok(permit) => Ok(Admitted(Some(permit))),
            Err(_) => Err(Rejected),
        }
    }

    pub fn max_active(&self) -> usize {
        self.max_active
    }

    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn ready<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(value) => Some(value),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn slots_then_queue_then_rejection() {
        let limiter = RequestLimiter::new(2, 1);
        let first = ready(limiter.admit()).unwrap().unwrap();
        let _second = ready(limiter.admit()).unwrap().unwrap();
        let mut waiting = Box::pin(limiter.admit());
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        assert!(waiting.as_mut().poll(&mut context).is_pending(), "third waits");
        assert_eq!(limiter.queued(), 1);
        assert_eq!(
            ready(limiter.admit()).unwrap().err(),
            Some(Rejected),
            "fourth: queue full"
        );
        drop(first);
        assert!(matches!(
            waiting.as_mut().poll(&mut context),
            std::task::Poll::Ready(Ok(_))
        ));
        assert_eq!(limiter.queued(), 0);
    }

    #[test]
    fn a_zero_queue_rejects_at_once_and_unlimited_admits_all() {
        let limiter = RequestLimiter::new(1, 0);
        let _held = ready(limiter.admit()).unwrap().unwrap();
        assert_eq!(ready(limiter.admit()).unwrap().err(), Some(Rejected));
        let open = RequestLimiter::unlimited();
        let all: Vec<_> = (0..1000).map(|_| ready(open.admit()).unwrap().unwrap()).collect();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_queue() {
        let limiter = RequestLimiter::new(1, 1);
        let _held = ready(limiter.admit()).unwrap().unwrap();
        let mut waiting = Box::pin(limiter.admit());
        let waker = std::task::Waker::noop();
        assert!(waiting
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_pending());
        drop(waiting);
        assert_eq!(limiter.queued(), 0);
    }
}
