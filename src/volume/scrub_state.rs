//! What the scrubber (`crate::scrub`) keeps on a volume so a pass resumes where it stopped
//! after a restart: a small text file at the volume's root, `keepring-scrub-state`,
//! replaced whole (written to a temp name, then renamed) through a descriptor of the
//! root directory that was checked to be on the volume's own device, so a drive unmounted
//! meanwhile never gets the file written onto the filesystem underneath. And the ordered
//! walk a pass makes: block directories in name order, hashes in order within each.
//! Blocking code, for a helper thread.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::locator::is_hash;
use crate::volume::layout;

/// The state file's name at a volume's root.
pub const STATE_FILE_NAME: &str = "keepring-scrub-state";

/// Where a volume's scrubbing stands. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubState {
    /// When the pass in progress began; `None` between passes.
    pub pass_started: Option<u64>,
    /// The last block the pass in progress checked (the walk is in hash order).
    pub after: Option<String>,
    /// When the last full pass ended (0: none yet) and how long it took.
    pub last_finished: u64,
    pub last_pass_secs: u64,
}

impl ScrubState {
    /// The file's text: one `key value` line each, unknown keys ignored on reading.
    pub fn to_text(&self) -> String {
        let mut text = String::from("keepring-scrub-state 1\n");
        if let Some(started) = self.pass_started {
            text.push_str(&format!("pass_started {started}\n"));
        }
        if let Some(after) = &self.after {
            text.push_str(&format!("after {after}\n"));
        }
        text.push_str(&format!("last_finished {}\n", self.last_finished));
        text.push_str(&format!("last_pass_secs {}\n", self.last_pass_secs));
        text
    }

    /// `None` for a file that is not a state file of this version (it is then ignored and
    /// the volume starts afresh: a lost position costs a re-read, never a wrong answer).
    pub fn parse(text: &str) -> Option<ScrubState> {
        let mut lines = text.lines();
        if lines.next()? != "keepring-scrub-state 1" {
            return None;
        }
        let mut state = ScrubState::default();
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "pass_started" => state.pass_started = Some(value.parse().ok()?),
                "after" if is_hash(value) => state.after = Some(value.to_string()),
                "after" => return None,
                "last_finished" => state.last_finished = value.parse().ok()?,
                "last_pass_secs" => state.last_pass_secs = value.parse().ok()?,
                _ => {}
            }
        }
        Some(state)
    }
}

/// The root directory opened, if it is still on `device` (the volume's filesystem).
fn open_root(root: &Path, device: u64) -> io::Result<Option<File>> {
    let dir = File::open(root)?;
    if dir.metadata()?.dev() != device {
        return Ok(None);
    }
    Ok(Some(dir))
}

