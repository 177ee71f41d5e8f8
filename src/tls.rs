//! The listener's TLS settings: the certificate chain and private key read from PEM
//! files (keepstore's `TLS.Certificate` / `TLS.Key`, or `--tls-certificate` /
//! `--tls-key`), checked against each other and built into a rustls `ServerConfig` on the
//! `ring` provider. `ServerTls` holds the config in force; each new connection takes the
//! current one (one atomic load), and a reload (SIGHUP, or the hourly re-read keepstore
//! also does) swaps in a new pair only if it loads: a bad pair is the caller's to log,
//! and the running one stays. Connections already up keep the pair they shook hands
//! with. What a connection does with the config (the sans-IO record layer over the
//! socket) is `http::tls_channel`'s. Plain Rust: no runtime, files in, config out.
//! The client side (keepring connecting to an https S3 endpoint or peer) is `client`.

pub mod client;
#[cfg(test)]
pub mod testing;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where plaintext taken from a rustls connection goes: a `Vec` up to a length
/// (`UpTo`), or (`http::session`) the free end of a shared PUT body.
pub trait PlaintextSink {
    /// Bytes it can still take.
    fn space(&self) -> usize;
    /// Append `bytes` (at most `space()`).
    fn put(&mut self, bytes: &[u8]);
}

/// A `Vec` filled up to `end` bytes.
pub struct UpTo<'a> {
    pub buffer: &'a mut Vec<u8>,
    pub end: usize,
}

impl PlaintextSink for UpTo<'_> {
    fn space(&self) -> usize {
        self.end.saturating_sub(self.buffer.len())
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }
}

/// Plaintext a rustls connection (either side: the listener's `http::tls_channel`, the
/// S3 client's `s3::tls`) holds, moved into `sink` as far as it has space: `Some(count)`
/// (0: end of stream, or no space), or `None` when it has none yet.
pub fn take_plaintext(mut reader: rustls::Reader<'_>, sink: &mut impl PlaintextSink) -> std::io::Result<Option<usize>> {
    use std::io::{BufRead, ErrorKind};
    let want = sink.space();
    if want == 0 {
        return Ok(Some(0));
    }
    let mut taken = 0;
    while taken < want {
        let count = match reader.fill_buf() {
            Ok(chunk) => {
                // Empty: the peer sent close_notify and everything before it was read.
                let count = chunk.len().min(want - taken);
                sink.put(&chunk[..count]);
                count
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            // A TCP EOF without close_notify: an end, as for a plain connection.
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => 0,
            Err(error) => return Err(error),
        };
        if count == 0 {
            return Ok(Some(taken));
        }
        reader.consume(count);
        taken += count;
    }
    Ok((taken > 0).then_some(taken))
}

/// The TLS config new connections use, swapped whole on a reload.
pub struct ServerTls {
    current: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Load the pair; the error is one line naming the file at fault.
    pub fn load(certificate: &Path, key: &Path) -> Result<ServerTls, String> {
        Ok(ServerTls {
            current: ArcSwap::from_pointee(server_config(certificate, key)?),
        })
    }

    /// Load the pair again (renewed files, or new paths); on error the running pair stays.
    pub fn reload(&self, certificate: &Path, key: &Path) -> Result<(), String> {
        self.current.store(Arc::new(server_config(certificate, key)?));
        Ok(())
    }

    /// The config a new connection shakes hands with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}

/// PEM certificate chain (leaf first) and key → a server config: TLS 1.2 and 1.3 (as
/// keepstore's `MinVersion: tls.VersionTLS12`), rustls's default suites (ECDHE with
/// AES-GCM or ChaCha20-Poly1305 only, the set keepstore lists), ALPN `http/1.1`
/// (keepring speaks no HTTP/2: a client offering h2 and http/1.1 gets http/1.1).
pub fn server_config(certificate: &Path, key: &Path) -> Result<ServerConfig, String> {
    let certificate_pem = read(certificate)?;
    let chain = CertificateDer::pem_slice_iter(&certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: bad PEM certificate: {error}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", certificate.display()));
    }
    let key_pem = read(key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| format!("{}: no usable PEM private key: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS settings: {error}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| {
            format!(
                "{} with {}: certificate and key unusable together: {error}",
                certificate.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_mismatched_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = server_config(&missing, &missing).unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = server_config(&empty, &empty).unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(!error.contains('\n'));
    }
}
