//! One directory volume in keepstore's on-disk layout (`ROOT/xxx/<hash>`, keep-protocol.md
//! §6): its identity and flags (`Volume`), the pure path rules (`layout`) and the
//! io_uring file operations (`io`).

pub mod io;
pub mod layout;

use std::path::{Path, PathBuf};

/// Name of the small file at a volume's root that holds its UUID, so `/mounts` and
/// placement stay the same across restarts and re-mounts.
pub const UUID_FILE_NAME: &str = "keepring-volume-uuid";

/// Cluster prefix of UUIDs keepring makes up for volumes it was not told a UUID for.
pub const UUID_CLUSTER_PREFIX: &str = "zzzzz";

#[derive(Debug, Clone)]
pub struct Volume {
    pub uuid: String,
    pub root: PathBuf,
    pub device_id: String,
    pub allow_write: bool,
    pub allow_trash: bool,
    pub replication: u32,
    pub storage_classes: Vec<String>,
    /// Highest priority among the volume's configured storage classes (keep-protocol §5).
    pub priority: i64,
}

impl Volume {
    /// Open (creating if missing) a writable directory volume with default flags, reading
    /// its UUID from `UUID_FILE_NAME` or storing a new one there.
    pub fn open_directory(root: &Path) -> std::io::Result<Volume> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let uuid = load_or_create_uuid(&root)?;
        Ok(Volume {
            uuid,
            device_id: format!("{}:{}", hostname(), root.display()),
            root,
            allow_write: true,
            allow_trash: true,
            replication: 1,
            storage_classes: vec!["default".to_string()],
            priority: 0,
        })
    }

    pub fn has_class(&self, class: &str) -> bool {
        self.storage_classes.iter().any(|own| own == class)
    }
}

fn load_or_create_uuid(root: &Path) -> std::io::Result<String> {
    let path = root.join(UUID_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_volume_uuid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a volume UUID", path.display()),
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let uuid = format!("{UUID_CLUSTER_PREFIX}-nyw5e-{}", random_base36(15)?);
    // Write then rename, so a crash never leaves a half-written identity.
    let temp = root.join(format!(".{UUID_FILE_NAME}.tmp"));
    std::fs::write(&temp, format!("{uuid}\n"))?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, &path)?;
    std::fs::File::open(root)?.sync_all()?;
    Ok(uuid)
}

/// `xxxxx-nyw5e-` + 15 of [0-9a-z].
pub fn is_volume_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 27
        && bytes[5] == b'-'
        && &text[6..12] == "nyw5e-"
        && text[..5]
            .bytes()
            .chain(text[12..].bytes())
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

pub fn random_base36(len: usize) -> std::io::Result<String> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; len];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| ALPHABET[*b as usize % 36] as char).collect())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let first = Volume::open_directory(&dir.path().join("v")).unwrap();
        let second = Volume::open_directory(&dir.path().join("v")).unwrap();
        assert!(is_volume_uuid(&first.uuid), "{}", first.uuid);
        assert_eq!(first.uuid, second.uuid);
    }

    #[test]
    fn uuid_shape() {
        assert!(is_volume_uuid("zzzzz-nyw5e-000000000000000"));
        assert!(!is_volume_uuid("zzzzz-nyw5e-00000000000000"));
        assert!(!is_volume_uuid("zzzzz-4zz18-000000000000000"));
    }
}
