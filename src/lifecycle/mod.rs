//! Process lifecycle: binding the listeners (`listeners`) and the supervisor that starts
//! the workers, announces readiness and handles signals (`supervisor`).

pub mod listeners;
pub mod supervisor;
