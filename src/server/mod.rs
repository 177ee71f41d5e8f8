//! The runtime edge: per-core workers (`worker`), each with its own io_uring and listener,
//! and the per-connection HTTP loop (`connection`).

pub mod connection;
pub mod worker;
