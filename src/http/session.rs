//! One client connection's HTTP/1.1 session (pingora's `ServerSession` is the model):
//! read request heads (bounded, with timeouts) and bodies (Content-Length or chunked,
//! `100 Continue` when asked), write responses in order with the right framing and
//! `Connection` header, keep the connection alive or close it. The per-core drain gate
//! tells it when a response must close the connection and when to stop waiting for the
//! next request. Every socket operation is awaited under a deadline kept by the
//! connection's `Watch`: past it the worker's sweeper shuts the socket down, the pending
//! operation completes (tokio-uring does not cancel one whose future is dropped) and the
//! session treats the connection as gone.
//!
//! A TLS connection (`tls`) differs only where bytes meet the socket: reads, writes and a
//! clean close go through its `TlsChannel`, and a file piece is written from its buffer
//! instead of by sendfile. A plain connection takes the same path as before TLS existed,
//! one `Option` test per socket operation.

use std::future::Future;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::error::RequestError;
use crate::http::chunked::ChunkedDecoder;
use crate::http::reply::{BodySource, Piece, Response, Streamed};
use crate::http::request::{parse_head_into, Framing, Head};
use crate::http::response::{BodyFraming, ResponseHead};
use crate::http::tls_channel::TlsChannel;
use crate::http::watch::{deadline_after, Watch};
use crate::lifecycle::drain::Gate;
use crate::limits::{
    CHUNK_BYTES, HEADER_TIMEOUT_MS, IDLE_TIMEOUT_MS, IO_STALL_TIMEOUT_MS, LINGER_MS_MAX, READ_BUFFER_BYTES,
    TLS_CLOSE_NOTIFY_MS_MAX,
};
use crate::shared_body::Room;
use crate::tls::{PlaintextSink, UpTo};

/// Room reserved for a response head (the CORS lines alone are ~420 bytes), so writing
/// one never reallocates.
const HEAD_ROOM_BYTES: usize = 1024;

/// The largest head buffer a session keeps between responses: a whole response (an
/// index page, metrics) can be far bigger, and an idle connection should not hold it.
const HEAD_BUFFER_KEPT_BYTES: usize = 16 * 1024;

/// The most one sendfile(2) of a file range takes before the session lets the core's other
/// tasks run (a fast reader would otherwise have a whole 64 MiB block sent in one go).
/// Measured beside one 64 MiB GET on one worker: 4 KiB GETs' p99 1.04-1.07 ms with 128 KiB
/// steps, 1.19-1.65 ms with 512 KiB; 16 clients of 64 MiB GETs the same within noise.
const FILE_RANGE_STEP_BYTES: usize = CHUNK_BYTES;

