//! An Arvados cluster `config.yml`, read as keepstore 3.2.1 reads it (keep-protocol.md
//! §7.1), so a node moves from keepstore to keepring with the cluster's one shared file.
//! `parse` reads the text; `ClusterFile::settings` then picks what belongs to this node
//! (its `InternalURLs` entry, chosen by `this_host`; the volumes whose `AccessViaHosts` is
//! empty or names it) and refuses, as keepstore does, settings that would serve unsafely
//! (an unknown driver on one of this node's volumes, a token keepstore would refuse, an
//! https URL without the certificate and key to serve it); an S3 volume's parameters are
//! checked and defaulted in `s3`. Every key read or refused is listed in the README's
//! configuration section; any other key is ignored. Pure: text in, settings out.

pub mod s3;
pub mod this_host;
pub mod url;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::volume::location::Location;
use crate::volume::VolumeOptions;
use this_host::ServiceEntry;
use url::ServiceUrl;

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(rename = "Clusters")]
    clusters: BTreeMap<String, Cluster>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Cluster {
    system_root_token: String,
    management_token: String,
    services: Services,
    collections: Collections,
    #[serde(rename = "API")]
    api: Api,
    volumes: BTreeMap<String, VolumeEntry>,
    storage_classes: BTreeMap<String, StorageClass>,
    system_logs: SystemLogs,
    #[serde(rename = "TLS")]
    tls: Tls,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Services {
    keepstore: Service,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Service {
    #[serde(rename = "InternalURLs")]
    internal_urls: BTreeMap<String, Option<InternalUrlEntry>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InternalUrlEntry {
    #[serde(rename = "ListenURL")]
    listen_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Collections {
    blob_signing: Option<bool>,
    blob_signing_key: String,
    #[serde(rename = "BlobSigningTTL")]
    blob_signing_ttl: Option<String>,
    blob_trash: Option<bool>,
    blob_trash_lifetime: Option<String>,
    blob_trash_check_interval: Option<String>,
    blob_trash_concurrency: Option<i64>,
    blob_delete_concurrency: Option<i64>,
    blob_replicate_concurrency: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Api {
    max_keep_blob_buffers: Option<i64>,
    max_concurrent_requests: Option<i64>,
    max_queued_requests: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SystemLogs {
    format: String,
    log_level: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Tls {
    certificate: String,
    key: String,
    /// Accept any certificate when connecting to servers (pull peers, S3 endpoints).
    insecure: bool,
    #[serde(rename = "ACME")]
    acme: Acme,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Acme {
    server: String,
}

/// The PEM files an HTTPS listener serves: its certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeEntry {
    driver: String,
    driver_parameters: DriverParameters,
    read_only: bool,
    allow_trash_when_read_only: bool,
    replication: Option<u32>,
    storage_classes: BTreeMap<String, bool>,
    access_via_hosts: BTreeMap<String, Option<HostAccess>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct HostAccess {
    read_only: bool,
}

/// Every driver's keys in one map, as keepstore's `config.default.yml` lists them; a
/// volume reads its own driver's (`Root` for Directory, the rest for S3: `s3.rs`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DriverParameters {
    root: String,
    #[serde(rename = "AccessKeyID")]
    access_key_id: String,
    secret_access_key: String,
    /// keepstore's old names for the two above (lib/config/deprecated.go).
    access_key: String,
    secret_key: String,
    endpoint: String,
    region: String,
    bucket: String,
    location_constraint: bool,
    #[serde(rename = "V2Signature")]
    v2_signature: bool,
    use_path_style: bool,
    index_page_size: Option<i64>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    race_window: Option<String>,
    unsafe_delete: bool,
    prefix_length: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StorageClass {
    priority: i64,
}

/// keepstore's defaults for the keys below (lib/config/config.default.yml, 3.2.1).
pub const TRASH_CONCURRENCY_DEFAULT: usize = 4;
pub const MAX_CONCURRENT_REQUESTS_DEFAULT: usize = 64;
pub const MAX_QUEUED_REQUESTS_DEFAULT: usize = 128;

/// What keepring takes from a cluster config for this node; `None` where the file is
/// silent and keepring's own default (or a flag) decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSettings {
    pub cluster_id: String,
    /// This node's `InternalURLs` entry and the address to bind for it.
    pub service: Option<this_host::Chosen>,
    /// `TLS.Certificate` and `TLS.Key` when this node's ListenURL is https.
    pub tls: Option<TlsFiles>,
    /// `TLS.Insecure` (default false): keepring's clients (the pull worker, S3 volumes'
    /// https endpoints) accept any certificate, as keepstore's do with it.
    pub tls_insecure: bool,
    pub signing_key: Option<String>,
    /// `Collections.BlobSigning` (default true): check signatures on reads.
    pub enforce_signatures: bool,
    pub blob_signing_ttl_secs: Option<u64>,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    pub max_buffers: Option<u64>,
    pub volumes: Vec<(Location, VolumeOptions)>,
    /// `Collections.BlobTrash` (default true): DELETE and trash lists are honoured.
    pub blob_trash: bool,
    pub trash_lifetime_secs: Option<u64>,
    /// `BlobTrashCheckInterval`; zero or negative turns the trash emptier off.
    pub trash_check_interval_secs: Option<i64>,
    /// `BlobTrashConcurrency`, `BlobDeleteConcurrency`, `BlobReplicateConcurrency`
    /// (negative read as 0).
    pub trash_concurrency: usize,
    pub delete_concurrency: usize,
    pub replicate_concurrency: usize,
    /// `API.MaxConcurrentRequests` (0: no limit) and `API.MaxQueuedRequests`.
    pub max_concurrent_requests: usize,
    pub max_queued_requests: usize,
    /// `SystemLogs.Format` (`json`, the default, or `text`) and `SystemLogs.LogLevel`.
    pub log_json: bool,
    pub log_level: Option<tracing::Level>,
}

/// A parsed config file, not yet narrowed to this node.
pub struct ClusterFile {
    pub cluster_id: String,
    cluster: Cluster,
}

pub fn parse(text: &str) -> Result<ClusterFile, String> {
    let file: ConfigFile = yaml_serde::from_str(text).map_err(|error| format!("config does not parse: {error}"))?;
    let mut clusters = file.clusters.into_iter();
    match (clusters.next(), clusters.next()) {
        (Some((cluster_id, cluster)), None) => Ok(ClusterFile { cluster_id, cluster }),
        (None, _) => Err("config has no cluster under Clusters".into()),
        (Some(_), Some(_)) => Err("config has several clusters; keepring serves one".into()),
    }
}

impl ClusterFile {
    /// Every `Services.Keepstore.InternalURLs` entry, normalised, in sorted order.
    pub fn service_entries(&self) -> Result<Vec<ServiceEntry>, String> {
        let mut entries = Vec::new();
        for (text, entry) in &self.cluster.services.keepstore.internal_urls {
            let internal =
                ServiceUrl::parse(text).map_err(|error| format!("Services.Keepstore.InternalURLs: {error}"))?;
            let listen_text = entry.as_ref().map(|entry| entry.listen_url.as_str()).unwrap_or("");
            let listen = match listen_text.is_empty() {
                true => internal.clone(),
                false => ServiceUrl::parse(listen_text).map_err(|error| format!("ListenURL of {internal}: {error}"))?,
            };
            entries.push(ServiceEntry { internal, listen });
        }
        entries.sort_by(|a, b| a.internal.cmp(&b.internal));
        Ok(entries)
    }

    /// This node's settings, `service` being its entry (None: it has none, so only the
    /// volumes without `AccessViaHosts` are its own).
    pub fn settings(self, service: Option<this_host::Chosen>) -> Result<ClusterSettings, String> {
        let cluster = self.cluster;
        check_secrets(&cluster)?;
        let tls = match &service {
            Some(chosen) => tls_files(chosen, &cluster.tls)?,
            None => None,
        };
        let collections = &cluster.collections;
        let duration = |text: &Option<String>| text.as_deref().map(parse_duration_secs).transpose();
        let concurrency = |value: Option<i64>| value.map_or(TRASH_CONCURRENCY_DEFAULT, |value| value.max(0) as usize);
        let max_buffers = match cluster.api.max_keep_blob_buffers {
            Some(count) if count <= 0 => return Err("API.MaxKeepBlobBuffers must be greater than 0".into()),
            other => other.map(|count| count as u64),
        };
        let this_url = service.as_ref().map(|chosen| &chosen.entry.internal);
        let volumes = node_volumes(&cluster, this_url)?;
        let (log_json, log_level) = log_settings(&cluster.system_logs)?;
        let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_string());
        Ok(ClusterSettings {
            cluster_id: self.cluster_id,
            service,
            tls,
            tls_insecure: cluster.tls.insecure,
            signing_key: non_empty(&collections.blob_signing_key),
            enforce_signatures: collections.blob_signing.unwrap_or(true),
            blob_signing_ttl_secs: duration(&collections.blob_signing_ttl)?.map(|secs| secs.max(0) as u64),
            system_root_token: non_empty(&cluster.system_root_token),
            management_token: non_empty(&cluster.management_token),
            max_buffers,
            volumes,
            blob_trash: collections.blob_trash.unwrap_or(true),
            trash_lifetime_secs: duration(&collections.blob_trash_lifetime)?.map(|secs| secs.max(0) as u64),
            trash_check_interval_secs: duration(&collections.blob_trash_check_interval)?,
            trash_concurrency: concurrency(collections.blob_trash_concurrency),
            delete_concurrency: concurrency(collections.blob_delete_concurrency),
            replicate_concurrency: concurrency(collections.blob_replicate_concurrency),
            max_concurrent_requests: cluster
                .api
                .max_concurrent_requests
                .map_or(MAX_CONCURRENT_REQUESTS_DEFAULT, |value| value.max(0) as usize),
            max_queued_requests: cluster
                .api
                .max_queued_requests
                .map_or(MAX_QUEUED_REQUESTS_DEFAULT, |value| value.max(0) as usize),
            log_json,
            log_level,
        })
    }
}

/// keepstore's loader refuses tokens and the signing key with characters other than
/// a-z, A-Z, 0-9 (lib/config/load.go `checkToken`); so does keepring.
fn check_secrets(cluster: &Cluster) -> Result<(), String> {
    let secrets = [
        ("SystemRootToken", &cluster.system_root_token),
        ("ManagementToken", &cluster.management_token),
        ("Collections.BlobSigningKey", &cluster.collections.blob_signing_key),
    ];
    for (name, value) in secrets {
        check_secret(name, value)?;
    }
    Ok(())
}

/// The characters keepstore accepts in a token or key, wherever it comes from.
pub fn check_secret(name: &str, value: &str) -> Result<(), String> {
    match value.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        true => Ok(()),
        false => Err(format!(
            "{name}: unacceptable characters in token (only a-z, A-Z, 0-9 are acceptable)"
        )),
    }
}

/// An https ListenURL is served with `TLS.Certificate` and `TLS.Key`, read as keepstore
/// reads them (lib/service/tls.go: a `file://` prefix trimmed, the rest a path); without
/// both it is refused, never served as plain HTTP. keepstore's other way, certificates
/// from an ACME cache (`TLS.ACME.Server`), is refused too. An http ListenURL ignores them.
fn tls_files(chosen: &this_host::Chosen, tls: &Tls) -> Result<Option<TlsFiles>, String> {
    if !chosen.entry.listen.is_https() {
        return Ok(None);
    }
    if !tls.acme.server.is_empty() {
        return Err(format!(
            "{} is https with TLS.ACME.Server set: keepring does not take certificates from ACME; \
             set TLS.Certificate and TLS.Key instead",
            chosen.entry.listen
        ));
    }
    if tls.certificate.is_empty() || tls.key.is_empty() {
        return Err(format!(
            "{} is https but TLS.Certificate and TLS.Key are not both set",
            chosen.entry.listen
        ));
    }
    let path = |value: &str| PathBuf::from(value.strip_prefix("file://").unwrap_or(value));
    Ok(Some(TlsFiles {
        certificate: path(&tls.certificate),
        key: path(&tls.key),
    }))
}

fn log_settings(logs: &SystemLogs) -> Result<(bool, Option<tracing::Level>), String> {
    let json = match logs.format.to_ascii_lowercase().as_str() {
        "" | "json" => true,
        "text" | "plain" => false,
        other => return Err(format!("SystemLogs.Format: unknown format {other:?} (json or text)")),
    };
    let level = match logs.log_level.to_ascii_lowercase().as_str() {
        "" => None,
        "panic" | "fatal" | "error" => Some(tracing::Level::ERROR),
        "warn" | "warning" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        "trace" => Some(tracing::Level::TRACE),
        other => return Err(format!("SystemLogs.LogLevel: unknown level {other:?}")),
    };
    Ok((json, level))
}

/// The volumes this node serves: `AccessViaHosts` empty or naming `this_url`. Read-only
/// when the volume or this node's `AccessViaHosts` entry says so; a read-only volume
/// still trashes with `AllowTrashWhenReadOnly`, unless read-only for this host only
/// (keepstore.go: `AllowTrash = !hostRO && (!ReadOnly || AllowTrashWhenReadOnly)`).
fn node_volumes(cluster: &Cluster, this_url: Option<&ServiceUrl>) -> Result<Vec<(Location, VolumeOptions)>, String> {
    let mut volumes = Vec::new();
    for (uuid, entry) in &cluster.volumes {
        if entry.driver == "S3" {
            s3::check_key_names(uuid, &entry.driver_parameters)?;
        }
        let Some(host_read_only) = host_access(uuid, entry, this_url)? else {
            continue;
        };
        let location = match entry.driver.as_str() {
            "Directory" => Location::Directory(directory_root(uuid, &entry.driver_parameters)?),
            // keepstore 3.2.1's S3 driver checks the endpoint's certificate whatever
            // TLS.Insecure says (its AWS SDK client ignores it): so does keepring, so a
            // cluster setting meant for its own self-signed services never weakens the
            // check on an object store (a private CA goes in the system trust store).
            "S3" => Location::S3(s3::parameters(uuid, &entry.driver_parameters)?),
            "Azure" => return Err(format!("volume {uuid}: Driver Azure is not supported by keepring yet")),
            other => return Err(format!("volume {uuid}: invalid driver {other:?}")),
        };
        let mut classes: Vec<String> = entry
            .storage_classes
            .iter()
            .filter(|(_, enabled)| **enabled)
            .map(|(class, _)| class.clone())
            .collect();
        let priority = classes
            .iter()
            .filter_map(|class| cluster.storage_classes.get(class))
            .map(|class| class.priority)
            .max();
        if classes.is_empty() {
            classes.push("default".into());
        }
        let read_only = entry.read_only || host_read_only;
        let options = VolumeOptions {
            uuid: Some(uuid.clone()),
            read_only,
            trash_when_read_only: entry.allow_trash_when_read_only && !host_read_only,
            replication: entry.replication.unwrap_or(1).max(1),
            storage_classes: classes,
            priority: priority.unwrap_or(0),
        };
        volumes.push((location, options));
    }
    Ok(volumes)
}

fn directory_root(uuid: &str, parameters: &DriverParameters) -> Result<PathBuf, String> {
    match parameters.root.starts_with('/') {
        true => Ok(PathBuf::from(&parameters.root)),
        false => Err(format!("volume {uuid}: DriverParameters.Root must be an absolute path")),
    }
}

/// `None`: the volume is another node's. `Some(read_only)`: this node's, read-only for it
/// when its `AccessViaHosts` entry says so. Every key is parsed, also after this node's:
/// a malformed one is refused on every node, as keepstore refuses the file at load.
fn host_access(uuid: &str, entry: &VolumeEntry, this_url: Option<&ServiceUrl>) -> Result<Option<bool>, String> {
    if entry.access_via_hosts.is_empty() {
        return Ok(Some(false));
    }
    let mut this_node = None;
    for (text, access) in &entry.access_via_hosts {
        let url = ServiceUrl::parse(text).map_err(|error| format!("volume {uuid}: AccessViaHosts: {error}"))?;
        if this_node.is_none() && Some(&url) == this_url {
            this_node = Some(access.as_ref().is_some_and(|access| access.read_only));
        }
    }
    Ok(this_node)
}

/// Go duration syntax (`336h`, `1h30m`, `90s`, `1.5h`, `500ms`, `-1s`) → whole seconds.
pub fn parse_duration_secs(text: &str) -> Result<i64, String> {
    parse_duration_secs_f64(text).map(|secs| secs.round() as i64)
}

/// A Go duration that must not be negative (`0` and `0s` are zero), to the nanosecond.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs = parse_duration_secs_f64(text)?;
    if secs < 0.0 {
        return Err(format!("duration {text:?} is negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {text:?} is too long"))
}

fn parse_duration_secs_f64(text: &str) -> Result<f64, String> {
    let bad = || format!("bad duration {text:?}");
    let trimmed = text.trim();
    let (sign, mut rest) = match trimmed.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_secs = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total_secs += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(sign * total_secs)
}

#[cfg(test)]
mod tests {
    use super::this_host::Chosen;
    use super::*;

    const EXAMPLE: &str = r#"
Clusters:
  zzzzz:
    SystemRootToken: rootTokenAlnum0123456789abcdefghijklmnop
    ManagementToken: mgmtTokenAlnum0123456789abcdefghijklmnop
    Services:
      Keepstore:
        InternalURLs:
          "http://127.0.0.1:25107/": {}
          "http://keep1.example:25107": {ListenURL: "http://127.0.0.1:25108/"}
    Collections:
      BlobSigningKey: signingKeyAlnum0123456789abcdefghijklmnop
      BlobSigningTTL: 336h
      BlobTrashLifetime: 336h
      BlobTrashCheckInterval: -1s
      BlobDeleteConcurrency: 2
    API:
      MaxKeepBlobBuffers: 16
      MaxConcurrentRequests: 8
    SystemLogs:
      Format: text
      LogLevel: debug
    StorageClasses:
      archive: {Priority: 5}
    Volumes:
      zzzzz-nyw5e-000000000000000:
        Driver: Directory
        DriverParameters: {Root: /srv/keep0}
        Replication: 2
      zzzzz-nyw5e-000000000000001:
        Driver: Directory
        DriverParameters: {Root: /srv/keep1, Serialize: false}
        ReadOnly: true
        AllowTrashWhenReadOnly: true
        StorageClasses: {archive: true}
      zzzzz-nyw5e-000000000000002:
        Driver: S3
        AccessViaHosts:
          "http://keep9.example:25107": {}
      zzzzz-nyw5e-000000000000003:
        Driver: Directory
        DriverParameters: {Root: /srv/shared}
        AccessViaHosts:
          "HTTP://keep1.example:25107/": {ReadOnly: true}
          "http://127.0.0.1:25107": {}
"#;

    fn chosen(url: &str) -> Chosen {
        let url = ServiceUrl::parse(url).unwrap();
        Chosen {
            address: url
                .socket_addrs()
                .map(|found| found[0])
                .unwrap_or(([127, 0, 0, 1], 1).into()),
            entry: ServiceEntry {
                internal: url.clone(),
                listen: url,
            },
        }
    }

    pub(super) fn settings_for(text: &str, url: Option<&str>) -> Result<ClusterSettings, String> {
        parse(text)?.settings(url.map(chosen))
    }

    fn roots(settings: &ClusterSettings) -> Vec<String> {
        settings
            .volumes
            .iter()
            .map(|(location, _)| location.to_string())
            .collect()
    }

    #[test]
    fn reads_the_keys_keepstore_reads() {
        let settings = settings_for(EXAMPLE, Some("http://127.0.0.1:25107/")).unwrap();
        assert_eq!(settings.cluster_id, "zzzzz");
        assert_eq!(
            settings.signing_key.as_deref(),
            Some("signingKeyAlnum0123456789abcdefghijklmnop")
        );
        assert!(settings.enforce_signatures);
        assert_eq!(settings.blob_signing_ttl_secs, Some(1_209_600));
        assert_eq!(settings.max_buffers, Some(16));
        assert_eq!(settings.trash_lifetime_secs, Some(1_209_600));
        assert_eq!(settings.trash_check_interval_secs, Some(-1));
        assert_eq!((settings.trash_concurrency, settings.delete_concurrency), (4, 2));
        assert_eq!(
            (settings.max_concurrent_requests, settings.max_queued_requests),
            (8, 128)
        );
        assert_eq!(
            (settings.log_json, settings.log_level),
            (false, Some(tracing::Level::DEBUG))
        );
        assert!(settings.blob_trash);
        assert_eq!(roots(&settings), ["/srv/keep0", "/srv/keep1", "/srv/shared"]);
        let (_, options) = &settings.volumes[1];
        assert!(options.read_only && options.trash_when_read_only);
        assert_eq!(options.storage_classes, ["archive"]);
        assert_eq!(options.priority, 5);
        assert_eq!(settings.volumes[0].1.replication, 2);
        assert_eq!(
            settings.volumes[0].1.uuid.as_deref(),
            Some("zzzzz-nyw5e-000000000000000")
        );
        assert!(!settings.volumes[2].1.read_only);
    }

    #[test]
    fn access_via_hosts_is_matched_normalised_with_its_read_only() {
        let other = settings_for(EXAMPLE, Some("http://keep1.example:25107/")).unwrap();
        assert_eq!(roots(&other), ["/srv/keep0", "/srv/keep1", "/srv/shared"]);
        let shared = &other.volumes[2].1;
        assert!(shared.read_only, "read-only for this host");
        assert!(!shared.trash_when_read_only);
        let none = settings_for(EXAMPLE, None).unwrap();
        assert_eq!(
            roots(&none),
            ["/srv/keep0", "/srv/keep1"],
            "no URL: only volumes for every host"
        );
    }

    #[test]
    fn service_entries_are_normalised_and_keep_their_listen_url() {
        let entries = parse(EXAMPLE).unwrap().service_entries().unwrap();
        let listed: Vec<(String, String)> = entries
            .iter()
            .map(|entry| (entry.internal.to_string(), entry.listen.to_string()))
            .collect();
        assert_eq!(
            listed,
            [
                ("http://127.0.0.1:25107/".into(), "http://127.0.0.1:25107/".into()),
                ("http://keep1.example:25107/".into(), "http://127.0.0.1:25108/".into()),
            ]
        );
    }

    #[test]
    fn unsafe_settings_fail_closed() {
        let s3_here = EXAMPLE.replace("keep9.example", "127.0.0.1");
        let error = settings_for(&s3_here, Some("http://127.0.0.1:25107/")).unwrap_err();
        assert!(error.contains("DriverParameters.Bucket must be set"), "{error}");
        let azure_here = s3_here.replace("Driver: S3", "Driver: Azure");
        let error = settings_for(&azure_here, Some("http://127.0.0.1:25107/")).unwrap_err();
        assert!(error.contains("Driver Azure is not supported"), "{error}");
        let unknown = EXAMPLE.replace("Driver: S3", "Driver: Tape");
        let error = settings_for(&unknown, Some("http://keep9.example:25107/")).unwrap_err();
        assert!(error.contains("invalid driver \"Tape\""), "{error}");
        assert!(
            settings_for(&unknown, Some("http://127.0.0.1:25107/")).is_ok(),
            "another node's volume"
        );
        let bad_token = EXAMPLE.replace("rootTokenAlnum", "root-token-");
        let error = settings_for(&bad_token, None).unwrap_err();
        assert!(error.starts_with("SystemRootToken: unacceptable characters"), "{error}");
        let bad_key = EXAMPLE.replace("signingKeyAlnum", "signing key ");
        assert!(settings_for(&bad_key, None).unwrap_err().contains("BlobSigningKey"));
        let no_buffers = EXAMPLE.replace("MaxKeepBlobBuffers: 16", "MaxKeepBlobBuffers: 0");
        assert!(settings_for(&no_buffers, None)
            .unwrap_err()
            .contains("MaxKeepBlobBuffers"));
        let bad_level = EXAMPLE.replace("LogLevel: debug", "LogLevel: loud");
        assert!(settings_for(&bad_level, None).unwrap_err().contains("LogLevel"));
    }

    #[test]
    fn a_malformed_access_via_hosts_key_is_refused_on_every_node() {
        // Found by the cluster_config fuzz target: the node whose key came first in the
        // map stopped parsing there and served; every other node refused the file.
        let malformed = EXAMPLE.replace("\"http://127.0.0.1:25107\": {}\n", "\"http://127.@.0.1:25107\": {}\n");
        assert_ne!(malformed, EXAMPLE);
        for url in [None, Some("http://keep1.example:25107/")] {
            let error = settings_for(&malformed, url).unwrap_err();
            assert!(
                error.contains("AccessViaHosts: URL \"http://127.@.0.1:25107\""),
                "{url:?}: {error}"
            );
        }
    }

    #[test]
    fn https_is_served_with_a_certificate_and_refused_without() {
        let error = settings_for(EXAMPLE, Some("https://127.0.0.1:25107/")).unwrap_err();
        assert!(
            error.contains("TLS.Certificate and TLS.Key are not both set"),
            "{error}"
        );
        let with_cert = EXAMPLE.replace(
            "    API:\n",
            "    TLS:\n      Certificate: file:///etc/c.pem\n      Key: /etc/k.pem\n    API:\n",
        );
        let settings = settings_for(&with_cert, Some("https://127.0.0.1:25107/")).unwrap();
        assert_eq!(
            settings.tls,
            Some(TlsFiles {
                certificate: PathBuf::from("/etc/c.pem"),
                key: PathBuf::from("/etc/k.pem"),
            }),
            "file:// trimmed as keepstore trims it, a bare path taken as it is"
        );
        let plain = settings_for(&with_cert, Some("http://127.0.0.1:25107/")).unwrap();
        assert_eq!(plain.tls, None, "an http ListenURL ignores TLS.*");
        let only_key = EXAMPLE.replace("    API:\n", "    TLS:\n      Key: file:///etc/k.pem\n    API:\n");
        assert!(settings_for(&only_key, Some("https://127.0.0.1:25107/")).is_err());
        let acme = with_cert.replace(
            "      Key: /etc/k.pem\n",
            "      Key: /etc/k.pem\n      ACME:\n        Server: acme.example\n",
        );
        let error = settings_for(&acme, Some("https://127.0.0.1:25107/")).unwrap_err();
        assert!(error.contains("ACME"), "{error}");
    }

    #[test]
    fn keepstore_defaults_where_the_file_is_silent() {
        let minimal = "Clusters:\n  zzzzz:\n    Volumes: {}\n";
        let settings = settings_for(minimal, None).unwrap();
        assert!(settings.enforce_signatures && settings.blob_trash && settings.log_json);
        assert_eq!(settings.max_concurrent_requests, 64);
        assert_eq!(
            (
                settings.trash_concurrency,
                settings.delete_concurrency,
                settings.replicate_concurrency
            ),
            (4, 4, 4)
        );
        assert_eq!(settings.trash_check_interval_secs, None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_secs("336h"), Ok(1_209_600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("1.5s"), Ok(2));
        assert_eq!(parse_duration_secs("0"), Ok(0));
        assert_eq!(parse_duration_secs("-1s"), Ok(-1));
        assert_eq!(parse_duration_secs("2400h"), Ok(8_640_000));
        assert!(parse_duration_secs("10 days").is_err());
        assert!(parse_duration_secs("-").is_err());
        assert_eq!(
            parse_duration("500ms"),
            Ok(Duration::from_millis(500)),
            "kept below a second"
        );
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("-1s"), Err("duration \"-1s\" is negative".into()));
        assert!(
            parse_duration("30").is_err(),
            "a number without a unit, as Go refuses it"
        );
    }

    #[test]
    fn broken_files_are_errors() {
        assert!(parse("Clusters: [").is_err());
        assert!(parse("Clusters: {}").is_err());
        assert!(parse("Clusters:\n  a: {}\n  b: {}\n").is_err());
    }
}
