//! The pull list worker (keep-protocol.md §3.5): for each item, fetch the block from one
//! of the listed servers — `GET <server>/<hash>+<size>+A<sig>` signed with this node's
//! key for keepstore's fixed pull token — check its length and MD5, and store it on the
//! item's volume (which must be writable) or the first writable volume in placement
//! order. Runs on its own thread with a minimal blocking HTTP/1.1 client (one request per
//! connection, bounded by timeouts), so a slow peer never holds a core. An `https://`
//! peer is reached over rustls (a blocking `StreamOwned` over the same `TcpStream`), its
//! certificate checked against the system's roots, or not at all with the cluster's
//! `TLS.Insecure` (`tls::client`), as keepstore's pull worker does with it.
//!
//! `BlobReplicateConcurrency` pulls at a time (4 by default); each
//! block being pulled is leased from the buffer budget like a request's, waiting for it if
//! need be, so the memory bound holds with pulls running.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{ClientConnection, StreamOwned};
use serde::Deserialize;

use crate::chores::ChoreContext;
use crate::digest::BlockDigest;
use crate::limits::{BLOCK_BYTES_MAX, PULL_CONNECT_TIMEOUT_MS, PULL_IO_STALL_TIMEOUT_MS, PULL_RESPONSE_HEAD_BYTES_MAX};
use crate::locator::Locator;
use crate::metrics::{Recorder, VolumeErrorKind, VolumeOp};
use crate::tls::client::{self as tls_client, Verification};
use crate::volume::io::{write_block_blocking, WriteError};
use crate::volume::s3;
use crate::volume::Volume;

/// The token keepstore signs pull requests for (pull_worker.go); peers of the same
/// cluster share the signing key, so they accept the signature whatever the token.
pub const PULL_TOKEN: &str = "keepstore-token-used-for-pulling-data-from-same-cluster";

/// One `PUT /pull` item: `{"locator":"<hash>+<size>","servers":[...],"mount_uuid":""}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullItem {
    pub locator: String,
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub mount_uuid: String,
}

/// keepstore rejects a list whose first locator is a bare hash (an old keep-balance).
pub fn first_item_lacks_size(items: &[PullItem]) -> bool {
    items.first().is_some_and(|item| item.locator.len() == 32)
}

/// One pull worker's loop (`BlobReplicateConcurrency` of them share the queue): one item at a time,
/// as long as the process lives.
pub fn run_pull_list(context: Arc<ChoreContext>) {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let recorder = context.registry.register();
    // Temp names must differ between workers that start in the same nanosecond.
    let mut random = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(1)
        ^ STARTED
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15))
        | 1;
    loop {
        let taken = context.chores.pull.next();
        random = random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        match pull_one(&context, &recorder, &taken.item, random) {
            Ok(volume) => tracing::info!(locator = %taken.item.locator, volume = %volume, "block pulled"),
            Err(reason) => tracing::warn!(locator = %taken.item.locator, reason = %reason, "pull failed"),
        }
    }
}

fn pull_one(context: &ChoreContext, recorder: &Recorder, item: &PullItem, random: u64) -> Result<String, String> {
    let locator = Locator::parse(&item.locator).map_err(|_| "invalid locator".to_string())?;
    let size = locator.size.ok_or("locator without a size")?;
    if size > BLOCK_BYTES_MAX {
        return Err("size above the block limit".into());
    }
    let volumes = context.state.volumes();
    let target: Arc<Volume> = if item.mount_uuid.is_empty() {
        // As a PUT: the first volume in the write rotation; with none, the first writable
        // one (failed or unhealthy, it may work again, and a success brings it back).
        let ordered = volumes.ordered_for(locator.hash);
        let writable = ordered
            .iter()
            .find(|volume| volume.accepts_writes())
            .or_else(|| ordered.iter().find(|volume| volume.allow_write))
            .map(|volume| Arc::clone(volume));
        writable.ok_or("no writable volume")?
    } else {
        match volumes.by_uuid(&item.mount_uuid) {
            Some(volume) if volume.allow_write => volume.clone(),
            Some(_) => return Err(format!("volume {} is read-only", item.mount_uuid)),
            None => return Err(format!("no volume {}", item.mount_uuid)),
        }
    };
    let mut signed = format!("{}+{size}", locator.hash);
    if let Some(key) = context.state.signing_key() {
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        signed.push_str(&key.sign_hint(locator.hash, PULL_TOKEN, now_secs));
    }
    // The fetched block is held in memory until written: it counts in the buffer budget.
    let _lease = context
        .budget
        .lease_blocking(size)
        .ok_or("block larger than the whole buffer budget")?;
    let verification = Verification::from_insecure(context.settings().tls_insecure);
    let mut failures = Vec::new();
    for server in &item.servers {
        match fetch_block(server, &signed, locator.hash, size, verification) {
            Ok(data) => {
                let counters = recorder.volume(&target);
                let started = target.write_started();
                // The request path's commit protocol and failure rules (volume::io).
                let written = match &target.s3 {
                    Some(bucket) => s3::run_blocking(bucket.write(locator.hash, data))
                        .and_then(|(result, _)| result.map_err(s3::to_io))
                        .map_err(WriteError::Failed),
                    None => write_block_blocking(&target, locator.hash, &data, random),
                };
                return match written {
                    Ok(()) => {
                        target.mark_healthy(started);
                        counters.operation(VolumeOp::Write);
                        counters.wrote(size);
                        Ok(target.uuid.clone())
                    }
                    Err(WriteError::Full) => {
                        counters.error(VolumeErrorKind::Full);
                        Err(format!("writing to {}: volume full", target.uuid))
                    }
                    Err(WriteError::Failed(error)) => {
                        // Out of the write rotation for a while, as a request's write failure.
                        target.mark_failed(&error);
                        counters.error(VolumeErrorKind::Io);
                        Err(format!("writing to {}: {error}", target.uuid))
                    }
                };
            }
            Err(error) => failures.push(format!("{server}: {error}")),
        }
    }
    Err(format!("no server had it ({})", failures.join("; ")))
}

