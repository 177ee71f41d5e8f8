//! Permission signatures (`signature::SigningKey`): a locator signed with key K for a
//! token, now, with its `+A` hint among fuzzed other hints, verifies with K until its
//! expiry (inclusive) and is `Expired` after it; it does not verify with another key (K
//! with one bit flipped), another TTL, another token or another hash, nor with its hint
//! twice. Arbitrary locator text is also verified, which must not panic and must answer
//! `Expired` only for a well-formed hint whose expiry has passed.
#![no_main]

use keepring::locator::Locator;
use keepring::signature::{hex, SignatureError, SigningKey};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(input: &mut Unstructured) -> Result<()> {
    let key_len = input.int_in_range(1..=100u8)? as usize;
    let key = input.bytes(key_len.min(input.len()))?.to_vec();
    if key.is_empty() {
        return Ok(());
    }
    let ttl_secs = input.int_in_range(1..=u32::MAX as u64)?;
    let now_secs = input.int_in_range(0..=u32::MAX as u64)?;
    let token: String = input.arbitrary()?;
    let hash = hex(&input.arbitrary::<[u8; 16]>()?);
    let size: Option<u32> = input.arbitrary()?;
    let other_hints: Vec<String> = (0..input.int_in_range(0..=3u8)?)
        .map(|_| other_hint(input))
        .collect::<Result<_>>()?;
    let signature_position = input.int_in_range(0..=other_hints.len())?;
    let flip_at = input.arbitrary::<usize>()?;
    let signing_key = SigningKey::new(&key, ttl_secs);

    // The expiry is written as exactly 8 hex digits (keepstore's format) until 2106.
    if now_secs + ttl_secs <= u32::MAX as u64 {
        let hint = signing_key.sign_hint(&hash, &token, now_secs);
        let expiry = now_secs + ttl_secs;
        assert_eq!(hint.len(), "+A".len() + 40 + "@".len() + 8, "{hint}");
        assert!(hint.ends_with(&format!("@{expiry:08x}")));
        let mut hints = other_hints.iter().map(|hint| format!("+{hint}")).collect::<Vec<_>>();
        hints.insert(signature_position, hint.clone());
        let size_part = size.map(|size| format!("+{size}")).unwrap_or_default();
        let signed = format!("{hash}{size_part}{}", hints.concat());
        let locator = Locator::parse(&signed).expect("a signed locator parses");
        assert_eq!(signing_key.verify(&locator, &token, now_secs), Ok(()), "{signed}");
        assert_eq!(signing_key.verify(&locator, &token, expiry), Ok(()));
        assert_eq!(
            signing_key.verify(&locator, &token, expiry + 1),
            Err(SignatureError::Expired)
        );

        let mut other_key = key.clone();
        other_key[flip_at % key.len()] ^= 1 << (flip_at / key.len() % 8);
        let invalid = Err(SignatureError::Invalid);
        let other = SigningKey::new(&other_key, ttl_secs);
        assert_eq!(other.verify(&locator, &token, now_secs), invalid, "another key");
        let other_ttl = SigningKey::new(&key, ttl_secs + 1);
        assert_eq!(other_ttl.verify(&locator, &token, now_secs), invalid, "another TTL");
        let other_token = format!("{token}x");
        assert_eq!(
            signing_key.verify(&locator, &other_token, now_secs),
            invalid,
            "another token"
        );
        let other_hash = hex(&flip_first_bit(locator.hash));
        let moved = signed.replacen(&hash, &other_hash, 1);
        let moved = Locator::parse(&moved).expect("another hash parses");
        assert_eq!(signing_key.verify(&moved, &token, now_secs), invalid, "another hash");
        let twice_text = format!("{signed}{hint}");
        let twice = Locator::parse(&twice_text).expect("two signatures parse");
        assert_eq!(signing_key.verify(&twice, &token, now_secs), invalid, "two signatures");
    }

    let text: String = input.arbitrary()?;
    if let Ok(locator) = Locator::parse(&text) {
        if signing_key.verify(&locator, &token, now_secs) == Err(SignatureError::Expired) {
            let expired = locator.hints().filter_map(|hint| hint.strip_prefix('A')).any(|rest| {
                rest.split_once('@')
                    .and_then(|(_, expiry)| u64::from_str_radix(expiry, 16).ok())
                    .is_some_and(|expiry| expiry < now_secs)
            });
            assert!(expired, "Expired without an expired hint: {text}");
        }
    }
    Ok(())
}

/// A hint other than a signature: `[B-Z][A-Za-z0-9@_-]*`.
fn other_hint(input: &mut Unstructured) -> Result<String> {
    const REST: &[u8] = b"abzAKZ09@_-";
    let first = input.int_in_range(b'B'..=b'Z')? as char;
    let len = input.int_in_range(0..=6u8)?;
    let rest: String = (0..len)
        .map(|_| input.choose(REST).map(|&b| b as char))
        .collect::<Result<_>>()?;
    Ok(format!("{first}{rest}"))
}

/// The 16 bytes a 32-hex hash stands for, with its first bit flipped.
fn flip_first_bit(hash: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..hash.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hash[at..at + 2], 16).unwrap_or(0))
        .collect();
    bytes[0] ^= 0x80;
    bytes
}
