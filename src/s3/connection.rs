//! One connection to an S3 endpoint, on the current thread's io_uring, and the thread's
//! pool of idle keep-alive connections.
//!
//! tokio-uring sockets are `!Send`, so connections never leave the thread that opened
//! them: each thread (a keepring core) keeps its own idle ones per endpoint, at most
//! `S3_IDLE_CONNECTIONS_PER_ENDPOINT_MAX`, and a `Client` shared between cores only
//! carries the endpoint's key.
//!
//! Timeouts: dropping an in-flight tokio-uring operation does not cancel it (the ring
//! still owns the buffer and the socket stays busy), so a read or write past its time
//! shuts the socket down, which makes the kernel finish the operation at once, and then
//! waits for it (bounded by `S3_SHUTDOWN_GRACE_MS`) to get the buffer back. Connecting
//! uses tokio's readiness-based `TcpStream::connect`, which a timeout can drop cleanly;
//! the connected socket then moves to io_uring.
//!
//! An https endpoint's connection carries a `tls::TlsLayer`: its handshake runs inside
//! the connect timeout, and then every read and write below goes through it instead of
//! straight to the socket (one `Option` test per operation on the plain path). Pooling,
//! timeouts and the stale-connection retry are the same for both.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::error::S3Error;
use super::tls::TlsLayer;
use super::wire::{parse_response_head, ResponseHead};
use crate::limits::{S3_IDLE_CONNECTIONS_PER_ENDPOINT_MAX, S3_READ_BUFFER_BYTES, S3_SHUTDOWN_GRACE_MS};

/// What an https endpoint's connections shake hands with: the client config (verified
/// against the system's roots, or keepstore's `TLS.Insecure`) and the name to check.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

pub struct Connection {
    stream: TcpStream,
    /// An https endpoint's record layer; `None`: plain HTTP.
    tls: Option<Box<TlsLayer>>,
    /// Bytes read but not yet consumed are `buffer[start..]`; capacity
    /// `S3_READ_BUFFER_BYTES`.
    buffer: Vec<u8>,
    start: usize,
    /// Came from the idle pool (a failure before any response byte may mean the store
    /// closed it while it sat there).
    pub reused: bool,
}

/// How a timed operation ended.
pub(super) enum Timed<T> {
    Done(T),
    /// Past its time; the socket was shut down and the operation gave back this (or did
    /// not finish within the grace either: `None`).
    TimedOut(Option<T>),
}

/// Run a socket operation with a deadline (see the module doc).
pub(super) async fn timed<T>(stream: &TcpStream, timeout: Duration, operation: impl Future<Output = T>) -> Timed<T> {
    let operation = std::pin::pin!(operation);
    let mut operation = operation;
    tokio::select! {
        biased;
        output = &mut operation => return Timed::Done(output),
        _ = tokio::time::sleep(timeout) => {}
    }
    let _ = stream.shutdown(Shutdown::Both);
    match tokio::time::timeout(Duration::from_millis(S3_SHUTDOWN_GRACE_MS), operation).await {
        Ok(output) => Timed::TimedOut(Some(output)),
        Err(_) => Timed::TimedOut(None),
    }
}

pub(super) fn timed_out() -> io::Error {
    io::Error::from(io::ErrorKind::TimedOut)
}

/// A response head read, or why not, and whether any byte of it had come.
pub struct HeadFailure {
    pub error: S3Error,
    pub received_any: bool,
}

