//! Starts the real `keepring` binary for a test and stops it on drop.
//!
//! `ServerBuilder` owns a temporary directory holding the volume directories (not created:
//! the server must create missing ones, unless a test pre-populates them) and the key/token
//! files. `TestServer` captures every stderr line in a background thread, waits (bounded)
//! for `listening on <addr>`, and kills the process when dropped, printing the captured log
//! if the test is failing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::{Conn, Request, Response};
use super::keep::*;
use super::tls::TlsFixture;

/// How long the server may take to print `listening on`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: `$KEEPRING_TEST_BINARY` if set (e.g. a release build), else the
/// one cargo built for this test run.
pub fn binary_path() -> String {
    std::env::var("KEEPRING_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keepring").to_string())
}

/// Captured stderr lines, shared with the reader thread.
#[derive(Default)]
pub struct ServerLog {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// stderr reached EOF (the process exited or closed it).
    closed: bool,
}

impl ServerLog {
    pub fn lines(&self) -> Vec<String> {
        self.state.lock().expect("log lock").lines.clone()
    }

    /// Waits until some line satisfies `predicate`; returns it, or None at the deadline or
    /// when stderr closed without one.
    pub fn wait_for(&self, within: Duration, predicate: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut state = self.state.lock().expect("log lock");
        loop {
            if let Some(line) = state.lines.iter().find(|line| predicate(line)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).expect("log lock").0;
        }
    }

    /// Collects every line of `stream` (a child's stderr, or a pipe it shares with its own
    /// children) on a background thread; the thread ends when every writer has closed it.
    pub fn capture(stream: impl std::io::Read + Send + 'static) -> (Arc<ServerLog>, JoinHandle<()>) {
        let log = Arc::new(ServerLog::default());
        let reader_log = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(line) => reader_log.push(line),
                    Err(_) => break,
                }
            }
            reader_log.close();
        });
        (log, reader)
    }

    fn push(&self, line: String) {
        self.state.lock().expect("log lock").lines.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().expect("log lock").closed = true;
        self.changed.notify_all();
    }
}

