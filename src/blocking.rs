//! The one pool of helper threads that takes blocking work off the workers' cores (rule 6
//! of ARCHITECTURE.md): the syscalls io_uring has no operation for (`utimensat`,
//! `statvfs`, `getdents`) or that must stay one implementation with the chore threads'
//! (the trash rule: stat, rename, re-stat, unlink), and CPU-heavy parsing (a 64 MiB trash
//! list). A handler submits a closure and awaits its result through a oneshot channel,
//! which wakes the core's ring like any other I/O; a full queue is refused at once
//! (`PoolError::Full`, a 503) instead of making the core wait for room.
//!
//! `HELPER_THREADS` threads, started once, and at most `HELPER_QUEUE_JOBS_MAX` jobs
//! waiting (`limits`). Jobs should be short: a long task (an index walk) is submitted as a
//! series of bounded pieces, so it never holds a thread while its client is slow to read.
//! Nothing here knows what the jobs do.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the pool; clones share it. The threads end when every handle is gone and
/// the queue is empty.
#[derive(Clone)]
pub struct Pool {
    queue: Sender<Job>,
}

/// Why a job has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// `HELPER_QUEUE_JOBS_MAX` jobs already wait: the caller answers 503.
    Full,
    /// The job panicked (or the pool is gone): no result will come.
    Lost,
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Full => formatter.write_str("helper queue full"),
            PoolError::Lost => formatter.write_str("helper job lost"),
        }
    }
}

/// The result of a submitted job, to be awaited.
pub struct Pending<T>(oneshot::Receiver<T>);

impl<T> Pending<T> {
    pub async fn wait(self) -> Result<T, PoolError> {
        self.0.await.map_err(|_| PoolError::Lost)
    }
}

impl Pool {
    /// Start `threads` helper threads sharing a queue of at most `queue_jobs` jobs.
    pub fn start(threads: usize, queue_jobs: usize) -> io::Result<Pool> {
        assert!(threads > 0 && queue_jobs > 0, "a pool needs threads and room to queue");
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(queue_jobs);
        for id in 0..threads {
            let jobs = jobs.clone();
            // A failure here drops `queue`: the threads already started see the channel
            // closed and end.
            std::thread::Builder::new()
                .name(format!("keepring-helper-{id}"))
                .spawn(move || serve(&jobs))?;
        }
        Ok(Pool { queue })
    }

    /// Queue `work`; its result arrives through the returned `Pending`. Never waits: a
    /// full queue is `PoolError::Full`.
    pub fn submit<T, F>(&self, work: F) -> Result<Pending<T>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        self.detach(move || {
            // The caller may have gone (its client did): the result is then dropped.
            let _ = sender.send(work());
        })?;
        Ok(Pending(receiver))
    }

    /// `submit`, then wait for the result.
    pub async fn run<T, F>(&self, work: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.submit(work)?.wait().await
    }

    /// Queue `work` whose result nobody waits for (cleanup, a cache refresh).
    pub fn detach(&self, work: impl FnOnce() + Send + 'static) -> Result<(), PoolError> {
        match self.queue.try_send(Box::new(work)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(PoolError::Full),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Lost),
        }
    }
}

/// One helper thread: run jobs until every handle is dropped. A job that panics loses its
/// result (its caller sees `Lost`), not the thread.
fn serve(jobs: &Receiver<Job>) {
    for job in jobs {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a helper job panicked; its caller gets no result");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn run_on_a_ring<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio_uring::start(future)
    }

    #[test]
    fn results_come_back_to_an_io_uring_worker() {
        let pool = Pool::start(2, 4).expect("pool");
        let answers = run_on_a_ring(async {
            let first = pool.submit(|| 20 + 1).expect("room");
            let second = pool.run(|| std::thread::current().name().map(str::to_string)).await;
            (first.wait().await, second)
        });
        assert_eq!(answers.0, Ok(21));
        let name = answers.1.expect("ran").expect("named");
        assert!(name.starts_with("keepring-helper-"), "{name}");
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_a_panic_loses_only_its_job() {
        let pool = Pool::start(1, 2).expect("pool");
        let (started, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let busy = {
            let (started, release) = (started.clone(), release.clone());
            pool.submit(move || {
                started.wait();
                release.wait();
                "done"
            })
            .expect("room")
        };
        started.wait();
        // The thread is busy: two jobs fit in the queue, the third is refused.
        let queued: Vec<_> = (0..2).map(|index| pool.submit(move || index).expect("room")).collect();
        assert_eq!(pool.submit(|| 9).err(), Some(PoolError::Full));
        release.wait();
        run_on_a_ring(async {
            assert_eq!(busy.wait().await, Ok("done"));
            for (index, job) in queued.into_iter().enumerate() {
                assert_eq!(job.wait().await, Ok(index));
            }
            let panicked = pool.run(|| -> u8 { panic!("a job that fails") }).await;
            assert_eq!(panicked, Err(PoolError::Lost));
            assert_eq!(pool.run(|| "still serving").await, Ok("still serving"));
        });
    }
}