impl Connection {
    /// A new connection to `address` within `timeout`, the TLS handshake included when
    /// `tls` is given.
    pub async fn connect(
        address: SocketAddr,
        timeout: Duration,
        tls: Option<&TlsTarget>,
    ) -> Result<Connection, S3Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(connected) => connected?,
            Err(_) => return Err(S3Error::Timeout),
        };
        // S3 requests are a head then a body: no reason to hold either back (Nagle).
        stream.set_nodelay(true)?;
        // tokio's `into_std` leaves the socket non-blocking, which io_uring handles (it
        // polls and retries internally).
        let stream = TcpStream::from_std(stream.into_std()?);
        let tls = match tls {
            None => None,
            Some(target) => {
                let mut layer = Box::new(TlsLayer::new(Arc::clone(&target.config), target.name.clone())?);
                if let Err(error) = layer.handshake(&stream, deadline).await {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Err(error.into());
                }
                Some(layer)
            }
        };
        Ok(Connection {
            stream,
            tls,
            buffer: Vec::with_capacity(S3_READ_BUFFER_BYTES),
            start: 0,
            reused: false,
        })
    }

    /// Nothing read and left unconsumed, here or (TLS) decrypted in the record layer: the
    /// last response ended where the bytes did, so the connection may serve the next one.
    pub fn is_clean(&mut self) -> bool {
        self.buffered().is_empty() && !self.tls.as_mut().is_some_and(|tls| tls.has_plaintext())
    }

    /// Bytes read from the socket and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    pub fn consume(&mut self, count: usize) {
        debug_assert!(count <= self.buffered().len());
        self.start += count;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
    }

    /// Shut the socket down now (it is not reused after this).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Write all of `buffer`, each socket write making progress within `timeout` (a slow
    /// store that keeps taking bytes is not cut, one that stops is).
    pub async fn write_all(&mut self, mut buffer: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
        if let Some(tls) = self.tls.as_mut() {
            let result = tls.write_all(&self.stream, &buffer, timeout).await;
            return (result, buffer);
        }
        let mut sent = 0;
        while sent < buffer.len() {
            let write = self.stream.write(buffer.slice(sent..)).submit();
            let (result, returned) = match timed(&self.stream, timeout, write).await {
                Timed::Done((result, slice)) => (result, slice.into_inner()),
                Timed::TimedOut(Some((_, slice))) => (Err(timed_out()), slice.into_inner()),
                Timed::TimedOut(None) => (Err(timed_out()), Vec::new()),
            };
            buffer = returned;
            match result {
                Ok(0) => return (Err(io::Error::from(io::ErrorKind::WriteZero)), buffer),
                Ok(count) => sent += count,
                Err(error) => return (Err(error), buffer),
            }
        }
        (Ok(()), buffer)
    }

    /// One socket read appended to the connection's buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let length = self.buffer.len();
        if length == self.buffer.capacity() {
            return Err(io::Error::other("connection buffer full"));
        }
        if let Some(tls) = self.tls.as_mut() {
            let end = self.buffer.capacity();
            return tls.read(&self.stream, &mut self.buffer, end, timeout).await;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let end = buffer.capacity();
        let (result, buffer) = match timed(&self.stream, timeout, self.stream.read(buffer.slice(length..end))).await {
            Timed::Done((result, slice)) => (result, slice.into_inner()),
            Timed::TimedOut(Some((_, slice))) => (Err(timed_out()), slice.into_inner()),
            Timed::TimedOut(None) => (Err(timed_out()), Vec::with_capacity(S3_READ_BUFFER_BYTES)),
        };
        self.buffer = buffer;
        result
    }

    /// Read straight into the spare room of `buffer`, at most `limit` bytes (an object's
    /// body bytes bypass the connection's buffer). The connection's buffer must be empty.
    pub async fn read_into(
        &mut self,
        mut buffer: Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(self.buffered().is_empty());
        let start = buffer.len();
        let end = start + limit.min(buffer.capacity() - start);
        if let Some(tls) = self.tls.as_mut() {
            let result = tls.read(&self.stream, &mut buffer, end, timeout).await;
            return (result, buffer);
        }
        match timed(&self.stream, timeout, self.stream.read(buffer.slice(start..end))).await {
            Timed::Done((result, slice)) => (result, slice.into_inner()),
            Timed::TimedOut(Some((_, slice))) => (Err(timed_out()), slice.into_inner()),
            Timed::TimedOut(None) => (Err(timed_out()), Vec::new()),
        }
    }

    /// Read the response head; its bytes are consumed, what follows stays buffered.
    pub async fn read_head(&mut self, to_head_request: bool, timeout: Duration) -> Result<ResponseHead, HeadFailure> {
        loop {
            let parsed = parse_response_head(self.buffered(), to_head_request);
            let received_any = !self.buffered().is_empty();
            match parsed {
                Ok(Some((head, length))) => {
                    self.consume(length);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(error) => return Err(HeadFailure { error, received_any }),
            }
            match self.fill(timeout).await {
                Ok(0) => {
                    let error = S3Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the store closed the connection before its response ended",
                    ));
                    return Err(HeadFailure { error, received_any });
                }
                Ok(_) => {}
                Err(error) => {
                    return Err(HeadFailure {
                        error: error.into(),
                        received_any,
                    })
                }
            }
        }
    }
}

thread_local! {
    /// This thread's idle connections, by endpoint key; the most recently used last.
    static IDLE: RefCell<HashMap<String, Vec<Connection>>> = RefCell::new(HashMap::new());
}

/// An idle connection to the endpoint `key`, the most recently used first (the least
/// likely to have been closed by the store).
pub fn take_idle(key: &str) -> Option<Connection> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(key).and_then(Vec::pop))
        .map(|mut connection| {
            connection.reused = true;
            connection
        })
}

/// Keep `connection` for the next request to `key`, if the pool has room. Only a
/// connection whose last response ended cleanly, with nothing after it, comes here.
pub fn give_back(key: &str, mut connection: Connection) {
    debug_assert!(connection.is_clean());
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let connections = idle.entry(key.to_string()).or_default();
        if connections.len() < S3_IDLE_CONNECTIONS_PER_ENDPOINT_MAX {
            connections.push(connection);
        }
    });
}

/// Idle connections this thread keeps for `key` (tests).
pub fn idle_count(key: &str) -> usize {
    IDLE.with(|idle| idle.borrow().get(key).map_or(0, Vec::len))
}

/// Shut down this thread's idle connections to `key` where they sit, as a store closing
/// them would (tests of the stale-connection retry); how many there were.
#[cfg(test)]
pub fn shut_idle(key: &str) -> usize {
    IDLE.with(|idle| {
        idle.borrow().get(key).map_or(0, |connections| {
            connections.iter().for_each(Connection::shutdown);
            connections.len()
        })
    })
}
