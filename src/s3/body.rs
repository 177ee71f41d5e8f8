//! How an S3 response's body is delimited (RFC 9112 §6.3); a chunked one is decoded by
//! the shared `crate::chunked` decoder, a caller's bounded buffer at a time.

pub use crate::chunked::ChunkedDecoder;

/// What ends the body of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length`: this many bytes remain.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedDecoder),
    /// Neither: the body runs until the store closes the connection (never reused).
    UntilClose,
}
