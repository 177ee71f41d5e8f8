//! keepring: a wire-compatible Arvados keepstore, thread-per-core on io_uring.
//! The data path runs listener → session → route → handler → volume → reply → session;
//! ARCHITECTURE.md is the map (modules, one request's path, one restart's path, the rules
//! on which module may use which) and each module's `//!` tells its part.

pub mod allocator;
pub mod api;
pub mod blocking;
pub mod bufpool;
pub mod chores;
pub mod chunked;
pub mod cluster_config;
pub mod config;
pub mod digest;
pub mod error;
pub mod hasher;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod locator;
pub mod logging;
pub mod md5lanes;
pub mod metrics;
pub mod node;
pub mod s3;
pub mod scrub;
pub mod server;
pub mod shared_body;
pub mod signature;
pub mod supervisor;
pub mod tls;
pub mod volume;
pub mod volumes;

/// Big allocations page-aligned, so PUT bodies can be written with O_DIRECT (`allocator`).
#[global_allocator]
static ALLOCATOR: allocator::PageAlignedLarge = allocator::PageAlignedLarge;
