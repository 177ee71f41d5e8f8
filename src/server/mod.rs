//! The runtime edge: per-core workers (`worker`), each with its own io_uring and listener,
//! the per-connection HTTP loop (`connection`) and the request limiter every core shares
//! (`limiter`).

pub mod connection;
pub mod limiter;
pub mod worker;
