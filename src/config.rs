//! Command line → validated `Config`. Flag names are part of the interface (tests outside
//! this repository drive them). Every failure is one line and exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};

use crate::cluster_config::this_host::{self, Chosen, SystemProbe};
use crate::cluster_config::{self, ClusterFile, ClusterSettings, TlsFiles};
use crate::limits::{
    BLOB_SIGNING_TTL_SECS_DEFAULT, DRAIN_TIMEOUT_SECS_DEFAULT, MAX_BUFFERS_DEFAULT, SCRUB_INTERVAL_SECS_DEFAULT,
    SCRUB_RATE_MB_DEFAULT, TRASH_CHECK_INTERVAL_SECS_DEFAULT, TRASH_LIFETIME_SECS_DEFAULT,
};
use crate::volume::location::Location;
use crate::volume::VolumeOptions;
use crate::volumes::discovery::VolumeSources;

/// Address used when neither `--listen` nor a config file gives one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:25107";

/// Directory used when no volume comes from any source.
pub const DEFAULT_VOLUME_DIR: &str = "keepring-data";

/// The cluster config keepstore reads when it is given none (and `$ARVADOS_CONFIG` is unset).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/arvados/config.yml";

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
    /// SIGHUP re-reads it. Default, when no flag names a volume: $ARVADOS_CONFIG, else
    /// /etc/arvados/config.yml if it exists.
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
    /// Log line format. Default: the config's SystemLogs.Format (json), else text.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Lowest level logged: error, warn, info (one line per request), debug, trace.
    /// Default: the config's SystemLogs.LogLevel, else info.
    #[arg(long)]
    pub log_level: Option<tracing::Level>,
    /// Client connections open at once (per process, shared evenly by the workers); at
    /// the limit the least recently used idle keep-alive connection is closed to admit a
    /// new client. Default: 4096 per worker, at most half the open-files limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Requests served at once; more wait (up to --max-queued-requests) or get 503.
    /// 0: no limit. Default: the config's API.MaxConcurrentRequests (64), else 0.
    #[arg(long)]
    pub max_concurrent_requests: Option<usize>,
    /// Requests that may wait for a slot; past it a request gets 503 at once.
    /// Default: the config's API.MaxQueuedRequests (128).
    #[arg(long)]
    pub max_queued_requests: Option<usize>,
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
    /// Serve HTTPS with this PEM certificate chain (leaf first), with --tls-key. Overrides
    /// the config's TLS.Certificate; SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_certificate: Option<PathBuf>,
    /// The PEM private key of --tls-certificate.
    #[arg(long, value_name = "FILE", requires = "tls_certificate")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a trashed block stays recoverable (keepstore's BlobTrashLifetime); 0 deletes
    /// at once.
    #[arg(long)]
    pub trash_lifetime_secs: Option<u64>,
    /// Seconds between passes of the trash emptier (BlobTrashCheckInterval), the first one
    /// interval after start; 0 turns it off.
    #[arg(long)]
    pub trash_check_interval_secs: Option<u64>,
    /// Refuse DELETE (405) and ignore trash lists (keepstore's `BlobTrash: false`).
    #[arg(long)]
    pub no_blob_trash: bool,
    /// Stored copies each worker remembers as verified (by device, inode, size, mtime,
    /// ctime) so hot blocks are not rehashed on every GET. 0 (default): hash every read,
    /// as keepstore does. See README "Verified-copy cache" for the trade-off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub verified_cache_entries: u64,
    /// Seconds between full scrub passes over every volume: each stored copy is read at
    /// `--scrub-rate-mb` and its MD5 checked; a bad copy is quarantined. 0 turns the
    /// scrubber off. See README "Scrubber".
    #[arg(long, default_value_t = SCRUB_INTERVAL_SECS_DEFAULT)]
    pub scrub_interval_secs: u64,
    /// Scrub reads per volume, in MB/s (10^6 bytes); 0: as fast as the disk and the
    /// core allow.
    #[arg(long, default_value_t = SCRUB_RATE_MB_DEFAULT)]
    pub scrub_rate_mb: u64,
}

