//! The packaged systemd unit, `contrib/systemd/keepring.service`, run the way systemd runs
//! it, on machines without systemd. Its `ExecStart=` and `ExecReload=` lines are taken from
//! the file verbatim (only the program path `/usr/bin/keepring` becomes the binary under
//! test), split into words and expanded by systemd's rules, and started in a session of
//! their own with the environment systemd gives them: `NOTIFY_SOCKET`, a datagram socket
//! this test reads with each sender's pid (SCM_CREDENTIALS, as systemd does), and for
//! `ExecReload=` also `MAINPID`. The operator's part is `ARVADOS_CONFIG`, a minimal cluster
//! config, and `XDG_RUNTIME_DIR`, the test's temp dir, which keeps the default control
//! socket of this test apart from any other's.
//!
//! Checked: the unit's settings; `ExecStart=` announces `READY=1` with its own `MAINPID` and
//! serves the config's InternalURL with the config's signing key; `ExecReload=` returns at
//! once, its successor takes the listening sockets over and announces itself as `MAINPID`,
//! the replaced process exits 0, and not one request of a load running throughout fails.
//! Last, the replaced process must not send `STOPPING=1`: with `NotifyAccess=all` systemd
//! accepts it from any process of the service and would put the whole service into
//! stop-sigterm, SIGKILLing the successor `TimeoutStopSec` later.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::client::Conn;
use crate::support::load::{LoadHandle, LoadLimits, LoadMode, LoadTarget};
use crate::support::server::{binary_path, ServerLog};
use crate::support::*;

const UNIT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/keepring.service");
/// The program the unit runs; the test runs `binary_path()` in its place.
const UNIT_PROGRAM: &str = "/usr/bin/keepring";
/// systemd's PATH for system services.
const SYSTEMD_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `[Service]` settings whose effect this emulation does not reproduce: a unit that gains
/// one needs the test extended first.
const NOT_EMULATED: [&str; 8] = [
    "ExecCondition",
    "ExecStartPre",
    "ExecStartPost",
    "ExecStop",
    "ExecStopPost",
    "EnvironmentFile",
    "PassEnvironment",
    "WorkingDirectory",
];
/// Generous bounds: both processes start (and the old one drains) on a machine whose two
/// cores other builds share.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const OLD_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// `ExecReload=` must hand the successor to the background and return.
const RELOAD_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Correct answers the load must get from each process.
const LOAD_OK_PER_PROCESS: u64 = 100;

/// A unit file as `(section, key, value)` entries in file order.
struct UnitFile {
    entries: Vec<(String, String, String)>,
}

impl UnitFile {
    fn load() -> UnitFile {
        let text =
            std::fs::read_to_string(UNIT_FILE).unwrap_or_else(|error| panic!("cannot read {UNIT_FILE}: {error}"));
        UnitFile::parse(&text)
    }

