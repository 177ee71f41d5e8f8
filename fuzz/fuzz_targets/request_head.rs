//! `http::request::parse_head` on arbitrary bytes, as the session calls it: on a read
//! buffer that grows until a head is complete. Beyond "never panics" it checks that
//! a complete head is within `limits.rs`, that the bytes after it do not change it, that
//! every shorter prefix of it asks for more (so a head split across reads parses as one
//! read would), that what it keeps is what the head says, and that parsing it into the
//! `Head` of a connection's previous request (as the session does) leaves nothing of that
//! one behind.
#![no_main]

use keepring::http::request::{parse_head, parse_head_into, percent_decode, Framing, Head};
use keepring::limits::{HEADER_BYTES_MAX, HEADER_COUNT_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some((head, head_len))) => check_complete(data, &head, head_len),
        Ok(None) => {
            assert!(
                data.len() < HEADER_BYTES_MAX,
                "a partial head at the limit must be refused"
            );
            let prefix = &data[..data.len() / 2];
            assert!(
                matches!(parse_head(prefix), Ok(None)),
                "a prefix of a partial head is partial"
            );
        }
        Err(_) => {}
    }
});

fn check_complete(data: &[u8], head: &Head, head_len: usize) {
    assert!(head_len > 0 && head_len <= data.len());
    assert!(head_len <= HEADER_BYTES_MAX, "head of {head_len} bytes accepted");
    let head_bytes = &data[..head_len];
    assert!(head_bytes.ends_with(b"\n"), "a head ends with an empty line");
    let fields = header_fields(head_bytes);
    assert!(fields.len() <= HEADER_COUNT_MAX, "{} headers accepted", fields.len());
    let has_field = |name: &[u8]| fields.iter().any(|(field, _)| field.eq_ignore_ascii_case(name));

    // The head alone parses to the same result: what follows (a body, a next request)
    // is not read.
    let alone = parse_head(head_bytes).expect("the head alone parses");
    let (head_alone, len_alone) = alone.expect("the head alone is complete");
    assert_eq!(len_alone, head_len);
    assert_eq!(format!("{head_alone:?}"), format!("{head:?}"));

    // Parsed into the head of a previous request that set every field keepring keeps
    // (the session reuses one per connection, strings and all): the same result.
    let mut reused = previous_request();
    let reused_len = parse_head_into(head_bytes, &mut reused).expect("parses into a used head");
    assert_eq!(reused_len, Some(head_len));
    assert_eq!(format!("{reused:?}"), format!("{head:?}"), "something of the previous request stayed");

    // Every shorter prefix asks for more bytes: checked at the cut points most likely to
    // differ (inside the last CRLF, the middle) and one chosen by the input.
    let chosen = data.first().map_or(0, |&byte| byte as usize * head_len / 256);
    for cut in [head_len - 1, head_len.saturating_sub(2), head_len / 2, chosen] {
        if cut < head_len {
            let result = parse_head(&data[..cut]);
            assert!(matches!(result, Ok(None)), "prefix of {cut} bytes gave {result:?}");
        }
    }

    assert!(!head.method.is_empty() && head.method.bytes().all(is_token_byte));
    assert!(!head.path.contains('?'));
    let target = match head.query.is_empty() {
        true => head.path.clone(),
        false => format!("{}?{}", head.path, head.query),
    };
    assert!(
        contains(head_bytes, target.as_bytes()),
        "target {target:?} is not in the head"
    );
    match head.framing {
        Some(Framing::Chunked) => {
            let chunked = fields.iter().any(|(name, value)| {
                name.eq_ignore_ascii_case(b"transfer-encoding") && contains(&value.to_ascii_lowercase(), b"chunked")
            });
            assert!(chunked, "chunked framing without Transfer-Encoding: chunked");
            if has_field(b"content-length") {
                assert!(head.close, "Content-Length beside chunked must close the connection");
            }
        }
        Some(Framing::Length(_)) => assert!(has_field(b"content-length")),
        None => assert!(!has_field(b"transfer-encoding") && !has_field(b"content-length")),
    }
    if head.http10 {
        assert!(contains(head_bytes, b"HTTP/1.0"));
    }
    let kept = [
        &head.authorization,
        &head.cookie,
        &head.request_id,
        &head.storage_classes,
        &head.host,
        &head.forwarded_for,
    ];
    for value in kept.into_iter().flatten() {
        assert_eq!(value.trim(), value, "header values are kept trimmed");
        assert!(contains(head_bytes, value.as_bytes()));
    }
    for class in head.requested_storage_classes() {
        assert!(!class.is_empty() && !class.contains(',') && class.trim() == class);
    }
    for value in head.query_values("api_token") {
        assert!(value.len() <= head.query.len() * 3);
    }
    if !head.query.contains(['%', '+']) {
        assert_eq!(percent_decode(&head.query), head.query);
    }
}

/// The head of a request with every field `Head` keeps set.
fn previous_request() -> Head {
    let raw = b"PUT /previous?query=1 HTTP/1.0\r\nAuthorization: Bearer previous\r\nCookie: c=1\r\n\
X-Request-Id: req-previous\r\nX-Keep-Storage-Classes: hot\r\nHost: previous\r\nX-Forwarded-For: 10.0.0.1\r\n\
Content-Length: 5\r\nExpect: 100-continue\r\nConnection: keep-alive\r\n\r\n";
    match parse_head(raw) {
        Ok(Some((head, _))) => head,
        other => panic!("the previous request parses: {other:?}"),
    }
}

/// Header fields as (name, value), read apart from httparse: the lines after the request
/// line (and the empty lines httparse allows before it) up to the first empty line, each
/// split at its first ':'.
fn header_fields(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    let is_empty = |line: &&[u8]| line.is_empty() || *line == b"\r";
    let mut lines = head.split(|&byte| byte == b'\n').skip_while(is_empty);
    lines.next();
    lines
        .take_while(|line| !is_empty(line))
        .map(|line| {
            let colon = line.iter().position(|&byte| byte == b':').unwrap_or(line.len());
            (&line[..colon], line.get(colon + 1..).unwrap_or_default())
        })
        .collect()
}

/// RFC 9110 §5.6.2 tchar.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}
