//! An S3 client for keepring's cores (issue 13): the transport and protocol under an S3
//! volume, which itself (recent/ markers, trash/, races) lives above this module.
//!
//! It owns: the configuration (`ClientConfig`, keepstore's S3 volume fields and default
//! timeouts), signing (SigV4 presigned URLs from the sans-IO `rusty-s3`, the payload
//! unsigned: a PUT's Content-MD5 protects its body), HTTP/1.1 over the calling thread's
//! own io_uring sockets (`connection`: a per-thread pool of keep-alive connections, the
//! timeouts that make a slow or dead store fail like a failing disk instead of stalling
//! the core), TLS for an https endpoint over those same sockets (`tls`, rustls sans-IO;
//! its settings from `crate::tls::client`), response framing (`body`, `wire`) and the bits of S3 XML it reads (`xml`).
//! It does not own: what keys mean, retries other than one for a stale keep-alive
//! connection, or the MD5 of what a GET brings in (the volume hashes blocks through its
//! core's hasher as it streams them).
//!
//! A `Client` is `Send + Sync` and cheap to clone; its operations are futures for a
//! tokio-uring runtime (a keepring core, or `tokio_uring::start`) and use the connections
//! of the thread they run on.

mod body;
mod config;
mod connection;
mod error;
pub mod testing;
mod tls;
mod wire;
mod xml;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use rusty_s3::Method;

use body::Framing;
use connection::Connection;
use wire::ResponseHead;

pub use config::{ClientConfig, Endpoint};
pub use error::{ConfigError, S3Error};

use crate::limits::{
    S3_ERROR_BODY_BYTES_MAX, S3_LIST_BODY_BYTES_MAX, S3_LIST_KEYS_MAX, S3_PRESIGN_EXPIRES_SECS,
    S3_SMALL_BODY_BYTES_MAX, S3_STALE_RETRIES_MAX,
};

/// What a HEAD (or the head of a GET) tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub last_modified: SystemTime,
    /// As the store gives it, without quotes: the MD5 in hex for a simple upload, not
    /// for a multipart one.
    pub etag: String,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// One page of a ListObjectsV2 listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    /// The continuation token for the next page; `None` on the last.
    pub next: Option<String>,
}

/// An S3 client for one bucket. Clones share the configuration and counters; connections
/// belong to the thread that uses them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: Endpoint,
    connections_opened: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// One request before signing. `query` sorted by name; `headers` sorted by name, names in
/// lowercase (they are signed as given, then sent).
struct Request<'a> {
    method: Method,
    /// The object; `None` for the bucket itself (a listing).
    key: Option<&'a str>,
    query: &'a [(&'a str, &'a str)],
    headers: &'a [(&'a str, &'a str)],
    /// Sent as Content-Length (a PUT's, even 0); `None` for requests without a body.
    body_length: Option<usize>,
}

/// A failed attempt, and whether it may be the store having closed an idle connection.
struct Attempt {
    error: S3Error,
    stale: bool,
}

