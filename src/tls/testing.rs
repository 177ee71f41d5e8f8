//! For unit tests: a self-signed certificate made in the test (OpenSSL, which keepring
//! already links) for `localhost` and 127.0.0.1, served by a rustls `ServerConfig`, so
//! the clients' TLS is tested against a real handshake with a certificate no system
//! trusts.

use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// A server config with a fresh self-signed P-256 certificate, valid a day.
pub fn self_signed_server() -> Arc<ServerConfig> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey");
    let mut name = X509NameBuilder::new().expect("name builder");
    name.append_entry_by_nid(Nid::COMMONNAME, "keepring-test").expect("CN");
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
    let certificate = CertificateDer::from(builder.build().to_der().expect("DER"));
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.private_key_to_pkcs8().expect("PKCS#8")));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], private_key)
        .expect("certificate and key");
    Arc::new(config)
}
