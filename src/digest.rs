//! Streaming MD5 of a block, fed chunk by chunk as bytes move (keep-protocol.md §3.1):
//! a PUT is checked before its rename, a GET before its last chunk leaves.

use md5::{Digest, Md5};

/// MD5 of the empty block, which GET may ask for without a size hint.
pub const EMPTY_BLOCK_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

#[derive(Default, Clone)]
pub struct BlockDigest {
    hasher: Md5,
}

impl BlockDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Lowercase hex of the digest so far.
    pub fn hex(&self) -> String {
        crate::signature::hex(&self.hasher.clone().finalize())
    }

    pub fn matches(&self, hash: &str) -> bool {
        self.hex() == hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_digest_equals_whole() {
        let mut digest = BlockDigest::default();
        assert!(digest.matches(EMPTY_BLOCK_HASH));
        digest.update(b"hello ");
        digest.update(b"keep\n");
        assert!(digest.matches("6f09f2b353b6d63069f770b90e2b112c"));
    }
}
