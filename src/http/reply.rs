//! What a handler answers: a whole `Response`, or a `Streamed` one whose body the
//! connection loop pulls piece by piece from a `BodySource` and the session writes
//! (length or chunked framing, the head leaving with the first piece). Handlers never
//! write to the socket.

use std::borrow::Cow;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;

use crate::error::RequestError;
use crate::http::response::BodyFraming;

/// A whole response, written by the session.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub extra: Vec<Cow<'static, str>>,
    pub body: Vec<u8>,
    /// `/metrics` and `/_health` carry no CORS headers (keepstore-observed.md).
    pub cors: bool,
}

/// A response whose body is produced while it is sent (a block, an index).
pub struct Streamed<'a> {
    pub status: u16,
    /// `Length` must be exactly what the source yields; `Chunked` is framed by the session.
    pub framing: BodyFraming,
    pub content_type: Option<&'static str>,
    pub extra: Vec<Cow<'static, str>>,
    pub body: Box<dyn BodySource + 'a>,
}

/// One piece of a streamed body.
pub enum Piece {
    /// Send `buffer[from..]`. Bytes before `from` are room the session may write the
    /// response head (or a chunk's size line) into, so both leave in one write.
    Bytes { buffer: Vec<u8>, from: usize },
    /// Send `buffer`, which holds the bytes of the file `fd` at `position`: the session
    /// may take them from the page cache (sendfile) instead. `fd` stays open until the
    /// source's next call.
    File { fd: RawFd, position: u64, buffer: Vec<u8> },
    /// Send `length` bytes of the file `fd` from `position` straight from the page cache
    /// (sendfile), with no copy in memory. Only a source told that the connection sends
    /// files (`Session::sends_files`) may yield one. `fd` stays open until the source's
    /// next call.
    FileRange { fd: RawFd, position: u64, length: u64 },
    /// The body is complete.
    End,
}

/// Where a streamed body comes from.
pub trait BodySource {
    /// The next piece when it is at hand without waiting (a piece read ahead, the end):
    /// then no future is made (a boxed future per piece costs a malloc of its whole
    /// state, which for a 4 KiB GET is most of what the allocator does). Else the
    /// buffer comes back for `next`.
    fn ready(&mut self, spent: Vec<u8>) -> Result<Result<Piece, RequestError>, Vec<u8>> {
        Err(spent)
    }

    /// The next piece. `spent` is the buffer of the piece before, written and ready for
    /// reuse (empty at the first call). An error before any byte left becomes an error
    /// response; after, the body is cut (the connection closes mid-body).
    fn next(&mut self, spent: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Piece, RequestError>> + '_>>;
}

/// What a handler did.
pub enum Reply<'a> {
    Full(Response),
    Stream(Streamed<'a>),
}

impl Reply<'_> {
    pub fn empty(status: u16) -> Self {
        Reply::Full(Response {
            status,
            content_type: None,
            extra: Vec::new(),
            body: Vec::new(),
            cors: true,
        })
    }

    pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Reply::Full(Response {
            status,
            content_type: Some(content_type),
            extra: Vec::new(),
            body,
            cors: true,
        })
    }
}

pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
