//! Parse one request head with httparse into an owned `Head`, keeping only what keepring
//! acts on. Bounded by `HEADER_BYTES_MAX` and `HEADER_COUNT_MAX`.

use crate::error::RequestError;
use crate::limits::{HEADER_BYTES_MAX, HEADER_COUNT_MAX};

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Default)]
pub struct Head {
    pub method: String,
    /// Path without the query string, not percent-decoded (locators never need it).
    pub path: String,
    pub query: String,
    pub framing: Option<Framing>,
    pub expect_continue: bool,
    /// The client asked to close after this response (or spoke HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// HTTP/1.0: keep-alive must be announced in the response to be kept.
    pub http10: bool,
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    pub request_id: Option<String>,
    pub storage_classes: Option<String>,
    /// `Host` and `X-Forwarded-For`, for the JSON request log (`reqHost`,
    /// `reqForwardedFor`).
    pub host: Option<String>,
    pub forwarded_for: Option<String>,
}

/// `Ok(None)`: the head is not complete yet, read more.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, RequestError> {
    let mut head = Head::default();
    Ok(parse_head_into(bytes, &mut head)?.map(|length| (head, length)))
}

/// `parse_head` into `head`, which a connection keeps from one request to the next (its
/// method, path and query keep their allocations); returns the head's length, or
/// `Ok(None)` (`head` untouched) when it is not complete yet.
pub fn parse_head_into(bytes: &[u8], head: &mut Head) -> Result<Option<usize>, RequestError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= HEADER_BYTES_MAX => return Err(RequestError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(_) => return Err(RequestError::Malformed("malformed request head")),
    };
    if head_len > HEADER_BYTES_MAX {
        return Err(RequestError::HeadTooLarge);
    }
    fill_head(&request, head)?;
    Ok(Some(head_len))
}

/// `head` := what a completely parsed request head says.
fn fill_head(request: &httparse::Request, head: &mut Head) -> Result<(), RequestError> {
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let version_minor = request.version.unwrap_or(1);
    // The last request's strings, refilled rather than allocated again.
    let mut spare = Spare([
        head.authorization.take(),
        head.cookie.take(),
        head.request_id.take(),
        head.storage_classes.take(),
        head.host.take(),
        head.forwarded_for.take(),
    ]);
    let mut method = std::mem::take(&mut head.method);
    let mut path_text = std::mem::take(&mut head.path);
    let mut query_text = std::mem::take(&mut head.query);
    for (text, value) in [
        (&mut method, request.method.unwrap_or("")),
        (&mut path_text, path),
        (&mut query_text, query),
    ] {
        text.clear();
        text.push_str(value);
    }
    *head = Head {
        method,
        path: path_text,
        query: query_text,
        close: version_minor == 0,
        http10: version_minor == 0,
        ..Head::default()
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_codings: Vec<String> = Vec::new();
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| RequestError::Malformed("header value is not UTF-8"))?
            .trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(merge_content_length(content_length, value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Every Transfer-Encoding field counts, in order (RFC 9110 §5.3).
            transfer_codings.extend(value.split(',').map(|coding| coding.trim().to_ascii_lowercase()));
        } else {
            apply_header(head, name, value, version_minor, &mut spare);
        }
    }
    head.framing = body_framing(&transfer_codings, content_length)?;
    // RFC 9112 §6.3: a message with both Transfer-Encoding and Content-Length must not
    // leave the connection open for a next request.
    if head.framing == Some(Framing::Chunked) && content_length.is_some() {
        head.close = true;
    }
    Ok(())
}

/// The Content-Length of a request after one more such field: repeats must agree.
fn merge_content_length(previous: Option<u64>, value: &str) -> Result<u64, RequestError> {
    let parsed = parse_content_length(value)?;
    if previous.is_some_and(|previous| previous != parsed) {
        return Err(RequestError::Malformed("conflicting Content-Length headers"));
    }
    Ok(parsed)
}

