//! Which directories are volumes right now: the configured ones, every `ROOT/<name>/keep`
//! under a `--volume-root`, and (with `--discover-mounts`) every mount point with a `keep`
//! directory at its top, as old keepstore's mount discovery did. The mount table parser is
//! pure; the directory checks are plain blocking calls made on the watcher thread.

use std::path::{Path, PathBuf};

use crate::volume::location::{Location, S3Parameters};
use crate::volume::VolumeOptions;

/// The name of the directory that makes a drive (or a root's subdirectory) a volume.
pub const KEEP_DIR_NAME: &str = "keep";

/// Where volumes are looked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSources {
    /// `--volume DIR` and config-file volumes: a directory is served whenever it exists;
    /// an S3 bucket is opened as it is (`fixed_buckets`), never discovered.
    pub fixed: Vec<(Location, VolumeOptions)>,
    /// `--volume-root DIR`: every `DIR/<name>/keep`.
    pub roots: Vec<PathBuf>,
    /// `--discover-mounts`: every mount point with a `keep` directory.
    pub discover_mounts: bool,
}

impl VolumeSources {
    /// The fixed volumes that are directories.
    pub fn fixed_directories(&self) -> impl Iterator<Item = (&Path, &VolumeOptions)> {
        self.fixed.iter().filter_map(|(location, options)| match location {
            Location::Directory(root) => Some((root.as_path(), options)),
            Location::S3(_) => None,
        })
    }

    /// The configured S3 volumes: served from the start, never discovered.
    pub fn fixed_buckets(&self) -> impl Iterator<Item = (&S3Parameters, &VolumeOptions)> {
        self.fixed.iter().filter_map(|(location, options)| match location {
            Location::S3(parameters) => Some((parameters, options)),
            Location::Directory(_) => None,
        })
    }
}

/// One line of `/proc/self/mountinfo`, as far as discovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub read_only: bool,
}

/// Parse `/proc/self/mountinfo` (proc(5)): field 5 is the mount point (octal escapes),
/// field 6 the per-mount options.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let options = fields.next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                read_only: options.split(',').any(|option| option == "ro"),
            })
        })
        .collect()
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'\\' && index + 4 <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[index + 1..index + 4]).ok())
            .flatten()
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A directory that should be served as a volume now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub root: PathBuf,
    pub options: VolumeOptions,
    /// Why it is a volume: `configured`, `volume-root` or `mount`.
    pub origin: &'static str,
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|metadata| metadata.is_dir())
        .unwrap_or(false)
}

/// Subdirectories of a volume root (the directories to watch for a `keep` appearing).
pub fn root_subdirectories(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .filter(|path| is_dir(path))
        .collect();
    dirs.sort();
    dirs
}

/// Every volume directory present now, deduplicated by path, configured ones first.
pub fn candidates(sources: &VolumeSources, mounts: &[Mount]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = Vec::new();
    let mut push = |root: PathBuf, options: VolumeOptions, origin| {
        let root = root.canonicalize().unwrap_or(root);
        if is_dir(&root) && !found.iter().any(|candidate| candidate.root == root) {
            found.push(Candidate { root, options, origin });
        }
    };
    for (root, options) in sources.fixed_directories() {
        push(root.to_path_buf(), options.clone(), "configured");
    }
    for root in &sources.roots {
        for dir in root_subdirectories(root) {
            push(dir.join(KEEP_DIR_NAME), VolumeOptions::default(), "volume-root");
        }
    }
    if sources.discover_mounts {
        for mount in mounts.iter().filter(|mount| mount.mount_point != Path::new("/")) {
            let options = VolumeOptions {
                read_only: mount.read_only,
                ..VolumeOptions::default()
            };
            push(mount.mount_point.join(KEEP_DIR_NAME), options, "mount");
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::location::S3Parameters;
    use std::time::Duration;

    #[test]
    fn mountinfo_lines_give_mount_points_and_ro() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 0:35 / /srv/disk\\0401 ro,nosuid master:2 - tmpfs tmpfs ro\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/srv/disk 1"));
        assert!(mounts[1].read_only);
        assert!(!mounts[0].read_only);
    }

    #[test]
    fn roots_yield_their_keep_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("disk1/keep")).unwrap();
        std::fs::create_dir_all(dir.path().join("disk2")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden/keep")).unwrap();
        let sources = VolumeSources {
            roots: vec![dir.path().to_path_buf()],
            ..VolumeSources::default()
        };
        let found = candidates(&sources, &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].root.ends_with("disk1/keep"));
        assert_eq!(found[0].origin, "volume-root");
    }

    #[test]
    fn mounts_with_keep_are_volumes_and_duplicates_collapse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m/keep")).unwrap();
        let mounts = vec![Mount {
            mount_point: dir.path().join("m"),
            read_only: true,
        }];
        let sources = VolumeSources {
            fixed: vec![(Location::Directory(dir.path().join("m/keep")), VolumeOptions::default())],
            discover_mounts: true,
            ..VolumeSources::default()
        };
        let found = candidates(&sources, &mounts);
        assert_eq!(found.len(), 1, "the configured entry wins");
        assert_eq!(found[0].origin, "configured");
    }

    #[test]
    fn an_s3_location_is_not_a_directory_candidate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d")).unwrap();
        let s3 = S3Parameters {
            bucket: "keep".into(),
            region: "us-east-1".into(),
            endpoint: "http://127.0.0.1:3900".into(),
            use_path_style: false,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            prefix_length: 0,
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(600),
            location_constraint: false,
            index_page_size: 1000,
            race_window: Duration::ZERO,
            unsafe_delete: false,
            tls_insecure: false,
        };
        let sources = VolumeSources {
            fixed: vec![
                (Location::S3(s3), VolumeOptions::default()),
                (Location::Directory(dir.path().join("d")), VolumeOptions::default()),
            ],
            ..VolumeSources::default()
        };
        assert_eq!(sources.fixed_directories().count(), 1);
        let found = candidates(&sources, &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].root.ends_with("d"));
    }
}