/// `GET <server>/<locator>` and return the body if it is the block.
fn fetch_block(server: &str, locator: &str, hash: &str, size: u64, verification: Verification) -> io::Result<Vec<u8>> {
    let (status, body) = http_get(server, &format!("/{locator}"), PULL_TOKEN, size, verification)?;
    if status != 200 {
        return Err(io::Error::other(format!("status {status}")));
    }
    if body.len() as u64 != size {
        return Err(io::Error::other(format!("{} bytes, expected {size}", body.len())));
    }
    let mut digest = BlockDigest::default();
    digest.update(&body);
    if !digest.matches(hash) {
        return Err(io::Error::other("MD5 mismatch"));
    }
    Ok(body)
}

/// A peer's address, from its base URL.
#[derive(Debug, PartialEq, Eq)]
struct BaseUrl {
    https: bool,
    /// As written, an IPv6 address without its brackets.
    host: String,
    port: u16,
    /// The path prefix, without a trailing `/`.
    base: String,
}

/// `http[s]://host[:port][/base]` (the port defaulting to 80 or 443).
fn parse_base_url(url: &str) -> io::Result<BaseUrl> {
    let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only http:// and https:// servers are supported",
            ))
        }
    };
    let (authority, base) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad server address {url:?}"));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| invalid())?)
        }
        _ => (authority, if https { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(BaseUrl {
        https,
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
        base: base.to_string(),
    })
}

/// A connection to a peer: plain, or TLS over the same socket (the socket's read and
/// write timeouts bound every step of the handshake too).
enum PeerStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for PeerStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(stream) => stream.read(buffer),
            PeerStream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(stream) => stream.write(buffer),
            PeerStream::Tls(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(stream) => stream.flush(),
            PeerStream::Tls(stream) => stream.flush(),
        }
    }
}

/// Shake hands with `host` over `socket`; a refused certificate is an error naming
/// rustls's reason (`invalid peer certificate: UnknownIssuer`).
fn tls_connect(socket: TcpStream, host: &str, verification: Verification) -> io::Result<PeerStream> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidInput, reason);
    let config = tls_client::config(verification).map_err(invalid)?;
    let name = tls_client::server_name(host).map_err(invalid)?;
    let connection = ClientConnection::new(config, name)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}")))?;
    let mut stream = StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|error| io::Error::new(error.kind(), format!("TLS handshake: {error}")))?;
    }
    Ok(PeerStream::Tls(Box::new(stream)))
}

/// A minimal HTTP/1.1 GET: one request, `Connection: close`, the body read by
/// `Content-Length` (or to EOF), at most `body_bytes_max` bytes. An https server's
/// certificate is checked as `verification` says.
pub fn http_get(
    server: &str,
    path: &str,
    token: &str,
    body_bytes_max: u64,
    verification: Verification,
) -> io::Result<(u16, Vec<u8>)> {
    let BaseUrl {
        https,
        host,
        port,
        base,
    } = parse_base_url(server)?;
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    let mut stream = None;
    for address in (host.as_str(), port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, Duration::from_millis(PULL_CONNECT_TIMEOUT_MS)) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last_error = error,
        }
    }
    let socket = stream.ok_or(last_error)?;
    let stall = Some(Duration::from_millis(PULL_IO_STALL_TIMEOUT_MS));
    socket.set_read_timeout(stall)?;
    socket.set_write_timeout(stall)?;
    let mut stream = match https {
        true => tls_connect(socket, &host, verification)?,
        false => PeerStream::Plain(socket),
    };
    let request = format!(
        "GET {base}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let (status, length, mut body) = read_response_head(&mut stream)?;
    let limit = body_bytes_max;
    if length.is_some_and(|length| length > limit) || body.len() as u64 > limit {
        return Err(io::Error::other("response body too large"));
    }
    let want = length.unwrap_or(limit + 1);
    let mut chunk = vec![0u8; 256 * 1024];
    while (body.len() as u64) < want {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            if length.is_some() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            break;
        }
        body.extend_from_slice(&chunk[..read]);
        if body.len() as u64 > limit {
            return Err(io::Error::other("response body too large"));
        }
    }
    body.truncate(want.min(body.len() as u64) as usize);
    Ok((status, body))
}

