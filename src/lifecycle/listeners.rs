//! One listening socket per worker, all bound to the same address with SO_REUSEPORT so
//! the kernel spreads connections across cores (and a second process can bind beside a
//! running one). Socket options are set explicitly, not left to crate defaults.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::LISTEN_BACKLOG;

pub fn bind_reuseport(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// `count` listeners on `address`; port 0 picks one port for all of them.
pub fn bind_all(address: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_reuseport(address)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_reuseport(bound)?);
    }
    Ok((bound, listeners))
}