/// A socket's descriptor, borrowed from the session's `TcpStream` for its readiness.
struct SocketFd(RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

enum Body {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

pub struct Session {
    /// The socket registered with tokio's reactor for write readiness, made the first time
    /// a file range (`Piece::FileRange`) finds the socket full. Declared before `stream`:
    /// fields drop in order, so it leaves the epoll set before the socket is closed.
    send_ready: Option<AsyncFd<SocketFd>>,
    stream: TcpStream,
    /// Set on an HTTPS listener's connections: the socket carries TLS records.
    tls: Option<Box<TlsChannel>>,
    /// Bytes read from the socket and not yet consumed are `read_buffer[start..]`.
    read_buffer: Vec<u8>,
    start: usize,
    body: Option<Body>,
    pub continue_pending: bool,
    /// Some bytes of the current response were written: errors can no longer be answered.
    pub response_started: bool,
    /// The current response must say `Connection: close` and the connection then ends.
    pub close_after: bool,
    pub request_id: String,
    pub date: String,
    pub is_head: bool,
    /// The request spoke HTTP/1.0 and asked to be kept alive.
    http10_keep_alive: bool,
    /// This core's drain gate: once open, a response closes the connection (and the
    /// worker's sweeper ends a wait for a next request `DRAIN_IDLE_GRACE_MS` after it).
    gate: Rc<Gate>,
    /// The deadline of the socket operation in progress, which the worker's sweeper
    /// enforces (`http::watch`).
    watch: Rc<Watch>,
    /// When the current request's body must have arrived (set by whoever reads it; ms on
    /// `watch::now_ms`'s clock).
    body_deadline: Option<u64>,
    /// Every answer on the block read route carries `Vary: X-Keep-Signature`, errors too.
    pub vary_signature: bool,
    /// Body bytes of the current request read so far (for the metrics).
    pub body_bytes_in: u64,
    /// Where response heads (and whole small responses) are put together; its allocation
    /// is kept from one response to the next.
    head_out: Vec<u8>,
}

impl Session {
    pub fn new(stream: TcpStream, gate: Rc<Gate>, tls: Option<TlsChannel>, watch: Rc<Watch>) -> Self {
        Session {
            send_ready: None,
            watch,
            stream,
            tls: tls.map(Box::new),
            gate,
            read_buffer: Vec::with_capacity(READ_BUFFER_BYTES),
            start: 0,
            body: None,
            continue_pending: false,
            response_started: false,
            close_after: false,
            request_id: String::new(),
            date: String::new(),
            is_head: false,
            http10_keep_alive: false,
            body_deadline: None,
            vary_signature: false,
            body_bytes_in: 0,
            head_out: Vec::new(),
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.read_buffer[self.start..]
    }

    /// Read more bytes into the read buffer, compacting it first. `Ok(0)` is end of stream.
    async fn fill(&mut self, deadline: u64) -> Result<usize, RequestError> {
        if self.start > 0 {
            self.read_buffer.drain(..self.start);
            self.start = 0;
        }
        let buffer = std::mem::take(&mut self.read_buffer);
        let end = buffer.capacity();
        let offset = buffer.len();
        if offset == end {
            self.read_buffer = buffer;
            return Err(RequestError::HeadTooLarge);
        }
        let read = read_into(&self.stream, self.tls.as_deref_mut(), buffer, end);
        let (result, buffer) = with_deadline(&self.watch, deadline, read).await?;
        self.read_buffer = buffer;
        result.map_err(|_| RequestError::ClientGone)
    }

    /// Wait between requests for more bytes: until `idle_deadline`, or, once the worker
    /// drains, `DRAIN_IDLE_GRACE_MS` after the drain began (the sweeper cuts the wait:
    /// `Watch::sweep`), whichever is first.
    async fn fill_between_requests(&mut self, idle_deadline: u64) -> Result<usize, RequestError> {
        self.read_buffer.clear();
        self.start = 0;
        let buffer = std::mem::take(&mut self.read_buffer);
        let end = buffer.capacity();
        self.watch.arm(idle_deadline, true);
        let (result, buffer) = read_into(&self.stream, self.tls.as_deref_mut(), buffer, end).await;
        self.read_buffer = buffer;
        let fired = self.watch.disarm();
        // Bytes that arrived as the sweeper cut the wait are a request to answer (its
        // read side is shut, its write side is not): as a select preferring the read did.
        let arrived = matches!(result, Ok(read) if read > 0);
        if fired && !arrived {
            // Idle past its time (or the drain's grace): the sweeper shut the read side;
            // a TLS peer is told before both sides are shut.
            if let Some(tls) = self.tls.as_mut() {
                tls.close_notify_now(self.stream.as_raw_fd());
            }
            let _ = self.stream.shutdown(Shutdown::Both);
            return Err(RequestError::ClientGone);
        }
        result.map_err(|_| RequestError::ClientGone)
    }

    /// Read the next request head into `head` (kept by the connection from one request to
    /// the next). `Ok(false)`: the client closed between requests (or stayed idle past
    /// `IDLE_TIMEOUT_MS`, or the worker is draining).
    pub async fn read_head(&mut self, head: &mut Head) -> Result<bool, RequestError> {
        let idle_deadline = deadline_after(Duration::from_millis(IDLE_TIMEOUT_MS));
        let mut head_deadline = None;
        loop {
            if !self.buffered().is_empty() {
                head_deadline.get_or_insert_with(|| deadline_after(Duration::from_millis(HEADER_TIMEOUT_MS)));
                if let Some(length) = parse_head_into(self.buffered(), head)? {
                    self.start += length;
                    return Ok(true);
                }
            }
            let filled = match head_deadline {
                Some(deadline) => self.fill(deadline).await,
                None => self.fill_between_requests(idle_deadline).await,
            };
            match filled {
                Ok(0) if self.buffered().is_empty() => return Ok(false),
                Ok(0) => return Err(RequestError::ClientGone),
                Ok(_) => {}
                Err(RequestError::ClientGone) if head_deadline.is_none() => return Ok(false),
                Err(error) => return Err(error),
            }
        }
    }

    /// Prepare for a request: its body framing, whether to close after it. Its id and
    /// `Date` are written into `request_id` and `date` by the caller.
    pub fn begin_request(&mut self, head: &Head, draining: bool) {
        self.body = match head.framing {
            Some(Framing::Length(0)) | None => None,
            Some(Framing::Length(length)) => Some(Body::Length { remaining: length }),
            Some(Framing::Chunked) => Some(Body::Chunked(ChunkedDecoder::default())),
        };
        self.continue_pending = head.expect_continue && self.body.is_some();
        self.response_started = false;
        self.close_after = head.close || draining;
        self.is_head = head.method == "HEAD";
        self.http10_keep_alive = head.http10 && !head.close;
        self.body_deadline = None;
        self.vary_signature = false;
        self.body_bytes_in = 0;
    }

    /// The body has been read to its end (so the next request can be parsed).
    pub fn body_complete(&self) -> bool {
        match &self.body {
            None => true,
            Some(Body::Length { remaining }) => *remaining == 0,
            Some(Body::Chunked(decoder)) => decoder.is_done(),
        }
    }

    /// Append up to `want_max` more body bytes to `out`; `Ok(0)` at the end of the body.
    /// A body cut short by the client is `ClientGone`; a chunked body that grows past
    /// `length_max` is `BodyTooLarge`.
    pub async fn read_body_some(
        &mut self,
        mut out: Vec<u8>,
        want_max: usize,
        length_max: usize,
    ) -> (Result<usize, RequestError>, Vec<u8>) {
        let stall = match self.before_body_read().await {
            Ok(stall) => stall,
            Err(error) => return (Err(error), out),
        };
        match self.body.as_mut() {
            None => (Ok(0), out),
            Some(Body::Length { remaining: 0 }) => (Ok(0), out),
            Some(Body::Length { remaining }) => {
                let want = (*remaining).min(want_max as u64) as usize;
                let buffered = self.read_buffer.len() - self.start;
                if buffered > 0 {
                    let take = want.min(buffered);
                    out.extend_from_slice(&self.read_buffer[self.start..self.start + take]);
                    self.start += take;
                    *remaining -= take as u64;
                    self.body_bytes_in += take as u64;
                    return (Ok(take), out);
                }
                out.reserve(want);
                let end = out.len() + want;
                let read = read_into(&self.stream, self.tls.as_deref_mut(), out, end);
                let (result, returned) = match with_deadline(&self.watch, stall, read).await {
                    Ok(done) => done,
                    Err(error) => return (Err(error), Vec::new()),
                };
                out = returned;
                match result {
                    Ok(0) | Err(_) => (Err(RequestError::ClientGone), out),
                    Ok(read) => {
                        if let Some(Body::Length { remaining }) = self.body.as_mut() {
                            *remaining -= read as u64;
                        }
                        self.body_bytes_in += read as u64;
                        (Ok(read), out)
                    }
                }
            }
            Some(Body::Chunked(_)) => self.read_chunked_some(out, length_max, stall).await,
        }
    }

    /// `100 Continue` if the client waits for it, then the deadline of the next body read.
    async fn before_body_read(&mut self) -> Result<u64, RequestError> {
        if self.continue_pending {
            self.continue_pending = false;
            let (result, _) = self.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await;
            result?;
            self.response_started = false;
        }
        let stall = deadline_after(Duration::from_millis(IO_STALL_TIMEOUT_MS));
        Ok(match self.body_deadline {
            Some(deadline) => stall.min(deadline),
            None => stall,
        })
    }

    /// `read_body_some` of a body with a Content-Length into the free end of a shared
    /// body (`room`, fresh: nothing filled yet), at most `want_max` bytes; the room comes
    /// back with what it was filled with. A chunked body reads through `read_body_some`.
    pub async fn read_body_room(&mut self, mut room: Room, want_max: usize) -> (Result<usize, RequestError>, Room) {
        let stall = match self.before_body_read().await {
            Ok(stall) => stall,
            Err(error) => return (Err(error), room),
        };
        let remaining = match self.body {
            None | Some(Body::Length { remaining: 0 }) => return (Ok(0), room),
            Some(Body::Length { remaining }) => remaining,
            Some(Body::Chunked(_)) => return (Err(RequestError::Malformed("chunked body into a shared buffer")), room),
        };
        debug_assert_eq!(room.filled(), 0, "a room read into from its start must be fresh");
        let want = remaining.min(want_max as u64).min(room.space() as u64) as usize;
        let buffered = self.read_buffer.len() - self.start;
        let read = if buffered > 0 {
            let take = want.min(buffered);
            room.put(&self.read_buffer[self.start..self.start + take]);
            self.start += take;
            take
        } else {
            let stream = &self.stream;
            let tls = self.tls.as_deref_mut();
            let read = async move {
                match tls {
                    None => {
                        let (result, slice) = stream.read(room.slice(0..want)).await;
                        (result, slice.into_inner())
                    }
                    Some(tls) => {
                        let mut limited = Limited { sink: room, left: want };
                        let result = tls.read(stream, &mut limited).await;
                        (result, limited.sink)
                    }
                }
            };
            // As `with_deadline`, keeping the room whether or not the deadline cut it.
            self.watch.arm(stall, false);
            let (result, returned) = read.await;
            let cut = self.watch.disarm();
            room = returned;
            if cut {
                return (Err(RequestError::ClientGone), room);
            }
            match result {
                Ok(0) | Err(_) => return (Err(RequestError::ClientGone), room),
                Ok(read) => read,
            }
        };
        if let Some(Body::Length { remaining }) = self.body.as_mut() {
            *remaining -= read as u64;
        }
        self.body_bytes_in += read as u64;
        (Ok(read), room)
    }

    async fn read_chunked_some(
        &mut self,
        mut out: Vec<u8>,
        length_max: usize,
        stall: u64,
    ) -> (Result<usize, RequestError>, Vec<u8>) {
        loop {
            let before = out.len();
            if let Some(Body::Chunked(decoder)) = self.body.as_mut() {
                if decoder.is_done() {
                    return (Ok(0), out);
                }
                match decoder.decode(&self.read_buffer[self.start..], &mut out, length_max) {
                    Ok(used) => self.start += used,
                    Err(error) => return (Err(error), out),
                }
                if out.len() > before || decoder.is_done() {
                    self.body_bytes_in += (out.len() - before) as u64;
                    return (Ok(out.len() - before), out);
                }
            }
            match self.fill(stall).await {
                Ok(0) => return (Err(RequestError::ClientGone), out),
                Ok(_) => {}
                Err(error) => return (Err(error), out),
            }
        }
    }

    /// Read and drop the rest of a small request body, so the connection can be reused.
    pub async fn discard_body(&mut self, bytes_max: usize) -> Result<(), RequestError> {
        let mut scratch = Vec::with_capacity(READ_BUFFER_BYTES);
        let mut total = 0;
        loop {
            scratch.clear();
            let (result, returned) = self.read_body_some(scratch, READ_BUFFER_BYTES, bytes_max).await;
            scratch = returned;
            match result? {
                0 => return Ok(()),
                read => total += read,
            }
            if total > bytes_max {
                return Err(RequestError::BodyTooLarge);
            }
        }
    }

    /// A head for the current request's response, with its id, date and close flag.
    /// A drain that began while the request ran still closes the connection after it.
    pub fn response_head(&mut self, status: u16, framing: BodyFraming) -> ResponseHead<'_> {
        self.close_after |= self.gate.began().is_some();
        let mut head = ResponseHead::new(status, framing, &self.date);
        head.request_id = Some(&self.request_id);
        head.vary_signature = self.vary_signature;
        head.close = self.close_after;
        head.keep_alive = self.http10_keep_alive;
        head
    }

    /// The whole body must have arrived within `allowed` from now, whatever the pace of
    /// single reads.
    pub fn set_body_deadline(&mut self, allowed: Duration) {
        self.body_deadline = Some(deadline_after(allowed));
    }

    /// Write every byte of `buffer` (bounded by `IO_STALL_TIMEOUT_MS`) through io_uring.
    /// Not by a direct send first: measured, that cost 25% more CPU per 4 KiB GET with the
    /// client on the same cores (each reply woke it at once; the ring batches the replies
    /// of a tick) and saved nothing with the client elsewhere.
    async fn write_raw(&mut self, buffer: Vec<u8>) -> (Result<(), RequestError>, Vec<u8>) {
        self.response_started = true;
        self.write_rest(buffer, 0).await
    }

    /// Write `buffer[sent..]` through io_uring (bounded by `IO_STALL_TIMEOUT_MS`).
    async fn write_rest(&mut self, buffer: Vec<u8>, sent: usize) -> (Result<(), RequestError>, Vec<u8>) {
        if sent == buffer.len() {
            return (Ok(()), buffer);
        }
        let stall = deadline_after(Duration::from_millis(IO_STALL_TIMEOUT_MS));
        if let Some(tls) = self.tls.as_deref_mut() {
            return match with_deadline(&self.watch, stall, tls.write_all(&self.stream, buffer, sent)).await {
                Ok((Ok(()), buffer)) => (Ok(()), buffer),
                Ok((Err(_), buffer)) => (Err(RequestError::ClientGone), buffer),
                Err(error) => (Err(error), Vec::new()),
            };
        }
        match with_deadline(&self.watch, stall, self.stream.write_all(buffer.slice(sent..))).await {
            Ok((Ok(()), slice)) => (Ok(()), slice.into_inner()),
            Ok((Err(_), slice)) => (Err(RequestError::ClientGone), slice.into_inner()),
            Err(error) => (Err(error), Vec::new()),
        }
    }

    /// Send `chunk`, which holds the bytes of the file `file` at `position`, with sendfile(2): the
    /// socket takes them straight from the page cache instead of copying the buffer
    /// (about 5% of a 64 MiB GET's CPU, measured). The socket is non-blocking, so a full
    /// send buffer makes sendfile stop short rather than hold the core; the rest is then
    /// written from `chunk` through io_uring, which waits for room. Block files are never
    /// modified in place (a rewrite renames a new inode over the name), so the bytes sent
    /// are the bytes that were hashed.
    async fn write_file_chunk(
        &mut self,
        file: RawFd,
        position: u64,
        chunk: Vec<u8>,
    ) -> (Result<(), RequestError>, Vec<u8>) {
        self.response_started = true;
        let socket = self.stream.as_raw_fd();
        let mut offset = position;
        let end = position + chunk.len() as u64;
        // Until a full socket (EAGAIN), a file shorter than hashed, or an error the
        // io_uring write below reports in its own terms.
        while offset < end {
            let want = (end - offset) as usize;
            if !matches!(send_file(socket, file, &mut offset, want), Ok(1..)) {
                break;
            }
        }
        self.write_rest(chunk, (offset - position) as usize).await
    }

    /// Send `length` bytes of the file `file` from `position` by sendfile(2) alone: no
    /// buffer holds them (`Piece::FileRange`). When the socket is full the session waits
    /// until it is writable again (epoll readiness through tokio's reactor), each wait
    /// bounded by `IO_STALL_TIMEOUT_MS` as a write is; between steps of
    /// `FILE_RANGE_STEP_BYTES` the core's other tasks run.
    async fn write_file_range(&mut self, file: RawFd, position: u64, length: u64) -> Result<(), RequestError> {
        self.response_started = true;
        let socket = self.stream.as_raw_fd();
        let end = position + length;
        let mut offset = position;
        while offset < end {
            let want = (end - offset).min(FILE_RANGE_STEP_BYTES as u64) as usize;
            let sent = match send_file(socket, file, &mut offset, want) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    self.send_when_writable(file, &mut offset, want).await?
                }
                result => result.map_err(send_error)?,
            };
            if sent == 0 {
                return Err(RequestError::Internal(format!(
                    "file ended at {offset} of the {end} bytes to send"
                )));
            }
            if offset < end {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// Wait (bounded) until the socket has room, then sendfile; returns the bytes sent.
    async fn send_when_writable(&mut self, file: RawFd, offset: &mut u64, want: usize) -> Result<usize, RequestError> {
        let socket = self.stream.as_raw_fd();
        let ready = match &mut self.send_ready {
            Some(ready) => ready,
            // SAFETY: the descriptor is the session's socket, open until the session is
            // dropped, and `send_ready` is dropped before `stream` (field order).
            unregistered => unregistered.insert(
                unsafe { AsyncFd::register_with_interest(SocketFd(socket), Interest::WRITABLE) }
                    .map_err(|error| RequestError::Internal(format!("cannot wait for the socket: {error}")))?,
            ),
        };
        let stall = deadline_after(Duration::from_millis(IO_STALL_TIMEOUT_MS));
        let send = async {
            loop {
                let mut guard = ready.writable().await?;
                // A spurious wake (the socket filled again): readiness is cleared, wait on.
                if let Ok(result) = guard.try_io(|_| send_file(socket, file, offset, want)) {
                    return result;
                }
            }
        };
        with_deadline(&self.watch, stall, send).await?.map_err(send_error)
    }

    /// Write a whole response; returns its status and body bytes.
    pub async fn send(&mut self, response: Response) -> Result<(u16, u64), RequestError> {
        let mut out = std::mem::take(&mut self.head_out);
        let mut head = self.response_head(response.status, BodyFraming::Length(response.body.len() as u64));
        head.content_type = response.content_type;
        head.extra = response.extra;
        head.cors = response.cors;
        if !response.cors {
            head.request_id = None;
        }
        out.clear();
        out.reserve(HEAD_ROOM_BYTES + response.body.len());
        head.write_to(&mut out);
        let body_bytes = if self.is_head { 0 } else { response.body.len() as u64 };
        if !self.is_head {
            out.extend_from_slice(&response.body);
        }
        let (result, out) = self.write_raw(out).await;
        self.keep_head_buffer(out);
        result?;
        Ok((response.status, body_bytes))
    }

    /// Write a streamed response: the head, then every piece its source yields, framed
    /// as its `framing` says; returns its status and body bytes. The head leaves with the
    /// first piece (in the room the source left for it) and the last chunk's bytes only
    /// when the source has produced them. An error after the head left cuts the body:
    /// `response_started` tells the caller which.
    pub async fn send_stream(&mut self, streamed: Streamed<'_>) -> Result<(u16, u64), RequestError> {
        let Streamed {
            status,
            framing,
            content_type,
            extra,
            mut body,
        } = streamed;
        let mut pending = std::mem::take(&mut self.head_out);
        let mut head = self.response_head(status, framing);
        head.content_type = content_type;
        head.extra = extra;
        pending.clear();
        pending.reserve(HEAD_ROOM_BYTES);
        head.write_to(&mut pending);
        if self.is_head {
            let (result, pending) = self.write_raw(pending).await;
            self.keep_head_buffer(pending);
            result?;
            return Ok((status, 0));
        }
        let chunked = framing == BodyFraming::Chunked;
        let bytes_out = self.pump(body.as_mut(), &mut pending, chunked).await?;
        if chunked {
            pending.extend_from_slice(b"0\r\n\r\n");
        }
        if !pending.is_empty() {
            let (result, returned) = self.write_raw(pending).await;
            pending = returned;
            result?;
        }
        self.keep_head_buffer(pending);
        if let BodyFraming::Length(length) = framing {
            if bytes_out != length {
                // The head promised more (or less) than the source gave: the body must
                // look cut, never complete.
                self.response_started = true;
                return Err(RequestError::Internal(format!(
                    "streamed {bytes_out} of {length} bytes"
                )));
            }
        }
        Ok((status, bytes_out))
    }

    /// Write `source`'s pieces until it ends, `pending` (head, chunk framing) in front of
    /// the first; returns the body bytes written.
    async fn pump(
        &mut self,
        source: &mut dyn BodySource,
        pending: &mut Vec<u8>,
        chunked: bool,
    ) -> Result<u64, RequestError> {
        let mut spent = Vec::new();
        let mut bytes_out = 0u64;
        loop {
            let piece = match source.ready(spent) {
                Ok(piece) => piece?,
                Err(spent) => source.next(spent).await?,
            };
            let (result, returned) = match piece {
                Piece::End => return Ok(bytes_out),
                // Over TLS the bytes must be encrypted: the buffer holds them (below).
                Piece::File { fd, position, buffer } if pending.is_empty() && !chunked && self.tls.is_none() => {
                    bytes_out += buffer.len() as u64;
                    self.write_file_chunk(fd, position, buffer).await
                }
                Piece::File { buffer, .. } => self.write_piece(pending, buffer, 0, chunked, &mut bytes_out).await,
                Piece::FileRange { fd, position, length } if pending.is_empty() && !chunked && self.sends_files() => {
                    bytes_out += length;
                    (self.write_file_range(fd, position, length).await, Vec::new())
                }
                // Only a source told that this connection sends files yields a range, and
                // never as the first piece (the head leaves in front of bytes).
                Piece::FileRange { .. } => (
                    Err(RequestError::Internal(
                        "a file range where only bytes can be sent".into(),
                    )),
                    Vec::new(),
                ),
                Piece::Bytes { buffer, from } => self.write_piece(pending, buffer, from, chunked, &mut bytes_out).await,
            };
            result?;
            spent = returned;
            spent.clear();
        }
    }

    /// Write `buffer[from..]` after `pending`, framed as a chunk when `chunked` (an empty
    /// piece writes nothing: a zero-size chunk would end the body).
    async fn write_piece(
        &mut self,
        pending: &mut Vec<u8>,
        mut buffer: Vec<u8>,
        from: usize,
        chunked: bool,
        bytes_out: &mut u64,
    ) -> (Result<(), RequestError>, Vec<u8>) {
        let length = buffer.len() - from;
        if length == 0 {
            return (Ok(()), buffer);
        }
        *bytes_out += length as u64;
        if chunked {
            let _ = std::io::Write::write_fmt(pending, format_args!("{length:x}\r\n"));
            buffer.extend_from_slice(b"\r\n");
        }
        self.write_after(pending, buffer, from).await
    }

    /// Write `prefix` then `buffer[from..]`: in one write when the prefix fits in the room
    /// before `from`, else in two. `prefix` is left empty (its allocation kept).
    async fn write_after(
        &mut self,
        prefix: &mut Vec<u8>,
        mut buffer: Vec<u8>,
        from: usize,
    ) -> (Result<(), RequestError>, Vec<u8>) {
        if prefix.len() <= from {
            let start = from - prefix.len();
            buffer[start..from].copy_from_slice(prefix);
            prefix.clear();
            self.response_started = true;
            return self.write_rest(buffer, start).await;
        }
        let (result, returned) = self.write_raw(std::mem::take(prefix)).await;
        *prefix = returned;
        prefix.clear();
        if let Err(error) = result {
            return (Err(error), buffer);
        }
        self.write_rest(buffer, from).await
    }

    /// Keep `buffer`'s allocation for the next response head (one that grew past
    /// `HEAD_BUFFER_KEPT_BYTES` for a big whole response is let go).
    fn keep_head_buffer(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() <= HEAD_BUFFER_KEPT_BYTES {
            buffer.clear();
            self.head_out = buffer;
        }
    }

    /// Whether a body may be sent from files by sendfile (`Piece::FileRange`): not over
    /// TLS, whose records need the bytes in memory.
    pub fn sends_files(&self) -> bool {
        self.tls.is_none()
    }

    /// The socket's descriptor (for a cut from another core: `api::body::SlowBodies`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Close after a last response without an RST: send FIN, then read and drop whatever
    /// the client still sends (pipelined requests it will retry) until it closes too.
    /// A TLS peer gets close_notify first; what it sends after is dropped unread.
    pub async fn linger_close(&mut self) {
        if let Some(mut tls) = self.tls.take() {
            let deadline = deadline_after(Duration::from_millis(TLS_CLOSE_NOTIFY_MS_MAX));
            let _ = with_deadline(&self.watch, deadline, tls.close_notify(&self.stream)).await;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = deadline_after(Duration::from_millis(LINGER_MS_MAX));
        loop {
            self.read_buffer.clear();
            self.start = 0;
            match self.fill(deadline).await {
                Ok(read) if read > 0 => continue,
                _ => break,
            }
        }
        self.shutdown();
    }
}

/// A PUT body's plaintext over TLS goes straight into its buffer's free end.
impl PlaintextSink for Room {
    fn space(&self) -> usize {
        Room::space(self)
    }

    fn put(&mut self, bytes: &[u8]) {
        Room::put(self, bytes);
    }
}

/// A plaintext sink that takes at most `left` more bytes.
struct Limited<S> {
    sink: S,
    left: usize,
}

impl<S: PlaintextSink> PlaintextSink for Limited<S> {
    fn space(&self) -> usize {
        self.sink.space().min(self.left)
    }

    fn put(&mut self, bytes: &[u8]) {
        self.left -= bytes.len();
        self.sink.put(bytes);
    }
}

/// Run `operation` under `deadline` (ms on `watch::now_ms`'s clock); past it the worker's
/// sweeper shuts the socket down, the operation completes, and this says the client is
/// gone (see module doc).
async fn with_deadline<T>(watch: &Watch, deadline: u64, operation: impl Future<Output = T>) -> Result<T, RequestError> {
    watch.arm(deadline, false);
    let output = operation.await;
    match watch.disarm() {
        true => Err(RequestError::ClientGone),
        false => Ok(output),
    }
}

/// What a failed sendfile of a file range means: the client went away, or (the file's
/// side: EIO from the disk under a page the cache lost) the body cannot go on.
fn send_error(error: std::io::Error) -> RequestError {
    match error.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ESHUTDOWN | libc::ETIMEDOUT) => {
            RequestError::ClientGone
        }
        _ => RequestError::Internal(format!("sendfile failed: {error}")),
    }
}

/// One sendfile(2) of up to `want` bytes of `file` at `*offset` to the non-blocking
/// `socket`, advancing `*offset`; `Ok(0)`: the file ended. EINTR is retried.
fn send_file(socket: RawFd, file: RawFd, offset: &mut u64, want: usize) -> std::io::Result<usize> {
    loop {
        let mut position = *offset as libc::off_t;
        // SAFETY: both descriptors are open for the call (the caller holds the socket's
        // stream and the file's owner); `position` is a valid in/out pointer.
        let sent = unsafe { libc::sendfile(socket, file, &mut position, want) };
        if sent >= 0 {
            *offset = position as u64;
            return Ok(sent as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Read into `buffer[buffer.len()..end]` (`end` ≤ its capacity): from the socket, or,
/// on a TLS connection, the plaintext of what the socket brings. `Ok(0)`: end of stream.
async fn read_into(
    stream: &TcpStream,
    tls: Option<&mut TlsChannel>,
    buffer: Vec<u8>,
    end: usize,
) -> (std::io::Result<usize>, Vec<u8>) {
    match tls {
        None => {
            let offset = buffer.len();
            let (result, slice) = stream.read(buffer.slice(offset..end)).await;
            (result, slice.into_inner())
        }
        Some(tls) => {
            let mut buffer = buffer;
            let result = tls
                .read(
                    stream,
                    &mut UpTo {
                        buffer: &mut buffer,
                        end,
                    },
                )
                .await;
            (result, buffer)
        }
    }
}
