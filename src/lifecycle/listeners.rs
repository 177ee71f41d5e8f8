//! Where the listening sockets come from, in order: systemd socket activation
//! (`LISTEN_FDS`), a running keepring's hand-over (`handover`), or a fresh bind with
//! SO_REUSEPORT per worker. However they came, every socket for our address is accepted
//! on: a socket nobody accepts on would strand the connections the kernel queues on it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::lifecycle::handover::Handover;
use crate::limits::LISTEN_BACKLOG;

/// First descriptor systemd passes (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: RawFd = 3;

pub fn bind_reuseport(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Where this process's sockets came from (logged, and decides what start-up means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Systemd,
    Handover,
    Bound,
}

/// Listening sockets (systemd's, if any) for `address`, with their address labels.
pub fn from_systemd(address: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let own_pid = std::process::id().to_string();
    if std::env::var("LISTEN_PID").ok().as_deref() != Some(own_pid.as_str()) {
        return Ok(Vec::new());
    }
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    // Not for our children (sd_listen_fds with unset_environment).
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut listeners = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count {
        if !is_listening_socket(fd) {
            // A wrong LISTEN_FDS must not make us take (and later close) a descriptor that
            // belongs to something else.
            tracing::warn!(
                fd,
                "LISTEN_FDS names a descriptor that is not a listening socket; ignored"
            );
            continue;
        }
        // SAFETY: systemd passed these descriptors to this pid; nothing else owns them.
        let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        if local.port() == address.port() {
            listeners.push(listener);
        } else {
            tracing::warn!(fd, address = %local, "ignoring a systemd socket for another address");
        }
    }
    Ok(listeners)
}

/// An open socket in the listening state (`SO_ACCEPTCONN`).
fn is_listening_socket(fd: RawFd) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on any fd number only reads the option into our int (or fails).
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut accepting as *mut libc::c_int as *mut libc::c_void,
            &mut length,
        )
    };
    result == 0 && accepting == 1
}

/// The sockets of a hand-over that serve `address`; others are closed (the address changed).
pub fn from_handover(handover: &mut Handover, address: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for (label, fd) in handover.listeners.drain(..) {
        if label == address.to_string() {
            let listener = TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            listeners.push(listener);
        } else {
            tracing::info!(address = %label, "not taking over a listener for another address");
        }
    }
    Ok(listeners)
}

/// Give each of `workers` its listeners: inherited ones round-robin when there are at
/// least as many as workers, else every worker accepts on all of them; with none, bind a
/// fresh SO_REUSEPORT socket per worker (port 0 picks one port for all).
pub fn assign(
    address: SocketAddr,
    inherited: Vec<TcpListener>,
    workers: usize,
) -> io::Result<(SocketAddr, Vec<Vec<TcpListener>>)> {
    if inherited.is_empty() {
        let first = bind_reuseport(address)?;
        let bound = first.local_addr()?;
        let mut per_worker = vec![vec![first]];
        for _ in 1..workers {
            per_worker.push(vec![bind_reuseport(bound)?]);
        }
        return Ok((bound, per_worker));
    }
    let bound = inherited[0].local_addr()?;
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    if inherited.len() >= workers {
        for (index, listener) in inherited.into_iter().enumerate() {
            per_worker[index % workers].push(listener);
        }
    } else {
        for listener in &inherited {
            for worker in per_worker.iter_mut() {
                worker.push(listener.try_clone()?);
            }
        }
    }
    Ok((bound, per_worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_are_taken_from_systemd() {
        use std::os::fd::AsRawFd;
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(is_listening_socket(listener.as_raw_fd()));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_listening_socket(file.as_raw_fd()));
        assert!(!is_listening_socket(-1));
    }

    #[test]
    fn fresh_binds_share_one_port() {
        let (bound, per_worker) = assign("127.0.0.1:0".parse().unwrap(), Vec::new(), 3).unwrap();
        assert_eq!(per_worker.len(), 3);
        for listeners in &per_worker {
            assert_eq!(listeners[0].local_addr().unwrap(), bound);
        }
    }

    #[test]
    fn fewer_inherited_sockets_than_workers_are_accepted_by_all() {
        let socket = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let (_, per_worker) = assign("127.0.0.1:0".parse().unwrap(), vec![socket], 2).unwrap();
        assert!(per_worker.iter().all(|listeners| listeners.len() == 1));
    }
}
