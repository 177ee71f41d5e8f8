//! The index of a directory volume (keep-protocol.md §3.4, §6): every stored block whose
//! hash starts with a prefix, with its size and mtime in nanoseconds, in hash order within
//! each `xxx` directory. Trashed copies, temp files and anything not named by a hash are
//! not blocks. Plain blocking calls: the caller runs it off the cores.

use std::io;
use std::ops::ControlFlow;
use std::path::Path;

use crate::locator::is_hash;
use crate::volume::{layout, mtime_nanos};

/// One stored block, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<'a> {
    pub hash: &'a str,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Call `each` for every block of the volume at `root` whose hash starts with `prefix`;
/// `Ok(false)` when `each` stopped the walk.
pub fn list_blocks(root: &Path, prefix: &str, mut each: impl FnMut(Listed<'_>) -> ControlFlow<()>) -> io::Result<bool> {
    for dir in std::fs::read_dir(root)? {
        let dir = dir?;
        let name = dir.file_name();
        let Some(name) = name.to_str() else { continue };
        let related = name.starts_with(prefix) || prefix.starts_with(name);
        if !layout::is_index_dir_name(name) || !related || !dir.file_type()?.is_dir() {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let file_name = entry.file_name();
            let Some(hash) = file_name.to_str() else { continue };
            if !is_hash(hash) || !hash.starts_with(prefix) {
                continue;
            }
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                // Trashed or rewritten between listing and stat: not an error.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if !metadata.is_file() {
                continue;
            }
            let listed = Listed {
                hash,
                size: metadata.len(),
                mtime_ns: mtime_nanos(&metadata),
            };
            if each(listed).is_break() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
