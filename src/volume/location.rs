//! Where a volume's blocks live: a directory (keepstore's `Directory` driver) or an S3
//! bucket (its `S3` driver), as the configuration describes them. Pure data, checked
//! and defaulted by `cluster_config` before it gets here (keepstore 3.2.1's
//! `s3Volume.check`); nothing in this file opens, resolves or connects. The S3 secret
//! never reaches a log: `S3Parameters`'s `Debug` leaves it out.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory volume's root (`DriverParameters.Root`, or a `--volume` flag).
    Directory(PathBuf),
    S3(S3Parameters),
}

/// An S3 volume's `DriverParameters`, with keepstore's defaults filled in.
///
/// Requests go where the AWS SDK keepstore 3.2.1 uses (aws-sdk-go-v2 s3 v1.54) sends
/// them: with an `endpoint`, to `{endpoint}/{bucket}/{key}` whatever `use_path_style`
/// says (keepstore marks a configured endpoint's hostname immutable, so the SDK puts the
/// bucket in the path); without one, to AWS in `region` (`aws_endpoint`): the bucket as a
/// subdomain, `https://{bucket}.s3.{region}.amazonaws.com/{key}`, unless `use_path_style`
/// (or a bucket name that is no DNS label, e.g. with dots) puts it in the path.
/// Requests are signed with Signature Version 4 for `region`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Parameters {
    pub bucket: String,
    /// Never empty: `us-east-1` when only an endpoint is configured, as keepstore does.
    pub region: String,
    /// `http://` or `https://` URL with a host, as configured (no query, fragment or user
    /// information); empty: AWS's regional endpoint (`aws_endpoint`).
    pub endpoint: String,
    /// Only matters without an `endpoint` (see above).
    pub use_path_style: bool,
    pub access_key_id: String,
    /// Never printed: `Debug` leaves it out.
    pub secret_access_key: String,
    /// 0: a block's key is its hash; N (1..=30): `{first N hex digits}/{hash}`.
    pub prefix_length: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Parsed and kept as keepstore does; keepstore 3.2.1 does not use it.
    pub location_constraint: bool,
    /// Keys asked for per listing request (S3's `max-keys`).
    pub index_page_size: usize,
    /// How long a just-trashed block may still be written back (keepstore's race window
    /// between a PUT and a trash of the same block).
    pub race_window: Duration,
    /// Delete for real even with `BlobTrashLifetime` 0 (keepstore's `UnsafeDelete`).
    pub unsafe_delete: bool,
    /// The cluster's `TLS.Insecure` (not a DriverParameter): an https endpoint's
    /// certificate is not checked. keepstore 3.2.1's S3 driver (the AWS SDK's own HTTP
    /// client) always checks it; keepring applies the cluster-wide setting here as its
    /// other clients do, so a self-signed store works as a self-signed peer does.
    pub tls_insecure: bool,
}

impl S3Parameters {
    /// What the S3 client needs of these: where requests go, as keepstore's SDK sends
    /// them (a configured endpoint always gets the bucket in the path).
    pub fn client_config(&self) -> crate::s3::ClientConfig {
        crate::s3::ClientConfig {
            endpoint: self.endpoint_url(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            use_path_style: self.use_path_style || !self.endpoint.is_empty(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            tls_insecure: self.tls_insecure,
        }
    }

    /// The endpoint requests go to: the configured one, else the regional AWS one the
    /// SDK derives from the region (`s3.{region}.{partition's DNS suffix}`; aws-sdk-go-v2
    /// uses the regional name for us-east-1 too, not the legacy `s3.amazonaws.com`).
    pub fn endpoint_url(&self) -> String {
        match self.endpoint.is_empty() {
            true => aws_endpoint(&self.region),
            false => self.endpoint.clone(),
        }
    }
}

/// AWS's S3 endpoint for a region. The China partition's suffix is `amazonaws.com.cn`;
/// every other commercial and GovCloud region's is `amazonaws.com`.
pub fn aws_endpoint(region: &str) -> String {
    let suffix = match region.starts_with("cn-") {
        true => "amazonaws.com.cn",
        false => "amazonaws.com",
    };
    format!("https://s3.{region}.{suffix}")
}

impl fmt::Debug for S3Parameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Parameters")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("use_path_style", &self.use_path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix_length", &self.prefix_length)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("location_constraint", &self.location_constraint)
            .field("index_page_size", &self.index_page_size)
            .field("race_window", &self.race_window)
            .field("unsafe_delete", &self.unsafe_delete)
            .field("tls_insecure", &self.tls_insecure)
            .finish()
    }
}

/// How a location is named in logs: a directory's path, an S3 volume as keepstore's
/// device ID names it (`s3://{Endpoint}/{Bucket}`, the endpoint as configured).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Directory(root) => write!(f, "{}", root.display()),
            Location::S3(parameters) => write!(f, "s3://{}/{}", parameters.endpoint, parameters.bucket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters() -> S3Parameters {
        S3Parameters {
            bucket: "keep".into(),
            region: "eu-west-1".into(),
            endpoint: String::new(),
            use_path_style: false,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMIsecretKEY".into(),
            prefix_length: 0,
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(600),
            location_constraint: false,
            index_page_size: 1000,
            race_window: Duration::ZERO,
            unsafe_delete: false,
            tls_insecure: false,
        }
    }

    #[test]
    fn debug_shows_the_key_id_but_never_the_secret() {
        let shown = format!("{:?}", Location::S3(parameters()));
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMIsecretKEY"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn an_empty_endpoint_is_the_regional_aws_one() {
        let mut s3 = parameters();
        assert_eq!(s3.endpoint_url(), "https://s3.eu-west-1.amazonaws.com");
        s3.region = "cn-north-1".into();
        assert_eq!(s3.endpoint_url(), "https://s3.cn-north-1.amazonaws.com.cn");
        s3.endpoint = "http://127.0.0.1:3900".into();
        assert_eq!(s3.endpoint_url(), "http://127.0.0.1:3900");
        assert_eq!(Location::S3(s3).to_string(), "s3://http://127.0.0.1:3900/keep");
    }
}
