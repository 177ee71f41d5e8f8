//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`, just enough to test a
//! server byte for byte: one connection reused for keep-alive and pipelining, raw writes for
//! malformed requests, Content-Length / chunked / read-to-EOF bodies, and responses that
//! end early (returned with `complete == false` instead of an error).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::support::keep::{hex, USER_TOKEN};

/// How long one read may block before a test gives up on the server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response head accepted, so a broken server cannot make a test allocate forever.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;

/// A request to send. Unless `omit_content_length` is set, a `Content-Length` header is
/// added when there is a body or the method is PUT/POST and no `Transfer-Encoding` was given.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub omit_content_length: bool,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            omit_content_length: false,
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    pub fn head(target: &str) -> Request {
        Request::new("HEAD", target)
    }

    pub fn put(target: &str, body: &[u8]) -> Request {
        Request::new("PUT", target).body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn token(self, token: &str) -> Request {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self
    }

    pub fn omit_content_length(mut self) -> Request {
        self.omit_content_length = true;
        self
    }

    /// The request as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let has_framing = self.headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
        });
        let wants_length = !self.body.is_empty() || self.method == "PUT" || self.method == "POST";
        if !has_framing && !self.omit_content_length && wants_length {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False if the connection ended (EOF, reset or read timeout) before the body announced
    /// by the head was fully read.
    pub complete: bool,
}

impl Response {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Short description for assertion messages: text bodies quoted (truncated), binary
    /// bodies by length and MD5.
    pub fn summary(&self) -> String {
        let body = match std::str::from_utf8(&self.body) {
            Ok(text) if text.len() <= 300 => format!("{text:?}"),
            _ => format!("<{} bytes, md5 {}>", self.body.len(), super::keep::md5_hex(&self.body)),
        };
        format!(
            "{} {} complete={} headers={:?} body={body}",
            self.status, self.reason, self.complete, self.headers
        )
    }
}

/// A client connection's byte stream: plain TCP, or TLS over it (OpenSSL).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<openssl::ssl::SslStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under it (timeouts, shutdown, peeking).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buffer),
            Stream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(buffer),
            Stream::Tls(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

/// One client connection.
pub struct Conn {
    stream: Stream,
    /// Bytes read from the socket but not yet consumed (pipelined responses).
    pending: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
        Conn::from_stream(stream)
    }

    /// A connection made by the test itself (socket options set before connecting).
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("set read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("set write timeout");
        stream.set_nodelay(true).expect("set nodelay");
        Conn {
            stream: Stream::Plain(stream),
            pending: Vec::new(),
        }
    }

    /// An HTTPS connection: TLS handshake with `connector` (as `localhost`) first.
    pub fn connect_tls(addr: SocketAddr, connector: &openssl::ssl::SslConnector) -> Conn {
        let stream = super::tls::connect(addr, connector, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("cannot connect to https://{addr}: {error}"));
        stream
            .get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        stream
            .get_ref()
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("set write timeout");
        Conn {
            stream: Stream::Tls(Box::new(stream)),
            pending: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// The TLS session, on an HTTPS connection.
    pub fn tls(&self) -> Option<&openssl::ssl::SslRef> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(stream) => Some(stream.ssl()),
        }
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send(&mut self, request: &Request) -> io::Result<()> {
        self.write_raw(&request.to_bytes())
    }

    /// Sends a request and returns its final response (interim 1xx responses skipped).
    /// Panics on I/O errors before a status line: use `send` + `read_response` to test those.
    pub fn request(&mut self, request: &Request) -> Response {
        self.send(request)
            .unwrap_or_else(|error| panic!("sending {} {}: {error}", request.method, request.target));
        loop {
            let response = self
                .read_response(&request.method)
                .unwrap_or_else(|error| panic!("reading response to {} {}: {error}", request.method, request.target));
            if !(100..200).contains(&response.status) {
                return response;
            }
        }
    }

    /// One read straight from the stream (nothing may be pending): `Ok(0)` on a TLS
    /// connection is a close_notify; OpenSSL reports a TCP EOF without one as an error.
    pub fn read_raw(&mut self, buffer: &mut [u8], within: Duration) -> io::Result<usize> {
        assert!(self.pending.is_empty(), "unread response bytes");
        self.stream
            .tcp()
            .set_read_timeout(Some(within))
            .expect("set read timeout");
        let read = self.stream.read(buffer);
        self.stream
            .tcp()
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        read
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Write);
    }

    /// Reads one response (1xx included) to a request with method `method` (HEAD → no body).
    /// Errors only if no complete response head arrives.
    pub fn read_response(&mut self, method: &str) -> io::Result<Response> {
        let head_end = self.read_head()?;
        let head_bytes: Vec<u8> = self.pending.drain(..head_end + 4).collect();
        let head = String::from_utf8_lossy(&head_bytes[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut response = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            complete: true,
        };
        let bodiless =
            method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304;
        if bodiless {
            return Ok(response);
        }
        let chunked = response
            .header("Transfer-Encoding")
            .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
        if chunked {
            self.read_chunked_body(&mut response);
        } else if let Some(length) = response.header("Content-Length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            response.complete = self.fill_to(length);
            let taken = length.min(self.pending.len());
            response.body = self.pending.drain(..taken).collect();
        } else {
            while self.read_more() {}
            response.body = std::mem::take(&mut self.pending);
        }
        Ok(response)
    }

    /// True if the server closes the connection (EOF or reset) within `within`, without
    /// sending any more bytes. False if it stays open (or sends data).
    pub fn closed_by_server_within(&mut self, within: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.stream
            .tcp()
            .set_read_timeout(Some(within))
            .expect("set read timeout");
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        };
        self.stream
            .tcp()
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        closed
    }

    /// Reads until `\r\n\r\n` is buffered; returns its offset.
    fn read_head(&mut self) -> io::Result<usize> {
        loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                return Ok(end);
            }
            if self.pending.len() > RESPONSE_HEAD_BYTES_MAX {
                return Err(invalid("response head too large".to_string()));
            }
            let mut buffer = [0u8; 16 * 1024];
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed before a response head (got {:?})",
                            String::from_utf8_lossy(&self.pending)
                        ),
                    ))
                }
                Ok(count) => self.pending.extend_from_slice(&buffer[..count]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads more bytes into `pending`; false on EOF, error or timeout.
    fn read_more(&mut self) -> bool {
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return false,
                Ok(count) => {
                    self.pending.extend_from_slice(&buffer[..count]);
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Reads until `pending` holds `length` bytes; false if the connection ended first.
    fn fill_to(&mut self, length: usize) -> bool {
        self.pending.reserve(length.saturating_sub(self.pending.len()));
        while self.pending.len() < length {
            if !self.read_more() {
                return false;
            }
        }
        true
    }

    fn read_chunked_body(&mut self, response: &mut Response) {
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.pending, b"\r\n") {
                    break end;
                }
                if !self.read_more() {
                    response.complete = false;
                    return;
                }
            };
            let line: Vec<u8> = self.pending.drain(..line_end + 2).collect();
            let size_text = String::from_utf8_lossy(&line[..line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                response.complete = false;
                return;
            };
            if size == 0 {
                // Trailers (ignored) end with an empty line.
                loop {
                    let Some(end) = find(&self.pending, b"\r\n") else {
                        if !self.read_more() {
                            response.complete = false;
                            return;
                        }
                        continue;
                    };
                    self.pending.drain(..end + 2);
                    if end == 0 {
                        return;
                    }
                }
            }
            if !self.fill_to(size + 2) {
                response.complete = false;
                response.body.extend_from_slice(&self.pending);
                self.pending.clear();
                return;
            }
            response.body.extend(self.pending.drain(..size));
            self.pending.drain(..2);
        }
    }
}