/// The optional header strings of a connection's previous request (in `Head`'s field
/// order: authorization, cookie, request id, storage classes, host, forwarded for), whose
/// allocations the next request's values take over.
struct Spare([Option<String>; 6]);

impl Spare {
    /// `value` in the spare string `slot` (or a new one).
    fn take(&mut self, slot: usize, value: &str) -> String {
        let mut text = self.0[slot].take().unwrap_or_default();
        text.clear();
        text.push_str(value);
        text
    }
}

/// Record one non-framing header field keepring acts on in `head` (the first of repeats wins).
fn apply_header(head: &mut Head, name: &str, value: &str, version_minor: u8, spare: &mut Spare) {
    if name.eq_ignore_ascii_case("expect") {
        head.expect_continue = value.eq_ignore_ascii_case("100-continue");
    } else if name.eq_ignore_ascii_case("connection") {
        for option in value.split(',').map(str::trim) {
            if option.eq_ignore_ascii_case("close") {
                head.close = true;
            } else if option.eq_ignore_ascii_case("keep-alive") && version_minor == 0 {
                head.close = false;
            }
        }
    } else if name.eq_ignore_ascii_case("authorization") {
        head.authorization.get_or_insert_with(|| spare.take(0, value));
    } else if name.eq_ignore_ascii_case("cookie") {
        head.cookie.get_or_insert_with(|| spare.take(1, value));
    } else if name.eq_ignore_ascii_case("x-request-id") {
        head.request_id.get_or_insert_with(|| spare.take(2, value));
    } else if name.eq_ignore_ascii_case("x-keep-storage-classes") {
        head.storage_classes.get_or_insert_with(|| spare.take(3, value));
    } else if name.eq_ignore_ascii_case("host") {
        head.host.get_or_insert_with(|| spare.take(4, value));
    } else if name.eq_ignore_ascii_case("x-forwarded-for") {
        head.forwarded_for.get_or_insert_with(|| spare.take(5, value));
    }
}

/// How the body is delimited, from the Transfer-Encoding codings and the Content-Length.
fn body_framing(transfer_codings: &[String], content_length: Option<u64>) -> Result<Option<Framing>, RequestError> {
    if transfer_codings.is_empty() {
        return Ok(content_length.map(Framing::Length));
    }
    // Only a body that is exactly chunked is understood: anything else (gzip, chunked
    // not last, identity) is refused rather than framed differently from a proxy in
    // front of us (request smuggling, RFC 9112 §6.1).
    if transfer_codings != ["chunked"] {
        return Err(RequestError::Malformed("unsupported Transfer-Encoding"));
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    Ok(Some(Framing::Chunked))
}

fn parse_content_length(value: &str) -> Result<u64, RequestError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::Malformed("invalid Content-Length"));
    }
    value
        .parse()
        .map_err(|_| RequestError::Malformed("invalid Content-Length"))
}