/// Configuration for one test server. `new()` gives one volume, the fixture signing key
/// and the fixture root token; no management token.
pub struct ServerBuilder {
    dir: TempDir,
    volumes: Vec<PathBuf>,
    signing_key_file_contents: Option<String>,
    root_token: Option<String>,
    management_token: Option<String>,
    args: Vec<String>,
    /// `--listen` value; `127.0.0.1:0` unless `listen` was called.
    listen: Option<String>,
    /// No `--listen` at all (the config file or its default decides).
    omit_listen: bool,
    /// Extra environment of the process.
    envs: Vec<(String, String)>,
    /// Serve HTTPS with this pair; the `TestServer`'s connections then speak TLS.
    tls: Option<TlsFixture>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl ServerBuilder {
    pub fn new() -> ServerBuilder {
        let dir = tempfile::Builder::new()
            .prefix("keepring-test-")
            .tempdir()
            .expect("create temp dir");
        let volumes = vec![dir.path().join("vol0")];
        ServerBuilder {
            dir,
            volumes,
            // Trailing whitespace: the server must trim key files.
            signing_key_file_contents: Some(format!("{SIGNING_KEY}\n")),
            root_token: Some(ROOT_TOKEN.to_string()),
            management_token: None,
            args: Vec::new(),
            listen: None,
            omit_listen: false,
            envs: Vec::new(),
            tls: None,
        }
    }

    /// Use `count` volume directories `vol0`, `vol1`, ... (not created here).
    pub fn volumes(mut self, count: usize) -> ServerBuilder {
        self.volumes = (0..count)
            .map(|index| self.dir.path().join(format!("vol{index}")))
            .collect();
        self
    }

    /// Use these volume directories (e.g. to restart on the same volumes).
    pub fn volume_paths(mut self, paths: Vec<PathBuf>) -> ServerBuilder {
        self.volumes = paths;
        self
    }

    /// Path of volume `index`, so a test can fill it before `start`.
    pub fn volume(&self, index: usize) -> &Path {
        &self.volumes[index]
    }

    pub fn temp_path(&self) -> &Path {
        self.dir.path()
    }

    pub fn without_signing_key(mut self) -> ServerBuilder {
        self.signing_key_file_contents = None;
        self
    }

    pub fn without_root_token(mut self) -> ServerBuilder {
        self.root_token = None;
        self
    }

    pub fn management_token(mut self) -> ServerBuilder {
        self.management_token = Some(MANAGEMENT_TOKEN.to_string());
        self
    }

    pub fn arg(mut self, arg: &str) -> ServerBuilder {
        self.args.push(arg.to_string());
        self
    }

    /// Listen on `addr` instead of an ephemeral port (e.g. to replace a running server).
    pub fn listen(mut self, addr: SocketAddr) -> ServerBuilder {
        self.listen = Some(addr.to_string());
        self
    }

    /// Give no `--listen` flag: the cluster config's InternalURLs decide.
    pub fn without_listen_flag(mut self) -> ServerBuilder {
        self.omit_listen = true;
        self
    }

    /// Serve HTTPS with `fixture`'s certificate (`--tls-certificate`, `--tls-key`); the
    /// server's `conn()` and request helpers then connect over TLS.
    pub fn tls(mut self, fixture: &TlsFixture) -> ServerBuilder {
        self.args.extend(fixture.args());
        self.tls = Some(fixture.clone());
        self
    }

    /// Connect over TLS with `fixture`'s client without passing any flag (the config
    /// file names the certificate).
    pub fn tls_client(mut self, fixture: &TlsFixture) -> ServerBuilder {
        self.tls = Some(fixture.clone());
        self
    }

    /// Set `key=value` in the process's environment.
    pub fn env(mut self, key: &str, value: &str) -> ServerBuilder {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// The full argument list, writing key/token files into the temp dir.
    pub fn command_args(&self) -> Vec<String> {
        let listen = self.listen.clone().unwrap_or_else(|| "127.0.0.1:0".to_string());
        let mut args = match self.omit_listen {
            true => Vec::new(),
            false => vec!["--listen".to_string(), listen],
        };
        for volume in &self.volumes {
            args.push("--volume".to_string());
            args.push(volume.display().to_string());
        }
        let secret_files = [
            (
                "--blob-signing-key-file",
                "signing-key",
                &self.signing_key_file_contents,
            ),
            ("--system-root-token-file", "root-token", &self.root_token),
            ("--management-token-file", "management-token", &self.management_token),
        ];
        for (flag, file_name, contents) in secret_files {
            if let Some(contents) = contents {
                let path = self.dir.path().join(file_name);
                std::fs::write(&path, format!("{}\n", contents.trim_end())).expect("write secret file");
                args.push(flag.to_string());
                args.push(path.display().to_string());
            }
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Starts the server and waits for it to listen. Panics (with its stderr) if it does not
    /// within `STARTUP_TIMEOUT`.
    pub fn start(self) -> TestServer {
        let args = self.command_args();
        let mut child = Command::new(binary_path())
            .args(&args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keepring");
        let (log, reader) = ServerLog::capture(child.stderr.take().expect("piped stderr"));
        let mut server = TestServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            reader: Some(reader),
            volumes: self.volumes,
            dir: self.dir,
            tls: self.tls.map(|fixture| fixture.connector),
        };
        let line = server
            .log
            .wait_for(STARTUP_TIMEOUT, |line| parse_listen_address(line).is_some());
        match line.and_then(|line| parse_listen_address(&line)) {
            Some(addr) => server.addr = addr,
            None => {
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "keepring {args:?} did not report `listening on <addr>` within {STARTUP_TIMEOUT:?} \
                     (exit status {status:?}); stderr:\n{}",
                    server.log.lines().join("\n")
                );
            }
        }
        server
    }
}

/// The address after `listening on ` in a log line; it ends at whitespace, a quote or the
/// end of the line.
pub fn parse_listen_address(line: &str) -> Option<SocketAddr> {
    let start = line.find("listening on ")? + "listening on ".len();
    let token: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
        .collect();
    token.parse().ok()
}

/// A running keepring process.
pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<ServerLog>,
    reader: Option<JoinHandle<()>>,
    volumes: Vec<PathBuf>,
    dir: TempDir,
    /// An HTTPS server: the client its connections use.
    pub tls: Option<openssl::ssl::SslConnector>,
}

impl TestServer {
    /// One volume, signing key and root token (see `ServerBuilder::new`).
    pub fn start() -> TestServer {
        ServerBuilder::new().start()
    }

    pub fn volume(&self, index: usize) -> &Path {
        &self.volumes[index]
    }

    pub fn volumes(&self) -> &[PathBuf] {
        &self.volumes
    }

    pub fn temp_path(&self) -> &Path {
        self.dir.path()
    }

    /// A connection: TLS on an HTTPS server.
    pub fn conn(&self) -> Conn {
        match &self.tls {
            Some(connector) => Conn::connect_tls(self.addr, connector),
            None => Conn::connect(self.addr),
        }
    }

    /// Sends `request` on a fresh connection.
    pub fn request(&self, request: Request) -> Response {
        self.conn().request(&request)
    }

    /// `PUT /<md5(data)>` with `USER_TOKEN`.
    pub fn put(&self, data: &[u8]) -> Response {
        self.request(Request::put(&format!("/{}", md5_hex(data)), data).token(USER_TOKEN))
    }

    /// PUTs `data`, asserts 200, returns the locator (without the newline).
    pub fn put_block(&self, data: &[u8]) -> String {
        let response = self.put(data);
        assert_eq!(response.status, 200, "PUT failed: {}", response.summary());
        let body = response.text();
        body.strip_suffix('\n')
            .unwrap_or_else(|| panic!("PUT body {body:?} does not end with a newline"))
            .to_string()
    }

    /// `GET /<locator>` with `USER_TOKEN`.
    pub fn get(&self, locator: &str) -> Response {
        self.request(Request::get(&format!("/{locator}")).token(USER_TOKEN))
    }

    /// `/metrics` (open: the server has no management token) as `series → value`, where
    /// series is `name{labels}` exactly as printed.
    pub fn metric_values(&self) -> std::collections::BTreeMap<String, f64> {
        let response = self.request(Request::get("/metrics"));
        assert_eq!(response.status, 200, "{}", response.summary());
        response
            .text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// Volumes holding a file named `hash` in the right place.
    pub fn volumes_holding(&self, hash: &str) -> Vec<usize> {
        (0..self.volumes.len())
            .filter(|&index| block_path(&self.volumes[index], hash).exists())
            .collect()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process id (for `--term-pid` and signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process; panics if it cannot.
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("cannot send signal {signal}: keepring already exited ({status})");
        }
        // SAFETY: kill has no memory-safety preconditions; the child was just seen running
        // and is not reaped, so the pid is still ours.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(
            result,
            0,
            "kill({}, {signal}): {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits (polling, bounded) for the process to exit and reaps it; None if it is still
    /// running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            let lines = self.log.lines();
            let skip = lines.len().saturating_sub(60);
            eprintln!(
                "--- keepring stderr (last {} of {} lines) ---\n{}\n---",
                lines.len() - skip,
                lines.len(),
                lines[skip..].join("\n")
            );
        }
    }
}