    /// systemd's unit file syntax, as far as keepring's unit uses it: `[Section]` headers,
    /// `Key=Value` lines (whitespace around key and value trimmed), `#` and `;` comment
    /// lines, and a trailing backslash continuing a line (comment lines within skipped).
    fn parse(text: &str) -> UnitFile {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut continued = String::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('#') || line.starts_with(';') || (line.is_empty() && continued.is_empty()) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                continued.push_str(head);
                continued.push(' ');
                continue;
            }
            let line = std::mem::take(&mut continued) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, value)) = line.split_once('=') {
                entries.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
            } else {
                panic!("{UNIT_FILE}:{}: neither a [Section] nor Key=Value: {raw:?}", index + 1);
            }
        }
        assert!(continued.is_empty(), "{UNIT_FILE} ends in a continued line");
        UnitFile { entries }
    }

    /// Every value of `key` in `[Service]`, in order; an empty assignment drops the ones
    /// before it, as in systemd.
    fn service_values(&self, key: &str) -> Vec<&str> {
        let mut values = Vec::new();
        for (section, name, value) in &self.entries {
            if section == "Service" && name == key {
                if value.is_empty() {
                    values.clear();
                } else {
                    values.push(value.as_str());
                }
            }
        }
        values
    }

    /// The one value of `key` in `[Service]`.
    fn service(&self, key: &str) -> &str {
        match self.service_values(key).as_slice() {
            [value] => value,
            values => panic!("{UNIT_FILE}: want exactly one {key}= in [Service], found {values:?}"),
        }
    }

    /// `Environment=` assignments of `[Service]`, each value split into `NAME=VALUE` words.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for value in self.service_values("Environment") {
            for word in split_command_line(value) {
                let (name, value) = word
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{UNIT_FILE}: Environment= word {word:?} is not NAME=VALUE"));
                env.push((name.to_string(), value.to_string()));
            }
        }
        env
    }

    /// The argv systemd would execute for the `key=` command line (`ExecStart`,
    /// `ExecReload`) with environment `env`, the unit's program replaced by the binary
    /// under test.
    fn command(&self, key: &str, env: &[(String, String)]) -> Vec<String> {
        let line = self.service(key);
        let words = split_command_line(line);
        let program = words.first().unwrap_or_else(|| panic!("{key}= is empty"));
        assert!(
            program.starts_with('/'),
            "{key}=: a prefix (@-:+!|) is not emulated, and systemd wants an absolute path: {line:?}"
        );
        let binary = binary_path();
        assert!(
            binary.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)),
            "the binary path {binary:?} would need quoting inside a shell command"
        );
        let words: Vec<String> = words
            .iter()
            .map(|word| expand_specifiers(word).replace(UNIT_PROGRAM, &binary))
            .collect();
        substitute_env(&words, env)
    }
}

/// systemd's splitting of a command line into words: whitespace separates them; single and
/// double quotes group (and are removed), anywhere in a word; a backslash escapes the next
/// character (C escapes `\n` and `\t`, anything else as itself), inside quotes too.
fn split_command_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '\'' | '"') => quote = Some(c),
                (Some(open), c) if c == open => quote = None,
                (_, '\\') => word.push(match chars.next() {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(other) => other,
                    None => panic!("command line ends in a backslash: {line:?}"),
                }),
                (_, c) => word.push(c),
            }
        }
        assert!(quote.is_none(), "unterminated quote in {line:?}");
        assert_ne!(word, ";", "several commands on one line are not emulated: {line:?}");
        words.push(word);
    }
}

/// `%%` is a `%`; other specifiers (`%n`, `%t`, ...) are not emulated.
fn expand_specifiers(word: &str) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            other => panic!("specifier %{} in {word:?} is not emulated", other.unwrap_or(' ')),
        }
    }
    out
}

/// systemd's variable substitution in a command line: a word that is exactly `$NAME`
/// becomes the value split at whitespace (no word at all if unset or empty); elsewhere
/// `${NAME}` becomes the value as it is (empty if unset) and `$$` one `$`. Any other `$`
/// stays, for a shell to expand.
fn substitute_env(words: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    };
    let mut out = Vec::new();
    for word in words {
        if let Some(name) = word.strip_prefix('$').filter(|name| !name.starts_with(['{', '$'])) {
            out.extend(lookup(name).split_whitespace().map(str::to_string));
            continue;
        }
        let mut text = String::new();
        let mut rest = word.as_str();
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                text.push('$');
                rest = tail;
            } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|inner| inner.split_once('}')) {
                text.push_str(lookup(name));
                rest = tail;
            } else {
                text.push('$');
                rest = after;
            }
        }
        text.push_str(rest);
        out.push(text);
    }
    out
}

/// One datagram received on the notify socket.
#[derive(Clone, Debug)]
struct Notification {
    /// The sender's pid from SCM_CREDENTIALS (systemd's `NotifyAccess=` checks it).
    sender: Option<u32>,
    text: String,
}

impl Notification {
    fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|line| line == assignment)
    }

    fn main_pid(&self) -> Option<u32> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix("MAINPID="))
            .and_then(|pid| pid.parse().ok())
    }
}

