//! One S3 connection's TLS record layer (an https endpoint): rustls's `ClientConnection`
//! does the handshake and the crypto in memory, and every byte it takes or gives moves
//! through the connection's own io_uring reads and writes, as `http::tls_channel` does for
//! the listener's side (`read_tls` / `process_new_packets` / `reader` on the way in,
//! `writer` / `write_tls` on the way out). `connection` calls it where a plain connection
//! reads or writes the socket, so framing, keep-alive pooling and the stale-connection
//! retry above it are the same for both.
//!
//! Timeouts are the plain connection's: each socket operation runs under
//! `connection::timed` (past its time the socket is shut down, the operation comes back,
//! the connection is not reused); the handshake runs inside the connect timeout, each
//! of its reads and writes getting what is left of it. Plaintext never goes through the
//! ring: only `incoming` and `outgoing` (ciphertext) are handed to it.

use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio::time::Instant;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::connection::{timed, timed_out, Timed};
use crate::limits::{S3_TLS_SEND_BUFFER_BYTES, TLS_READ_BYTES};

pub struct TlsLayer {
    session: ClientConnection,
    /// Ciphertext read from the socket: `incoming[incoming_start..]` is not yet rustls's.
    incoming: Vec<u8>,
    incoming_start: usize,
    /// Records on their way to the socket (reused between writes).
    outgoing: Vec<u8>,
    /// The socket reached end of stream (rustls has been told).
    eof: bool,
}

fn tls_error(during: &str, error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS {during}: {error}"))
}

impl TlsLayer {
    pub fn new(config: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<TlsLayer> {
        let mut session = ClientConnection::new(config, name).map_err(|error| tls_error("setup", error))?;
        session.set_buffer_limit(Some(S3_TLS_SEND_BUFFER_BYTES));
        Ok(TlsLayer {
            session,
            incoming: Vec::new(),
            incoming_start: 0,
            outgoing: Vec::new(),
            eof: false,
        })
    }

    /// Shake hands by `deadline` (the connect timeout's end): `ErrorKind::TimedOut` past
    /// it, `InvalidData` naming rustls's reason for a refused certificate or a failed
    /// negotiation (the alert saying why is sent to the store first).
    pub async fn handshake(&mut self, stream: &TcpStream, deadline: Instant) -> io::Result<()> {
        let left = || deadline.saturating_duration_since(Instant::now());
        while self.session.is_handshaking() {
            self.flush(stream, left()).await?;
            if !self.session.is_handshaking() {
                break;
            }
            if self.incoming_start == self.incoming.len() {
                if self.eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the store closed the connection during the TLS handshake",
                    ));
                }
                self.read_socket(stream, left()).await?;
            }
            self.feed(stream, left(), "handshake").await?;
        }
        // The client's Finished (TLS 1.3) leaves here; a failure shows at the first write.
        self.flush(stream, left()).await
    }

    /// Append decrypted bytes to `buffer`, at most up to `end`: as a plain socket read into
    /// `buffer.slice(buffer.len()..end)`, `Ok(0)` being the end of the stream (close_notify,
    /// or a TCP end without it: the response's framing decides whether that was early).
    pub async fn read(
        &mut self,
        stream: &TcpStream,
        buffer: &mut Vec<u8>,
        end: usize,
        timeout: Duration,
    ) -> io::Result<usize> {
        loop {
            if let Some(count) =
                crate::tls::take_plaintext(self.session.reader(), &mut crate::tls::UpTo { buffer, end })?
            {
                return Ok(count);
            }
            // A key update's answer or an alert: out before waiting.
            self.flush(stream, timeout).await?;
            if self.incoming_start == self.incoming.len() && !self.eof {
                self.read_socket(stream, timeout).await?;
            }
            self.feed(stream, timeout, "record").await?;
        }
    }

    /// rustls holds decrypted bytes nobody has read (then the connection is not reused).
    pub fn has_plaintext(&mut self) -> bool {
        matches!(self.session.reader().fill_buf(), Ok(chunk) if !chunk.is_empty())
    }

    /// Encrypt all of `buffer` and write it, a send buffer's worth at a time, each socket
    /// write making progress within `timeout`.
    pub async fn write_all(&mut self, stream: &TcpStream, buffer: &[u8], timeout: Duration) -> io::Result<()> {
        let mut sent = 0;
        while sent < buffer.len() {
            let accepted = self.session.writer().write(&buffer[sent..])?;
            // Nothing taken and nothing to send would loop forever (a closed session).
            if accepted == 0 && !self.session.wants_write() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS session closed"));
            }
            sent += accepted;
            self.flush(stream, timeout).await?;
        }
        Ok(())
    }

    /// One io_uring read of ciphertext into `incoming` (up to four records: a 64 MiB
    /// object in ~1,000 reads).
    async fn read_socket(&mut self, stream: &TcpStream, timeout: Duration) -> io::Result<()> {
        let mut incoming = std::mem::take(&mut self.incoming);
        incoming.clear();
        incoming.reserve(TLS_READ_BYTES);
        self.incoming_start = 0;
        let read = stream.read(incoming.slice(0..TLS_READ_BYTES));
        let (result, incoming) = match timed(stream, timeout, read).await {
            Timed::Done((result, slice)) => (result, slice.into_inner()),
            Timed::TimedOut(Some((_, slice))) => (Err(timed_out()), slice.into_inner()),
            // The ring kept the buffer: the next read takes a new one.
            Timed::TimedOut(None) => (Err(timed_out()), Vec::new()),
        };
        self.incoming = incoming;
        // A failed read leaves nothing to feed.
        self.incoming.truncate(*result.as_ref().unwrap_or(&0));
        if result? == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Give rustls what it will take of `incoming` (or the end of stream) and let it
    /// process it. A failure (a refused certificate, a bad record) sends rustls's alert.
    async fn feed(&mut self, stream: &TcpStream, timeout: Duration, during: &str) -> io::Result<()> {
        if self.incoming_start < self.incoming.len() {
            let mut pending = &self.incoming[self.incoming_start..];
            let taken = self.session.read_tls(&mut pending)?;
            if taken == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS records not accepted"));
            }
            self.incoming_start += taken;
        } else if self.eof {
            self.session.read_tls(&mut io::empty())?;
        }
        if let Err(error) = self.session.process_new_packets() {
            let _ = self.flush(stream, timeout).await;
            return Err(tls_error(during, error));
        }
        Ok(())
    }

    /// Write everything rustls has for the socket.
    async fn flush(&mut self, stream: &TcpStream, timeout: Duration) -> io::Result<()> {
        while self.session.wants_write() {
            let mut outgoing = std::mem::take(&mut self.outgoing);
            outgoing.clear();
            while self.session.wants_write() {
                // Into a Vec: never short, never an error.
                self.session.write_tls(&mut outgoing)?;
            }
            let write = stream.write_all(outgoing.slice(..));
            let (result, outgoing) = match timed(stream, timeout, write).await {
                Timed::Done((result, slice)) => (result, slice.into_inner()),
                Timed::TimedOut(Some((_, slice))) => (Err(timed_out()), slice.into_inner()),
                Timed::TimedOut(None) => (Err(timed_out()), Vec::new()),
            };
            self.outgoing = outgoing;
            result?;
        }
        Ok(())
    }
}
