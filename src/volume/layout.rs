//! Where a block lives inside a directory volume: `<root>/<first 3 hex>/<hash>`, and the
//! names keepstore gives temporary and trashed files. Pure.

use std::path::{Path, PathBuf};

use crate::limits::HASH_HEX_LEN;

pub fn block_dir(root: &Path, hash: &str) -> PathBuf {
    root.join(&hash[..3])
}

pub fn block_path(root: &Path, hash: &str) -> PathBuf {
    // One allocation of the right size (two joins grew the path twice).
    let mut path = PathBuf::with_capacity(root.as_os_str().len() + 2 + 3 + hash.len());
    path.push(root);
    path.push(&hash[..3]);
    path.push(hash);
    path
}

/// `tmp<hash><digits>` in the block's own directory (Go `ioutil.TempFile` pattern, so
/// keepstore's tools recognise and skip it), which makes the final rename atomic.
pub fn temp_path(root: &Path, hash: &str, random: u64) -> PathBuf {
    block_dir(root, hash).join(format!("tmp{hash}{random}"))
}

/// `^tmp[0-9a-f]{32}\d+$`: a temp file of `temp_path`'s pattern (ours or keepstore's).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("tmp") else {
        return false;
    };
    match (rest.get(..HASH_HEX_LEN), rest.get(HASH_HEX_LEN..)) {
        (Some(hash), Some(digits)) => {
            crate::locator::is_hash(hash) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Infix of a trashed block's name: `<hash>.trash.<deadline unix secs>` (keep-protocol.md §6).
pub const TRASH_INFIX: &str = ".trash.";

/// Where block `hash` goes when trashed until `deadline_secs`: beside the block, so the
/// trash is one rename and needs no other directory.
pub fn trash_path(root: &Path, hash: &str, deadline_secs: u64) -> PathBuf {
    block_dir(root, hash).join(format!("{hash}{TRASH_INFIX}{deadline_secs}"))
}

/// Infix of a quarantined copy's name (`volume::quarantine`).
pub const CORRUPT_INFIX: &str = ".corrupt.";

/// Where a copy of `hash` that failed its MD5 check is kept, renamed at `unix_secs`:
/// beside the block, out of every listing (not a hash, not trash, not a temp file).
pub fn corrupt_path(root: &Path, hash: &str, unix_secs: u64) -> PathBuf {
    block_dir(root, hash).join(format!("{hash}{CORRUPT_INFIX}{unix_secs}"))
}

/// `^[0-9a-f]{32}\.corrupt\.\d+$` → (hash, unix secs); anything else → None.
pub fn parse_corrupt_name(name: &str) -> Option<(&str, u64)> {
    let (hash, secs) = name.split_once(CORRUPT_INFIX)?;
    if !crate::locator::is_hash(hash) || secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((hash, secs.parse().ok()?))
}

/// `^[0-9a-f]{32}\.trash\.\d+$` → (hash, deadline secs); anything else → None.
pub fn parse_trash_name(name: &str) -> Option<(&str, u64)> {
    let (hash, deadline) = name.split_once(TRASH_INFIX)?;
    if !crate::locator::is_hash(hash) || deadline.is_empty() || !deadline.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((hash, deadline.parse().ok()?))
}

/// Index rules: only `^[0-9a-f]+$` directories, and in them only `^[0-9a-f]{32}$` files.
pub fn is_index_dir_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(crate::locator::is_lower_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepstore_layout() {
        let hash = "6f09f2b353b6d63069f770b90e2b112c";
        assert_eq!(
            block_path(Path::new("/v"), hash),
            Path::new("/v/6f0/6f09f2b353b6d63069f770b90e2b112c")
        );
        assert_eq!(
            temp_path(Path::new("/v"), hash, 42),
            Path::new("/v/6f0/tmp6f09f2b353b6d63069f770b90e2b112c42")
        );
        assert!(is_index_dir_name("6f0"));
        assert!(!is_index_dir_name("full"));
    }

    #[test]
    fn trash_names() {
        let hash = "6f09f2b353b6d63069f770b90e2b112c";
        let path = trash_path(Path::new("/v"), hash, 1700000000);
        assert_eq!(
            path,
            Path::new("/v/6f0/6f09f2b353b6d63069f770b90e2b112c.trash.1700000000")
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_trash_name(name), Some((hash, 1700000000)));
        assert_eq!(parse_trash_name(hash), None);
        assert_eq!(parse_trash_name(&format!("{hash}.trash.")), None);
        assert_eq!(parse_trash_name(&format!("{hash}.trash.12x")), None);
        assert_eq!(parse_trash_name(&format!("tmp{hash}.trash.1")), None);
    }
}