/// The saved state of the volume at `root` on `device`; `None` when there is none (or it
/// is unreadable as a state file).
pub fn load(root: &Path, device: u64) -> io::Result<Option<ScrubState>> {
    if open_root(root, device)?.is_none() {
        return Ok(None);
    }
    match std::fs::read_to_string(root.join(STATE_FILE_NAME)) {
        Ok(text) => Ok(ScrubState::parse(&text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replace the saved state of the volume at `root`, if that root is still on `device`;
/// `Ok(false)` when it is not (the drive went away), and nothing is written then.
pub fn save(root: &Path, device: u64, state: &ScrubState) -> io::Result<bool> {
    let Some(dir) = open_root(root, device)? else {
        return Ok(false);
    };
    let temp_name = format!(".{STATE_FILE_NAME}.{}", std::process::id());
    let temp = CString::new(temp_name).map_err(io::Error::other)?;
    let target = CString::new(STATE_FILE_NAME).map_err(io::Error::other)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open directory and `temp` is NUL-terminated.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), temp.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let written = file.write_all(state.to_text().as_bytes());
    drop(file);
    // SAFETY: both names are NUL-terminated and relative to the same open directory.
    let renamed = written.and_then(|()| {
        match unsafe { libc::renameat(dir.as_raw_fd(), temp.as_ptr(), dir.as_raw_fd(), target.as_ptr()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    });
    if let Err(error) = renamed {
        // SAFETY: as above.
        unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) };
        return Err(error);
    }
    Ok(true)
}

/// The volume's block directories whose blocks may come after `after`, in name order.
pub fn dirs_from(root: &Path, after: Option<&str>) -> io::Result<Vec<String>> {
    let mut dirs: Vec<String> = crate::volume::block_dirs(root)?
        .into_iter()
        .filter_map(|dir| dir.file_name()?.to_str().map(str::to_string))
        .filter(|name| after.is_none_or(|after| name.as_str() >= &after[..name.len().min(after.len())]))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The blocks in block directory `dir` of the volume at `root` that come after `after`,
/// in hash order. A directory gone meanwhile has none.
pub fn hashes_after(root: &Path, dir: &str, after: Option<&str>) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(error) if crate::volume::io::is_missing(&error) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut hashes = Vec::new();
    for entry in entries {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        let in_place = is_hash(&name) && layout::block_dir(Path::new(""), &name) == Path::new(dir);
        if in_place && after.is_none_or(|after| name.as_str() > after) {
            hashes.push(name);
        }
    }
    hashes.sort();
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "0cc275b9c0f1b6a831c399e269772661";
    const C: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn state_text_round_trips_and_rejects_what_it_did_not_write() {
        let states = [
            ScrubState::default(),
            ScrubState {
                pass_started: Some(1_700_000_000),
                after: Some(A.to_string()),
                last_finished: 1_690_000_000,
                last_pass_secs: 3_600,
            },
        ];
        for state in states {
            assert_eq!(ScrubState::parse(&state.to_text()), Some(state));
        }
        assert_eq!(ScrubState::parse(""), None);
        assert_eq!(ScrubState::parse("keepring-scrub-state 2\n"), None);
        assert_eq!(ScrubState::parse("keepring-scrub-state 1\nafter ../../etc\n"), None);
        assert_eq!(ScrubState::parse("keepring-scrub-state 1\npass_started soon\n"), None);
        let with_unknown = "keepring-scrub-state 1\nlater_key 7\nlast_finished 5\n";
        assert_eq!(
            ScrubState::parse(with_unknown).map(|state| state.last_finished),
            Some(5)
        );
    }

    #[test]
    fn saves_and_loads_only_on_the_volume_device() {
        let dir = tempfile::tempdir().unwrap();
        let device = std::fs::metadata(dir.path()).unwrap().dev();
        assert_eq!(load(dir.path(), device).unwrap(), None);
        let state = ScrubState {
            pass_started: Some(10),
            after: Some(C.to_string()),
            ..ScrubState::default()
        };
        assert!(save(dir.path(), device, &state).unwrap());
        assert_eq!(load(dir.path(), device).unwrap(), Some(state.clone()));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(STATE_FILE_NAME)],
            "no temp file left"
        );
        // Another device at the same path (the drive went away): nothing read or written.
        assert!(!save(dir.path(), device + 1, &ScrubState::default()).unwrap());
        assert_eq!(load(dir.path(), device + 1).unwrap(), None);
        assert_eq!(load(dir.path(), device).unwrap(), Some(state));
    }

    #[test]
    fn the_walk_is_in_hash_order_and_resumes_after_a_position() {
        let dir = tempfile::tempdir().unwrap();
        for hash in [C, B, A] {
            std::fs::create_dir_all(dir.path().join(&hash[..3])).unwrap();
            std::fs::write(dir.path().join(&hash[..3]).join(hash), b"x").unwrap();
        }
        // Not blocks: other names, a block in the wrong directory, a non-block directory.
        std::fs::write(dir.path().join("0cc").join(format!("{A}.corrupt.5")), b"x").unwrap();
        std::fs::write(dir.path().join("0cc").join(format!("tmp{A}123")), b"x").unwrap();
        std::fs::write(dir.path().join("0cc").join(C), b"x").unwrap();
        std::fs::create_dir(dir.path().join("trash")).unwrap();
        let walk = |after: Option<&str>| -> Vec<String> {
            let mut found = Vec::new();
            let mut after = after.map(str::to_string);
            for block_dir in dirs_from(dir.path(), after.as_deref()).unwrap() {
                for hash in hashes_after(dir.path(), &block_dir, after.as_deref()).unwrap() {
                    after = Some(hash.clone());
                    found.push(hash);
                }
            }
            found
        };
        assert_eq!(walk(None), vec![A, B, C]);
        assert_eq!(walk(Some(A)), vec![B, C]);
        assert_eq!(walk(Some(B)), vec![C]);
        assert_eq!(walk(Some(C)), Vec::<String>::new());
        assert_eq!(dirs_from(dir.path(), Some(B)).unwrap(), vec!["0cc", "92e"]);
        assert_eq!(dirs_from(dir.path(), Some(C)).unwrap(), vec!["92e"]);
    }
}
