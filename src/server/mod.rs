//! The runtime edge, one way down: per-core threads with their own io_uring and listeners
//! (`runtime`), the per-connection loop (`connection`) that drives each connection's
//! `http::session::Session` through admission, routing and the handlers, and one core's
//! server-side state (`worker`).

pub mod connection;
pub mod runtime;
pub mod worker;
