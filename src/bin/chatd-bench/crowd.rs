//! The crowd: N clients at once, as a big room sees them.
//!
//! 1. N clients connect with at most C connects in flight; a client is
//!    usable once the server has sent it something (chatd's greeting).
//!    Reports when the last one was, and how many were refused or closed.
//! 2. Quiet for 3 s (everything they were sent read): PSS and page tables
//!    of the server tree, per client.
//! 3. 100 other clients chat (the fan-out scenario, closed loop) while a
//!    thread keeps reading the crowd's sockets.
//! 4. The crowd leaves at once (every socket closed): how long until the
//!    server has no child left, its master's fd count is back to where it
//!    was before the crowd, and whether any child was left a zombie.

use crate::fanout::{self, Mode, Outcome, Spec};
use crate::server::{wait_until, Server};
use crate::storm::{start_connect, St};
use anyhow::{bail, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, sockopt};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long idle clients have received nothing when memory is measured.
const IDLE: Duration = Duration::from_secs(3);
/// How long the crowd may take to connect, and the server to clean up.
const PATIENCE: Duration = Duration::from_secs(60);
/// The master's own memory ([`Server::master_own_memory`]) counts as back
/// at its idle figure within this many bytes: the room's last 100 lines
/// stay in the log for newcomers.
pub const MEMORY_SLACK: u64 = 128 << 10;

#[derive(Debug, Default, Clone)]
pub struct CrowdOutcome {
    pub clients: usize,
    pub concurrency: usize,
    pub usable: usize,
    pub refused: usize,
    pub closed: usize,
    /// From the first connect until the last client was usable.
    pub all_usable_ms: f64,
    /// Server tree at rest with the crowd: PSS, page tables, processes.
    pub pss: u64,
    pub pte: u64,
    pub processes: usize,
    /// The machine's MemAvailable before the crowd and at rest with it:
    /// what the crowd costs in all, kernel memory (process and socket
    /// structures, kernel stacks) and the bench's own sockets included.
    pub available_before: u64,
    pub available_with: u64,
    /// The same before the crowd (the master alone).
    pub idle_pss: u64,
    pub idle_pte: u64,
    pub idle_fds: usize,
    /// 100 chatting among the crowd.
    pub chat: Option<Outcome>,
    /// Crowd clients the server closed while the others chatted.
    pub closed_while_chatting: usize,
    /// From closing the crowd until no child was left and the master's
    /// fds were back to `idle_fds` (None: not within the patience).
    pub leave_ms: Option<f64>,
    pub fds_after: usize,
    /// From closing the crowd until the master's own memory was back
    /// within [`MEMORY_SLACK`] of its idle figure (None: not within the
    /// patience); its idle figure, and what it was then (or at the end).
    pub memory_ms: Option<f64>,
    pub own_idle: u64,
    pub own_after: u64,
    /// The master's PSS and page tables after the crowd left.
    pub pss_after: u64,
    pub pte_after: u64,
    pub zombies: usize,
}

impl CrowdOutcome {
    pub fn kib_per_client(&self) -> f64 {
        (self.pss + self.pte) as f64 / 1024.0 / self.clients.max(1) as f64
    }
}

/// The crowd's sockets, read by one epoll loop.
struct Crowd {
    epoll: Epoll,
    socks: Vec<Option<TcpStream>>,
    st: Vec<St>,
}

impl Crowd {
    /// Reads everything waiting, for up to `wait`; returns (bytes read,
    /// sockets newly usable, sockets closed by the server).
    fn pump(&mut self, wait: Duration, buf: &mut [u8]) -> Result<(usize, Vec<usize>, usize)> {
        let mut events = vec![EpollEvent::empty(); 1024];
        let ms = wait.as_millis().min(1000) as u16;
        let k = match self.epoll.wait(&mut events, EpollTimeout::from(ms)) {
            Ok(k) => k,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let (mut bytes, mut usable, mut closed) = (0, Vec::new(), 0);
        for ev in &events[..k] {
            let i = ev.data() as usize;
            let Some(sock) = self.socks[i].as_mut() else {
                continue;
            };
            if self.st[i] == St::Connecting {
                if socket::getsockopt(&*sock, sockopt::SocketError) != Ok(0) {
                    self.st[i] = St::Dead;
                    self.socks[i] = None;
                    continue;
                }
                self.st[i] = St::Open;
                let mut e = EpollEvent::new(EpollFlags::EPOLLIN, i as u64);
                self.epoll.modify(&*sock, &mut e)?;
            }
            if !ev
                .events()
                .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            {
                continue;
            }
            loop {
                match sock.read(buf) {
                    Ok(0) => {
                        closed += 1;
                        self.st[i] = St::Dead;
                        self.socks[i] = None;
                        break;
                    }
                    Ok(n) => {
                        bytes += n;
                        if self.st[i] == St::Open {
                            self.st[i] = St::Usable;
                            usable.push(i);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed += 1;
                        self.st[i] = St::Dead;
                        self.socks[i] = None;
                        break;
                    }
                }
            }
        }
        Ok((bytes, usable, closed))
    }

    /// Starts one non-blocking connect as the next client.
    fn connect(&mut self, addr: SocketAddr) -> Result<bool> {
        let (sock, ok) = start_connect(addr, &self.epoll, self.socks.len() as u64)?;
        self.socks.push(ok.then_some(sock));
        self.st.push(if ok { St::Connecting } else { St::Dead });
        Ok(ok)
    }
}

/// MemAvailable, bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Children of `pid` that are zombies (exited, not reaped).
fn zombies(server: &Server) -> usize {
    server
        .children()
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
        })
        .count()
}

