//! An S3 client's configuration (keepstore's S3 volume fields: Endpoint, Bucket, Region,
//! UsePathStyle, AccessKeyID, SecretAccessKey, ConnectTimeout, ReadTimeout, and the
//! cluster's TLS.Insecure) and what is derived from it once: the bucket's base URL for
//! signing, the address to connect to, the Host header, and for an https endpoint the
//! TLS config and the name its certificate must carry.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use rusty_s3::{Bucket, UrlStyle};
use url::Url;

use super::connection::TlsTarget;
use super::error::ConfigError;
use crate::limits::{S3_CONNECT_TIMEOUT_MS_DEFAULT, S3_READ_TIMEOUT_MS_DEFAULT};

#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `http://host[:port]` or `https://host[:port]` (a path is kept as a prefix).
    pub endpoint: String,
    pub bucket: String,
    /// The SigV4 signing region; keepstore uses `us-east-1` when a volume names an
    /// endpoint and no region (Garage wants its own `s3_region`, `garage` by default).
    pub region: String,
    /// `http://host/bucket/key` when true; `http://bucket.host/key` when false (S3's
    /// default, and keepstore's: UsePathStyle is false unless configured).
    pub use_path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// For a new connection to be established.
    pub connect_timeout: Duration,
    /// For each socket read or write of a request to make progress.
    pub read_timeout: Duration,
    /// An https endpoint's certificate is not checked (keepstore's cluster-wide
    /// `TLS.Insecure`, for self-signed stores); false: checked against the system's roots.
    pub tls_insecure: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            use_path_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            connect_timeout: Duration::from_millis(S3_CONNECT_TIMEOUT_MS_DEFAULT),
            read_timeout: Duration::from_millis(S3_READ_TIMEOUT_MS_DEFAULT),
            tls_insecure: false,
        }
    }
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("use_path_style", &self.use_path_style)
            .field("access_key_id", &self.access_key_id)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("tls_insecure", &self.tls_insecure)
            .finish_non_exhaustive()
    }
}

/// Where requests go, derived from a `ClientConfig`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub bucket: Bucket,
    /// The first address the host resolved to when the client was made.
    pub address: SocketAddr,
    /// `host[:port]`, as signed and sent.
    pub host_header: String,
    /// The thread-local pool's key: one pool per scheme, verification, address and Host
    /// header (a verified client never gets an unverified client's connection).
    pub pool_key: String,
    /// An https endpoint's TLS; `None`: plain HTTP.
    pub tls: Option<TlsTarget>,
}

/// The parts of an endpoint known without the network.
#[derive(Debug)]
struct Target {
    bucket: Bucket,
    /// As written in the URL (an IPv6 address without its brackets).
    host: String,
    port: u16,
    host_header: String,
    https: bool,
}

impl Target {
    fn new(config: &ClientConfig) -> Result<Target, ConfigError> {
        let url = Url::parse(&config.endpoint)
            .map_err(|error| ConfigError(format!("endpoint {:?}: {error}", config.endpoint)))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(ConfigError(format!("endpoint {:?}: scheme {other:?}", config.endpoint))),
        };
        if config.bucket.is_empty() {
            return Err(ConfigError("no bucket".into()));
        }
        let style = if config.use_path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, config.bucket.clone(), config.region.clone())
            .map_err(|error| ConfigError(format!("bucket {:?} at {:?}: {error}", config.bucket, config.endpoint)))?;
        let base = bucket.base_url();
        let host = base
            .host_str()
            .ok_or_else(|| ConfigError(format!("endpoint {:?} has no host", config.endpoint)))?;
        let port = base.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let host_header = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Target {
            bucket,
            host,
            port,
            host_header,
            https,
        })
    }
}

impl Endpoint {
    /// Check `config` and resolve its host. A host name is resolved here, once (this may
    /// block on DNS: make clients when volumes are set up, not on a core's hot path).
    pub fn new(config: &ClientConfig) -> Result<Endpoint, ConfigError> {
        let target = Target::new(config)?;
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|error| ConfigError(format!("cannot resolve {}: {error}", target.host)))?
            .next()
            .ok_or_else(|| ConfigError(format!("{} resolves to no address", target.host)))?;
        let tls = match target.https {
            false => None,
            true => Some(tls_target(&target.host, config.tls_insecure)?),
        };
        let scheme = match (target.https, config.tls_insecure) {
            (false, _) => "http",
            (true, false) => "https",
            (true, true) => "https+insecure",
        };
        let pool_key = format!("{scheme}://{address}/{}", target.host_header);
        Ok(Endpoint {
            bucket: target.bucket,
            address,
            host_header: target.host_header,
            pool_key,
            tls,
        })
    }
}

