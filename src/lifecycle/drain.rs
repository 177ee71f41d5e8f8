//! Drain, in one place. A process drains once (SIGTERM, SIGINT): `Drain` is that one
//! signal, shared by every thread: the supervisor raises it, `/metrics` reads it
//! (`keepring_draining`), each worker waits on it. Each core then opens its own `Gate`
//! (glommio's per-core gate is the model): connections on that core read it to answer
//! with `Connection: close` and to stop waiting for a next request. The phase is logged by
//! the supervisor (`phase=draining`, `phase=drained`) so tests can watch it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{watch, Notify};

/// The process's drain signal.
pub struct Drain {
    draining: AtomicBool,
    sender: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: AtomicBool::new(false),
            sender: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// Start draining; true the first time only.
    pub fn begin(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            self.sender.send_replace(true);
        }
        first
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain has begun (at once if it already has).
    pub async fn begun(&self) {
        let mut receiver = self.sender.subscribe();
        // An error means the sender is gone: the process is ending anyway.
        let _ = receiver.wait_for(|draining| *draining).await;
    }
}

/// One core's view of the drain: when it saw it begin, and a wake-up for the connections
/// waiting between requests.
#[derive(Default)]
pub struct Gate {
    began: Cell<Option<Instant>>,
    opened: Notify,
}

impl Gate {
    /// This core starts draining now.
    pub fn open(&self) {
        if self.began.get().is_none() {
            self.began.set(Some(Instant::now()));
        }
        self.opened.notify_waiters();
    }

    /// When this core began draining, if it has.
    pub fn began(&self) -> Option<Instant> {
        self.began.get()
    }

    /// Resolves when the gate opens (never, if it already has: check `began` first).
    pub async fn opened(&self) {
        self.opened.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_begins_once_and_wakes_waiters() {
        let drain = std::sync::Arc::new(Drain::default());
        let waiter = {
            let drain = drain.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime")
                    .block_on(drain.begun())
            })
        };
        assert!(!drain.is_draining());
        assert!(drain.begin());
        assert!(!drain.begin(), "a second SIGTERM changes nothing");
        waiter.join().expect("waiter woke");
        assert!(drain.is_draining());
    }

    #[test]
    fn a_gate_remembers_when_it_opened() {
        let gate = Gate::default();
        assert_eq!(gate.began(), None);
        gate.open();
        let first = gate.began();
        assert!(first.is_some());
        gate.open();
        assert_eq!(gate.began(), first);
    }
}
