//! An S3 volume's `DriverParameters` → `S3Parameters`, defaulted and checked as
//! keepstore 3.2.1 does when it opens the volume (services/keepstore/s3_volume.go
//! `news3Volume` and `check`), plus what keepring refuses where keepstore would serve
//! in a way keepring does not: V2 signatures, credentials from an instance role, and
//! values keepstore silently reads as something else. Keys are matched exactly, as
//! keepstore's loader leaves them (it drops a key that differs from a known one only in
//! case, lib/config/load.go `logExtraKeys`); keys no driver knows are ignored, as
//! keepstore ignores them after a warning. Pure.

use std::time::Duration;

use super::{parse_duration, DriverParameters};
use crate::volume::location::S3Parameters;

/// `IndexPageSize` absent or 0 (s3_volume.go `check`: `if v.IndexPageSize == 0`).
pub const S3_INDEX_PAGE_SIZE_DEFAULT: usize = 1000;
/// keepstore sends the page size as S3's `max-keys`, an int32 (`aws.Int32(int32(...))`).
pub const S3_INDEX_PAGE_SIZE_MAX: usize = i32::MAX as usize;
/// `ConnectTimeout` absent or 0 (`s3DefaultConnectTimeout`).
pub const S3_CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// `ReadTimeout` absent or 0 (`s3DefaultReadTimeout`).
pub const S3_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// `Region` when only `Endpoint` is set (`check`: the SDK needs one to sign).
pub const S3_REGION_WITH_ENDPOINT_DEFAULT: &str = "us-east-1";
/// keepstore prefixes a key only when `0 < PrefixLength < len(hash) - 1` (s3_volume.go
/// `key`): 30 for a 32-digit hash. Outside 0..=30 it silently uses no prefix; keepring
/// refuses such a value rather than guess what was meant.
pub const S3_PREFIX_LENGTH_MAX: usize = 30;

/// keepstore's loader renames the old `AccessKey`/`SecretKey` to `AccessKeyID`/
/// `SecretAccessKey` and refuses a volume using both spellings, on every node, whoever
/// serves the volume (lib/config/deprecated.go `applyDeprecatedVolumeDriverParameters`).
pub(super) fn check_key_names(uuid: &str, keys: &DriverParameters) -> Result<(), String> {
    let old = !keys.access_key.is_empty() || !keys.secret_key.is_empty();
    let new = !keys.access_key_id.is_empty() || !keys.secret_access_key.is_empty();
    match old && new {
        true => Err(format!(
            "volume {uuid}: DriverParameters has both AccessKey/SecretKey and AccessKeyID/SecretAccessKey; \
             remove the old AccessKey/SecretKey"
        )),
        false => Ok(()),
    }
}

/// One of this node's S3 volumes, checked and with keepstore's defaults.
pub(super) fn parameters(uuid: &str, keys: &DriverParameters) -> Result<S3Parameters, String> {
    let refuse = |key: &str, why: &str| format!("volume {uuid}: DriverParameters.{key} {why}");
    if keys.v2_signature {
        return Err(refuse(
            "V2Signature",
            "is true: keepring signs S3 requests with Signature Version 4 only (keepstore 3.2.1 refuses it too)",
        ));
    }
    if keys.bucket.is_empty() {
        return Err(refuse("Bucket", "must be set"));
    }
    let (access_key_id, secret_access_key) = credentials(uuid, keys)?;
    check_endpoint(uuid, &keys.endpoint)?;
    let region = match (keys.region.is_empty(), keys.endpoint.is_empty()) {
        (true, true) => {
            return Err(format!(
                "volume {uuid}: DriverParameters.Region or Endpoint must be set"
            ))
        }
        (true, false) => S3_REGION_WITH_ENDPOINT_DEFAULT.to_string(),
        (false, _) => keys.region.clone(),
    };
    let duration = |key: &str, text: &Option<String>, zero_means: Duration| match text {
        None => Ok(zero_means),
        Some(text) => match parse_duration(text) {
            Ok(value) if value.is_zero() => Ok(zero_means),
            Ok(value) => Ok(value),
            Err(error) => Err(format!("volume {uuid}: DriverParameters.{key}: {error}")),
        },
    };
    Ok(S3Parameters {
        bucket: keys.bucket.clone(),
        region,
        endpoint: keys.endpoint.clone(),
        use_path_style: keys.use_path_style,
        access_key_id,
        secret_access_key,
        prefix_length: prefix_length(uuid, keys.prefix_length)?,
        connect_timeout: duration("ConnectTimeout", &keys.connect_timeout, S3_CONNECT_TIMEOUT_DEFAULT)?,
        read_timeout: duration("ReadTimeout", &keys.read_timeout, S3_READ_TIMEOUT_DEFAULT)?,
        location_constraint: keys.location_constraint,
        index_page_size: index_page_size(uuid, keys.index_page_size)?,
        // No default: keepstore's `RaceWindow: 24h` is in the SAMPLE volume only, which
        // its loader drops (load.go `removeSampleKeys`), so an absent one is 0.
        race_window: duration("RaceWindow", &keys.race_window, Duration::ZERO)?,
        unsafe_delete: keys.unsafe_delete,
        // The cluster's TLS.Insecure, set by the caller (it is not a DriverParameter).
        tls_insecure: false,
    })
}

