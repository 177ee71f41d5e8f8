//! Test harness shared by every integration test module.
//!
//! - `server`: `ServerBuilder` / `TestServer` start the real binary on an ephemeral port with
//!   temporary volumes, capture its stderr, and kill it on drop.
//! - `client`: a minimal blocking HTTP/1.1 client over `TcpStream` (keep-alive, raw bytes,
//!   pipelining, chunked bodies, responses cut short).
//! - `keep`: Keep-specific helpers: MD5, permission signatures, block paths, test data.
//! - `tls`: a self-signed certificate made in the test, and an OpenSSL client trusting it.
//! - `s3`: the Garage cluster S3-volume tests run against, and a plain boto3 client.
//! - `load`: a load generator (keep-alive pipelining or connection churn) that counts every
//!   failed request itself, for the restart tests.

#![allow(dead_code)]

pub mod client;
pub mod keep;
pub mod load;
pub mod s3;
pub mod server;
pub mod tls;

pub use client::{Request, Response};
pub use keep::*;
pub use server::{ServerBuilder, TestServer};