impl Client {
    /// Check `config` and resolve its endpoint (may block on DNS for a host name: make
    /// clients off the cores' hot path).
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        let endpoint = Endpoint::new(&config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoint,
                connections_opened: AtomicU64::new(0),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Connections this client (all its clones, on every thread) has opened.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// Idle connections to this client's endpoint the calling thread keeps.
    pub fn idle_connections(&self) -> usize {
        connection::idle_count(&self.inner.endpoint.pool_key)
    }

    /// The object's size, date and ETag; `None` if there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let request = Request {
            method: Method::Head,
            key: Some(key),
            query: &[],
            headers: &[],
            body_length: None,
        };
        let (connection, head) = self.exchange(&request, Vec::new()).await.0?;
        let mut body = BodyReader::new(self.clone(), connection, &head);
        if head.status != 200 {
            return not_found_as_none(body.into_error(&head, true).await);
        }
        body.finish_empty();
        object_info(&head).map(Some)
    }

    /// The object, its body to be read; `None` if there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<GetObject>, S3Error> {
        let request = Request {
            method: Method::Get,
            key: Some(key),
            query: &[],
            headers: &[],
            body_length: None,
        };
        let (connection, head) = self.exchange(&request, Vec::new()).await.0?;
        let body = BodyReader::new(self.clone(), connection, &head);
        if head.status != 200 {
            return not_found_as_none(body.into_error(&head, false).await);
        }
        let info = object_info(&head)?;
        if head.framing != Framing::Length(info.size) {
            return Err(S3Error::Protocol(format!("object body framed as {:?}", head.framing)));
        }
        Ok(Some(GetObject { info, body }))
    }

    /// The whole object if it is at most `max_bytes` long (`S3Error::TooLarge` if not).
    pub async fn get_all(&self, key: &str, max_bytes: u64) -> Result<Option<(ObjectInfo, Vec<u8>)>, S3Error> {
        let Some(mut object) = self.get(key).await? else {
            return Ok(None);
        };
        if object.info.size > max_bytes {
            return Err(S3Error::TooLarge {
                size: object.info.size,
                max: max_bytes,
            });
        }
        let size = usize::try_from(object.info.size).map_err(|_| S3Error::TooLarge {
            size: object.info.size,
            max: max_bytes,
        })?;
        let mut buffer = Vec::with_capacity(size);
        while buffer.len() < size {
            let (result, returned) = object.read(buffer).await;
            buffer = returned;
            if result? == 0 {
                return Err(S3Error::Protocol("object body ended early".into()));
            }
        }
        Ok(Some((object.info, buffer)))
    }

    /// Store `body` as `key`. With `content_md5`, the store checks the body against it
    /// (Content-MD5, RFC 1864) and refuses a mismatch (`BadDigest`) without storing it.
    /// The buffer comes back whatever happened, for the caller's pool (empty only if a
    /// timed-out write did not end within `S3_SHUTDOWN_GRACE_MS` of its socket's shutdown,
    /// when the ring keeps it).
    pub async fn put(&self, key: &str, body: Vec<u8>, content_md5: Option<[u8; 16]>) -> (Result<(), S3Error>, Vec<u8>) {
        let md5_base64 = content_md5.map(|md5| base64::engine::general_purpose::STANDARD.encode(md5));
        let md5_header = md5_base64.as_deref().map(|value| [("content-md5", value)]);
        let request = Request {
            method: Method::Put,
            key: Some(key),
            query: &[],
            headers: md5_header.as_ref().map_or(&[], |header| &header[..]),
            body_length: Some(body.len()),
        };
        let (exchanged, body) = self.exchange(&request, body).await;
        let result = match exchanged {
            Ok((connection, head)) => {
                let reader = BodyReader::new(self.clone(), connection, &head);
                if head.status == 200 {
                    reader.discard(S3_SMALL_BODY_BYTES_MAX).await
                } else {
                    Err(reader.into_error(&head, false).await)
                }
            }
            Err(error) => Err(error),
        };
        (result, body)
    }

    /// Remove `key`. S3 answers success for a key that is not there too.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let request = Request {
            method: Method::Delete,
            key: Some(key),
            query: &[],
            headers: &[],
            body_length: None,
        };
        let (connection, head) = self.exchange(&request, Vec::new()).await.0?;
        let reader = BodyReader::new(self.clone(), connection, &head);
        match head.status {
            200 | 204 => reader.discard(S3_SMALL_BODY_BYTES_MAX).await,
            _ => Err(reader.into_error(&head, false).await),
        }
    }

    /// Server-side copy of `from_key` to `to_key` (CopyObject). The new object's
    /// LastModified, if the answer carries it. `S3Error::NotFound` if `from_key` is not
    /// there.
    pub async fn copy(&self, from_key: &str, to_key: &str) -> Result<Option<SystemTime>, S3Error> {
        let source = self.copy_source(from_key);
        let headers = [("x-amz-copy-source", source.as_str())];
        let request = Request {
            method: Method::Put,
            key: Some(to_key),
            query: &[],
            headers: &headers,
            body_length: Some(0),
        };
        let (connection, head) = self.exchange(&request, Vec::new()).await.0?;
        let reader = BodyReader::new(self.clone(), connection, &head);
        if head.status != 200 {
            return Err(reader.into_error(&head, false).await);
        }
        let document = reader.read_text(S3_SMALL_BODY_BYTES_MAX).await?;
        // CopyObject may fail after its 200 went out: the error is then the body.
        if !xml::elements(&document, "Error").is_empty() {
            let (code, message) = xml::error_code_and_message(&document);
            return Err(S3Error::Store {
                status: 200,
                code,
                message,
            });
        }
        Ok(xml::text(&document, "LastModified").and_then(|text| xml::timestamp(&text)))
    }

    /// One page of the keys under `prefix`, in key order (ListObjectsV2). The first page
    /// starts after `start_after` (if given); the next ones take the previous page's
    /// `next` as `continuation`. `max_keys` is capped at `S3_LIST_KEYS_MAX`.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        continuation: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, S3Error> {
        let max_keys = max_keys.clamp(1, S3_LIST_KEYS_MAX).to_string();
        // Sorted by name, as signing wants.
        let mut query = Vec::with_capacity(5);
        if let Some(token) = continuation {
            query.push(("continuation-token", token));
        }
        query.push(("list-type", "2"));
        query.push(("max-keys", max_keys.as_str()));
        if !prefix.is_empty() {
            query.push(("prefix", prefix));
        }
        if let Some(after) = start_after {
            query.push(("start-after", after));
        }
        let request = Request {
            method: Method::Get,
            key: None,
            query: &query,
            headers: &[],
            body_length: None,
        };
        let (connection, head) = self.exchange(&request, Vec::new()).await.0?;
        let reader = BodyReader::new(self.clone(), connection, &head);
        if head.status != 200 {
            return Err(reader.into_error(&head, false).await);
        }
        let document = reader.read_text(S3_LIST_BODY_BYTES_MAX).await?;
        parse_list(&document)
    }

    /// `x-amz-copy-source`: `/bucket/key`, the key percent-encoded as in the object's URL.
    fn copy_source(&self, key: &str) -> String {
        let bucket = &self.inner.endpoint.bucket;
        let url = bucket.object_url(key);
        let encoded_key = url.path().get(bucket.base_url().path().len()..).unwrap_or(key);
        format!("/{}/{}", bucket.name(), encoded_key)
    }

    /// The signed request head.
    fn request_head(&self, request: &Request<'_>) -> Vec<u8> {
        let config = &self.inner.config;
        let bucket = &self.inner.endpoint.bucket;
        let url = match request.key {
            Some(key) => bucket.object_url(key),
            None => bucket.base_url().clone(),
        };
        let signed = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            request.method,
            url,
            &config.access_key_id,
            &config.secret_access_key,
            None,
            &config.region,
            S3_PRESIGN_EXPIRES_SECS,
            request.query.iter().copied(),
            request.headers.iter().copied(),
        );
        wire::request_head(
            request.method.to_str(),
            &signed,
            &self.inner.endpoint.host_header,
            request.headers,
            request.body_length,
        )
    }

    async fn connect(&self) -> Result<Connection, S3Error> {
        let endpoint = &self.inner.endpoint;
        let connection = Connection::connect(
            endpoint.address,
            self.inner.config.connect_timeout,
            endpoint.tls.as_ref(),
        )
        .await?;
        self.inner.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(connection)
    }

    /// Send `request` with `body` and read the response head: on an idle connection if
    /// the thread has one, else a new one. A reused connection that fails before any
    /// response byte is retried on a new one (`S3_STALE_RETRIES_MAX`); nothing else is.
    async fn exchange(
        &self,
        request: &Request<'_>,
        mut body: Vec<u8>,
    ) -> (Result<(Connection, ResponseHead), S3Error>, Vec<u8>) {
        let head = self.request_head(request);
        let mut retries = 0;
        loop {
            let connection = match connection::take_idle(&self.inner.endpoint.pool_key) {
                Some(connection) => connection,
                None => match self.connect().await {
                    Ok(connection) => connection,
                    Err(error) => return (Err(error), body),
                },
            };
            let to_head_request = request.method == Method::Head;
            let (result, returned) = self.send_once(connection, head.clone(), body, to_head_request).await;
            body = returned;
            match result {
                Ok(exchanged) => return (Ok(exchanged), body),
                Err(Attempt { error, stale: true }) if retries < S3_STALE_RETRIES_MAX => {
                    tracing::debug!(error = %error, "S3: idle connection was closed; retrying on a new one");
                    retries += 1;
                }
                Err(Attempt { error, .. }) => return (Err(error), body),
            }
        }
    }

    async fn send_once(
        &self,
        mut connection: Connection,
        head: Vec<u8>,
        body: Vec<u8>,
        to_head_request: bool,
    ) -> (Result<(Connection, ResponseHead), Attempt>, Vec<u8>) {
        let timeout = self.inner.config.read_timeout;
        let reused = connection.reused;
        let failed = |error: io::Error| {
            let stale = reused && error.kind() != io::ErrorKind::TimedOut;
            connection_failed(error.into(), stale)
        };
        let (written, _) = connection.write_all(head, timeout).await;
        if let Err(error) = written {
            return (Err(failed(error)), body);
        }
        let (written, body) = connection.write_all(body, timeout).await;
        if let Err(error) = written {
            return (Err(failed(error)), body);
        }
        match connection.read_head(to_head_request, timeout).await {
            Ok(head) => (Ok((connection, head)), body),
            Err(failure) => {
                connection.shutdown();
                let stale = reused && !failure.received_any && !matches!(failure.error, S3Error::Timeout);
                (Err(connection_failed(failure.error, stale)), body)
            }
        }
    }
}

