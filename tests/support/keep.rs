//! Keep protocol helpers for tests: fixed credentials, MD5, permission signatures
//! (keep-protocol.md §2), on-disk block paths (§6) and deterministic test data.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Arvados' public test fixture key (keepstore-observed.md), used for every signing server.
pub const SIGNING_KEY: &str =
    "zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp8s6q0ro3hxakfye02152hncy6zml2ed0uc";
/// Arvados' public test fixture SystemRootToken.
pub const ROOT_TOKEN: &str = "systemusertesttoken1234567890aoeuidhtnsqjkxbmwvzpy";
/// Arvados' public test fixture ManagementToken.
pub const MANAGEMENT_TOKEN: &str = "e687950a23c3a9bceec28c6223a06c79";
/// An ordinary (non-root) client token.
pub const USER_TOKEN: &str = "usertoken0123456789abcdefghijklmnopqrstuvwxyz";
/// A second ordinary token, for "signed for somebody else" cases.
pub const OTHER_TOKEN: &str = "othertoken0123456789abcdefghijklmnopqrstuvwxyz";
/// keepring's default `--blob-signing-ttl-secs` (336 h, as BlobSigningTTL).
pub const SIGNING_TTL_SECS_DEFAULT: u64 = 1_209_600;
/// Largest block: 64 MiB (keep-protocol.md §1).
pub const BLOCK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// MD5 of the empty block.
pub const EMPTY_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// Name of the file holding a volume's UUID in its root.
pub const VOLUME_UUID_FILE: &str = "keepring-volume-uuid";

/// The five CORS headers every response carries (keep-protocol.md §3.6).
pub const CORS_HEADERS: [(&str, &str); 5] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, HEAD, PUT, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes",
    ),
    (
        "Access-Control-Expose-Headers",
        "X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed",
    ),
    ("Access-Control-Max-Age", "86486400"),
];

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// The permission signature: lowercase hex HMAC-SHA1 over
/// `hash@token@expiry_hex8@ttl_hex_unpadded` (keep-protocol.md §2).
pub fn sign(hash: &str, token: &str, key: &str, ttl_secs: u64, expiry_secs: u64) -> String {
    let message = format!("{hash}@{token}@{expiry_secs:08x}@{ttl_secs:x}");
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC accepts any key");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// `hash+size+A<sig>@<expiry>` with an explicit key, TTL and expiry.
pub fn signed_locator_with(hash: &str, size: usize, token: &str, key: &str, ttl_secs: u64, expiry_secs: u64) -> String {
    let signature = sign(hash, token, key, ttl_secs, expiry_secs);
    format!("{hash}+{size}+A{signature}@{expiry_secs:08x}")
}

/// `hash+size+A<sig>@<expiry>` signed for `token` with the fixture key, default TTL,
/// expiring one TTL from now (as the server itself would sign it).
pub fn signed_locator(hash: &str, size: usize, token: &str) -> String {
    signed_locator_with(
        hash,
        size,
        token,
        SIGNING_KEY,
        SIGNING_TTL_SECS_DEFAULT,
        now_secs() + SIGNING_TTL_SECS_DEFAULT,
    )
}

/// Signed locator for `data` for `USER_TOKEN`.
pub fn signed_locator_for(data: &[u8]) -> String {
    signed_locator(&md5_hex(data), data.len(), USER_TOKEN)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `<root>/<first 3 hex>/<hash>` (keep-protocol.md §6).
pub fn block_path(volume_root: &Path, hash: &str) -> PathBuf {
    volume_root.join(&hash[..3]).join(hash)
}

/// Writes a block file by hand (as another keepstore would have), creating its directory.
pub fn write_block_file(volume_root: &Path, hash: &str, data: &[u8]) {
    let path = block_path(volume_root, hash);
    std::fs::create_dir_all(path.parent().expect("block path has a parent")).expect("create block directory");
    std::fs::write(&path, data).expect("write block file");
}

/// Names of all entries in `<root>/<first 3 hex of hash>/`, sorted; empty if the directory
/// does not exist.
pub fn block_dir_entries(volume_root: &Path, hash: &str) -> Vec<String> {
    let dir = volume_root.join(&hash[..3]);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .expect("read block directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("cannot read {}: {error}", dir.display()),
    };
    names.sort();
    names
}

/// Deterministic pseudo-random bytes (xorshift64*), distinct for each seed.
pub fn test_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The same bytes with every byte flipped: same length, different MD5.
pub fn corrupted(data: &[u8]) -> Vec<u8> {
    data.iter().map(|byte| !byte).collect()
}

/// True if `text` is `zzzzz-nyw5e-` followed by 15 characters of [0-9a-z].
pub fn is_volume_uuid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("zzzzz-nyw5e-") else {
        return false;
    };
    rest.len() == 15
        && rest
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
}
