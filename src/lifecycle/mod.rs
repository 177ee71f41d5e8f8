//! Process lifecycle: where listening sockets come from (`listeners`, `handover`,
//! `fdpass`) and the supervisor on the main thread that starts the workers, announces
//! readiness, turns signals into a drain and decides the exit code (`supervisor`).

pub mod fdpass;
pub mod handover;
pub mod listeners;
pub mod supervisor;

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