/// Static keys only. keepstore with both empty asks the AWS SDK's default chain
/// (environment, instance role through IMDS, ...); keepring has no such chain.
fn credentials(uuid: &str, keys: &DriverParameters) -> Result<(String, String), String> {
    let old = !keys.access_key.is_empty() || !keys.secret_key.is_empty();
    let ((id_key, id), (secret_key, secret)) = match old {
        true => (("AccessKey", &keys.access_key), ("SecretKey", &keys.secret_key)),
        false => (
            ("AccessKeyID", &keys.access_key_id),
            ("SecretAccessKey", &keys.secret_access_key),
        ),
    };
    match (id.is_empty(), secret.is_empty()) {
        (true, true) => Err(format!(
            "volume {uuid}: DriverParameters.AccessKeyID and SecretAccessKey are empty: keepring does not \
             take instance-role (IAM) credentials; set both"
        )),
        (true, false) => Err(format!(
            "volume {uuid}: DriverParameters.{id_key} is empty ({secret_key} is set)"
        )),
        (false, true) => Err(format!(
            "volume {uuid}: DriverParameters.{secret_key} is empty ({id_key} is set)"
        )),
        (false, false) => Ok((id.clone(), secret.clone())),
    }
}

/// `scheme://host[:port][/path]` with scheme http or https. keepstore hands any string
/// Go's lenient `url.Parse` accepts to the SDK, which fails on the first request; keepring
/// refuses it at start.
fn check_endpoint(uuid: &str, endpoint: &str) -> Result<(), String> {
    if endpoint.is_empty() {
        return Ok(());
    }
    let refuse =
        |why: &str| format!("volume {uuid}: DriverParameters.Endpoint {endpoint:?} is not an http(s) URL: {why}");
    if endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("it contains white space"));
    }
    if endpoint.contains(['?', '#']) {
        return Err(refuse("it has a query or a fragment"));
    }
    super::url::ServiceUrl::parse(endpoint)
        .map(|_| ())
        .map_err(|error| format!("volume {uuid}: DriverParameters.Endpoint: {error}"))
}

fn prefix_length(uuid: &str, value: Option<i64>) -> Result<usize, String> {
    match usize::try_from(value.unwrap_or(0)) {
        Ok(length) if length <= S3_PREFIX_LENGTH_MAX => Ok(length),
        _ => Err(format!(
            "volume {uuid}: DriverParameters.PrefixLength {} is outside 0..={S3_PREFIX_LENGTH_MAX} \
             (keepstore uses no prefix then; set 0 for that)",
            value.unwrap_or(0)
        )),
    }
}

