//! The runtime edge: per-core workers (`worker`), each with its own io_uring and listener,
//! and the per-connection loop (`connection`) that drives each connection's
//! `http::session::Session` through admission, routing and the handlers.

pub mod connection;
pub mod worker;
