//! The listening sockets: inherited from systemd, or bound from the config.
//!
//! With socket activation (`LISTEN_PID`/`LISTEN_FDS`, checked by sd-notify)
//! the sockets are used as they are, and their names (`LISTEN_FDNAMES`,
//! from `FileDescriptorName=`) say what they speak: `irc` is IRC, `ircs`
//! IRC over TLS, `tls` the line protocol over TLS, any other name the line
//! protocol. Otherwise each `listen`, `irc_listen`, `tls_listen` and
//! `ircs_listen` address
//! is bound with SO_REUSEADDR, IPV6_V6ONLY for IPv6 (so `0.0.0.0` and
//! `[::]` can both be listed) and the largest backlog, for connection
//! storms.

use crate::protocol::{Proto, Service};
use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};

/// Where the listeners came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Systemd,
    Config,
}

/// What a socket systemd passed under this name speaks.
pub fn service_of_name(name: &str) -> Service {
    let (proto, tls) = match name {
        "irc" => (Proto::Irc, false),
        "ircs" => (Proto::Irc, true),
        "tls" => (Proto::Line, true),
        _ => (Proto::Line, false),
    };
    Service { proto, tls }
}

/// A listening socket and what it speaks.
pub type Listener = (TcpListener, Service);

/// What systemd passed besides TCP listening sockets: the control socket
/// (`control`) and the fds a previous master stored (names starting with
/// [`super::handover::PREFIX`]).
pub type Kept = Vec<(String, OwnedFd)>;

/// Opens the listeners: the ones systemd passed, else binds `addrs`. Fds
/// systemd passed back from its fd store come back separately.
pub fn open(addrs: &[(SocketAddr, Service)]) -> Result<(Vec<Listener>, Origin, Kept)> {
    let fds = sd_notify::listen_fds_with_names().context("reading LISTEN_FDS")?;
    let mut inherited = Vec::new();
    let mut kept = Vec::new();
    for (fd, name) in fds {
        // SAFETY: sd-notify validated LISTEN_PID and returns the fds
        // systemd passed us (3..3+LISTEN_FDS), which nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match name.starts_with(super::handover::PREFIX) || name == "control" {
            true => kept.push((name, owned)),
            false => inherited.push((owned, name)),
        }
    }
    if !inherited.is_empty() {
        let mut ls = Vec::new();
        for (owned, name) in inherited {
            let l = TcpListener::from(owned);
            l.local_addr()
                .context("socket passed by systemd is not a TCP socket")?;
            l.set_nonblocking(true)?;
            ls.push((l, service_of_name(&name)));
        }
        return Ok((ls, Origin::Systemd, kept));
    }
    if addrs.is_empty() {
        bail!("no address to listen on");
    }
    let mut ls = Vec::new();
    for (a, proto) in addrs {
        ls.push((
            bind_one(*a).with_context(|| format!("cannot listen on {a}"))?,
            *proto,
        ));
    }
    Ok((ls, Origin::Config, kept))
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::MAXCONN)?;
    let _: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok(TcpListener::from(fd))
}
