//! Response heads. Every response carries the CORS headers keepstore sends (except on
//! `/metrics` and `/_health`), `X-Request-Id`, `Date` and an explicit framing header.

use std::borrow::Cow;

use crate::error::reason_phrase;

const CORS_HEADERS: &str = "Access-Control-Allow-Headers: Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes\r\n\
Access-Control-Allow-Methods: GET, HEAD, PUT, OPTIONS\r\n\
Access-Control-Allow-Origin: *\r\n\
Access-Control-Expose-Headers: X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed\r\n\
Access-Control-Max-Age: 86486400\r\n";

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
}

/// Everything a response head says, before it is serialised.
#[derive(Debug, Clone)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub framing: BodyFraming,
    pub content_type: Option<&'a str>,
    /// `Vary: X-Keep-Signature` (every answer on the block read route), first of the
    /// extra headers.
    pub vary_signature: bool,
    /// Extra headers, each `Name: value` without the line end.
    pub extra: Vec<Cow<'static, str>>,
    pub cors: bool,
    pub request_id: Option<&'a str>,
    pub close: bool,
    /// Say `Connection: keep-alive` (an HTTP/1.0 client that asked for it).
    pub keep_alive: bool,
    pub date: &'a str,
}

impl<'a> ResponseHead<'a> {
    pub fn new(status: u16, framing: BodyFraming, date: &'a str) -> Self {
        ResponseHead {
            status,
            framing,
            content_type: None,
            vary_signature: false,
            extra: Vec::new(),
            cors: true,
            request_id: None,
            close: false,
            keep_alive: false,
            date,
        }
    }

    /// Append the serialised head to `out` (by plain copies: no `core::fmt` on the path of
    /// every response).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(number.format(self.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.cors {
            out.extend_from_slice(CORS_HEADERS.as_bytes());
        }
        if self.vary_signature {
            out.extend_from_slice(b"Vary: X-Keep-Signature\r\n");
        }
        for header in &self.extra {
            line(out, &[header]);
        }
        if let Some(request_id) = self.request_id {
            line(out, &["X-Request-Id: ", request_id]);
        }
        line(out, &["Date: ", self.date]);
        match self.framing {
            BodyFraming::Length(length) => line(out, &["Content-Length: ", number.format(length)]),
            BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        if let Some(content_type) = self.content_type {
            line(out, &["Content-Type: ", content_type]);
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.keep_alive {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// One header line: `parts` one after the other, then CRLF.
fn line(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_cors_framing_and_close() {
        let mut head = ResponseHead::new(404, BodyFraming::Length(20), "Wed, 25 Nov 2026 08:50:57 GMT");
        head.request_id = Some("req-x");
        head.close = true;
        head.vary_signature = true;
        head.extra.push("X-Content-Type-Options: nosniff".into());
        let mut out = Vec::new();
        head.write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nAccess-Control-Allow-Headers: "));
        assert!(text.contains("\r\nAccess-Control-Max-Age: 86486400\r\n"));
        assert!(
            text.contains("\r\nVary: X-Keep-Signature\r\nX-Content-Type-Options: nosniff\r\nX-Request-Id: req-x\r\n")
        );
        assert!(text.ends_with("Content-Length: 20\r\nConnection: close\r\n\r\n"));
    }
}
