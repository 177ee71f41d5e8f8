//! TLS for the tests: a self-signed certificate made in the test (OpenSSL through the
//! `openssl` crate keepring already links: no CLI, no extra crate) for `localhost` and
//! 127.0.0.1, written as PEM files the server is pointed at, and an OpenSSL client that
//! trusts exactly that certificate. The client being OpenSSL while the server is rustls
//! makes every test an interoperability check too.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

/// A certificate and key on disk, and a client connector that trusts the certificate.
#[derive(Clone)]
pub struct TlsFixture {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The certificate, DER: what a handshake must present.
    pub der: Vec<u8>,
    pub connector: SslConnector,
}

impl TlsFixture {
    /// A fresh self-signed pair written to `dir/<name>.crt` and `dir/<name>.key`.
    pub fn new(dir: &Path, name: &str) -> TlsFixture {
        let (certificate, key) = self_signed(name);
        let fixture = TlsFixture {
            certificate: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            der: certificate.to_der().expect("certificate DER"),
            connector: trusting(&certificate),
        };
        fixture.write_to(&fixture.certificate, &fixture.key, &certificate, &key);
        fixture
    }

    /// Overwrite `certificate_path` and `key_path` with this fixture's pair (a renewal).
    pub fn install_at(&self, certificate_path: &Path, key_path: &Path) {
        std::fs::copy(&self.certificate, certificate_path).expect("copy certificate");
        std::fs::copy(&self.key, key_path).expect("copy key");
    }

    fn write_to(&self, certificate_path: &Path, key_path: &Path, certificate: &X509, key: &PKey<Private>) {
        std::fs::write(certificate_path, certificate.to_pem().expect("certificate PEM")).expect("write certificate");
        let key_pem = key.private_key_to_pem_pkcs8().expect("key PEM");
        std::fs::write(key_path, key_pem).expect("write key");
    }

    /// `--tls-certificate FILE --tls-key FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-certificate".to_string(),
            self.certificate.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ]
    }
}

/// A P-256 key and a certificate for it, valid a day, for `localhost` and 127.0.0.1.
pub fn self_signed(common_name: &str) -> (X509, PKey<Private>) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey");
    let mut name = X509NameBuilder::new().expect("name builder");
    name.append_entry_by_nid(Nid::COMMONNAME, common_name).expect("CN");
    let name = name.build();
    let mut builder = X509::builder().expect("X509 builder");
    builder.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("bignum");
    serial.rand(64, MsbOption::MAYBE_ZERO, false).expect("serial");
    builder
        .set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    builder.set_subject_name(&name).expect("subject");
    builder.set_issuer_name(&name).expect("issuer");
    builder.set_pubkey(&key).expect("public key");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(1).expect("time"))
        .expect("not after");
    let names = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&builder.x509v3_context(None, None))
        .expect("SAN");
    builder.append_extension(names).expect("SAN extension");
    builder.sign(&key, MessageDigest::sha256()).expect("sign");
    (builder.build(), key)
}

/// A client that trusts `certificate` alone and checks the name `localhost`.
pub fn trusting(certificate: &X509) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    builder
        .cert_store_mut()
        .add_cert(certificate.clone())
        .expect("trust the certificate");
    builder.build()
}

/// A client that accepts any certificate (to look at which one a server presents).
pub fn trusting_anything() -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    builder.set_verify(SslVerifyMode::NONE);
    builder.build()
}

/// TCP connect and TLS handshake with `connector`, as `localhost`.
pub fn connect(addr: SocketAddr, connector: &SslConnector, timeout: Duration) -> std::io::Result<SslStream<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    connector
        .connect("localhost", stream)
        .map_err(|error| std::io::Error::other(format!("TLS handshake: {error}")))
}

/// The DER of the certificate the server at `addr` presents now.
pub fn served_certificate(addr: SocketAddr) -> Vec<u8> {
    let stream = connect(addr, &trusting_anything(), Duration::from_secs(5)).expect("TLS connect");
    stream
        .ssl()
        .peer_certificate()
        .expect("a server certificate")
        .to_der()
        .expect("DER")
}
