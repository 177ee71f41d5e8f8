//! The little XML the S3 client reads: error documents (`<Error><Code>`), ListObjectsV2
//! pages and CopyObject results. S3 writes these flat, without attributes on the elements
//! read here, namespaces on inner elements or CDATA, so an element is found by its start
//! and end tags and its text unescaped (the five named entities and numeric references,
//! XML 1.0 §4.6 and §4.1). Pure, so it is tested without a store.

use std::time::SystemTime;

/// Text of each `<name>…</name>` in `xml`, in order, still escaped. Elements read here do
/// not nest in themselves; an empty `<name/>` gives "".
pub fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let empty = format!("<{name}/>");
    let mut found = Vec::new();
    let mut rest = xml;
    loop {
        let next_open = rest.find(&open);
        let next_empty = rest.find(&empty);
        match (next_open, next_empty) {
            (Some(at), empty_at) if empty_at.is_none_or(|empty_at| at < empty_at) => {
                let inner = &rest[at + open.len()..];
                let Some(end) = inner.find(&close) else { break };
                found.push(&inner[..end]);
                rest = &inner[end + close.len()..];
            }
            (_, Some(empty_at)) => {
                found.push("");
                rest = &rest[empty_at + empty.len()..];
            }
            (None, None) => break,
            // The guard above fails only when an empty element comes first.
            (Some(_), None) => break,
        }
    }
    found
}

/// Unescaped text of the first `<name>` in `xml`.
pub fn text(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|raw| unescape(raw))
}

/// XML character data with its entity and character references replaced. An unknown or
/// malformed reference is kept as written.
pub fn unescape(raw: &str) -> String {
    if !raw.contains('&') {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let reference = &rest[1..end];
        let replacement = match reference {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => reference
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| reference.strip_prefix('#').map(|decimal| decimal.parse::<u32>()))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match replacement {
            Some(character) => {
                out.push(character);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An S3 timestamp in XML (ISO 8601 / RFC 3339, `2025-01-02T03:04:05.678Z`).
pub fn timestamp(text: &str) -> Option<SystemTime> {
    text.trim().parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// The `<Code>` and `<Message>` of an S3 error document; empty strings when absent.
pub fn error_code_and_message(xml: &str) -> (String, String) {
    (
        text(xml, "Code").unwrap_or_default(),
        text(xml, "Message").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn finds_each_element_in_order() {
        let xml = "<A><Key>one</Key><Size>1</Size></A><A><Key>two &amp; three</Key><Key/></A>";
        assert_eq!(elements(xml, "Key"), vec!["one", "two &amp; three", ""]);
        assert_eq!(elements(xml, "A").len(), 2);
        assert_eq!(text(xml, "Size").as_deref(), Some("1"));
        assert_eq!(text(xml, "Missing"), None);
        // A tag whose name only starts like the one sought is not it.
        assert_eq!(elements("<KeyCount>3</KeyCount>", "Key"), Vec::<&str>::new());
    }

    #[test]
    fn unescapes_entities_and_character_references() {
        assert_eq!(
            unescape("a &lt;b&gt; &quot;c&quot; &apos;d&apos; &amp;e"),
            "a <b> \"c\" 'd' &e"
        );
        assert_eq!(unescape("&#65;&#x42;&#x1F600;"), "AB\u{1F600}");
        assert_eq!(unescape("&bogus; & alone"), "&bogus; & alone");
    }

    #[test]
    fn parses_s3_timestamps() {
        let expected = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(timestamp("2025-01-02T03:04:05.678Z"), Some(expected));
        assert_eq!(timestamp("not a date"), None);
    }

    #[test]
    fn reads_an_error_document() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match</Message><Resource>/b/k</Resource></Error>"#;
        assert_eq!(
            error_code_and_message(xml),
            ("BadDigest".into(), "The Content-MD5 you specified did not match".into())
        );
        assert_eq!(error_code_and_message(""), (String::new(), String::new()));
    }
}
