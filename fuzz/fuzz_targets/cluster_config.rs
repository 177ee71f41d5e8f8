//! A cluster `config.yml` from arbitrary text to a `Config`, through the functions
//! `Config::resolve` runs on a file's text: `cluster_config::parse`,
//! `ClusterFile::service_entries`, `ClusterFile::settings` and `Config::from_settings`
//! (with no flags). The one step left out is `this_host::choose`, which resolves names
//! and binds sockets: this node's entry is taken to be the first whose listen host is an
//! IP literal, as `choose` would pick on a host that has that address, and the file is
//! also read as a node with no entry. Checks, beyond "never panics": service URLs
//! re-parse from their text to equal URLs and come sorted; whatever is accepted is what
//! keepstore would serve safely (absolute volume roots, S3 volumes with a bucket, a region,
//! static keys and an http(s) endpoint or none, alphanumeric secrets, a signing
//! key when signatures are enforced, an https listener only with a certificate and key,
//! a volume at all); and a node with an entry refuses every file a node with none refuses
//! (its checks are a superset: the same secrets, durations and limits, and the volumes of
//! every host besides its own) and serves every volume that node serves.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use keepring::cluster_config::this_host::{Chosen, ServiceEntry};
use keepring::cluster_config::url::ServiceUrl;
use keepring::cluster_config::{self, ClusterSettings};
use keepring::config::{Cli, Config, ConfigSource, LogFormat};
use keepring::volume::location::Location;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `load_cluster` refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = cluster_config::parse(text) else {
        return;
    };
    let Ok(entries) = file.service_entries() else {
        return;
    };
    assert!(entries.windows(2).all(|pair| pair[0].internal <= pair[1].internal));
    for entry in &entries {
        for url in [&entry.internal, &entry.listen] {
            assert_eq!(ServiceUrl::parse(&url.to_string()).as_ref(), Ok(url), "{url}");
        }
    }
    let without_entry = settings_and_config(text, None);
    let Some(chosen) = entries.iter().find_map(literal_address) else {
        return;
    };
    let with_entry = settings_and_config(text, Some(chosen));
    match (without_entry, with_entry) {
        (Err(refused), Ok(_)) => panic!("accepted for a node with an entry, refused for one without: {refused}"),
        (Ok(without), Ok(with)) => {
            let mut theirs = with.volumes.iter();
            for volume in &without.volumes {
                assert!(theirs.any(|other| other == volume), "{volume:?} only without an entry");
            }
        }
        _ => {}
    }
});

/// This node's entry if its listen host is an IP literal (no name to resolve).
fn literal_address(entry: &ServiceEntry) -> Option<Chosen> {
    let host = entry.listen.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(Chosen {
        entry: entry.clone(),
        address: SocketAddr::new(ip, entry.listen.port),
    })
}

/// The file read for a node whose entry is `chosen` (its settings, or why they are
/// refused), and, when accepted, merged into a `Config` as with no flags.
fn settings_and_config(text: &str, chosen: Option<Chosen>) -> Result<ClusterSettings, String> {
    let file = cluster_config::parse(text).expect("the text parsed once");
    let settings = file.settings(chosen.clone())?;
    check_settings(&settings, chosen.as_ref());
    let cli = Cli::try_parse_from(["keepring"]).expect("no flags parse");
    let source = ConfigSource {
        path: PathBuf::from("/etc/arvados/config.yml"),
        sha256: String::new(),
        modified_secs: 0.0,
        loaded_secs: 0.0,
    };
    if let Ok(config) = Config::from_settings(cli, settings.clone(), Some(source), Vec::new()) {
        check_config(&config, &settings);
    }
    Ok(settings)
}

fn check_settings(settings: &ClusterSettings, chosen: Option<&Chosen>) {
    assert_eq!(settings.service.as_ref(), chosen);
    if let Some(chosen) = chosen {
        assert_eq!(
            settings.tls.is_some(),
            chosen.entry.listen.is_https(),
            "TLS files exactly for an https listener"
        );
        if let Some(files) = &settings.tls {
            assert!(!files.certificate.as_os_str().is_empty() && !files.key.as_os_str().is_empty());
        }
    } else {
        assert_eq!(settings.tls, None);
    }
    let secrets = [
        &settings.signing_key,
        &settings.system_root_token,
        &settings.management_token,
    ];
    for secret in secrets.into_iter().flatten() {
        assert!(!secret.is_empty() && secret.bytes().all(|byte| byte.is_ascii_alphanumeric()));
    }
    assert!(settings.max_buffers.is_none_or(|count| count > 0));
    for (location, options) in &settings.volumes {
        match location {
            Location::Directory(root) => assert!(root.is_absolute(), "{root:?}"),
            Location::S3(s3) => {
                assert!(!s3.bucket.is_empty() && !s3.region.is_empty());
                assert!(!s3.access_key_id.is_empty() && !s3.secret_access_key.is_empty());
                assert!(s3.endpoint.is_empty() || ServiceUrl::parse(&s3.endpoint).is_ok());
                assert!(s3.prefix_length <= 30 && s3.index_page_size >= 1);
                assert!(!s3.connect_timeout.is_zero() && !s3.read_timeout.is_zero());
                assert!(format!("{s3:?}").contains("secret_access_key: \"<redacted>\""));
            }
        }
        assert!(options.replication >= 1);
        assert!(!options.storage_classes.is_empty());
        assert!(options.uuid.is_some());
    }
}

fn check_config(config: &Config, settings: &ClusterSettings) {
    assert!(
        !config.volume_sources.fixed.is_empty(),
        "a config file with no volume for this node"
    );
    assert_eq!(config.volume_sources.fixed, settings.volumes);
    if config.enforce_signatures {
        assert!(config.signing_key.is_some(), "signatures enforced with no key");
    }
    if let Some(chosen) = &settings.service {
        assert_eq!(config.listen, chosen.address);
    }
    assert!(config.max_buffers >= 1 && config.replicate_concurrency >= 1);
    assert_eq!(config.cluster_id.as_deref(), Some(settings.cluster_id.as_str()));
    assert_eq!(config.log_format == LogFormat::Json, settings.log_json);
}