fn connection_failed(error: S3Error, stale: bool) -> Attempt {
    Attempt { error, stale }
}

/// `NotFound` becomes `Ok(None)`; every other error stays one.
fn not_found_as_none<T>(error: S3Error) -> Result<Option<T>, S3Error> {
    match error {
        S3Error::NotFound => Ok(None),
        other => Err(other),
    }
}

fn object_info(head: &ResponseHead) -> Result<ObjectInfo, S3Error> {
    Ok(ObjectInfo {
        size: head
            .content_length
            .ok_or_else(|| S3Error::Protocol("object without Content-Length".into()))?,
        last_modified: head
            .last_modified
            .ok_or_else(|| S3Error::Protocol("object without a valid Last-Modified".into()))?,
        etag: head.etag.clone().unwrap_or_default(),
    })
}

fn parse_list(document: &str) -> Result<ListPage, S3Error> {
    let mut objects = Vec::new();
    for entry in xml::elements(document, "Contents") {
        let key = xml::text(entry, "Key").ok_or_else(|| S3Error::Protocol("listed object without a Key".into()))?;
        let size = xml::text(entry, "Size")
            .and_then(|size| size.trim().parse::<u64>().ok())
            .ok_or_else(|| S3Error::Protocol(format!("listed object {key:?} without a valid Size")))?;
        let last_modified = xml::text(entry, "LastModified")
            .and_then(|text| xml::timestamp(&text))
            .ok_or_else(|| S3Error::Protocol(format!("listed object {key:?} without a valid LastModified")))?;
        objects.push(ListedObject {
            key,
            size,
            last_modified,
        });
    }
    let truncated = xml::text(document, "IsTruncated").is_some_and(|text| text.trim() == "true");
    let next = if truncated {
        let token = xml::text(document, "NextContinuationToken")
            .ok_or_else(|| S3Error::Protocol("truncated listing without NextContinuationToken".into()))?;
        Some(token)
    } else {
        None
    };
    Ok(ListPage { objects, next })
}

