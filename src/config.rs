//! Command line → validated `Config`. Flag names are part of the interface (tests outside
//! this repository drive them). Every failure is one line and exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

use crate::cluster_config::{self, ClusterSettings};
use crate::limits::{
    BLOB_SIGNING_TTL_SECS_DEFAULT, DRAIN_TIMEOUT_SECS_DEFAULT, MAX_BUFFERS_DEFAULT, TRASH_CHECK_INTERVAL_SECS_DEFAULT,
    TRASH_LIFETIME_SECS_DEFAULT,
};
use crate::volume::VolumeOptions;
use crate::volumes::discovery::VolumeSources;

/// Address used when neither `--listen` nor a config file gives one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:25107";

/// Directory used when no volume comes from any source.
pub const DEFAULT_VOLUME_DIR: &str = "keepring-data";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "keepring",
    version,
    about = "Arvados keepstore-compatible block server on io_uring"
)]
pub struct Cli {
    /// Address to serve on (every worker binds it with SO_REUSEPORT). Default:
    /// the config file's Services.Keepstore.InternalURLs, else 127.0.0.1:25107.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A directory volume (repeatable), created if missing. With no volume from any
    /// source, ./keepring-data.
    #[arg(long = "volume", value_name = "DIR")]
    pub volumes: Vec<PathBuf>,
    /// Every DIR/<name>/keep is a volume, found and dropped live (repeatable).
    #[arg(long = "volume-root", value_name = "DIR")]
    pub volume_roots: Vec<PathBuf>,
    /// Every mount point with a `keep` directory at its top is a volume (live).
    #[arg(long)]
    pub discover_mounts: bool,
    /// An Arvados cluster config.yml (keepstore's); flags given here override it.
    /// SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker threads, one io_uring runtime each. Default: the number of cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// File holding the blob signing key; enables signing PUT answers and checking reads.
    #[arg(long, value_name = "FILE")]
    pub blob_signing_key_file: Option<PathBuf>,
    /// File holding the system root token, required by admin endpoints.
    #[arg(long, value_name = "FILE")]
    pub system_root_token_file: Option<PathBuf>,
    /// File holding the management token, required by /_health/ping.
    #[arg(long, value_name = "FILE")]
    pub management_token_file: Option<PathBuf>,
    /// Lifetime of permission signatures, in seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_signing_ttl_secs: Option<u64>,
    /// Block buffer budget in units of 64 MiB (keepstore's MaxKeepBlobBuffers).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_buffers: Option<u64>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Lowest level logged: error, warn, info (one line per request), debug, trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    /// Longest wait, after SIGTERM, for in-flight requests before they are cut.
    #[arg(long, default_value_t = DRAIN_TIMEOUT_SECS_DEFAULT)]
    pub drain_timeout_secs: u64,
    /// Once every worker accepts, send SIGTERM to this pid (the process being replaced).
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(2..))]
    pub term_pid: Option<u32>,
    /// Unix socket where a running keepring hands its listening sockets to its successor.
    /// Default: keepring-<ip>-<port>.sock in $XDG_RUNTIME_DIR, /run/keepring (root) or /tmp.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Bind fresh sockets instead of taking over a running keepring's (for comparison runs).
    #[arg(long)]
    pub no_handover: bool,
    /// Seconds a trashed block stays recoverable (keepstore's BlobTrashLifetime); 0 deletes
    /// at once.
    #[arg(long)]
    pub trash_lifetime_secs: Option<u64>,
    /// Seconds between sweeps (BlobTrashCheckInterval; one also runs at start) that delete
    /// expired trash and the temp files of writes that died.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub trash_check_interval_secs: Option<u64>,
    /// Refuse DELETE (405) and ignore trash lists (keepstore's `BlobTrash: false`).
    #[arg(long)]
    pub no_blob_trash: bool,
    /// Stored copies each worker remembers as verified (by device, inode, size, mtime,
    /// ctime) so hot blocks are not rehashed on every GET. 0 (default): hash every read,
    /// as keepstore does. See README "Verified-copy cache" for the trade-off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub verified_cache_entries: u64,
}

/// Everything the supervisor needs, read and checked.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub volume_sources: VolumeSources,
    pub workers: usize,
    pub signing_key: Option<Vec<u8>>,
    /// Check signatures on block reads (a config file's `Collections.BlobSigning`).
    pub enforce_signatures: bool,
    pub blob_signing_ttl_secs: u64,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    pub max_buffers: u64,
    /// The cluster config file's cluster ID (`ClusterID` on JSON log lines); none without one.
    pub cluster_id: Option<String>,
    pub log_format: LogFormat,
    pub log_level: tracing::Level,
    pub drain_timeout_secs: u64,
    pub term_pid: Option<u32>,
    pub control_socket: Option<PathBuf>,
    pub handover: bool,
    pub config_file: Option<PathBuf>,
    pub trash_lifetime_secs: u64,
    pub trash_check_interval_secs: u64,
    pub blob_trash: bool,
    pub verified_cache_entries: usize,
}

