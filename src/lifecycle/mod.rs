//! Process lifecycle pieces below the supervisor (`crate::supervisor`): where listening
//! sockets come from (`listeners`, `handover`, `fdpass`), how a drain is signalled and
//! seen on each core (`drain`), and the phases the supervisor logs.

pub mod drain;
pub mod fdpass;
pub mod handover;
pub mod listeners;

/// The process lifecycle; each transition is logged once as `phase=<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
    Drained,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
        }
    }
}