/// Read up to the end of the head; returns (status, Content-Length, body bytes read past it).
fn read_response_head(stream: &mut impl Read) -> io::Result<(u16, Option<u64>, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(&buffer)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        if let httparse::Status::Complete(head_length) = parsed {
            let status = response.code.unwrap_or(0);
            let mut length = None;
            for header in response.headers.iter() {
                if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunked responses are not supported",
                    ));
                }
                if header.name.eq_ignore_ascii_case("content-length") {
                    let text = std::str::from_utf8(header.value).unwrap_or("");
                    length = Some(
                        text.trim()
                            .parse::<u64>()
                            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
                    );
                }
            }
            return Ok((status, length, buffer.split_off(head_length)));
        }
        if buffer.len() > PULL_RESPONSE_HEAD_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn base_urls() {
        let url = |https: bool, host: &str, port: u16, base: &str| BaseUrl {
            https,
            host: host.into(),
            port,
            base: base.into(),
        };
        assert_eq!(
            parse_base_url("http://127.0.0.1:25107").unwrap(),
            url(false, "127.0.0.1", 25107, "")
        );
        assert_eq!(
            parse_base_url("http://keep0.example/prefix/").unwrap(),
            url(false, "keep0.example", 80, "/prefix")
        );
        assert_eq!(parse_base_url("http://[::1]:8").unwrap(), url(false, "::1", 8, ""));
        assert_eq!(parse_base_url("https://a:1").unwrap(), url(true, "a", 1, ""));
        assert_eq!(
            parse_base_url("https://keep0.example").unwrap(),
            url(true, "keep0.example", 443, "")
        );
        assert!(parse_base_url("ftp://a:1").is_err());
        assert!(parse_base_url("http://:1").is_err());
    }

    #[test]
    fn pull_list_json_and_unsized_first_item() {
        let items: Vec<PullItem> =
            serde_json::from_str(r#"[{"locator":"6f09f2b353b6d63069f770b90e2b112c","servers":["http://h:1"]}]"#)
                .unwrap();
        assert!(first_item_lacks_size(&items));
        assert_eq!(items[0].mount_uuid, "");
    }

    /// One canned answer on a loopback port; returns the base URL and the request seen.
    fn serve_once(answer: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = vec![0u8; 4096];
            let read = stream.read(&mut request).unwrap();
            stream.write_all(answer).unwrap();
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        (url, handle)
    }

    #[test]
    fn get_reads_a_length_delimited_body_and_sends_the_token() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello keep\n");
        let (status, body) = http_get(&url, "/abc", "tok", 100, Verification::SystemRoots).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"hello keep\n"[..]));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /abc HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Authorization: Bearer tok\r\n"), "{request}");
    }

    /// One canned answer over TLS (the self-signed `tls::testing` certificate) on a
    /// loopback port; the thread returns the request seen, or why the handshake failed.
    fn serve_tls_once(answer: &'static [u8]) -> (String, std::thread::JoinHandle<Result<String, String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let config = crate::tls::testing::self_signed_server();
        let handle = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(config).unwrap();
            let mut stream = StreamOwned::new(connection, socket);
            let mut request = vec![0u8; 4096];
            let read = stream.read(&mut request).map_err(|error| error.to_string())?;
            stream.write_all(answer).map_err(|error| error.to_string())?;
            stream.conn.send_close_notify();
            stream.flush().map_err(|error| error.to_string())?;
            Ok(String::from_utf8_lossy(&request[..read]).into_owned())
        });
        (url, handle)
    }

    #[test]
    fn https_peer_is_read_with_tls_insecure_and_its_self_signed_certificate_refused_without() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello keep\n";
        let (url, server) = serve_tls_once(answer);
        let (status, body) = http_get(&url, "/abc", "tok", 100, Verification::Insecure).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"hello keep\n"[..]));
        let request = server.join().unwrap().expect("the request came over TLS");
        assert!(request.starts_with("GET /abc HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Authorization: Bearer tok\r\n"), "{request}");

        let (url, server) = serve_tls_once(answer);
        let error = http_get(&url, "/abc", "tok", 100, Verification::SystemRoots).expect_err("not trusted");
        let reason = error.to_string();
        assert!(reason.contains("TLS handshake: invalid peer certificate"), "{reason}");
        assert!(server.join().unwrap().is_err(), "no request was sent");
    }

    #[test]
    fn get_refuses_short_and_oversized_bodies() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort");
        assert!(http_get(&url, "/x", "t", 100, Verification::SystemRoots).is_err());
        server.join().unwrap();
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n");
        assert!(http_get(&url, "/x", "t", 10, Verification::SystemRoots).is_err());
        server.join().unwrap();
    }
}
