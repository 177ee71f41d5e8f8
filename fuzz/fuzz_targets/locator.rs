//! `locator::Locator::parse` and the route's hash tests on arbitrary text. Checks that
//! parse accepts exactly the language of a reference matcher written from keepstore's
//! rule (`^[0-9a-f]{32}(\+[0-9]+)?(\+[^0-9+][^+]*)*$`, the size fitting in u64), and that
//! a locator that parses re-formats from its parts to an equal string (to one that
//! parses to equal parts when its size has leading zeros).
#![no_main]

use keepring::limits::HASH_HEX_LEN;
use keepring::locator::{is_hash, is_lower_hex, starts_with_hash, Locator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let bytes = text.as_bytes();
    let hash_prefix = bytes.len() >= HASH_HEX_LEN && bytes[..HASH_HEX_LEN].iter().all(|&b| is_lower_hex(b));
    assert_eq!(starts_with_hash(text), hash_prefix);
    assert_eq!(is_hash(text), hash_prefix && bytes.len() == HASH_HEX_LEN);

    let parsed = Locator::parse(text);
    assert_eq!(parsed.is_ok(), reference_accepts(text), "{text:?}");
    let Ok(locator) = parsed else {
        return;
    };
    assert!(starts_with_hash(text));
    assert_eq!(locator.raw, text);
    assert_eq!(locator.hash, &text[..HASH_HEX_LEN]);
    let hints: Vec<&str> = locator.hints().collect();
    for hint in &hints {
        assert!(!hint.is_empty() && !hint.contains('+') && !hint.as_bytes()[0].is_ascii_digit());
    }

    let mut formatted = locator.hash.to_string();
    if let Some(size) = locator.size {
        formatted.push_str(&format!("+{size}"));
    }
    for hint in &hints {
        formatted.push('+');
        formatted.push_str(hint);
    }
    let size_text = text.split('+').nth(1).filter(|_| locator.size.is_some());
    let canonical_size = size_text.is_none_or(|size| size == "0" || !size.starts_with('0'));
    if canonical_size {
        assert_eq!(formatted, text);
    }
    let again = Locator::parse(&formatted).expect("a re-formatted locator parses");
    assert_eq!((again.hash, again.size), (locator.hash, locator.size));
    assert_eq!(again.hints().collect::<Vec<_>>(), hints);
});

/// keepstore's locator rule as a plain left-to-right match.
fn reference_accepts(text: &str) -> bool {
    let Some(rest) = text
        .get(..HASH_HEX_LEN)
        .filter(|hash| hash.bytes().all(is_lower_hex))
        .map(|_| &text[HASH_HEX_LEN..])
    else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('+') else {
        return false;
    };
    let mut parts = rest.split('+').peekable();
    if let Some(size) = parts.next_if(|part| part.starts_with(|c: char| c.is_ascii_digit())) {
        if !size.bytes().all(|b| b.is_ascii_digit()) || size.parse::<u64>().is_err() {
            return false;
        }
    }
    parts.all(|hint| {
        hint.chars()
            .next()
            .is_some_and(|first| first != '+' && !first.is_ascii_digit())
    })
}