impl Config {
    /// Flags over the config file over built-in defaults. Also used by SIGHUP to re-read.
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        let cluster = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                cluster_config::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?
            }
            None => ClusterSettings {
                enforce_signatures: true,
                blob_trash: true,
                ..ClusterSettings::default()
            },
        };
        let workers = match cli.workers {
            Some(workers) => workers as usize,
            None => std::thread::available_parallelism()
                .map(|count| count.get())
                .unwrap_or(1),
        };
        let mut fixed: Vec<(PathBuf, VolumeOptions)> = cli
            .volumes
            .into_iter()
            .map(|dir| (dir, VolumeOptions::default()))
            .collect();
        fixed.extend(cluster.volumes);
        if fixed.is_empty() && cli.volume_roots.is_empty() && !cli.discover_mounts {
            fixed.push((PathBuf::from(DEFAULT_VOLUME_DIR), VolumeOptions::default()));
        }
        let signing_key = match cli.blob_signing_key_file.as_deref() {
            Some(path) => Some(read_secret(path)?),
            None => cluster.signing_key,
        };
        Ok(Config {
            listen: cli
                .listen
                .or(cluster.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            volume_sources: VolumeSources {
                fixed,
                roots: cli.volume_roots,
                discover_mounts: cli.discover_mounts,
            },
            workers,
            signing_key: signing_key.map(String::into_bytes),
            enforce_signatures: cluster.enforce_signatures,
            blob_signing_ttl_secs: cli
                .blob_signing_ttl_secs
                .or(cluster.blob_signing_ttl_secs)
                .unwrap_or(BLOB_SIGNING_TTL_SECS_DEFAULT),
            system_root_token: match cli.system_root_token_file.as_deref() {
                Some(path) => Some(read_secret(path)?),
                None => cluster.system_root_token,
            },
            management_token: match cli.management_token_file.as_deref() {
                Some(path) => Some(read_secret(path)?),
                None => cluster.management_token,
            },
            max_buffers: cli
                .max_buffers
                .or(cluster.max_buffers)
                .unwrap_or(MAX_BUFFERS_DEFAULT)
                .max(1),
            cluster_id: Some(cluster.cluster_id).filter(|id| !id.is_empty()),
            log_format: cli.log_format,
            log_level: cli.log_level,
            drain_timeout_secs: cli.drain_timeout_secs,
            term_pid: cli.term_pid,
            control_socket: cli.control_socket,
            handover: !cli.no_handover,
            config_file: cli.config,
            trash_lifetime_secs: cli
                .trash_lifetime_secs
                .or(cluster.trash_lifetime_secs)
                .unwrap_or(TRASH_LIFETIME_SECS_DEFAULT),
            trash_check_interval_secs: cli
                .trash_check_interval_secs
                .or(cluster.trash_check_interval_secs)
                .unwrap_or(TRASH_CHECK_INTERVAL_SECS_DEFAULT)
                .max(1),
            blob_trash: !cli.no_blob_trash && cluster.blob_trash,
            verified_cache_entries: cli.verified_cache_entries as usize,
        })
    }
}

/// Key and token files are whitespace-trimmed, as keepstore's legacy key files were.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_the_local_data_dir() {
        let config = Config::from_cli(Cli::parse_from(["keepring"])).unwrap();
        assert_eq!(config.listen, "127.0.0.1:25107".parse().unwrap());
        assert_eq!(config.volume_sources.fixed[0].0, PathBuf::from(DEFAULT_VOLUME_DIR));
        assert_eq!(config.max_buffers, 128);
        assert!(config.workers >= 1);
    }

    #[test]
    fn unreadable_and_empty_secrets_are_errors() {
        let cli = Cli::parse_from(["keepring", "--blob-signing-key-file", "/nonexistent/key"]);
        assert!(Config::from_cli(cli).unwrap_err().contains("/nonexistent/key"));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let cli = Cli::parse_from(["keepring", "--system-root-token-file", empty.to_str().unwrap()]);
        assert!(Config::from_cli(cli).unwrap_err().contains("empty"));
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(Cli::try_parse_from(["keepring", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["keepring", "--max-buffers", "0"]).is_err());
        assert!(Cli::try_parse_from(["keepring", "--listen", "nowhere"]).is_err());
    }
}
