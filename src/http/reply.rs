//! What a handler answers: a whole `Response` the session writes, or word that the
//! handler streamed the answer itself through the session (`Reply::Sent`).

/// A whole response, written by the session.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub extra: Vec<String>,
    pub body: Vec<u8>,
    /// `/metrics` and `/_health` carry no CORS headers (keepstore-observed.md).
    pub cors: bool,
}

/// What a handler did.
#[derive(Debug)]
pub enum Reply {
    Full(Response),
    /// The handler wrote head and body itself (a streamed block or index).
    Sent {
        status: u16,
        bytes_out: u64,
    },
}

impl Reply {
    pub fn empty(status: u16) -> Reply {
        Reply::Full(Response {
            status,
            content_type: None,
            extra: Vec::new(),
            body: Vec::new(),
            cors: true,
        })
    }

    pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
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