/// A GET's object: its info, and its body read a buffer at a time.
pub struct GetObject {
    pub info: ObjectInfo,
    body: BodyReader,
}

impl GetObject {
    /// Read the next body bytes into `buffer`'s spare capacity (after its length, up to
    /// its capacity and the body's end), as tokio-uring reads do: `Ok(0)` at the end of
    /// the body (or if `buffer` has no spare capacity). Each socket read must make
    /// progress within the read timeout (`ErrorKind::TimedOut` if not). Once the body is
    /// read to its end the connection goes back to the thread's pool; a `GetObject`
    /// dropped before that closes it.
    pub async fn read(&mut self, buffer: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.body.read(buffer, usize::MAX).await
    }

    /// As `read`, appending at most `max` bytes (a caller filling a chunk of a buffer
    /// that has more room than the chunk).
    pub async fn read_at_most(&mut self, buffer: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        self.body.read(buffer, max).await
    }

    /// Body bytes not read yet.
    pub fn remaining(&self) -> u64 {
        match self.body.framing {
            Framing::Length(remaining) if self.body.connection.is_some() => remaining,
            _ => 0,
        }
    }
}

/// One response's body on its connection, which goes back to the pool when the body has
/// been read to its end (if the response allows keep-alive).
struct BodyReader {
    client: Client,
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the store closed the connection before the body ended",
    )
}

