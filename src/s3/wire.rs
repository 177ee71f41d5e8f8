//! HTTP/1.1 as the S3 client speaks it: the request head for a presigned URL and the
//! response head parsed with httparse into what the client needs (status, body framing,
//! keep-alive, the object's size, date and ETag). Pure, so it is tested without sockets.

use std::fmt::Write as _;
use std::time::SystemTime;

use url::Url;

use super::body::{ChunkedDecoder, Framing};
use super::error::S3Error;
use crate::limits::{S3_RESPONSE_HEADER_COUNT_MAX, S3_RESPONSE_HEAD_BYTES_MAX};

/// The request head for `url` (path and query, the signature in the query). `host` is the
/// Host header the URL was signed for. `content_length` is sent when the request has a
/// body (a PUT, even an empty one: S3 answers 411 to a PUT without it).
pub fn request_head(
    method: &str,
    url: &Url,
    host: &str,
    headers: &[(&str, &str)],
    content_length: Option<usize>,
) -> Vec<u8> {
    let mut head = String::with_capacity(512);
    head.push_str(method);
    head.push(' ');
    head.push_str(url.path());
    if let Some(query) = url.query() {
        head.push('?');
        head.push_str(query);
    }
    head.push_str(" HTTP/1.1\r\nHost: ");
    head.push_str(host);
    head.push_str("\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(length) = content_length {
        let _ = write!(head, "Content-Length: {length}\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// What the client keeps of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// HTTP/1.1 without `Connection: close`, and a body whose end is known.
    pub keep_alive: bool,
    pub content_length: Option<u64>,
    pub last_modified: Option<SystemTime>,
    /// Without its surrounding quotes.
    pub etag: Option<String>,
}

/// Parse a response head from the start of `bytes`: `Ok(None)` until it is complete, then
/// the head and its length. `to_head_request`: the response to a HEAD has no body
/// whatever its Content-Length says (RFC 9110 §9.3.2).
pub fn parse_response_head(bytes: &[u8], to_head_request: bool) -> Result<Option<(ResponseHead, usize)>, S3Error> {
    let mut slots = [httparse::EMPTY_HEADER; S3_RESPONSE_HEADER_COUNT_MAX];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if bytes.len() >= S3_RESPONSE_HEAD_BYTES_MAX => {
            return Err(S3Error::Protocol(format!(
                "response head over {S3_RESPONSE_HEAD_BYTES_MAX} bytes"
            )))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(S3Error::Protocol(format!("response head: {error}"))),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) {
        // Nothing the client sends asks for one (no Expect: 100-continue).
        return Err(S3Error::Protocol(format!("unexpected interim response {status}")));
    }
    let mut keep_alive = response.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut last_modified = None;
    let mut etag = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| S3Error::Protocol(format!("header {} is not UTF-8", header.name)))?
            .trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<u64>()
                .map_err(|_| S3Error::Protocol(format!("bad Content-Length {value:?}")))?;
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return Err(S3Error::Protocol("conflicting Content-Length headers".into()));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(S3Error::Protocol(format!("unsupported Transfer-Encoding {value:?}")));
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"))
            {
                keep_alive = false;
            }
        } else if header.name.eq_ignore_ascii_case("last-modified") {
            last_modified = httpdate::parse_http_date(value).ok();
        } else if header.name.eq_ignore_ascii_case("etag") {
            etag = Some(value.trim_matches('"').to_string());
        }
    }
    let framing = if to_head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        // RFC 9112 §6.3: chunked wins over a Content-Length, and such a message may have
        // been smuggled through something: do not reuse the connection.
        if content_length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked(ChunkedDecoder::default())
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    let head = ResponseHead {
        status,
        framing,
        keep_alive,
        content_length,
        last_modified,
        etag,
    };
    Ok(Some((head, length)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn writes_a_request_head() {
        let url = Url::parse("http://127.0.0.1:3900/bucket/recent/abc?X-Amz-Signature=00").expect("url");
        let head = request_head("PUT", &url, "127.0.0.1:3900", &[("Content-MD5", "xyz==")], Some(0));
        assert_eq!(
            String::from_utf8(head).expect("utf-8"),
            "PUT /bucket/recent/abc?X-Amz-Signature=00 HTTP/1.1\r\nHost: 127.0.0.1:3900\r\n\
             Content-MD5: xyz==\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn parses_an_object_head() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nETag: \"5eb63bbbe01eeed093cb22bb8f5acdc3\"\r\n\
Last-Modified: Thu, 02 Jan 2025 03:04:05 GMT\r\n\r\nhello world";
        assert_eq!(parse_response_head(&wire[..20], false).expect("partial is fine"), None);
        let (head, length) = parse_response_head(wire, false).expect("parses").expect("complete");
        assert_eq!(&wire[length..], b"hello world");
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(11));
        assert!(head.keep_alive);
        assert_eq!(head.etag.as_deref(), Some("5eb63bbbe01eeed093cb22bb8f5acdc3"));
        assert_eq!(
            head.last_modified,
            Some(UNIX_EPOCH + Duration::from_secs(1_735_787_045))
        );
        let (head, _) = parse_response_head(wire, true).expect("parses").expect("complete");
        assert_eq!(head.framing, Framing::Empty, "a HEAD's answer has no body");
        assert_eq!(head.content_length, Some(11));
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let parse = |wire: &[u8]| parse_response_head(wire, false).expect("parses").expect("complete").0;
        let chunked = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked(ChunkedDecoder::default()));
        assert!(chunked.keep_alive);
        let both = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(both.framing, Framing::Chunked(_)));
        assert!(!both.keep_alive);
        let close = parse(b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!close.keep_alive);
        let until_close = parse(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
        let old = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!old.keep_alive);
        assert_eq!(parse(b"HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Empty);
    }

    #[test]
    fn refuses_malformed_heads() {
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\n", false).is_err());
        assert!(parse_response_head(b"garbage\r\n\r\n", false).is_err());
        let endless = vec![b'a'; S3_RESPONSE_HEAD_BYTES_MAX];
        let mut wire = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        wire.extend_from_slice(&endless);
        assert!(parse_response_head(&wire, false).is_err());
    }
}
