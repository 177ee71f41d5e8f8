//! An Arvados cluster `config.yml`, read as keepstore reads it (keep-protocol.md §7.1), so
//! a node moves from keepstore to keepring with its existing file: `Clusters.<id>` with
//! `SystemRootToken`, `ManagementToken`, `Services.Keepstore.InternalURLs`,
//! `Collections.{BlobSigning, BlobSigningKey, BlobSigningTTL}`, `API.MaxKeepBlobBuffers`,
//! `StorageClasses.<name>.Priority` and `Volumes.<uuid>` (`Driver: Directory`,
//! `DriverParameters.Root`, `ReadOnly`, `Replication`, `StorageClasses`, `AccessViaHosts`).
//! Keys keepring does not use are ignored. Pure: text in, settings out.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;

use crate::volume::VolumeOptions;

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
    internal_urls: BTreeMap<String, yaml_serde::Value>,
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
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Api {
    max_keep_blob_buffers: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeEntry {
    driver: String,
    driver_parameters: DriverParameters,
    read_only: bool,
    replication: Option<u32>,
    storage_classes: BTreeMap<String, bool>,
    access_via_hosts: BTreeMap<String, yaml_serde::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DriverParameters {
    root: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StorageClass {
    priority: i64,
}

/// What keepring takes from a cluster config; `None`/empty where the file is silent.
#[derive(Debug, Default, PartialEq)]
pub struct ClusterSettings {
    pub cluster_id: String,
    pub listen: Option<SocketAddr>,
    pub signing_key: Option<String>,
    /// `Collections.BlobSigning` (default true): check signatures on reads.
    pub enforce_signatures: bool,
    pub blob_signing_ttl_secs: Option<u64>,
    pub system_root_token: Option<String>,
    pub management_token: Option<String>,
    pub max_buffers: Option<u64>,
    pub volumes: Vec<(PathBuf, VolumeOptions)>,
    /// `Collections.BlobTrash` (default true): DELETE and trash lists are honoured.
    pub blob_trash: bool,
    pub trash_lifetime_secs: Option<u64>,
    pub trash_check_interval_secs: Option<u64>,
}

pub fn parse(text: &str) -> Result<ClusterSettings, String> {
    let file: ConfigFile = yaml_serde::from_str(text).map_err(|error| format!("config does not parse: {error}"))?;
    let mut clusters = file.clusters.into_iter();
    let (cluster_id, cluster) = match (clusters.next(), clusters.next()) {
        (Some(only), None) => only,
        (None, _) => return Err("config has no cluster under Clusters".into()),
        (Some(_), Some(_)) => return Err("config has several clusters; keepring serves one".into()),
    };
    let internal_url = cluster.services.keepstore.internal_urls.keys().next().cloned();
    let listen = internal_url.as_deref().map(url_address).transpose()?;
    let non_empty = |text: String| (!text.is_empty()).then_some(text);
    let collections = &cluster.collections;
    let duration = |text: &Option<String>| text.as_deref().map(parse_duration_secs).transpose();
    let blob_signing_ttl_secs = duration(&collections.blob_signing_ttl)?;
    let trash_lifetime_secs = duration(&collections.blob_trash_lifetime)?;
    let trash_check_interval_secs = duration(&collections.blob_trash_check_interval)?;
    let blob_trash = collections.blob_trash.unwrap_or(true);
    let mut volumes = Vec::new();
    for (uuid, entry) in cluster.volumes {
        if entry.driver != "Directory" {
            tracing::warn!(volume = %uuid, driver = %entry.driver, "skipping a volume keepring has no driver for");
            continue;
        }
        let here = internal_url.as_deref().unwrap_or("");
        if !entry.access_via_hosts.is_empty() && !entry.access_via_hosts.contains_key(here) {
            continue;
        }
        if !entry.driver_parameters.root.starts_with('/') {
            return Err(format!("volume {uuid}: DriverParameters.Root must be an absolute path"));
        }
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
        let options = VolumeOptions {
            uuid: Some(uuid),
            read_only: entry.read_only,
            replication: entry.replication.unwrap_or(1).max(1),
            storage_classes: classes,
            priority: priority.unwrap_or(0),
        };
        volumes.push((PathBuf::from(entry.driver_parameters.root), options));
    }
    Ok(ClusterSettings {
        cluster_id,
        listen,
        signing_key: non_empty(cluster.collections.blob_signing_key),
        enforce_signatures: cluster.collections.blob_signing.unwrap_or(true),
        blob_signing_ttl_secs,
        system_root_token: non_empty(cluster.system_root_token),
        management_token: non_empty(cluster.management_token),
        max_buffers: cluster.api.max_keep_blob_buffers,
        volumes,
        blob_trash,
        trash_lifetime_secs,
        trash_check_interval_secs,
    })
}

/// `http://127.0.0.1:25107/` → 127.0.0.1:25107.
fn url_address(url: &str) -> Result<SocketAddr, String> {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| format!("InternalURLs entry {url} has no usable host:port"))
}

/// Go duration syntax (`336h`, `1h30m`, `90s`, `1.5h`, `500ms`) → whole seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("bad duration {text:?}");
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(0);
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
    Ok(total_secs.round() as u64)
}

#[cfg(test)]
mod tests {
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
    Collections:
      BlobSigningKey: signingKeyAlnum0123456789abcdefghijklmnop
      BlobSigningTTL: 336h
      BlobTrashLifetime: 336h
    API:
      MaxKeepBlobBuffers: 16
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
        StorageClasses: {archive: true}
      zzzzz-nyw5e-000000000000002:
        Driver: S3
      zzzzz-nyw5e-000000000000003:
        Driver: Directory
        DriverParameters: {Root: /srv/elsewhere}
        AccessViaHosts:
          "http://otherhost:25107": {}
"#;

    #[test]
    fn reads_the_keys_keepstore_reads() {
        let settings = parse(EXAMPLE).unwrap();
        assert_eq!(settings.cluster_id, "zzzzz");
        assert_eq!(settings.listen, Some("127.0.0.1:25107".parse().unwrap()));
        assert_eq!(
            settings.signing_key.as_deref(),
            Some("signingKeyAlnum0123456789abcdefghijklmnop")
        );
        assert!(settings.enforce_signatures);
        assert_eq!(settings.blob_signing_ttl_secs, Some(1_209_600));
        assert_eq!(settings.max_buffers, Some(16));
        assert_eq!(settings.trash_lifetime_secs, Some(1_209_600));
        assert!(settings.blob_trash);
        assert_eq!(settings.volumes.len(), 2, "S3 and other hosts' volumes are skipped");
        let (root, options) = &settings.volumes[1];
        assert_eq!(root, &PathBuf::from("/srv/keep1"));
        assert!(options.read_only);
        assert_eq!(options.storage_classes, ["archive"]);
        assert_eq!(options.priority, 5);
        assert_eq!(settings.volumes[0].1.replication, 2);
        assert_eq!(
            settings.volumes[0].1.uuid.as_deref(),
            Some("zzzzz-nyw5e-000000000000000")
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_secs("336h"), Ok(1_209_600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("1.5s"), Ok(2));
        assert_eq!(parse_duration_secs("0"), Ok(0));
        assert!(parse_duration_secs("10 days").is_err());
    }

    #[test]
    fn broken_files_are_errors() {
        assert!(parse("Clusters: [").is_err());
        assert!(parse("Clusters: {}").is_err());
    }
}