/// Where the process looks for a cluster config and its own service URL: the
/// environment keepstore reads (`ARVADOS_CONFIG`, `ARVADOS_SERVICE_INTERNAL_URL`) and the
/// packaged default path. Tests give their own.
#[derive(Debug, Clone)]
pub struct Environment {
    pub arvados_config: Option<PathBuf>,
    pub service_internal_url: Option<String>,
    pub default_config: PathBuf,
}

impl Environment {
    pub fn from_process() -> Environment {
        Environment {
            arvados_config: std::env::var_os("ARVADOS_CONFIG")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            service_internal_url: std::env::var("ARVADOS_SERVICE_INTERNAL_URL").ok(),
            default_config: PathBuf::from(DEFAULT_CONFIG_FILE),
        }
    }
}

/// The config file as loaded, for `arvados_config_*_timestamp_seconds{sha256}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub sha256: String,
    /// The file's mtime and the time it was read, Unix seconds.
    pub modified_secs: f64,
    pub loaded_secs: f64,
}

/// Everything the supervisor needs, read and checked.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// This node's `Services.Keepstore.InternalURLs` entry, when a config names one.
    pub service: Option<Chosen>,
    /// The listener serves HTTPS with these files (an https ListenURL's `TLS.*`, or the
    /// `--tls-*` flags); None: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The cluster's `TLS.Insecure`: the pull worker accepts any certificate from an
    /// https peer (S3 volumes carry their own copy in their parameters).
    pub tls_insecure: bool,
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
    pub config_source: Option<ConfigSource>,
    pub trash_lifetime_secs: u64,
    /// 0: the trash emptier does not run.
    pub trash_check_interval_secs: u64,
    pub blob_trash: bool,
    /// Trash list workers (`BlobTrashConcurrency`), deleters per volume in an emptier pass
    /// (`BlobDeleteConcurrency`; 0 turns the emptier off) and pull workers
    /// (`BlobReplicateConcurrency`, at least 1).
    pub trash_concurrency: usize,
    pub delete_concurrency: usize,
    pub replicate_concurrency: usize,
    /// Requests served at once (0: no limit) and waiting beyond that before a 503.
    pub max_concurrent_requests: usize,
    pub max_queued_requests: usize,
    /// `--max-connections`; None: the default from the open-files limit at start.
    pub max_connections: Option<u64>,
    pub verified_cache_entries: usize,
    /// `--scrub-interval-secs` (0: off) and `--scrub-rate-mb` (0: unbounded).
    pub scrub_interval_secs: u64,
    pub scrub_rate_mb: u64,
    /// Things worth a warning once logging is up (the config is read before).
    pub warnings: Vec<String>,
}

/// The cluster config to read: `--config`, else (when no flag names a volume) the one
/// keepstore would read: `$ARVADOS_CONFIG`, else the packaged path when it exists.
/// A SIGHUP re-read uses the file the running configuration came from (a file briefly
/// missing must not turn a deployed node into the embedded default), and a successor
/// (`--term-pid`) with no config and no volume flag must find one: it replaces a deployed
/// node, never with `./keepring-data`.
fn config_path(cli: &Cli, env: &Environment, running: Option<&Config>) -> Result<Option<PathBuf>, String> {
    if let Some(running) = running {
        return Ok(running.config_file.clone());
    }
    if cli.config.is_some() {
        return Ok(cli.config.clone());
    }
    let volume_flags = !cli.volumes.is_empty() || !cli.volume_roots.is_empty() || cli.discover_mounts;
    if volume_flags {
        return Ok(None);
    }
    let found = env
        .arvados_config
        .clone()
        .or_else(|| env.default_config.is_file().then(|| env.default_config.clone()));
    match found {
        None if cli.term_pid.is_some() => Err(format!(
            "--term-pid replaces a running node but no config was found ({} missing, $ARVADOS_CONFIG unset) \
             and no volume flag was given",
            env.default_config.display()
        )),
        found => Ok(found),
    }
}

