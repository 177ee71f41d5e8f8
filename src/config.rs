//! Command line → validated `Config`. Flag names are part of the interface (tests outside
//! this repository drive them). Every failure is one line and exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

use crate::limits::{BLOB_SIGNING_TTL_SECS_DEFAULT, DRAIN_TIMEOUT_SECS_DEFAULT, MAX_BUFFERS_DEFAULT};

/// Directory used when no `--volume` is given.
pub const DEFAULT_VOLUME_DIR: &str = "keepring-data";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "keepring",
    version,
    about = "Arvados keepstore-compatible block server on io_uring"
)]
pub struct Cli {
    /// Address to serve on (every worker binds it with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:25107")]
    pub listen: SocketAddr,
    /// A directory volume (repeatable). Default: ./keepring-data, created if missing.
    #[arg(long = "volume", value_name = "DIR")]
    pub volumes: Vec<PathBuf>,
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
    #[arg(long, default_value_t = BLOB_SIGNING_TTL_SECS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_signing_ttl_secs: u64,
    /// Block buffer budget in units of 64 MiB (keepstore's MaxKeepBlobBuffers).
    #[arg(long, default_value_t = MAX_BUFFERS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_buffers: u64,
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
}

/// Everything the supervisor needs, read and checked.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub volume_dirs: Vec<PathBuf>,
    pub workers: usize,
    pub signing_key: Option<Vec<u8>>,
    pub blob_signing_ttl_secs: u64,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    pub max_buffers: u64,
    pub log_format: LogFormat,
    pub log_level: tracing::Level,
    pub drain_timeout_secs: u64,
    pub term_pid: Option<u32>,
    pub control_socket: Option<PathBuf>,
    pub handover: bool,
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        let workers = match cli.workers {
            Some(workers) => workers as usize,
            None => std::thread::available_parallelism()
                .map(|count| count.get())
                .unwrap_or(1),
        };
        let volume_dirs = if cli.volumes.is_empty() {
            vec![PathBuf::from(DEFAULT_VOLUME_DIR)]
        } else {
            cli.volumes
        };
        Ok(Config {
            listen: cli.listen,
            volume_dirs,
            workers,
            signing_key: cli
                .blob_signing_key_file
                .as_deref()
                .map(read_secret)
                .transpose()?
                .map(String::into_bytes),
            blob_signing_ttl_secs: cli.blob_signing_ttl_secs,
            system_root_token: cli.system_root_token_file.as_deref().map(read_secret).transpose()?,
            management_token: cli.management_token_file.as_deref().map(read_secret).transpose()?,
            max_buffers: cli.max_buffers,
            log_format: cli.log_format,
            log_level: cli.log_level,
            drain_timeout_secs: cli.drain_timeout_secs,
            term_pid: cli.term_pid,
            control_socket: cli.control_socket,
            handover: !cli.no_handover,
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
        assert_eq!(config.volume_dirs, [PathBuf::from(DEFAULT_VOLUME_DIR)]);
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
