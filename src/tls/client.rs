//! The client side's TLS settings, for the connections keepring opens itself (an S3
//! volume's https endpoint, a pull from an https peer): a rustls `ClientConfig` on the
//! `ring` provider that checks the server's certificate chain against the system's trust
//! roots and its name against the URL's host, or, with keepstore's `TLS.Insecure: true`,
//! checks nothing but the handshake's own signatures (Go's `InsecureSkipVerify`, which
//! keepstore's clients set from it). What a connection does with the config (sans-IO
//! over its own socket) is its owner's: `s3::tls` on a core's io_uring, `chores::pull` on
//! a blocking `TcpStream`. Plain Rust: no runtime.
//!
//! The trust roots are the ones Go's `crypto/x509` (and so keepstore) reads on Linux:
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the distribution's bundle
//! (`/etc/ssl/certs/ca-certificates.crt` and its kin), found by `rustls-native-certs`.
//! They are read once per process, at the first verified connection's config, not at
//! start: a node with no https endpoint never needs them.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How a client checks the server it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The chain against the system's trust roots, the name against the URL's host.
    SystemRoots,
    /// keepstore's `TLS.Insecure: true`: any certificate, any name (self-signed clusters).
    Insecure,
}

impl Verification {
    /// `TLS.Insecure` as configured.
    pub fn from_insecure(insecure: bool) -> Verification {
        match insecure {
            true => Verification::Insecure,
            false => Verification::SystemRoots,
        }
    }
}

static VERIFIED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
static INSECURE: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// The config for `verification`, built once per process (a failure is not kept: the
/// next call tries again, so a bundle installed later is found without a restart). The
/// error is one line: no usable trust root at all.
pub fn config(verification: Verification) -> Result<Arc<ClientConfig>, String> {
    let cell = match verification {
        Verification::SystemRoots => &VERIFIED,
        Verification::Insecure => &INSECURE,
    };
    if let Some(config) = cell.get() {
        return Ok(Arc::clone(config));
    }
    let built = Arc::new(build(verification)?);
    Ok(Arc::clone(cell.get_or_init(|| built)))
}

/// TLS 1.2 and 1.3 and rustls's default suites, as the listener (`tls::server_config`);
/// ALPN `http/1.1`, the only protocol these clients speak.
fn build(verification: Verification) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS client settings: {error}"))?;
    let mut config = match verification {
        Verification::SystemRoots => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
        Verification::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(InsecureSkipVerify::new(&provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The system's trust roots. Certificates that do not parse are skipped, as Go skips
/// them; none at all is an error (every verified handshake would fail).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reasons: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no trusted root certificates found on this system (set SSL_CERT_FILE, or TLS.Insecure \
             for self-signed clusters){}",
            match reasons.is_empty() {
                true => String::new(),
                false => format!(": {}", reasons.join("; ")),
            }
        ));
    }
    Ok(roots)
}

/// keepstore's `TLS.Insecure` ("accept invalid certificates when connecting to servers;
/// never use this in production"), as Go's `tls.Config{InsecureSkipVerify: true}`: the
/// server's certificate chain and name are not checked at all, so anyone on the path
/// can pose as the server. The handshake's signature is still checked against the
/// certificate presented (Go does too): the peer at least holds that certificate's key.
#[derive(Debug)]
struct InsecureSkipVerify {
    algorithms: WebPkiSupportedAlgorithms,
}

impl InsecureSkipVerify {
    fn new(provider: &CryptoProvider) -> InsecureSkipVerify {
        InsecureSkipVerify {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for InsecureSkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The name a client checks the certificate against (and sends as SNI when it is a DNS
/// name): the URL's host, an IP address without its brackets.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|error| format!("{host:?} cannot be a TLS server name: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hosts_or_addresses() {
        assert!(matches!(server_name("keep.example.org"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("not a host").is_err());
    }

    #[test]
    fn both_configs_build_and_speak_http_1_1() {
        // The machine has a CA bundle (ca-certificates); without one the error says so.
        for verification in [Verification::SystemRoots, Verification::Insecure] {
            let config = config(verification).expect("config");
            assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
            assert!(
                Arc::ptr_eq(&config, &super::config(verification).expect("again")),
                "built once"
            );
        }
        assert_eq!(Verification::from_insecure(true), Verification::Insecure);
    }
}
