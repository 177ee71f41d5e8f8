//! Permission signatures: `+A<hmac>@<expiry>` hints, HMAC-SHA1 over
//! `hash@token@expiry_hex@ttl_hex` exactly as keepstore, the Go SDK and the API server
//! compute them (keep-protocol.md §2). Pure: the clock is an argument.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::locator::Locator;

/// The key and lifetime signatures are made and checked with.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
    ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `+A` hint of the accepted form, or a hint that does not match.
    Invalid,
    /// A well-formed hint whose expiry has passed.
    Expired,
}

impl SigningKey {
    pub fn new(key: &[u8], ttl_secs: u64) -> Self {
        SigningKey {
            key: key.to_vec(),
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The 40-hex HMAC for one (hash, token, expiry).
    fn mac_hex(&self, hash: &str, token: &str, expiry_hex: &str) -> String {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha1>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        let ttl_hex = format!("{:x}", self.ttl_secs);
        for (index, piece) in [hash, token, expiry_hex, &ttl_hex].iter().enumerate() {
            if index > 0 {
                mac.update(b"@");
            }
            mac.update(piece.as_bytes());
        }
        hex(&mac.finalize().into_bytes())
    }

    /// `+A<sig>@<expiry>` for a block signed now for `token`.
    pub fn sign_hint(&self, hash: &str, token: &str, now_secs: u64) -> String {
        let expiry_hex = format!("{:08x}", now_secs + self.ttl_secs);
        format!("+A{}@{}", self.mac_hex(hash, token, &expiry_hex), expiry_hex)
    }

    /// Check a locator's signature as keepstore's `checkLocatorSignature`: exactly one
    /// `+A<40 hex>@<8 hex>` hint, every other hint `[B-Z][A-Za-z0-9@_-]*`; an expired
    /// expiry is reported before the HMAC is compared.
    pub fn verify(&self, locator: &Locator, token: &str, now_secs: u64) -> Result<(), SignatureError> {
        let mut signature = None;
        for hint in locator.hints() {
            if let Some(found) = parse_signature_hint(hint) {
                if signature.replace(found).is_some() {
                    return Err(SignatureError::Invalid);
                }
            } else if !is_other_hint(hint) {
                return Err(SignatureError::Invalid);
            }
        }
        let (mac, expiry_hex) = signature.ok_or(SignatureError::Invalid)?;
        let expiry = u64::from_str_radix(expiry_hex, 16).map_err(|_| SignatureError::Invalid)?;
        if expiry < now_secs {
            return Err(SignatureError::Expired);
        }
        if self.mac_hex(locator.hash, token, expiry_hex) != mac {
            return Err(SignatureError::Invalid);
        }
        Ok(())
    }
}

/// `A<40 hex>@<8 hex>` → (mac, expiry). Hex here accepts both cases, as keepstore's regexp.
fn parse_signature_hint(hint: &str) -> Option<(&str, &str)> {
    let rest = hint.strip_prefix('A')?;
    let (mac, expiry) = rest.split_once('@')?;
    let is_hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(mac, 40) && is_hex(expiry, 8)).then_some((mac, expiry))
}

fn is_other_hint(hint: &str) -> bool {
    let mut bytes = hint.bytes();
    matches!(bytes.next(), Some(b'B'..=b'Z'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'_' | b'-'))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Arvados' public test fixtures, as used in keepstore-observed.md.
    const KEY: &str =
        "zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp8s6q0ro3hxakfye02152hncy6zml2ed0uc";
    const TOKEN: &str = "systemusertesttoken1234567890aoeuidhtnsqjkxbmwvzpy";
    const HASH: &str = "6f09f2b353b6d63069f770b90e2b112c";
    const TTL: u64 = 1_209_600;

    fn key() -> SigningKey {
        SigningKey::new(KEY.as_bytes(), TTL)
    }

    #[test]
    fn matches_the_signature_real_keepstore_produced() {
        let expiry = 0x6b19_1671;
        let hint = key().sign_hint(HASH, TOKEN, expiry - TTL);
        assert_eq!(hint, "+A6355089e609ece08faad2c9dd002bda72d77f710@6b191671");
    }

    #[test]
    fn verify_accepts_own_signature_and_extra_hints() {
        let now = 0x6000_0000;
        let signed = format!("{HASH}+11{}+Kzzzzz", key().sign_hint(HASH, TOKEN, now));
        let locator = Locator::parse(&signed).unwrap();
        assert_eq!(key().verify(&locator, TOKEN, now), Ok(()));
        assert_eq!(key().verify(&locator, "other", now), Err(SignatureError::Invalid));
    }

    #[test]
    fn expired_wins_over_a_wrong_mac() {
        let signed = format!("{HASH}+11+A{}@00000010", "0".repeat(40));
        let locator = Locator::parse(&signed).unwrap();
        assert_eq!(key().verify(&locator, TOKEN, 100), Err(SignatureError::Expired));
    }

    #[test]
    fn malformed_hints_are_invalid() {
        for text in [
            format!("{HASH}+11"),
            format!("{HASH}+11+A{}@zzzzzzzz", "0".repeat(40)),
            format!("{HASH}+11+A{}@0000001", "0".repeat(40)),
            format!("{HASH}+11+A{0}@00000010+A{0}@00000010", "0".repeat(40)),
            format!("{HASH}+11+A{}@00000010+kx", "0".repeat(40)),
        ] {
            let locator = Locator::parse(&text).unwrap();
            assert_eq!(key().verify(&locator, TOKEN, 1), Err(SignatureError::Invalid), "{text}");
        }
    }

    #[test]
    fn ttl_is_part_of_the_message() {
        let now = 0x6000_0000;
        let signed = format!("{HASH}+11{}", key().sign_hint(HASH, TOKEN, now));
        let locator = Locator::parse(&signed).unwrap();
        let other_ttl = SigningKey::new(KEY.as_bytes(), TTL + 1);
        assert_eq!(other_ttl.verify(&locator, TOKEN, now), Err(SignatureError::Invalid));
    }
}