/// Runs the crowd scenario against `server` (started with room for
/// `n` + 100 clients).
pub fn run(server: &Server, n: usize, concurrency: usize, max_secs: f64) -> Result<CrowdOutcome> {
    let Some(master) = server.pid else {
        bail!("the crowd scenario needs the server's pid");
    };
    // The idle figures once the master is up and has served one client
    // (it finishes setting up after its port opens).
    {
        let mut c = TcpStream::connect(server.addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = c.read(&mut [0u8; 256])?;
    }
    wait_until(PATIENCE, || server.children().is_empty());
    let (idle_pss, idle_pte, _) = server.memory();
    let own_idle = server.master_own_memory();
    let mut out = CrowdOutcome {
        own_idle,
        clients: n,
        concurrency,
        idle_pss,
        idle_pte,
        idle_fds: fd_count(master),
        ..Default::default()
    };
    let mut crowd = Crowd {
        epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        socks: Vec::with_capacity(n),
        st: Vec::with_capacity(n),
    };
    let mut buf = vec![0u8; 64 * 1024];
    out.available_before = mem_available();
    // 1. Connect, at most `concurrency` not yet usable.
    let t0 = Instant::now();
    let mut waiting = 0usize;
    while out.usable + out.refused + out.closed < n {
        if t0.elapsed() > PATIENCE {
            break;
        }
        while crowd.socks.len() < n && waiting < concurrency {
            if crowd.connect(server.addr)? {
                waiting += 1;
            } else {
                out.refused += 1;
            }
        }
        let (_, usable, closed) = crowd.pump(Duration::from_millis(5), &mut buf)?;
        if !usable.is_empty() {
            out.usable += usable.len();
            out.all_usable_ms = t0.elapsed().as_secs_f64() * 1e3;
        }
        out.closed += closed;
        waiting = crowd
            .st
            .iter()
            .filter(|s| matches!(s, St::Connecting | St::Open))
            .count();
    }
    // 2. Quiet: nothing arrived for IDLE.
    let mut quiet_since = Instant::now();
    let end = Instant::now() + PATIENCE;
    while quiet_since.elapsed() < IDLE && Instant::now() < end {
        let (bytes, _, closed) = crowd.pump(Duration::from_millis(50), &mut buf)?;
        out.closed += closed;
        if bytes > 0 {
            quiet_since = Instant::now();
        }
    }
    (out.pss, out.pte, out.processes) = server.memory();
    out.available_with = mem_available();
    // 3. 100 chat while a thread keeps the crowd read.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(Crowd, usize)> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut closed = 0;
            while !stop.load(Relaxed) {
                closed += crowd.pump(Duration::from_millis(20), &mut buf)?.2;
            }
            Ok((crowd, closed))
        })
    };
    let spec = Spec {
        clients: 100,
        senders: 10,
        messages: 100,
        size: 64,
        mode: Mode::Closed { window: 8 },
        churners: 0,
        max_secs,
        irc: false,
    };
    let chat = fanout::run(server, &spec);
    stop.store(true, Relaxed);
    let (crowd, closed) = match reader.join() {
        Ok(r) => r?,
        Err(_) => bail!("the crowd's reader panicked"),
    };
    out.closed_while_chatting = closed;
    out.chat = Some(chat?);
    // 4. Everyone leaves at once.
    let t = Instant::now();
    drop(crowd);
    let done = wait_until(PATIENCE, || {
        server.children().is_empty() && fd_count(master) <= out.idle_fds
    });
    if done {
        out.leave_ms = Some(t.elapsed().as_secs_f64() * 1e3);
    }
    out.zombies = zombies(server);
    out.fds_after = fd_count(master);
    let back = wait_until(PATIENCE, || {
        out.own_after = server.master_own_memory();
        server.children().is_empty() && out.own_after <= out.own_idle + MEMORY_SLACK
    });
    (out.pss_after, out.pte_after, _) = server.memory();
    if back {
        out.memory_ms = Some(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}
