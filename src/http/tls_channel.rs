//! One TLS connection's record layer, driven sans-IO over the connection's own socket:
//! rustls's `ServerConnection` does the handshake and the crypto in memory, and every
//! byte it takes or gives moves through the same io_uring reads and writes a plain
//! connection uses (`read_tls` / `process_new_packets` / `reader` on the way in, `writer`
//! / `write_tls` on the way out), on the connection's core. `http::session` calls it
//! where a plain connection reads or writes the socket; nothing above the session knows
//! which one it has. The handshake needs no step of its own: it runs inside the first
//! read, under that read's timeouts (idle, drain grace), so a client that connects and
//! says nothing is closed as a silent plain one is.
//!
//! sendfile has no place here (the bytes must be encrypted on the way out), so the
//! session writes a `Piece::File`'s buffer, which holds the same bytes (they were read
//! there to be hashed). kTLS would let the kernel encrypt and sendfile again; not built.

use std::io::{self, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::limits::{TLS_READ_BYTES, TLS_RECORD_WIRE_BYTES_MAX, TLS_SEND_BUFFER_BYTES};
use crate::tls::PlaintextSink;

pub struct TlsChannel {
    connection: ServerConnection,
    /// Ciphertext read from the socket: `incoming[incoming_start..]` is not yet rustls's
    /// (it takes records only while its plaintext buffer has room).
    incoming: Vec<u8>,
    incoming_start: usize,
    /// Records on their way to the socket (reused between writes).
    outgoing: Vec<u8>,
    /// The socket reached end of stream (rustls has been told).
    eof: bool,
    /// A write to the socket is under way: a future dropped mid-write (a timeout) leaves it
    /// set, and then no close_notify may follow (it would land inside a record).
    writing: bool,
}

impl TlsChannel {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsChannel, rustls::Error> {
        let mut connection = ServerConnection::new(config)?;
        connection.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES));
        Ok(TlsChannel {
            connection,
            incoming: Vec::with_capacity(TLS_RECORD_WIRE_BYTES_MAX),
            incoming_start: 0,
            outgoing: Vec::new(),
            eof: false,
            writing: false,
        })
    }

    /// Move decrypted bytes into `sink` (as far as its space goes): as a plain socket
    /// read does, `Ok(0)` being the end of the stream (a close_notify, or a TCP EOF
    /// without one: HTTP framing decides whether what came before was whole).
    pub async fn read(&mut self, stream: &TcpStream, sink: &mut impl PlaintextSink) -> io::Result<usize> {
        loop {
            if let Some(read) = crate::tls::take_plaintext(self.connection.reader(), sink)? {
                return Ok(read);
            }
            // Handshake messages, a key update's answer, an alert: out before waiting.
            self.flush(stream).await?;
            if self.incoming_start == self.incoming.len() && !self.eof {
                self.read_socket(stream, sink.space()).await?;
            }
            if let Err(error) = self.feed() {
                // rustls queued an alert saying why; the connection ends either way.
                let _ = self.flush(stream).await;
                return Err(error);
            }
        }
    }

    /// One io_uring read of ciphertext into `incoming`: a record's worth while a head (or
    /// a small body) is wanted, so an idle connection holds little, `TLS_READ_BYTES` for
    /// a big body. A big response's records are let go too before the connection waits.
    async fn read_socket(&mut self, stream: &TcpStream, want: usize) -> io::Result<()> {
        let size = match want > TLS_RECORD_WIRE_BYTES_MAX {
            true => TLS_READ_BYTES,
            false => TLS_RECORD_WIRE_BYTES_MAX,
        };
        if self.outgoing.capacity() > TLS_RECORD_WIRE_BYTES_MAX {
            self.outgoing = Vec::new();
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        incoming.clear();
        incoming.shrink_to(size);
        // (A read whose future was dropped, at a timeout, kept the buffer: then it is new.)
        incoming.reserve(size);
        self.incoming_start = 0;
        let end = size.min(incoming.capacity());
        let (result, slice) = stream.read(incoming.slice(0..end)).await;
        self.incoming = slice.into_inner();
        if result? == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Give rustls what it will take of `incoming` (or the EOF) and let it process it.
    fn feed(&mut self) -> io::Result<()> {
        if self.incoming_start < self.incoming.len() {
            let mut pending = &self.incoming[self.incoming_start..];
            let taken = self.connection.read_tls(&mut pending)?;
            if taken == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS records not accepted"));
            }
            self.incoming_start += taken;
        } else if self.eof {
            self.connection.read_tls(&mut io::empty())?;
        }
        self.connection
            .process_new_packets()
            .map(|_| ())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
    }

    /// Write everything rustls has for the socket.
    async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.connection.wants_write() {
            let mut outgoing = std::mem::take(&mut self.outgoing);
            outgoing.clear();
            while self.connection.wants_write() {
                // Into a Vec: never short, never an error.
                self.connection.write_tls(&mut outgoing)?;
            }
            self.writing = true;
            let (result, slice) = stream.write_all(outgoing.slice(..)).await;
            self.writing = false;
            self.outgoing = slice.into_inner();
            result?;
        }
        Ok(())
    }

    /// Encrypt `buffer[from..]` and write it, a send buffer's worth at a time.
    pub async fn write_all(&mut self, stream: &TcpStream, buffer: Vec<u8>, from: usize) -> (io::Result<()>, Vec<u8>) {
        let mut sent = from;
        while sent < buffer.len() {
            match self.connection.writer().write(&buffer[sent..]) {
                // Nothing taken and nothing to send would loop forever (a closed session).
                Ok(0) if !self.connection.wants_write() => {
                    return (
                        Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS session closed")),
                        buffer,
                    )
                }
                Ok(accepted) => sent += accepted,
                Err(error) => return (Err(error), buffer),
            }
            if let Err(error) = self.flush(stream).await {
                return (Err(error), buffer);
            }
        }
        (Ok(()), buffer)
    }

    /// Send close_notify (RFC 8446 §6.1) before a clean close.
    pub async fn close_notify(&mut self, stream: &TcpStream) -> io::Result<()> {
        self.connection.send_close_notify();
        self.flush(stream).await
    }

    /// Send close_notify at once, without waiting, on a connection about to be shut down
    /// while a read is still queued in the ring (an idle keep-alive connection at its
    /// timeout or at a drain): a non-blocking send of a few dozen bytes into a send buffer
    /// an idle connection has emptied. Skipped mid-handshake or mid-write.
    pub fn close_notify_now(&mut self, socket: std::os::fd::RawFd) {
        if self.writing || self.connection.is_handshaking() {
            return;
        }
        self.connection.send_close_notify();
        let mut alert = Vec::new();
        while self.connection.wants_write() {
            if self.connection.write_tls(&mut alert).is_err() {
                return;
            }
        }
        // SAFETY: `alert` is valid for its length; the socket stays open during the call.
        let _ = unsafe {
            libc::send(
                socket,
                alert.as_ptr().cast(),
                alert.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}
