//! Keep locators: `hash[+size][+hint...]`, parsed by the rules of keepstore 3.x
//! (keep-protocol.md §1). Pure: no I/O, no clock.

use crate::limits::HASH_HEX_LEN;

/// A parsed block locator. Only the parts keepring acts on are kept; the raw text is kept
/// too because the permission signature check looks at the whole string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator<'a> {
    pub hash: &'a str,
    pub size: Option<u64>,
    pub raw: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLocator;

/// True when `text` is exactly 32 lowercase hex digits (uppercase is not a Keep hash).
pub fn is_hash(text: &str) -> bool {
    text.len() == HASH_HEX_LEN && starts_with_hash(text)
}

/// True when `text` starts with 32 lowercase hex digits (the route test of keepstore 3.x:
/// `/{[0-9a-f]{32}.*}`).
pub fn starts_with_hash(text: &str) -> bool {
    match text.as_bytes().first_chunk::<HASH_HEX_LEN>() {
        // Every byte tested without an early exit: a few vector instructions for the 32
        // (every GET and PUT checks a hash twice: its route, then its locator).
        Some(digits) => digits.iter().fold(true, |all, &byte| all & is_lower_hex(byte)),
        None => false,
    }
}

pub fn is_lower_hex(byte: u8) -> bool {
    (byte.wrapping_sub(b'0') < 10) | (byte.wrapping_sub(b'a') < 6)
}

/// The `+`-separated parts of `text`, split by a plain byte loop (`str::split` with a
/// pattern sets up a memchr search, which costs more than these short texts).
fn plus_parts(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|byte| byte == b'+') {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

impl<'a> Locator<'a> {
    /// Parse as keepstore's `getLocatorInfo`: the hash part is exactly 32 lowercase hex,
    /// no part is empty, the second part is the size when it is all digits, and any later
    /// part starting with a digit is an error. Hint contents are not checked here.
    pub fn parse(raw: &'a str) -> Result<Self, InvalidLocator> {
        let mut parts = plus_parts(raw);
        let hash = parts.next().ok_or(InvalidLocator)?;
        if !is_hash(hash) {
            return Err(InvalidLocator);
        }
        let mut size = None;
        for (index, part) in parts.enumerate() {
            if part.is_empty() {
                return Err(InvalidLocator);
            }
            let starts_with_digit = part.as_bytes()[0].is_ascii_digit();
            if index == 0 && starts_with_digit {
                size = Some(parse_decimal(part).ok_or(InvalidLocator)?);
            } else if starts_with_digit {
                return Err(InvalidLocator);
            }
        }
        Ok(Locator { hash, size, raw })
    }

    /// The `+A<signature>@<expiry>` hint, if the locator has one in the exact form the
    /// signature check accepts (see `signature::verify`).
    pub fn hints(&self) -> impl Iterator<Item = &'a str> {
        let mut parts = plus_parts(self.raw);
        parts.next();
        if self.size.is_some() {
            parts.next();
        }
        parts
    }
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";

    #[test]
    fn bare_hash_has_no_size() {
        let locator = Locator::parse(HASH).unwrap();
        assert_eq!(locator.hash, HASH);
        assert_eq!(locator.size, None);
    }

    #[test]
    fn size_is_the_second_part() {
        let text = format!("{HASH}+11+Afoo@123+Kzzzzz");
        let locator = Locator::parse(&text).unwrap();
        assert_eq!(locator.size, Some(11));
        assert_eq!(locator.hints().collect::<Vec<_>>(), ["Afoo@123", "Kzzzzz"]);
    }

    #[test]
    fn empty_parts_and_late_digits_are_invalid() {
        for bad in [
            format!("{HASH}++11"),
            format!("{HASH}+11+"),
            format!("+{HASH}"),
            format!("{HASH}+Kx+12"),
            format!("{HASH}0"),
            HASH.to_uppercase(),
            HASH[..31].to_string(),
            format!("{HASH}+1x"),
        ] {
            assert_eq!(Locator::parse(&bad), Err(InvalidLocator), "{bad}");
        }
    }

    #[test]
    fn hints_need_not_be_ascii_for_the_parser() {
        let text = format!("{HASH}+11+Zé");
        assert!(Locator::parse(&text).is_ok());
    }

    #[test]
    fn route_prefix_test_accepts_trailing_text() {
        assert!(starts_with_hash(&format!("{HASH}xyz")));
        assert!(!starts_with_hash("6F09f2b353b6d63069f770b90e2b112c"));
        assert!(!starts_with_hash("abc"));
    }
}
