//! The listener hand-over between an old and a new keepring (how HAProxy `-x`, Envoy and
//! pingora restart without closing a listening socket, whose accept queue Linux would
//! otherwise reset).
//!
//! A running keepring listens on a Unix control socket (`--control-socket`, mode 0600,
//! in a 0700 directory; only a peer with the same uid is answered). A starting keepring
//! connects, sends the request line, and receives, in one message, every listening
//! socket and the buffer-budget memory as SCM_RIGHTS descriptors with a text payload that
//! labels each one:
//!
//! ```text
//! → keepring-handover/1\n
//! ← keepring-handover/1 fds=3\n
//!   listener 127.0.0.1:25107\n
//!   listener 127.0.0.1:25107\n
//!   budget\n
//! ```
//! Version, count and labels are checked; anything else closes every descriptor received.
//! Nothing else is accepted on the socket.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::fdpass;
use crate::limits::{HANDOVER_PAYLOAD_BYTES_MAX, HANDOVER_TIMEOUT_MS};

pub const REQUEST: &[u8] = b"keepring-handover/1\n";
const VERSION: &str = "keepring-handover/1";

/// What a running process offers and a new one receives.
#[derive(Debug, Default)]
pub struct Handover {
    pub listeners: Vec<(String, OwnedFd)>,
    pub budget: Option<OwnedFd>,
}

/// Default control socket path for a listen address: in `$XDG_RUNTIME_DIR`, else
/// `/run/keepring` when writable (root), else the temp dir.
pub fn default_path(listen: SocketAddr) -> PathBuf {
    let name = format!("keepring-{}-{}.sock", listen.ip(), listen.port()).replace(':', "_");
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if fdpass::own_uid() == 0 => PathBuf::from("/run/keepring"),
        None => std::env::temp_dir(),
    };
    dir.join(name)
}

/// Encode the labels for `handover` (pure; the descriptors travel beside it).
pub fn encode(listener_labels: &[String], with_budget: bool) -> Vec<u8> {
    let count = listener_labels.len() + usize::from(with_budget);
    let mut text = format!("{VERSION} fds={count}\n");
    for label in listener_labels {
        text.push_str(&format!("listener {label}\n"));
    }
    if with_budget {
        text.push_str("budget\n");
    }
    text.into_bytes()
}

/// Check the labels against the descriptors that came with them.
pub fn decode(payload: &[u8], fds: Vec<OwnedFd>) -> io::Result<Handover> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad hand-over: {why}"));
    let text = std::str::from_utf8(payload).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.lines();
    let first = lines.next().ok_or_else(|| bad("empty"))?;
    let count: usize = first
        .strip_prefix(VERSION)
        .and_then(|rest| rest.strip_prefix(" fds="))
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| bad("unknown version"))?;
    let labels: Vec<&str> = lines.collect();
    if labels.len() != count || fds.len() != count {
        return Err(bad("descriptor count does not match its labels"));
    }
    let mut handover = Handover::default();
    for (label, fd) in labels.into_iter().zip(fds) {
        if let Some(address) = label.strip_prefix("listener ") {
            handover.listeners.push((address.to_string(), fd));
        } else if label == "budget" && handover.budget.is_none() {
            handover.budget = Some(fd);
        } else {
            return Err(bad("unknown label"));
        }
    }
    Ok(handover)
}

/// Ask the process behind `path` for its sockets. `Ok(None)`: nobody answers there.
pub fn request(path: &Path) -> io::Result<Option<Handover>> {
    let socket = match UnixStream::connect(path) {
        Ok(socket) => socket,
        Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(error) => return Err(error),
    };
    if fdpass::peer_uid(&socket)? != fdpass::own_uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "control socket owned by another user",
        ));
    }
    let timeout = Some(Duration::from_millis(HANDOVER_TIMEOUT_MS));
    socket.set_read_timeout(timeout)?;
    socket.set_write_timeout(timeout)?;
    (&socket).write_all(REQUEST)?;
    let (mut payload, fds) = fdpass::recv_with_fds(&socket, HANDOVER_PAYLOAD_BYTES_MAX)?;
    // The sender closes after its one message: read the rest of the text to EOF, bounded.
    (&socket)
        .take((HANDOVER_PAYLOAD_BYTES_MAX - payload.len()) as u64)
        .read_to_end(&mut payload)?;
    decode(&payload, fds).map(Some)
}