impl Head {
    /// Comma-separated storage classes, trimmed, empties dropped (keep-protocol.md §8).
    pub fn requested_storage_classes(&self) -> Vec<String> {
        self.storage_classes
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|class| !class.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every value of query parameter `name`, in order, percent-decoded.
    pub fn query_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = String> + 'a {
        self.query.split('&').filter_map(move |pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// Decode `%XX` and `+` in a query value; malformed escapes are kept literally.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%' && index + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[index + 1..index + 3]).ok())
            .flatten()
            .and_then(|digits| u8::from_str_radix(digits, 16).ok());
        match (byte, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                index += 1;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection parses every request into one `Head`: each request sees only its
    /// own fields (none left over from the one before), and strings are refilled in
    /// their old allocations.
    #[test]
    fn a_reused_head_holds_only_the_latest_request() {
        let mut head = Head::default();
        let first = b"PUT /abc?x=1 HTTP/1.1\r\nHost: one\r\nAuthorization: Bearer t1\r\nX-Request-Id: req-1\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse_head_into(first, &mut head).unwrap(), Some(first.len()));
        assert_eq!(
            (head.method.as_str(), head.path.as_str(), head.query.as_str()),
            ("PUT", "/abc", "x=1")
        );
        assert_eq!(head.framing, Some(Framing::Length(3)));
        let host_allocation = head.host.as_ref().map(|host| host.as_ptr());
        let path_allocation = head.path.as_ptr();
        let second = b"GET /def HTTP/1.1\r\nHost: two\r\n\r\n";
        assert_eq!(
            parse_head_into(&second[..10], &mut head).unwrap(),
            None,
            "incomplete: untouched"
        );
        assert_eq!(head.method, "PUT");
        assert_eq!(parse_head_into(second, &mut head).unwrap(), Some(second.len()));
        assert_eq!(
            (head.method.as_str(), head.path.as_str(), head.query.as_str()),
            ("GET", "/def", "")
        );
        assert_eq!(head.host.as_deref(), Some("two"));
        assert_eq!(
            (head.authorization.as_deref(), head.request_id.as_deref()),
            (None, None)
        );
        assert_eq!(head.framing, None);
        assert_eq!(head.host.as_ref().map(|host| host.as_ptr()), host_allocation);
        assert_eq!(head.path.as_ptr(), path_allocation);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn parses_fields_and_leaves_the_body() {
        let raw = b"PUT /abc?api_token=t%2Fx&prefix=1 HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\nAuthorization: Bearer x\r\nX-Keep-Storage-Classes: a, ,b\r\n\r\nhello";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"hello");
        assert_eq!(head.method, "PUT");
        assert_eq!(head.path, "/abc");
        assert_eq!(head.framing, Some(Framing::Length(5)));
        assert!(head.expect_continue);
        assert!(!head.close);
        assert_eq!(head.query_values("api_token").collect::<Vec<_>>(), ["t/x"]);
        assert_eq!(head.requested_storage_classes(), ["a", "b"]);
    }

    #[test]
    fn chunked_overrides_length_and_http10_closes() {
        let raw = b"PUT /x HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (head, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.framing, Some(Framing::Chunked));
        assert!(head.close);
    }

    #[test]
    fn length_and_chunked_together_close_the_connection() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (head, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.framing, Some(Framing::Chunked));
        assert!(head.close, "no next request may be read from such a connection");
    }

    #[test]
    fn any_transfer_coding_but_plain_chunked_is_refused() {
        for codings in [
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            "Transfer-Encoding: chunked, identity",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ] {
            let raw = format!("PUT /x HTTP/1.1\r\n{codings}\r\nContent-Length: 0\r\n\r\n");
            assert!(
                matches!(parse_head(raw.as_bytes()), Err(RequestError::Malformed(_))),
                "{codings}"
            );
        }
    }

    #[test]
    fn bad_lengths_and_oversized_heads_are_refused() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(parse_head(raw), Err(RequestError::Malformed(_))));
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(parse_head(raw), Err(RequestError::Malformed(_))));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(HEADER_BYTES_MAX + 10, b'a');
        assert!(matches!(parse_head(&huge), Err(RequestError::HeadTooLarge)));
    }

    #[test]
    fn repeated_content_lengths_must_agree() {
        assert_eq!(merge_content_length(None, "5").unwrap(), 5);
        assert_eq!(merge_content_length(Some(5), "5").unwrap(), 5);
        assert!(matches!(
            merge_content_length(Some(5), "6"),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn keep_alive_reopens_only_an_http10_connection() {
        let mut http10 = Head {
            close: true,
            ..Head::default()
        };
        apply_header(
            &mut http10,
            "Connection",
            "Keep-Alive",
            0,
            &mut Spare(Default::default()),
        );
        assert!(!http10.close);
        apply_header(
            &mut http10,
            "connection",
            "keep-alive, close",
            0,
            &mut Spare(Default::default()),
        );
        assert!(http10.close);
        let mut http11 = Head {
            close: true,
            ..Head::default()
        };
        apply_header(
            &mut http11,
            "Connection",
            "keep-alive",
            1,
            &mut Spare(Default::default()),
        );
        assert!(http11.close);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }
}
