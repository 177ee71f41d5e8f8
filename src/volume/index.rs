//! The index of a directory volume (keep-protocol.md §3.4, §6): every stored block whose
//! hash starts with a prefix, with its size and mtime in nanoseconds, in hash order within
//! each `xxx` directory. Trashed copies, temp files and anything not named by a hash are
//! not blocks. Plain blocking calls: the caller runs them off the cores (the index handler
//! runs a `Walk` a piece at a time on the helper pool).

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

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
    for dir in block_dirs(root, prefix)? {
        if list_dir(&root.join(dir), prefix, &mut each)?.is_break() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Names of the block directories of the volume at `root` that may hold hashes starting
/// with `prefix`, in name order.
fn block_dirs(root: &Path, prefix: &str) -> io::Result<Vec<String>> {
    let mut dirs = Vec::new();
    for dir in std::fs::read_dir(root)? {
        let dir = dir?;
        let Ok(name) = dir.file_name().into_string() else {
            continue;
        };
        let related = name.starts_with(prefix) || prefix.starts_with(&name);
        if layout::is_index_dir_name(&name) && related && dir.file_type()?.is_dir() {
            dirs.push(name);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Call `each` for every block in the block directory `dir` whose hash starts with
/// `prefix`, in hash order.
fn list_dir(
    dir: &Path,
    prefix: &str,
    each: &mut impl FnMut(Listed<'_>) -> ControlFlow<()>,
) -> io::Result<ControlFlow<()>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
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
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The index of some volumes, listed one step at a time: a step lists one block directory
/// (or finds the next volume's). Between steps a walk is plain data, so a caller can list
/// a piece on a helper thread, send it from its core, and hand the walk back for the next
/// piece: no thread waits while a client is slow to read.
#[derive(Debug)]
pub struct Walk {
    roots: Vec<PathBuf>,
    prefix: String,
    /// Volumes not yet started (`roots[next_root..]`).
    next_root: usize,
    /// The current volume's block directories not yet listed, last first.
    dirs: Vec<String>,
}

impl Walk {
    pub fn new(roots: Vec<PathBuf>, prefix: String) -> Walk {
        Walk {
            roots,
            prefix,
            next_root: 0,
            dirs: Vec::new(),
        }
    }

    /// Take one step, calling `each` for the blocks it lists; `Ok(false)` when the walk was
    /// already over. An error names the volume.
    pub fn step(&mut self, mut each: impl FnMut(Listed<'_>)) -> io::Result<bool> {
        let in_volume =
            |root: &Path, error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", root.display()));
        let Some(dir) = self.dirs.pop() else {
            let Some(root) = self.roots.get(self.next_root) else {
                return Ok(false);
            };
            self.next_root += 1;
            self.dirs = block_dirs(root, &self.prefix).map_err(|error| in_volume(root, error))?;
            self.dirs.reverse();
            return Ok(true);
        };
        let root = &self.roots[self.next_root - 1];
        let mut all = |block: Listed<'_>| {
            each(block);
            ControlFlow::Continue(())
        };
        // `all` never stops the listing: the step is whole.
        match list_dir(&root.join(dir), &self.prefix, &mut all) {
            Ok(_) => Ok(true),
            // Gone since the volume was looked at: nothing to list there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(in_volume(root, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(root: &Path, hash: &str, size: usize) {
        std::fs::create_dir_all(layout::block_dir(root, hash)).unwrap();
        std::fs::write(layout::block_path(root, hash), vec![0u8; size]).unwrap();
    }

    fn walk_all(roots: &[&Path], prefix: &str) -> (Vec<(String, u64)>, usize) {
        let roots = roots.iter().map(|root| root.to_path_buf()).collect();
        let mut walk = Walk::new(roots, prefix.to_string());
        let (mut listed, mut steps) = (Vec::new(), 0);
        while walk
            .step(|block| listed.push((block.hash.to_string(), block.size)))
            .unwrap()
        {
            steps += 1;
        }
        assert!(
            !walk.step(|_| panic!("listed after the end")).unwrap(),
            "over stays over"
        );
        (listed, steps)
    }

    #[test]
    fn a_walk_lists_every_volume_in_order_one_directory_per_step() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hashes = [
            "6f09f2b353b6d63069f770b90e2b112c",
            "6f0aaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0000000000000000000000000000000f",
        ];
        for (index, hash) in hashes.iter().enumerate() {
            block(first.path(), hash, index);
        }
        block(second.path(), hashes[0], 7);
        std::fs::write(first.path().join("6f0").join("tmp-not-a-block"), b"x").unwrap();
        let (listed, steps) = walk_all(&[first.path(), second.path()], "");
        let expected = [(hashes[2], 2), (hashes[0], 0), (hashes[1], 1), (hashes[0], 7)];
        let expected: Vec<(String, u64)> = expected.iter().map(|(hash, size)| (hash.to_string(), *size)).collect();
        assert_eq!(
            listed, expected,
            "directories in name order, hashes in order within each"
        );
        assert_eq!(steps, 2 + 2 + 1, "one step per volume found, one per block directory");
        let (under, steps) = walk_all(&[first.path()], "6f09");
        assert_eq!(under, [(hashes[0].to_string(), 0)]);
        assert_eq!(steps, 2, "only the related directory is read");
    }

    #[test]
    fn a_walk_of_a_missing_volume_fails_naming_it() {
        let gone = PathBuf::from("/nonexistent/keepring-volume");
        let mut walk = Walk::new(vec![gone], String::new());
        let error = walk.step(|_| {}).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/keepring-volume"), "{error}");
    }
}