impl BodyReader {
    fn new(client: Client, connection: Connection, head: &ResponseHead) -> BodyReader {
        let mut reader = BodyReader {
            client,
            connection: Some(connection),
            framing: head.framing,
            keep_alive: head.keep_alive,
        };
        if reader.is_done() {
            reader.finish();
        }
        reader
    }

    fn is_done(&self) -> bool {
        match self.framing {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(decoder) => decoder.is_done(),
            Framing::Length(_) | Framing::UntilClose => false,
        }
    }

    /// The body is over: the connection goes back to the pool if it may be reused.
    fn finish(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            if self.keep_alive && self.is_done() && connection.is_clean() {
                connection::give_back(&self.client.inner.endpoint.pool_key, connection);
            }
        }
    }

    /// For a response that has no body (a HEAD's).
    fn finish_empty(&mut self) {
        debug_assert!(self.is_done());
        self.finish();
    }

    async fn read(&mut self, mut buffer: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        let timeout = self.client.inner.config.read_timeout;
        let room = (buffer.capacity() - buffer.len()).min(max);
        let Some(connection) = self.connection.as_mut() else {
            return (Ok(0), buffer);
        };
        if room == 0 {
            return (Ok(0), buffer);
        }
        let result = match &mut self.framing {
            Framing::Empty | Framing::Length(0) => Ok(0),
            Framing::Length(remaining) => {
                let limit = room.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let read = if connection.buffered().is_empty() {
                    let (read, returned) = connection.read_into(buffer, limit, timeout).await;
                    buffer = returned;
                    match read {
                        Ok(0) => Err(closed_early()),
                        other => other,
                    }
                } else {
                    let take = limit.min(connection.buffered().len());
                    buffer.extend_from_slice(&connection.buffered()[..take]);
                    connection.consume(take);
                    Ok(take)
                };
                if let Ok(count) = read {
                    *remaining -= count as u64;
                }
                read
            }
            Framing::Chunked(decoder) => loop {
                if decoder.is_done() {
                    break Ok(0);
                }
                if connection.buffered().is_empty() {
                    match connection.fill(timeout).await {
                        Ok(0) => break Err(closed_early()),
                        Ok(_) => {}
                        Err(error) => break Err(error),
                    }
                }
                let length = buffer.len();
                buffer.resize(length + room, 0);
                match decoder.decode(connection.buffered(), &mut buffer[length..]) {
                    Ok((used, written)) => {
                        buffer.truncate(length + written);
                        connection.consume(used);
                        if written > 0 || decoder.is_done() {
                            break Ok(written);
                        }
                    }
                    Err(_) => {
                        buffer.truncate(length);
                        break Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            crate::chunked::Malformed::REASON,
                        ));
                    }
                }
            },
            Framing::UntilClose => {
                if connection.buffered().is_empty() {
                    let (read, returned) = connection.read_into(buffer, room, timeout).await;
                    buffer = returned;
                    if let Ok(0) = read {
                        self.framing = Framing::Empty;
                    }
                    read
                } else {
                    let take = room.min(connection.buffered().len());
                    buffer.extend_from_slice(&connection.buffered()[..take]);
                    connection.consume(take);
                    Ok(take)
                }
            }
        };
        match result {
            Ok(count) => {
                if self.is_done() {
                    self.finish();
                }
                (Ok(count), buffer)
            }
            Err(error) => {
                if let Some(connection) = self.connection.take() {
                    connection.shutdown();
                }
                (Err(error), buffer)
            }
        }
    }

    /// The body, read until it ends or passes `max_bytes` (then `true`: the rest is left
    /// unread and the connection closed).
    async fn read_up_to(mut self, max_bytes: usize) -> Result<(Vec<u8>, bool), S3Error> {
        const STEP_BYTES: usize = 64 * 1024;
        let mut body = Vec::new();
        while body.len() <= max_bytes {
            if body.len() == body.capacity() {
                body.reserve(STEP_BYTES);
            }
            let (result, returned) = self.read(body, usize::MAX).await;
            body = returned;
            if result? == 0 {
                return Ok((body, false));
            }
        }
        Ok((body, true))
    }

    /// The body as text, at most `max_bytes` (a longer one is a protocol error).
    async fn read_text(self, max_bytes: usize) -> Result<String, S3Error> {
        let (body, longer) = self.read_up_to(max_bytes).await?;
        if longer {
            return Err(S3Error::Protocol(format!("response body over {max_bytes} bytes")));
        }
        String::from_utf8(body).map_err(|_| S3Error::Protocol("response body is not UTF-8".into()))
    }

    /// Read and drop the body (at most `max_bytes`; past that the connection is closed).
    async fn discard(self, max_bytes: usize) -> Result<(), S3Error> {
        self.read_up_to(max_bytes).await.map(|_| ())
    }

    /// The error this non-success response stands for, from its status and XML body.
    async fn into_error(self, head: &ResponseHead, to_head_request: bool) -> S3Error {
        let document = match self.read_up_to(S3_ERROR_BODY_BYTES_MAX).await {
            Ok((body, _)) => String::from_utf8_lossy(&body).into_owned(),
            Err(error) => return error,
        };
        let (code, message) = xml::error_code_and_message(&document);
        let missing_key = code == "NoSuchKey" || (code.is_empty() && (to_head_request || document.is_empty()));
        if head.status == 404 && missing_key {
            S3Error::NotFound
        } else {
            S3Error::Store {
                status: head.status,
                code,
                message,
            }
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn parses_a_listing_page() {
        let document = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a&amp;b</Key><LastModified>2025-01-02T03:04:05.678Z</LastModified><ETag>&quot;x&quot;</ETag><Size>3</Size></Contents>
<Contents><Key>p/c</Key><LastModified>2025-01-02T03:04:06.000Z</LastModified><Size>0</Size></Contents>
<NextContinuationToken>token+/=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_list(document).expect("parses");
        let keys: Vec<&str> = page.objects.iter().map(|object| object.key.as_str()).collect();
        assert_eq!(keys, ["p/a&b", "p/c"]);
        assert_eq!(page.objects[0].size, 3);
        assert_eq!(page.next.as_deref(), Some("token+/="));
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(
            parse_list(last).expect("parses"),
            ListPage {
                objects: vec![],
                next: None
            }
        );
        assert!(parse_list("<IsTruncated>true</IsTruncated>").is_err());
    }

    #[test]
    fn client_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Client>();
    }

    #[test]
    fn copy_source_is_bucket_and_encoded_key() {
        let client = Client::new(ClientConfig {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "b".into(),
            use_path_style: true,
            ..ClientConfig::default()
        })
        .expect("client");
        assert_eq!(client.copy_source("trash/abc"), "/b/trash/abc");
        assert_eq!(client.copy_source("a b"), "/b/a%20b");
    }
}