/// What systemd listens on: a datagram socket with SO_PASSCRED.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<Notification>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> NotifySocket {
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|error| panic!("bind {}: {error}", path.display()));
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// The next datagram, or None when none arrives within `within`.
    fn receive(&self, within: Duration) -> Option<Notification> {
        self.socket
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .expect("set notify socket timeout");
        let mut data = [0u8; 4096];
        // u64s: cmsghdr alignment.
        let mut control = [0u64; 32];
        loop {
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: an all-zero msghdr is valid (no name, no buffers) before filling it in.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = &mut iov;
            header.msg_iovlen = 1;
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: the header points at `iov`, `data` and `control`, all alive and of the
            // lengths given.
            let length = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
            if length < 0 {
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    ErrorKind::Interrupted => continue,
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => return None,
                    _ => panic!("recvmsg on {}: {error}", self.path.display()),
                }
            }
            let mut sender = None;
            // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer recvmsg filled in,
            // bounded by msg_controllen; SCM_CREDENTIALS data is a ucred.
            unsafe {
                let mut message = libc::CMSG_FIRSTHDR(&header);
                while !message.is_null() {
                    if (*message).cmsg_level == libc::SOL_SOCKET && (*message).cmsg_type == libc::SCM_CREDENTIALS {
                        let credentials: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                        sender = Some(credentials.pid as u32);
                    }
                    message = libc::CMSG_NXTHDR(&header, message);
                }
            }
            return Some(Notification {
                sender,
                text: String::from_utf8_lossy(&data[..length as usize]).into_owned(),
            });
        }
    }

    /// The first notification, received so far or within `within`, that satisfies `wanted`.
    fn wait_for(&mut self, within: Duration, wanted: impl Fn(&Notification) -> bool) -> Option<Notification> {
        if let Some(found) = self.received.iter().find(|notification| wanted(notification)) {
            return Some(found.clone());
        }
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let notification = self.receive(left)?;
            self.received.push(notification.clone());
            if wanted(&notification) {
                return Some(notification);
            }
        }
        None
    }

    /// Reads whatever else has arrived (until the socket stays quiet for `quiet`).
    fn drain(&mut self, quiet: Duration) {
        while let Some(notification) = self.receive(quiet) {
            self.received.push(notification);
        }
    }
}

/// Every process the test started, each with its captured output (systemd's journal
/// stream); all of them are killed on drop, passing or failing, so that nothing is left
/// serving the test's port.
#[derive(Default)]
struct Processes {
    /// Direct children, each the leader of a session of its own (as systemd starts them).
    children: Vec<Child>,
    /// Pids announced by MAINPID=: the successor is a grandchild (of ExecReload's shell).
    announced: Vec<u32>,
    logs: Vec<(String, Arc<ServerLog>)>,
}