/// Waits up to `within` for `condition` to hold, polling; true if it did.
pub fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// What `slow_get` saw.
pub struct SlowGet {
    pub status_line: String,
    pub content_length: usize,
    pub body_bytes: usize,
    pub body_md5: String,
    pub error: Option<String>,
}

/// GETs `locator` and reads the body 64 KiB at a time with a pause after each read.
pub fn slow_get(stream: &mut TcpStream, locator: &str, pause: Duration, received: &AtomicU64) -> SlowGet {
    let request = format!("GET /{locator} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send GET");
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut result = SlowGet {
        status_line: String::new(),
        content_length: 0,
        body_bytes: 0,
        body_md5: String::new(),
        error: None,
    };
    let head_end = loop {
        if let Some(end) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buffer[..4096]) {
            Ok(0) => {
                result.error = Some("EOF before the response head".to_string());
                return result;
            }
            Ok(count) => pending.extend_from_slice(&buffer[..count]),
            Err(error) => {
                result.error = Some(format!("reading the head: {error}"));
                return result;
            }
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    result.status_line = head.lines().next().unwrap_or_default().to_string();
    result.content_length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut digest = Md5::new();
    let first = &pending[head_end + 4..];
    digest.update(first);
    result.body_bytes = first.len();
    received.store(result.body_bytes as u64, Ordering::SeqCst);
    while result.body_bytes < result.content_length {
        let want = (result.content_length - result.body_bytes).min(buffer.len());
        match stream.read(&mut buffer[..want]) {
            Ok(0) => {
                result.error = Some(format!("EOF after {} body bytes", result.body_bytes));
                break;
            }
            Ok(count) => {
                digest.update(&buffer[..count]);
                result.body_bytes += count;
                received.store(result.body_bytes as u64, Ordering::SeqCst);
            }
            Err(error) => {
                result.error = Some(format!("after {} body bytes: {error}", result.body_bytes));
                break;
            }
        }
        std::thread::sleep(pause);
    }
    result.body_md5 = hex(&digest.finalize());
    result
}
