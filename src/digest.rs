//! Streaming MD5 of a block, fed chunk by chunk as bytes move (keep-protocol.md §3.1):
//! a PUT is checked before its rename, a GET before its last chunk leaves.
//!
//! The arithmetic is `md5lanes`: on a worker's core requests feed their chunks to the
//! core's `hasher::Hasher`, which advances every stream pending in one ring tick together
//! in SIMD lanes; `BlockDigest` is the same stream state hashed on its own, for threads
//! off the cores (the pull worker) and tests. Its single-stream engine is OpenSSL's
//! assembly block function where present (0.77 GB/s per core here, against 0.43 GB/s for
//! the portable md-5 crate), md-5 otherwise.

use crate::md5lanes::{LaneState, SingleStream};

/// MD5 of the empty block, which GET may ask for without a size hint.
pub const EMPTY_BLOCK_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

#[derive(Clone)]
pub struct BlockDigest {
    state: LaneState,
    engine: SingleStream,
}

impl Default for BlockDigest {
    fn default() -> Self {
        BlockDigest {
            state: LaneState::new(),
            engine: SingleStream::best(),
        }
    }
}

impl BlockDigest {
    /// The portable implementation, whatever OpenSSL offers (tests compare the two).
    pub fn portable() -> Self {
        BlockDigest {
            state: LaneState::new(),
            engine: SingleStream::Portable,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update_with(self.engine, bytes);
    }

    /// Lowercase hex of the digest so far.
    pub fn hex(&self) -> String {
        crate::signature::hex(&self.state.finish_with(self.engine))
    }

    pub fn matches(&self, hash: &str) -> bool {
        state_matches(&self.state, hash)
    }
}

/// Does the stream `state` hash to `hash` (32 lowercase hex digits)?
pub fn state_matches(state: &LaneState, hash: &str) -> bool {
    hex_is(&state.finish(), hash.as_bytes())
}

/// Is `hash` the lowercase hex of `digest` (compared digit by digit, no string built)?
pub fn hex_is(digest: &[u8; 16], hash: &[u8]) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hash.len() == 2 * digest.len()
        && digest
            .iter()
            .zip(hash.chunks_exact(2))
            .all(|(byte, pair)| pair[0] == DIGITS[(byte >> 4) as usize] && pair[1] == DIGITS[(byte & 15) as usize])
}

/// What identifies the exact bytes of a stored file without reading them: any write,
/// rename-over, truncation or `utimes` changes at least one field (ctime moves on every
/// metadata change). Silent corruption underneath (bit rot) changes none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// Per-worker memory of stored copies whose MD5 was checked and found right, so hot blocks
/// are not rehashed on every GET (`--verified-cache-entries`, off by default). The
/// trade-off against keepstore's always-verify: a copy that rots on disk without any
/// metadata change is served from the cache until the entry is dropped; with the cache
/// off (0) every read is hashed. Bounded: when full it is emptied and refills.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: std::collections::HashMap<(u128, FileIdentity), ()>,
    entries_max: usize,
}

impl VerifiedCache {
    pub fn new(entries_max: usize) -> Self {
        VerifiedCache {
            entries: std::collections::HashMap::new(),
            entries_max,
        }
    }

    fn key(hash: &str, identity: FileIdentity) -> Option<(u128, FileIdentity)> {
        u128::from_str_radix(hash, 16).ok().map(|hash| (hash, identity))
    }

    /// The copy with this identity was verified to be block `hash`.
    pub fn contains(&self, hash: &str, identity: FileIdentity) -> bool {
        self.entries_max > 0 && Self::key(hash, identity).is_some_and(|key| self.entries.contains_key(&key))
    }

    pub fn insert(&mut self, hash: &str, identity: FileIdentity) {
        if self.entries_max == 0 {
            return;
        }
        if self.entries.len() >= self.entries_max {
            self.entries.clear();
        }
        if let Some(key) = Self::key(hash, identity) {
            self.entries.insert(key, ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(inode: u64, mtime_ns: i128) -> FileIdentity {
        FileIdentity {
            device: 1,
            inode,
            size: 11,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    /// `hex_is` agrees with building the hex string, and refuses near misses.
    #[test]
    fn hex_is_compares_with_the_lowercase_hex() {
        for seed in 0u8..=255 {
            let digest: [u8; 16] =
                std::array::from_fn(|index| seed.wrapping_mul(37).wrapping_add((index as u8).wrapping_mul(91)));
            let hex = crate::signature::hex(&digest);
            assert!(hex_is(&digest, hex.as_bytes()), "{hex}");
            assert!(!hex_is(&digest, hex.to_uppercase().as_bytes()) || !hex.bytes().any(|b| b.is_ascii_alphabetic()));
            assert!(!hex_is(&digest, &hex.as_bytes()[..31]));
            assert!(!hex_is(&digest, format!("{hex}0").as_bytes()));
            let mut other = hex.into_bytes();
            other[usize::from(seed) % 32] ^= 1;
            assert!(!hex_is(&digest, &other));
        }
    }

    #[test]
    fn verified_cache_matches_only_the_same_file_state() {
        let hash = "6f09f2b353b6d63069f770b90e2b112c";
        let mut cache = VerifiedCache::new(2);
        cache.insert(hash, identity(5, 100));
        assert!(cache.contains(hash, identity(5, 100)));
        assert!(
            !cache.contains(hash, identity(5, 101)),
            "touched or rewritten: hash again"
        );
        assert!(!cache.contains(hash, identity(6, 100)), "another file");
        assert!(
            !cache.contains(EMPTY_BLOCK_HASH, identity(5, 100)),
            "another block name"
        );
        cache.insert(hash, identity(7, 1));
        cache.insert(hash, identity(8, 1));
        assert_eq!(cache.entries.len(), 1, "bounded: emptied when full");
        let off = VerifiedCache::new(0);
        assert!(!off.contains(hash, identity(8, 1)));
    }

    #[test]
    fn chunked_digest_equals_whole() {
        for mut digest in [BlockDigest::default(), BlockDigest::portable()] {
            assert!(digest.matches(EMPTY_BLOCK_HASH));
            digest.update(b"hello ");
            digest.update(b"keep\n");
            assert!(digest.matches("6f09f2b353b6d63069f770b90e2b112c"));
        }
    }

    #[test]
    fn both_engines_agree_on_odd_sizes() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let (mut fast, mut portable) = (BlockDigest::default(), BlockDigest::portable());
        for piece in data.chunks(4093) {
            fast.update(piece);
            portable.update(piece);
        }
        assert_eq!(fast.hex(), portable.hex());
        assert_eq!(
            BlockDigest::default().engine,
            SingleStream::OpenSsl,
            "OpenSSL MD5 is available here"
        );
    }
}