/// The control socket of a running process.
pub struct ControlSocket {
    path: PathBuf,
    inode: u64,
    /// Shared with the serving thread, so the fd cannot be closed and reused while `stop`
    /// shuts it down.
    listener: Arc<UnixListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Bind `path` (replacing a stale or handed-over socket file) and answer hand-over
    /// requests with `offer` on a thread of its own until `stop`.
    pub fn start(path: &Path, offer: Vec<(String, OwnedFd)>, budget: OwnedFd) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = std::fs::metadata(path)?.ino();
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let (serving, stop_flag) = (listener.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("keepring-control".into())
            .spawn(move || serve(&serving, &stop_flag, offer, budget))?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            inode,
            listener,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stop answering, close every offered descriptor, and remove the socket file if it is
    /// still ours (a successor may have bound its own there already).
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutting down our own listening fd (kept open by the Arc) wakes the accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if std::fs::metadata(&self.path).map(|metadata| metadata.ino()).ok() == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn serve(listener: &UnixListener, stopping: &AtomicBool, offer: Vec<(String, OwnedFd)>, budget: OwnedFd) {
    let labels: Vec<String> = offer.iter().map(|(label, _)| label.clone()).collect();
    let mut fds: Vec<RawFd> = offer.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    fds.push(budget.as_raw_fd());
    let payload = encode(&labels, true);
    loop {
        let socket = match listener.accept() {
            Ok((socket, _)) => socket,
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(error) => {
                // EMFILE and the like pass; giving up would disable every later hand-over.
                tracing::warn!(error = %error, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match answer(&socket, &payload, &fds) {
            Ok(()) => tracing::info!(listeners = labels.len(), "handed listening sockets to a new process"),
            Err(error) => tracing::warn!(error = %error, "hand-over request refused"),
        }
    }
    drop(offer);
    drop(budget);
}

fn answer(socket: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fdpass::peer_uid(socket)? != fdpass::own_uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "peer runs as another user",
        ));
    }
    let timeout = Some(Duration::from_millis(HANDOVER_TIMEOUT_MS));
    socket.set_read_timeout(timeout)?;
    socket.set_write_timeout(timeout)?;
    let mut request = [0u8; REQUEST.len()];
    (&*socket).read_exact(&mut request)?;
    if request != REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown request"));
    }
    fdpass::send_with_fds(socket, payload, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_fds(count: usize) -> Vec<OwnedFd> {
        (0..count)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect()
    }

    #[test]
    fn labels_round_trip() {
        let payload = encode(&["127.0.0.1:1".into(), "127.0.0.1:1".into()], true);
        let handover = decode(&payload, some_fds(3)).unwrap();
        assert_eq!(handover.listeners.len(), 2);
        assert_eq!(handover.listeners[0].0, "127.0.0.1:1");
        assert!(handover.budget.is_some());
    }

    #[test]
    fn counts_and_versions_are_checked() {
        let payload = encode(&["127.0.0.1:1".into()], true);
        assert!(decode(&payload, some_fds(1)).is_err());
        assert!(decode(b"keepring-handover/2 fds=1\nbudget\n", some_fds(1)).is_err());
        assert!(decode(b"keepring-handover/1 fds=1\nsomething\n", some_fds(1)).is_err());
    }

    #[test]
    fn a_running_control_socket_hands_over_its_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl/keepring.sock");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let offer = vec![(address.clone(), OwnedFd::from(listener))];
        let control = ControlSocket::start(&path, offer, some_fds(1).pop().unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let handover = request(&path).unwrap().unwrap();
        assert_eq!(handover.listeners[0].0, address);
        let inherited = std::net::TcpListener::from(handover.listeners.into_iter().next().unwrap().1);
        assert_eq!(inherited.local_addr().unwrap().to_string(), address);
        control.stop();
        assert!(!path.exists());
        assert!(request(&path).unwrap().is_none());
    }
}