impl Processes {
    /// Runs `argv` as systemd runs a command: no shell, the environment `env` only, a new
    /// session, stdin from /dev/null, stdout and stderr into one stream (here a pipe the
    /// test reads, there the journal). Returns the index of the child.
    fn spawn(&mut self, name: &str, argv: &[String], env: &[(String, String)], cwd: &Path) -> usize {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(key, value)| (key, value)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("duplicate pipe"))
            .stderr(writer);
        // SAFETY: only setsid (async-signal-safe) runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: cannot run {argv:?}: {error}"));
        // Our copies of the pipe's write end go with the Command.
        drop(command);
        // The reader thread is not joined: it ends when the last process holding the pipe
        // (possibly a grandchild) is gone.
        let (log, _reader) = ServerLog::capture(reader);
        self.logs.push((format!("{name} (pid {})", child.id()), log));
        self.children.push(child);
        self.children.len() - 1
    }

    fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    fn log(&self, index: usize) -> &ServerLog {
        &self.logs[index].1
    }

    /// Waits (bounded) for child `index` to exit and reaps it.
    fn wait_exit(&mut self, index: usize, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.children[index].try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every captured log without the per-request lines (the load makes thousands), for a
    /// failing test's output.
    fn all_logs(&self) -> String {
        let mut text = String::new();
        for (name, log) in &self.logs {
            let lines = log.lines();
            let other: Vec<&String> = lines
                .iter()
                .filter(|line| !line.contains("keepring::server::worker: request "))
                .collect();
            let skip = other.len().saturating_sub(60);
            let shown: Vec<&str> = other[skip..].iter().map(|line| line.as_str()).collect();
            text.push_str(&format!(
                "--- {name}: last {} of {} lines other than the {} request lines ---\n{}\n",
                shown.len(),
                other.len(),
                lines.len() - other.len(),
                shown.join("\n")
            ));
        }
        text
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let binary = std::fs::canonicalize(binary_path()).ok();
        for &pid in &self.announced {
            // Only a process that still runs the binary under test (not a reused pid).
            if binary.is_some() && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == binary {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        for child in &mut self.children {
            // The child's whole session (its pid is the process group): a process the
            // shell put in the background stays in it, announced or not.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
    }
}

/// A port nobody listens on now (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A minimal Arvados cluster config: one Directory volume, the fixture tokens and key.
fn cluster_config(port: u16, volume: &Path) -> String {
    format!(
        "Clusters:
  zzzzz:
    SystemRootToken: {ROOT_TOKEN}
    ManagementToken: {MANAGEMENT_TOKEN}
    Services:
      Keepstore:
        InternalURLs:
          \"http://127.0.0.1:{port}/\": {{}}
    Collections:
      BlobSigningKey: {SIGNING_KEY}
    Volumes:
      zzzzz-nyw5e-000000000000000:
        Driver: Directory
        DriverParameters: {{Root: {}}}
        Replication: 1
",
        volume.display()
    )
}

/// Is `pid` alive (not gone, not a zombie)?
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// PUTs `data` as `USER_TOKEN` (with `request_id`), checks the answer is a locator signed
/// with the config's key, and returns it.
fn put_signed(addr: SocketAddr, data: &[u8], request_id: &str) -> String {
    let hash = md5_hex(data);
    let response = Conn::connect(addr).request(
        &Request::put(&format!("/{hash}"), data)
            .token(USER_TOKEN)
            .header("X-Request-Id", request_id),
    );
    assert_eq!(response.status, 200, "PUT: {}", response.summary());
    let text = response.text();
    let locator = text.strip_suffix('\n').unwrap_or(&text).to_string();
    let (signature, expiry) = locator
        .strip_prefix(&format!("{hash}+{}+A", data.len()))
        .and_then(|hint| hint.split_once('@'))
        .unwrap_or_else(|| panic!("PUT answered {locator:?}, not a signed locator for {hash}"));
    let expiry = u64::from_str_radix(expiry, 16).unwrap_or_else(|_| panic!("bad expiry in {locator:?}"));
    assert_eq!(
        signature,
        sign(&hash, USER_TOKEN, SIGNING_KEY, SIGNING_TTL_SECS_DEFAULT, expiry),
        "{locator:?} is not signed with the config's BlobSigningKey"
    );
    locator
}

fn assert_get(addr: SocketAddr, locator: &str, data: &[u8]) {
    let response = Conn::connect(addr).request(&Request::get(&format!("/{locator}")).token(USER_TOKEN));
    assert_eq!(response.status, 200, "GET {locator}: {}", response.summary());
    assert!(
        response.body == data,
        "GET {locator}: wrong bytes: {}",
        response.summary()
    );
}

#[test]
fn command_lines_split_and_expand_as_systemd_does() {
    assert_eq!(
        split_command_line(r#"/bin/sh -c 'exec x --term-pid "$MAINPID" </dev/null &'"#),
        ["/bin/sh", "-c", r#"exec x --term-pid "$MAINPID" </dev/null &"#]
    );
    assert_eq!(
        split_command_line(r#"  a "b c"d 'e\'f' g\ h "" "#),
        ["a", "b cd", "e'f", "g h", ""]
    );
    let env = [
        ("MAINPID".to_string(), "42".to_string()),
        ("OPTS".to_string(), "--x  --y".to_string()),
    ];
    let words: Vec<String> = [
        "$MAINPID",
        "${MAINPID}x",
        "a$MAINPID",
        "$$MAINPID",
        "$OPTS",
        "$UNSET",
        "${UNSET}",
    ]
    .iter()
    .map(|word| word.to_string())
    .collect();
    assert_eq!(
        substitute_env(&words, &env),
        ["42", "42x", "a$MAINPID", "$MAINPID", "--x", "--y", ""]
    );
    assert_eq!(expand_specifiers("100%%"), "100%");
    let unit = UnitFile::parse("# c\n[Service]\n; c\nExecStart=/a \\\n  # skipped\n  b\nX = 1\nX=\nX=2\n");
    assert_eq!(unit.service("ExecStart"), "/a  b");
    assert_eq!(unit.service("X"), "2");
}

#[test]
fn unit_is_notify_type_and_does_not_restart_on_configuration_errors() {
    let unit = UnitFile::load();
    assert_eq!(unit.service("Type"), "notify");
    // The successor started by ExecReload= is not the main process when it says READY=1
    // and MAINPID=; only NotifyAccess=all also gives it $NOTIFY_SOCKET at all.
    assert_eq!(unit.service("NotifyAccess"), "all");
    assert_eq!(unit.service("RestartPreventExitStatus"), "2");
    assert_eq!(unit.service("Restart"), "always");
    // Keepstore's packaged unit runs it without arguments: the config comes from
    // $ARVADOS_CONFIG or /etc/arvados/config.yml.
    assert_eq!(unit.command("ExecStart", &[]), [binary_path()]);
    let reload = unit.service("ExecReload");
    assert!(
        reload.contains(UNIT_PROGRAM) && reload.contains("--term-pid"),
        "{reload:?}"
    );
    // The drain (--drain-timeout-secs, 300 s by default) fits in the stop timeout.
    let stop_timeout: u64 = unit
        .service("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(stop_timeout > 300, "TimeoutStopSec={stop_timeout} cuts the 300 s drain");
    for key in NOT_EMULATED {
        assert!(
            unit.service_values(key).is_empty(),
            "{key}= is not emulated by tests/it/systemd.rs: extend the test first"
        );
    }
}

#[test]
fn unit_starts_keepring_and_reload_hands_over_without_a_failed_request() {
    let unit = UnitFile::load();
    for key in NOT_EMULATED {
        assert!(unit.service_values(key).is_empty(), "{key}= is not emulated");
    }
    let dir = tempfile::Builder::new()
        .prefix("keepring-systemd-")
        .tempdir()
        .expect("temp dir");
    let volume = dir.path().join("keep0");
    std::fs::create_dir(&volume).expect("create volume dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.path().join("config.yml");
    std::fs::write(&config, cluster_config(port, &volume)).expect("write config.yml");
    let mut notify = NotifySocket::bind(dir.path().join("notify"));
    let notify_path = notify.path.display().to_string();

    // What every command of the service sees: systemd's PATH, the unit's Environment=,
    // then the operator's (a drop-in's) variables.
    let mut env = vec![("PATH".to_string(), SYSTEMD_DEFAULT_PATH.to_string())];
    env.extend(unit.environment());
    env.push(("ARVADOS_CONFIG".to_string(), config.display().to_string()));
    env.push(("XDG_RUNTIME_DIR".to_string(), dir.path().display().to_string()));
    let mut start_env = env.clone();
    start_env.push(("NOTIFY_SOCKET".to_string(), notify_path.clone()));

    // systemd's working directory is /; the temp dir keeps anything a misconfigured server
    // might create (./keepring-data) out of the machine's root.
    let mut processes = Processes::default();
    let start_argv = unit.command("ExecStart", &start_env);
    let main = processes.spawn("ExecStart", &start_argv, &start_env, dir.path());
    let main_pid = processes.pid(main);

    // READY=1 with MAINPID= its own pid, then it serves the config's InternalURL.
    let ready = notify.wait_for(READY_TIMEOUT, |n| n.has("READY=1") && n.main_pid() == Some(main_pid));
    let Some(ready) = ready else {
        panic!(
            "{start_argv:?} sent no READY=1 with MAINPID={main_pid} within {READY_TIMEOUT:?} \
             (exit status {:?}); notifications: {:?}",
            processes.wait_exit(main, Duration::ZERO),
            notify.received
        );
    };
    assert_eq!(ready.sender, Some(main_pid), "READY=1 from another process: {ready:?}");
    if let Err(error) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        panic!("keepring is not serving {addr}, the InternalURL of $ARVADOS_CONFIG: {error}");
    }
    let data = test_bytes(71, 3000);
    let locator = put_signed(addr, &data, "systemd-test-first-put");
    assert_get(addr, &locator, &data);

    // Requests run on fresh connections throughout the reload.
    let load = LoadHandle::start(
        LoadTarget {
            addr,
            path: format!("/{locator}"),
            token: Some(USER_TOKEN.to_string()),
            expected_body: Arc::new(data.clone()),
            tls: None,
        },
        LoadMode::Churn { threads: 2 },
        LoadLimits {
            duration: Duration::from_secs(300),
            requests_max: None,
        },
    );
    assert!(
        load.wait_for_more_ok(LOAD_OK_PER_PROCESS, Duration::from_secs(20)),
        "the load did not get going: {} ok, {} failures",
        load.ok_so_far(),
        load.failures_so_far()
    );

    // ExecReload= as systemd runs it: MAINPID in its environment (and substituted
    // where systemd substitutes), NOTIFY_SOCKET only under NotifyAccess=all.
    let mut reload_env = env.clone();
    if unit.service("NotifyAccess") == "all" {
        reload_env.push(("NOTIFY_SOCKET".to_string(), notify_path.clone()));
    }
    reload_env.push(("MAINPID".to_string(), main_pid.to_string()));
    let reload_argv = unit.command("ExecReload", &reload_env);
    let reload = processes.spawn("ExecReload", &reload_argv, &reload_env, dir.path());
    let status = processes.wait_exit(reload, RELOAD_COMMAND_TIMEOUT);
    assert!(
        status.is_some_and(|status| status.success()),
        "{reload_argv:?} must start the successor in the background and exit 0 at once: {status:?}"
    );
    let ready = notify.wait_for(READY_TIMEOUT, |n| {
        n.has("READY=1") && n.main_pid().is_some_and(|pid| pid != main_pid)
    });
    let Some(ready) = ready else {
        panic!(
            "no successor sent READY=1 with a new MAINPID within {READY_TIMEOUT:?}; notifications: {:?}",
            notify.received
        );
    };
    let successor = ready.main_pid().expect("MAINPID");
    processes.announced.push(successor);
    assert_eq!(
        ready.sender,
        Some(successor),
        "MAINPID= names another process than the sender: {ready:?}"
    );
    assert!(
        processes
            .log(reload)
            .wait_for(Duration::from_secs(5), |line| line
                .contains("took over listening sockets"))
            .is_some(),
        "the successor bound fresh sockets instead of taking them over"
    );
    let status = processes.wait_exit(main, OLD_EXIT_TIMEOUT);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "the replaced process (pid {main_pid}) must drain and exit 0 within {OLD_EXIT_TIMEOUT:?}: {status:?}"
    );
    assert!(running(successor), "the successor (pid {successor}) is gone");

    // Only the successor is left to answer.
    assert!(
        load.wait_for_more_ok(LOAD_OK_PER_PROCESS, Duration::from_secs(20)),
        "no requests answered after the reload: {} ok, {} failures",
        load.ok_so_far(),
        load.failures_so_far()
    );
    let stats = load.stop();
    assert_eq!(
        stats.failures(),
        0,
        "requests failed across the reload: {}\n{:#?}",
        stats.summary(),
        stats.samples
    );
    let request_id = format!("systemd-test-after-reload-{successor}");
    let second = test_bytes(72, 5000);
    let second_locator = put_signed(addr, &second, &request_id);
    assert_get(addr, &second_locator, &second);
    assert_get(addr, &locator, &data);
    assert!(
        processes
            .log(reload)
            .wait_for(Duration::from_secs(5), |line| line.contains(&request_id))
            .is_some(),
        "the successor did not log request {request_id}"
    );

    // The replaced process told systemd nothing: a STOPPING=1 from it would stop the
    // whole service under NotifyAccess=all.
    notify.drain(Duration::from_millis(200));
    let stopping: Vec<&Notification> = notify.received.iter().filter(|n| n.has("STOPPING=1")).collect();
    assert!(
        stopping.is_empty(),
        "after the hand-over systemd got STOPPING=1 (replaced process: pid {main_pid}): {stopping:?}; with \
         NotifyAccess=all it would take the whole service as stopping and SIGKILL the successor \
         TimeoutStopSec later"
    );
}