fn index_page_size(uuid: &str, value: Option<i64>) -> Result<usize, String> {
    match usize::try_from(value.unwrap_or(0)) {
        Ok(0) => Ok(S3_INDEX_PAGE_SIZE_DEFAULT),
        Ok(size) if size <= S3_INDEX_PAGE_SIZE_MAX => Ok(size),
        _ => Err(format!(
            "volume {uuid}: DriverParameters.IndexPageSize {} is outside 0..={S3_INDEX_PAGE_SIZE_MAX} \
             (0: {S3_INDEX_PAGE_SIZE_DEFAULT})",
            value.unwrap_or(0)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings_for;
    use super::*;
    use crate::volume::location::Location;

    const SECRET: &str = "wJalrXUtnFEMIsecretKEY";

    /// A cluster whose one volume is an S3 volume with these `DriverParameters` lines
    /// (and `extra` volume-level lines), for every node.
    fn cluster(parameters: &[&str], extra: &str) -> String {
        let mut text =
            String::from("Clusters:\n  zzzzz:\n    Volumes:\n      zzzzz-nyw5e-000000000000005:\n        Driver: S3\n");
        text.push_str(extra);
        text.push_str("        DriverParameters:\n");
        for line in parameters {
            text.push_str(&format!("          {line}\n"));
        }
        text
    }

    fn minimal() -> Vec<&'static str> {
        vec![
            "AccessKeyID: AKIDEXAMPLE",
            "SecretAccessKey: wJalrXUtnFEMIsecretKEY",
            "Region: eu-west-1",
            "Bucket: keep",
        ]
    }

    fn s3_of(text: &str) -> Result<S3Parameters, String> {
        let settings = settings_for(text, None)?;
        match settings.volumes.as_slice() {
            [(Location::S3(parameters), _)] => Ok(parameters.clone()),
            other => panic!("one S3 volume expected: {other:?}"),
        }
    }

    /// The error for `minimal()` with `key: value` added (or replacing the same key).
    fn refused_with(line: &str) -> String {
        let key = line.split(':').next().unwrap_or("");
        let mut parameters: Vec<&str> = minimal()
            .into_iter()
            .filter(|existing| !existing.starts_with(&format!("{key}:")))
            .collect();
        parameters.push(line);
        match s3_of(&cluster(&parameters, "")) {
            Ok(parameters) => panic!("{line} accepted: {parameters:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn a_full_s3_entry_parses_with_every_field() {
        let text = cluster(
            &[
                "AccessKeyID: AKIDEXAMPLE",
                "SecretAccessKey: wJalrXUtnFEMIsecretKEY",
                "Endpoint: \"http://127.0.0.1:3900\"",
                "Region: garage",
                "Bucket: keep",
                "LocationConstraint: true",
                "V2Signature: false",
                "UsePathStyle: true",
                "IndexPageSize: 500",
                "ConnectTimeout: 30s",
                "ReadTimeout: 1h30m",
                "RaceWindow: 48h",
                "PrefixLength: 3",
                "UnsafeDelete: true",
                "KeyNoDriverKnows: 1",
            ],
            "        Replication: 2\n        ReadOnly: true\n",
        );
        let settings = settings_for(&text, None).unwrap();
        let expected = S3Parameters {
            bucket: "keep".into(),
            region: "garage".into(),
            endpoint: "http://127.0.0.1:3900".into(),
            use_path_style: true,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
            prefix_length: 3,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(5400),
            location_constraint: true,
            index_page_size: 500,
            race_window: Duration::from_secs(48 * 3600),
            unsafe_delete: true,
            tls_insecure: false,
        };
        assert_eq!(settings.volumes.len(), 1);
        let (location, options) = &settings.volumes[0];
        assert_eq!(location, &Location::S3(expected));
        assert_eq!(options.uuid.as_deref(), Some("zzzzz-nyw5e-000000000000005"));
        assert_eq!((options.replication, options.read_only), (2, true));
        let shown = format!("{settings:?}");
        assert!(shown.contains("AKIDEXAMPLE") && !shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn absent_keys_take_keepstore_defaults() {
        let parameters = s3_of(&cluster(&minimal(), "")).unwrap();
        assert_eq!(parameters.endpoint, "");
        assert_eq!(parameters.endpoint_url(), "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(parameters.region, "eu-west-1");
        assert_eq!(parameters.prefix_length, 0);
        assert_eq!(parameters.index_page_size, S3_INDEX_PAGE_SIZE_DEFAULT);
        assert_eq!(parameters.connect_timeout, Duration::from_secs(60));
        assert_eq!(parameters.read_timeout, Duration::from_secs(600));
        assert_eq!(
            parameters.race_window,
            Duration::ZERO,
            "the SAMPLE's 24h is not a default"
        );
        assert!(!parameters.use_path_style && !parameters.location_constraint && !parameters.unsafe_delete);
        assert!(!parameters.tls_insecure);
    }

    #[test]
    fn the_clusters_tls_insecure_reaches_the_settings_but_never_an_s3_volume() {
        let text = cluster(&minimal(), "").replace("  zzzzz:\n", "  zzzzz:\n    TLS:\n      Insecure: true\n");
        assert!(
            !s3_of(&text).unwrap().tls_insecure,
            "S3 endpoints are always checked, as keepstore"
        );
        assert!(settings_for(&text, None).unwrap().tls_insecure);
        assert!(!settings_for(&cluster(&minimal(), ""), None).unwrap().tls_insecure);
    }

    #[test]
    fn zero_values_mean_the_defaults_as_in_keepstore() {
        let mut keys = minimal();
        keys.extend([
            "ConnectTimeout: 0",
            "ReadTimeout: \"0s\"",
            "IndexPageSize: 0",
            "RaceWindow: 0s",
        ]);
        let parameters = s3_of(&cluster(&keys, "")).unwrap();
        assert_eq!(
            (
                parameters.connect_timeout,
                parameters.read_timeout,
                parameters.index_page_size
            ),
            (Duration::from_secs(60), Duration::from_secs(600), 1000)
        );
        assert_eq!(parameters.race_window, Duration::ZERO);
    }

    #[test]
    fn an_endpoint_without_a_region_signs_for_us_east_1() {
        let keys = [
            "AccessKeyID: AKIDEXAMPLE",
            "SecretAccessKey: wJalrXUtnFEMIsecretKEY",
            "Endpoint: https://objects.example:9000/",
            "Bucket: keep",
        ];
        let parameters = s3_of(&cluster(&keys, "")).unwrap();
        assert_eq!(parameters.region, "us-east-1");
        assert_eq!(
            parameters.endpoint, "https://objects.example:9000/",
            "https kept as configured"
        );
    }

    #[test]
    fn the_deprecated_key_names_are_read_and_never_mixed_with_the_new() {
        let keys = [
            "AccessKey: OLDKEYID",
            "SecretKey: oldSecret",
            "Region: eu-west-1",
            "Bucket: keep",
        ];
        let parameters = s3_of(&cluster(&keys, "")).unwrap();
        assert_eq!(
            (parameters.access_key_id.as_str(), parameters.secret_access_key.as_str()),
            ("OLDKEYID", "oldSecret")
        );
        let mut both = keys.to_vec();
        both.push("AccessKeyID: AKIDEXAMPLE");
        let elsewhere = "        AccessViaHosts:\n          \"http://keep9.example:25107\": {}\n";
        let error = settings_for(&cluster(&both, elsewhere), None).unwrap_err();
        assert!(
            error.contains("both AccessKey/SecretKey and AccessKeyID/SecretAccessKey"),
            "refused on every node, as keepstore's loader does: {error}"
        );
    }

    #[test]
    fn what_keepring_cannot_serve_is_refused_naming_the_volume_and_key() {
        let cases = [
            ("V2Signature: true", "DriverParameters.V2Signature is true"),
            ("Bucket: \"\"", "DriverParameters.Bucket must be set"),
            ("AccessKeyID: \"\"", "DriverParameters.AccessKeyID is empty"),
            ("SecretAccessKey: \"\"", "DriverParameters.SecretAccessKey is empty"),
            ("Region: \"\"", "DriverParameters.Region or Endpoint must be set"),
            (
                "Endpoint: s3.example.com",
                "DriverParameters.Endpoint: URL \"s3.example.com\": no scheme",
            ),
            ("Endpoint: ftp://s3.example.com", "scheme is neither http nor https"),
            ("Endpoint: \"http://\"", "no host"),
            ("Endpoint: \"http://a:b@s3.example.com\"", "user information"),
            ("Endpoint: \"http://s3.example.com/?x=1\"", "a query or a fragment"),
            ("Endpoint: \"http://s3.example.com:99999\"", "bad port"),
            ("Endpoint: \"http://s3 .example.com\"", "white space"),
            (
                "ConnectTimeout: -1s",
                "DriverParameters.ConnectTimeout: duration \"-1s\" is negative",
            ),
            ("ReadTimeout: 10 minutes", "DriverParameters.ReadTimeout: bad duration"),
            ("ReadTimeout: 30", "DriverParameters.ReadTimeout: bad duration \"30\""),
            (
                "RaceWindow: -24h",
                "DriverParameters.RaceWindow: duration \"-24h\" is negative",
            ),
            ("PrefixLength: -1", "DriverParameters.PrefixLength -1 is outside 0..=30"),
            ("PrefixLength: 31", "DriverParameters.PrefixLength 31 is outside 0..=30"),
            ("IndexPageSize: -5", "DriverParameters.IndexPageSize -5 is outside"),
            (
                "IndexPageSize: 2147483648",
                "DriverParameters.IndexPageSize 2147483648 is outside",
            ),
        ];
        for (line, expected) in cases {
            let error = refused_with(line);
            assert!(
                error.starts_with("volume zzzzz-nyw5e-000000000000005: ") && error.contains(expected),
                "{line}: {error}"
            );
            assert!(!error.contains('\n') && !error.contains(SECRET), "{line}: {error}");
        }
        let no_keys: Vec<&str> = minimal().into_iter().skip(2).collect();
        let error = s3_of(&cluster(&no_keys, "")).unwrap_err();
        assert!(error.contains("instance-role (IAM) credentials"), "{error}");
    }

    #[test]
    fn another_nodes_s3_volume_is_neither_served_nor_checked() {
        let elsewhere = "        AccessViaHosts:\n          \"http://keep9.example:25107\": {}\n";
        let text = cluster(&["V2Signature: true"], elsewhere);
        for url in [None, Some("http://127.0.0.1:25107/")] {
            let settings = settings_for(&text, url).unwrap();
            assert!(settings.volumes.is_empty(), "{url:?}: {:?}", settings.volumes);
        }
        let error = settings_for(&text, Some("http://keep9.example:25107/")).unwrap_err();
        assert!(error.contains("V2Signature"), "{error}");
    }
}