/// The config (built once per process for each kind of verification) and the name the
/// certificate must carry: the host requests go to (the bucket's, in virtual-host style).
fn tls_target(host: &str, insecure: bool) -> Result<TlsTarget, ConfigError> {
    let verification = crate::tls::client::Verification::from_insecure(insecure);
    let config = crate::tls::client::config(verification).map_err(ConfigError)?;
    let name = crate::tls::client::server_name(host).map_err(ConfigError)?;
    Ok(TlsTarget { config, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, use_path_style: bool) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            bucket: "keep-blocks".into(),
            use_path_style,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn defaults_are_keepstores() {
        let defaults = ClientConfig::default();
        assert_eq!(defaults.connect_timeout, Duration::from_secs(60));
        assert_eq!(defaults.read_timeout, Duration::from_secs(600));
        assert!(!defaults.use_path_style);
        assert!(!format!(
            "{:?}",
            ClientConfig {
                secret_access_key: "s3cr3t".into(),
                ..defaults
            }
        )
        .contains("s3cr3t"));
    }

    #[test]
    fn path_style_keeps_the_host_and_puts_the_bucket_in_the_path() {
        let endpoint = Endpoint::new(&config("http://127.0.0.1:3900", true)).expect("valid");
        assert_eq!(endpoint.host_header, "127.0.0.1:3900");
        assert_eq!(endpoint.address, "127.0.0.1:3900".parse().expect("address"));
        assert_eq!(
            endpoint.bucket.object_url("recent/abc").path(),
            "/keep-blocks/recent/abc"
        );
    }

    #[test]
    fn virtual_host_style_puts_the_bucket_in_the_host() {
        let target = Target::new(&config("http://s3.example.org:3900", false)).expect("valid");
        assert_eq!(target.host_header, "keep-blocks.s3.example.org:3900");
        assert_eq!(target.host, "keep-blocks.s3.example.org");
        assert_eq!(target.bucket.object_url("abc").path(), "/abc");
        let default_port = Target::new(&config("http://s3.example.org", false)).expect("valid");
        assert_eq!(
            (default_port.host_header.as_str(), default_port.port),
            ("keep-blocks.s3.example.org", 80)
        );
        // An IP address cannot take a bucket in front of it.
        assert!(Target::new(&config("http://127.0.0.1:3900", false)).is_err());
    }

    #[test]
    fn https_endpoints_carry_tls_and_pool_apart_by_verification() {
        let verified = Endpoint::new(&config("https://127.0.0.1:3900", true)).expect("https");
        let tls = verified.tls.as_ref().expect("TLS for https");
        assert_eq!(
            tls.name,
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name")
        );
        let insecure = Endpoint::new(&ClientConfig {
            tls_insecure: true,
            ..config("https://127.0.0.1:3900", true)
        })
        .expect("https, insecure");
        let plain = Endpoint::new(&config("http://127.0.0.1:3900", true)).expect("http");
        assert!(plain.tls.is_none());
        let keys = [&verified.pool_key, &insecure.pool_key, &plain.pool_key];
        assert!(
            keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2],
            "{keys:?}"
        );
        // The name checked in virtual-host style is the bucket's host; the port defaults to 443.
        let target = Target::new(&config("https://s3.example.org", false)).expect("valid");
        assert_eq!((target.host.as_str(), target.port), ("keep-blocks.s3.example.org", 443));
    }

    #[test]
    fn refuses_other_schemes_and_bad_configs() {
        assert!(Endpoint::new(&config("ftp://127.0.0.1", true)).is_err());
        assert!(Endpoint::new(&config("not a url", true)).is_err());
        assert!(Endpoint::new(&ClientConfig {
            bucket: String::new(),
            ..config("http://127.0.0.1:1", true)
        })
        .is_err());
    }
}
