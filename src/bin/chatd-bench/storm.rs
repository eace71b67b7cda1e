//! Connect storm and idle memory.
//!
//! Storm: N non-blocking connects issued back to back; a connection is
//! usable once the server sends it anything (chatd's greeting, or a line
//! from a "beacon" client that talks every 20 ms, for servers that greet
//! no one). Reports how many were usable within 0.5 s and in all, how long
//! until the last one was, and how many were refused or closed.
//!
//! Memory: N idle clients connected and their join notices read; then PSS
//! (smaps_rollup) and page tables (VmPTE) of the whole server tree.

use crate::marker;
use crate::server::{wait_until, Server};
use crate::tls::Stream;
use anyhow::Result;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct StormOutcome {
    pub attempted: usize,
    pub usable_fast: usize,
    pub usable: usize,
    pub refused: usize,
    pub closed: usize,
    pub last_usable_ms: f64,
}

pub const FAST: Duration = Duration::from_millis(500);
const PATIENCE: Duration = Duration::from_secs(3);

/// Where a benchmark connection is (the storm's and the crowd's).
#[derive(Clone, Copy, PartialEq)]
pub enum St {
    Connecting,
    Open,
    Usable,
    Dead,
}

/// A non-blocking connect to `addr`, watched by `epoll` (readable and
/// writable) under `token`; false if it was refused at once. The socket
/// comes back either way.
pub fn start_connect(addr: SocketAddr, epoll: &Epoll, token: u64) -> Result<(TcpStream, bool)> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let ok = match socket::connect(fd.as_raw_fd(), &sockaddr(addr)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {
            let flags = EpollFlags::EPOLLOUT | EpollFlags::EPOLLIN;
            epoll.add(&fd, EpollEvent::new(flags, token))?;
            true
        }
        Err(_) => false,
    };
    Ok((TcpStream::from(fd), ok))
}

pub fn sockaddr(addr: SocketAddr) -> SockaddrIn {
    match addr {
        SocketAddr::V4(a) => SockaddrIn::from(a),
        SocketAddr::V6(_) => panic!("the benchmark uses IPv4 loopback"),
    }
}

pub fn storm(server: &Server, n: usize) -> Result<StormOutcome> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    // Over TLS (chatd only, which greets), no beacon: a connection is
    // usable once its handshake is done and the greeting arrived.
    let tls = crate::tls::enabled();
    let mut beacon = match tls {
        true => None,
        false => Some(TcpStream::connect(server.addr)?),
    };
    if let Some(b) = &beacon {
        b.set_nonblocking(true)?;
    }
    wait_until(Duration::from_secs(2), || {
        tls || server.pid.is_none() || !server.children().is_empty()
    });
    let mut fds: Vec<Stream> = Vec::with_capacity(n);
    let mut st = vec![St::Connecting; n];
    let mut out = StormOutcome {
        attempted: n,
        ..Default::default()
    };
    let t0 = Instant::now();
    for (i, state) in st.iter_mut().enumerate() {
        let (sock, ok) = start_connect(server.addr, &epoll, i as u64)?;
        if !ok {
            *state = St::Dead;
            out.refused += 1;
        }
        fds.push(Stream::new(sock));
    }
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 16 * 1024];
    let mut beacon_at = Instant::now() - Duration::from_secs(1);
    let mut seq = 0;
    let mut line = Vec::new();
    loop {
        let pending = st
            .iter()
            .filter(|s| matches!(s, St::Connecting | St::Open))
            .count();
        if pending == 0 || t0.elapsed() > PATIENCE {
            break;
        }
        if let Some(b) = beacon
            .as_mut()
            .filter(|_| beacon_at.elapsed() >= Duration::from_millis(20))
        {
            line.clear();
            marker::encode(&mut line, 0, seq, 0, marker::MIN_SIZE);
            seq += 1;
            let _ = b.write_all(&line);
            beacon_at = Instant::now();
        }
        let k = match epoll.wait(&mut events, EpollTimeout::from(5u16)) {
            Ok(k) => k,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..k] {
            let i = ev.data() as usize;
            let fd = &mut fds[i];
            if st[i] == St::Connecting {
                match socket::getsockopt(&fd.sock, sockopt::SocketError) {
                    Ok(0) if fd.flush().is_ok() => {
                        st[i] = St::Open;
                        let mut e = EpollEvent::new(EpollFlags::EPOLLIN, i as u64);
                        epoll.modify(&fd.sock, &mut e)?;
                    }
                    _ => {
                        st[i] = St::Dead;
                        out.refused += 1;
                        epoll.delete(&fd.sock)?;
                        continue;
                    }
                }
            }
            if ev
                .events()
                .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP)
            {
                match fd.pump(&mut buf) {
                    Ok(None) | Err(_) => {
                        if st[i] == St::Open {
                            out.closed += 1;
                        }
                        st[i] = St::Dead;
                        epoll.delete(&fd.sock)?;
                    }
                    Ok(Some(0)) => {}
                    Ok(Some(_)) => {
                        if st[i] == St::Open {
                            st[i] = St::Usable;
                            out.usable += 1;
                            let el = t0.elapsed();
                            if el <= FAST {
                                out.usable_fast += 1;
                            }
                            out.last_usable_ms = el.as_secs_f64() * 1e3;
                            // Read on, so that nothing backs up.
                        }
                    }
                }
            }
        }
        // Keep the beacon's socket drained.
        while let Some(Ok(n)) = beacon.as_mut().map(|b| b.read(&mut buf)) {
            if n == 0 {
                break;
            }
        }
    }
    // A server that closes usable connections later counts them as closed.
    drop(fds);
    Ok(out)
}

/// How long idle clients have received nothing when memory is measured.
const IDLE: Duration = Duration::from_secs(3);

/// Connects `n` idle clients, reads what the server sends them until it is
/// quiet, and returns (PSS, page tables, processes) of the server tree,
/// and the clients (still connected until dropped).
pub fn idle_memory(server: &Server, n: usize) -> Result<((u64, u64, usize), Vec<Stream>)> {
    let mut clients = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    let mut lag = 0;
    for i in 0..n {
        let s = TcpStream::connect(server.addr)?;
        s.set_nonblocking(true)?;
        let mut s = Stream::new(s);
        s.flush()?;
        clients.push(s);
        server.pace(i, &mut lag);
        if i % 64 == 63 {
            drain(&mut clients, &mut buf);
        }
    }
    // Idle: nothing has arrived for IDLE (a server may tidy up once its
    // clients have gone quiet; chatd's master tells its children after 1 s
    // without a wake-up, at its next 1 s tick).
    let mut quiet_since = Instant::now();
    let end = Instant::now() + Duration::from_secs(20);
    while quiet_since.elapsed() < IDLE && Instant::now() < end {
        if drain(&mut clients, &mut buf) > 0 {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server.memory(), clients))
}

fn drain(clients: &mut [Stream], buf: &mut [u8]) -> usize {
    let mut total = 0;
    for c in clients.iter_mut() {
        if let Ok(Some(k)) = c.pump(buf) {
            total += k;
        }
    }
    total
}