fn load_cluster(path: &Path) -> Result<(ClusterFile, ConfigSource), String> {
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let loaded_secs = unix_secs(SystemTime::now());
    let modified_secs = std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .map(unix_secs)
        .unwrap_or(loaded_secs);
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let file = cluster_config::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    let source = ConfigSource {
        path: path.to_path_buf(),
        sha256: crate::signature::hex(&openssl::sha::sha256(text.as_bytes())),
        modified_secs,
        loaded_secs,
    };
    Ok((file, source))
}

fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs_f64())
        .unwrap_or(0.0)
}

/// This node's entry: the one already chosen (a reload keeps it), else `this_host`'s
/// choice. With `--listen`, a config whose entries are all elsewhere is no error: the
/// flag says where to listen, and only volumes without `AccessViaHosts` are this node's.
fn choose_service(
    file: &ClusterFile,
    cli: &Cli,
    env: &Environment,
    running: Option<&Config>,
    warnings: &mut Vec<String>,
) -> Result<Option<Chosen>, String> {
    if let Some(running) = running {
        return Ok(running.service.clone());
    }
    let entries = file.service_entries()?;
    let env_url = env.service_internal_url.as_deref();
    match this_host::choose(&entries, env_url, cli.term_pid, &SystemProbe) {
        Ok(Some(chosen)) => {
            if !entries.iter().any(|entry| entry.internal == chosen.entry.internal) {
                warnings.push(format!(
                    "ARVADOS_SERVICE_INTERNAL_URL {} is not among Services.Keepstore.InternalURLs; serving it anyway",
                    chosen.entry.internal
                ));
            }
            Ok(Some(chosen))
        }
        Ok(None) => Ok(None),
        Err(error) if cli.listen.is_some() => {
            warnings.push(format!(
                "{error}; listening on --listen, with no InternalURL of its own"
            ));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

fn cluster_settings(
    cli: &Cli,
    env: &Environment,
    running: Option<&Config>,
    warnings: &mut Vec<String>,
) -> Result<(ClusterSettings, Option<ConfigSource>), String> {
    let Some(path) = config_path(cli, env, running)? else {
        let defaults = ClusterSettings {
            enforce_signatures: true,
            blob_trash: true,
            trash_concurrency: cluster_config::TRASH_CONCURRENCY_DEFAULT,
            delete_concurrency: cluster_config::TRASH_CONCURRENCY_DEFAULT,
            replicate_concurrency: cluster_config::TRASH_CONCURRENCY_DEFAULT,
            ..ClusterSettings::default()
        };
        return Ok((defaults, None));
    };
    let (file, source) = load_cluster(&path)?;
    let service =
        choose_service(&file, cli, env, running, warnings).map_err(|error| format!("{}: {error}", path.display()))?;
    let settings = file
        .settings(service)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok((settings, Some(source)))
}

impl Config {
    /// The process's own command line and environment.
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        Config::resolve(cli, &Environment::from_process(), None)
    }

    /// Flags over the config file over built-in defaults. `running`: the configuration
    /// being replaced by a SIGHUP re-read, whose service entry stays.
    pub fn resolve(cli: Cli, env: &Environment, running: Option<&Config>) -> Result<Config, String> {
        let mut warnings = Vec::new();
        let (cluster, source) = cluster_settings(&cli, env, running, &mut warnings)?;
        Config::from_settings(cli, cluster, source, warnings)
    }

    /// Flags over settings already taken from a config file (`source`: the file they came
    /// from; None: there is none) over built-in defaults. Reads nothing but the files the
    /// flags name and probes nothing, so the fuzz target `cluster_config` turns text into
    /// a `Config` through it as `resolve` does.
    pub fn from_settings(
        cli: Cli,
        cluster: ClusterSettings,
        source: Option<ConfigSource>,
        warnings: Vec<String>,
    ) -> Result<Config, String> {
        let from_file = source.is_some();
        let fixed = fixed_volumes(&cli, cluster.volumes, from_file, cluster.service.as_ref())?;
        let signing_key = secret_or(cli.blob_signing_key_file.as_deref(), cluster.signing_key)?;
        check_signing_key(signing_key.as_deref(), from_file, cluster.enforce_signatures)?;
        let listen = listen_address(cli.listen, cluster.service.as_ref(), from_file)?;
        let tls = tls_files(&cli, cluster.tls, cluster.service.as_ref())?;
        let trash_check_interval_secs = match (cli.trash_check_interval_secs, cluster.trash_check_interval_secs) {
            (Some(secs), _) => secs,
            (None, Some(secs)) => secs.max(0) as u64,
            (None, None) => TRASH_CHECK_INTERVAL_SECS_DEFAULT,
        };
        let (log_format, log_level) = log_settings(&cli, from_file, cluster.log_json, cluster.log_level);
        let max_concurrent_requests =
            cli.max_concurrent_requests
                .unwrap_or(if from_file { cluster.max_concurrent_requests } else { 0 });
        Ok(Config {
            listen,
            tls,
            tls_insecure: cluster.tls_insecure,
            service: cluster.service,
            volume_sources: VolumeSources {
                fixed,
                roots: cli.volume_roots,
                discover_mounts: cli.discover_mounts,
            },
            workers: worker_count(cli.workers),
            signing_key: signing_key.map(String::into_bytes),
            enforce_signatures: cluster.enforce_signatures,
            blob_signing_ttl_secs: cli
                .blob_signing_ttl_secs
                .or(cluster.blob_signing_ttl_secs)
                .unwrap_or(BLOB_SIGNING_TTL_SECS_DEFAULT),
            system_root_token: secret_or(cli.system_root_token_file.as_deref(), cluster.system_root_token)?,
            management_token: secret_or(cli.management_token_file.as_deref(), cluster.management_token)?,
            max_buffers: cli
                .max_buffers
                .or(cluster.max_buffers)
                .unwrap_or(MAX_BUFFERS_DEFAULT)
                .max(1),
            log_format,
            log_level,
            drain_timeout_secs: cli.drain_timeout_secs,
            term_pid: cli.term_pid,
            control_socket: cli.control_socket,
            handover: !cli.no_handover,
            config_file: source.as_ref().map(|source| source.path.clone()),
            config_source: source,
            cluster_id: from_file.then_some(cluster.cluster_id),
            trash_lifetime_secs: cli
                .trash_lifetime_secs
                .or(cluster.trash_lifetime_secs)
                .unwrap_or(TRASH_LIFETIME_SECS_DEFAULT),
            trash_check_interval_secs,
            blob_trash: !cli.no_blob_trash && cluster.blob_trash,
            trash_concurrency: cluster.trash_concurrency,
            delete_concurrency: cluster.delete_concurrency,
            replicate_concurrency: cluster.replicate_concurrency.max(1),
            max_concurrent_requests,
            max_queued_requests: cli.max_queued_requests.unwrap_or(cluster.max_queued_requests),
            max_connections: cli.max_connections,
            verified_cache_entries: cli.verified_cache_entries as usize,
            scrub_interval_secs: cli.scrub_interval_secs,
            scrub_rate_mb: cli.scrub_rate_mb,
            warnings,
        })
    }
}

fn worker_count(flag: Option<u16>) -> usize {
    match flag {
        Some(workers) => workers as usize,
        None => std::thread::available_parallelism()
            .map(|count| count.get())
            .unwrap_or(1),
    }
}

/// `--volume` flags and the config's volumes for this node; the embedded
/// `./keepring-data` only when neither a config nor any volume flag was given.
fn fixed_volumes(
    cli: &Cli,
    configured: Vec<(Location, VolumeOptions)>,
    from_file: bool,
    service: Option<&Chosen>,
) -> Result<Vec<(Location, VolumeOptions)>, String> {
    let mut fixed: Vec<(Location, VolumeOptions)> = cli
        .volumes
        .iter()
        .map(|dir| (Location::Directory(dir.clone()), VolumeOptions::default()))
        .collect();
    fixed.extend(configured);
    let live_sources = !cli.volume_roots.is_empty() || cli.discover_mounts;
    if fixed.is_empty() && !live_sources {
        if from_file {
            return Err(no_volume_reason(service));
        }
        fixed.push((
            Location::Directory(PathBuf::from(DEFAULT_VOLUME_DIR)),
            VolumeOptions::default(),
        ));
    }
    Ok(fixed)
}

/// `--listen`, else this node's InternalURL, else (no config) the embedded default.
fn listen_address(flag: Option<SocketAddr>, service: Option<&Chosen>, from_file: bool) -> Result<SocketAddr, String> {
    match (flag, service) {
        (Some(listen), _) => Ok(listen),
        (None, Some(chosen)) => Ok(chosen.address),
        (None, None) if from_file => {
            Err("no listen address: Services.Keepstore.InternalURLs is empty and --listen is not given".into())
        }
        (None, None) => DEFAULT_LISTEN
            .parse()
            .map_err(|_| "bad built-in listen address".to_string()),
    }
}

/// `--tls-certificate` and `--tls-key` (clap makes them come together) over the config's
/// files. The flags cannot turn an http ListenURL into an https one: its clients would
/// not speak TLS.
fn tls_files(cli: &Cli, configured: Option<TlsFiles>, service: Option<&Chosen>) -> Result<Option<TlsFiles>, String> {
    let (Some(certificate), Some(key)) = (&cli.tls_certificate, &cli.tls_key) else {
        return Ok(configured);
    };
    if let Some(chosen) = service.filter(|chosen| !chosen.entry.listen.is_https()) {
        return Err(format!(
            "--tls-certificate: this node's ListenURL {} is http; make it https to serve TLS",
            chosen.entry.listen
        ));
    }
    Ok(Some(TlsFiles {
        certificate: certificate.clone(),
        key: key.clone(),
    }))
}

/// The flag's file when given, else the config's value.
fn secret_or(file: Option<&Path>, configured: Option<String>) -> Result<Option<String>, String> {
    match file {
        Some(path) => read_secret(path).map(Some),
        None => Ok(configured),
    }
}

fn no_volume_reason(service: Option<&Chosen>) -> String {
    let node = match service {
        Some(chosen) => format!("for {}", chosen.entry.internal),
        None => "for this node (it has no InternalURL, so only volumes without AccessViaHosts)".to_string(),
    };
    format!("no volume configured {node}: add one to Volumes or give --volume")
}

/// keepstore refuses to start with signatures on and no key to check them with.
fn check_signing_key(key: Option<&str>, from_file: bool, enforce: bool) -> Result<(), String> {
    if let Some(key) = key {
        cluster_config::check_secret("blob signing key", key)?;
    } else if from_file && enforce {
        return Err("cannot enable Collections.BlobSigning with no Collections.BlobSigningKey".into());
    }
    Ok(())
}

/// Flags, else the config's `SystemLogs` (JSON by default there, as keepstore logs),
/// else text at info.
fn log_settings(cli: &Cli, from_file: bool, json: bool, level: Option<tracing::Level>) -> (LogFormat, tracing::Level) {
    let format = cli.log_format.unwrap_or(match from_file && json {
        true => LogFormat::Json,
        false => LogFormat::Text,
    });
    (format, cli.log_level.or(level).unwrap_or(tracing::Level::INFO))
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

    /// No environment and no packaged config file.
    fn bare() -> Environment {
        Environment {
            arvados_config: None,
            service_internal_url: None,
            default_config: PathBuf::from("/nonexistent/arvados/config.yml"),
        }
    }

    fn resolve(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["keepring"];
        argv.extend_from_slice(args);
        Config::resolve(Cli::parse_from(argv), &bare(), None)
    }

    #[test]
    fn defaults_give_the_local_data_dir() {
        let config = resolve(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:25107".parse().unwrap());
        assert_eq!(
            config.volume_sources.fixed[0].0,
            Location::Directory(PathBuf::from(DEFAULT_VOLUME_DIR))
        );
        assert_eq!(config.max_buffers, 128);
        assert!(config.workers >= 1);
    }

    #[test]
    fn unreadable_and_empty_secrets_are_errors() {
        let error = resolve(&["--blob-signing-key-file", "/nonexistent/key"]).unwrap_err();
        assert!(error.contains("/nonexistent/key"));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let error = resolve(&["--system-root-token-file", empty.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("empty"));
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(Cli::try_parse_from(["keepring", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["keepring", "--max-buffers", "0"]).is_err());
        assert!(Cli::try_parse_from(["keepring", "--listen", "nowhere"]).is_err());
    }

    fn write_config(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("config.yml");
        std::fs::write(&path, format!("Clusters:\n  zzzzz:\n{body}")).unwrap();
        path
    }

    const KEY: &str = "    Collections:\n      BlobSigningKey: abcdefghijklmnopqrstuvwxyz0123456789\n";

    fn volume_at(dir: &Path) -> String {
        format!(
            "    Volumes:\n      zzzzz-nyw5e-000000000000000:\n        Driver: Directory\n        \
             DriverParameters: {{Root: {}}}\n",
            dir.display()
        )
    }

    #[test]
    fn the_config_keepstore_would_read_is_read_unless_flags_name_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &format!("{KEY}{}", volume_at(dir.path())));
        let env = Environment {
            arvados_config: Some(path.clone()),
            ..bare()
        };
        let run = |args: &[&str], env: &Environment| {
            let mut argv = vec!["keepring"];
            argv.extend_from_slice(args);
            Config::resolve(Cli::parse_from(argv), env, None)
        };
        let config = run(&["--listen", "127.0.0.1:0"], &env).unwrap();
        assert_eq!(config.config_file.as_deref(), Some(path.as_path()));
        assert_eq!(config.cluster_id.as_deref(), Some("zzzzz"));
        assert_eq!(config.log_format, LogFormat::Json, "keepstore's default log format");
        assert_eq!(config.max_concurrent_requests, 64);
        let source = config.config_source.unwrap();
        assert_eq!(source.sha256.len(), 64);
        let flagged = run(&["--volume", "/tmp/elsewhere"], &env).unwrap();
        assert_eq!(flagged.config_file, None, "volume flags: no implicit config");
        let packaged = Environment {
            default_config: path.clone(),
            ..bare()
        };
        let config = run(&["--listen", "127.0.0.1:0"], &packaged).unwrap();
        assert_eq!(config.config_file.as_deref(), Some(path.as_path()));
        let missing = Environment {
            arvados_config: Some(dir.path().join("absent.yml")),
            ..bare()
        };
        assert!(run(&[], &missing).unwrap_err().contains("absent.yml"));
        let error = run(&["--term-pid", "4242"], &bare()).unwrap_err();
        assert!(
            error.contains("no config was found"),
            "a successor never runs on the embedded default: {error}"
        );
        // A SIGHUP re-read keeps to the running file, even when the environment changed.
        let running = run(&["--listen", "127.0.0.1:0"], &env).unwrap();
        std::fs::remove_file(&path).unwrap();
        let cli = Cli::parse_from(["keepring", "--listen", "127.0.0.1:0"]);
        let error = Config::resolve(cli, &bare(), Some(&running)).unwrap_err();
        assert!(
            error.contains("config.yml"),
            "a missing file is an error, not the default: {error}"
        );
    }

    #[test]
    fn signing_without_a_key_and_no_volume_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let no_key = write_config(dir.path(), &volume_at(dir.path()));
        let error = resolve(&["--listen", "127.0.0.1:0", "--config", no_key.to_str().unwrap()]).unwrap_err();
        assert!(
            error.contains("BlobSigning with no Collections.BlobSigningKey"),
            "{error}"
        );
        let signing_off = write_config(
            dir.path(),
            &format!("    Collections:\n      BlobSigning: false\n{}", volume_at(dir.path())),
        );
        assert!(resolve(&["--listen", "127.0.0.1:0", "--config", signing_off.to_str().unwrap()]).is_ok());
        let no_volume = write_config(dir.path(), KEY);
        let error = resolve(&["--listen", "127.0.0.1:0", "--config", no_volume.to_str().unwrap()]).unwrap_err();
        assert!(error.starts_with("no volume configured"), "{error}");
        let error = resolve(&["--config", no_volume.to_str().unwrap(), "--volume-root", "/nonexistent"]);
        assert!(error.is_err(), "no listen address without InternalURLs or --listen");
        let bad_key = dir.path().join("key");
        std::fs::write(&bad_key, "has spaces in it\n").unwrap();
        let error = resolve(&["--blob-signing-key-file", bad_key.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("unacceptable characters"), "{error}");
    }
}
