//! Accepting clients and forking one child per client.
//!
//! The master checks the limits (`max_clients`, `max_per_ip`) before it
//! forks, refusing with one final line. For an accepted client it takes a
//! slot, gives it a new generation, resets the slot's shared state, creates
//! the control socketpair and forks; the child runs [`crate::child`], the
//! master keeps only its end of the socketpair and posts the join notice.

use super::clients::new_client;
use super::handover::Arrival;
use super::Master;
use crate::child::{self, Spec};
use crate::ipc;
use crate::protocol::event::{Event, Kind, Setup};
use crate::protocol::{self, Proto, Service};
use crate::shm::HISTORY_MAX;
use anyhow::anyhow;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
use nix::unistd::{ForkResult, Pid};
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tracing::{error, info, warn};

/// Accepts at most this many connections per listener event, so that a
/// storm cannot starve the relay; epoll reports the rest again.
const ACCEPT_BATCH: usize = 128;
/// Kernel send buffer per client: bounds memory per slow client.
const CLIENT_SNDBUF: usize = 64 * 1024;
/// How long accepting stops after accept fails for want of resources.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Unanswered keepalive probes before a silent peer counts as gone.
const KEEPALIVE_PROBES: u32 = 3;

impl Master {
    pub(super) fn accept_all(&mut self, idx: usize) {
        for _ in 0..ACCEPT_BATCH {
            if !self.handoff_free() {
                // Every hand-off slot holds a child that has not run yet:
                // let them run before forking more (the connections wait
                // in the backlog), instead of forking the slow way.
                return self.wait_for_handoff();
            }
            let Some((l, service)) = self.listeners.get(idx) else {
                return;
            };
            let service = *service;
            match l.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, service),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.shed_one(idx) {
                        return self.pause_accepting(&e);
                    }
                }
                Err(e) => {
                    // ENOBUFS, ENOMEM and the like: leave the connection in
                    // the backlog and retry shortly rather than spin.
                    return self.pause_accepting(&e);
                }
            }
        }
    }

    /// Out of file descriptors: frees the reserve fd for a moment to accept
    /// one waiting connection and refuse it with a line, so that clients
    /// get an answer instead of hanging in the backlog. False if that failed.
    fn shed_one(&mut self, idx: usize) -> bool {
        let Some(spare) = self.reserve_fd.take() else {
            return false;
        };
        drop(spare);
        let (l, service) = &self.listeners[idx];
        let service = *service;
        if let Ok((stream, peer)) = l.accept() {
            // `refuse` closes the stream, so the reserve can be taken again.
            self.refuse(
                stream,
                peer,
                service,
                "out of file descriptors",
                "server busy, try again later",
            );
        }
        self.reserve_fd = self.timer.as_fd().try_clone_to_owned().ok();
        self.reserve_fd.is_some()
    }

    /// Stops polling the listeners for [`ACCEPT_PAUSE`], after logging why.
    fn pause_accepting(&mut self, e: &std::io::Error) {
        error!(event = "accept_failed", error = %e, "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?}");
        for (l, _) in &self.listeners {
            let _ = self
                .epoll
                .modify(l, &mut EpollEvent::new(EpollFlags::empty(), 0));
        }
        self.accept_paused_until = Some(std::time::Instant::now() + ACCEPT_PAUSE);
    }

    /// Whether a hand-off slot is free (or there are none to wait for).
    fn handoff_free(&mut self) -> bool {
        if self.handoff.as_ref().is_none_or(|h| h.free()) {
            return true;
        }
        self.release_handoffs();
        self.handoff.as_ref().is_none_or(|h| h.free())
    }

    /// Stops polling the listeners until a hand-off slot is free (checked
    /// every millisecond by the loop while slots are taken).
    fn wait_for_handoff(&mut self) {
        if self.accept_waiting {
            return;
        }
        self.accept_waiting = true;
        for (l, _) in &self.listeners {
            let _ = self
                .epoll
                .modify(l, &mut EpollEvent::new(EpollFlags::empty(), 0));
        }
    }

    /// Polls the listeners again once a hand-off slot is free.
    pub(super) fn resume_after_handoff(&mut self) {
        if !self.accept_waiting || !self.handoff.as_ref().is_none_or(|h| h.free()) {
            return;
        }
        self.accept_waiting = false;
        if self.accept_paused_until.is_some() {
            return; // resume_accepting will
        }
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, super::TOKEN_LISTEN + i as u64);
            let _ = self.epoll.modify(l, &mut ev);
        }
    }

    /// Polls the listeners again once the pause is over (from the tick).
    pub(super) fn resume_accepting(&mut self, now: std::time::Instant) {
        if self.accept_paused_until.is_none_or(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        if self.accept_waiting {
            return; // resume_after_handoff will
        }
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, super::TOKEN_LISTEN + i as u64);
            let _ = self.epoll.modify(l, &mut ev);
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, proto: Service) {
        const FULL: (&str, &str) = ("server full", "server full, try again later");
        let now = super::control::unix_now();
        if let Some(b) = self.bans.banning_addr(peer.ip(), now) {
            let why = match b.reason.is_empty() {
                true => "you are banned".to_string(),
                false => format!("you are banned: {}", b.reason),
            };
            return self.refuse(stream, peer, proto, "banned", &why);
        }
        if self.clients.len() >= self.cfg.max_clients as usize {
            return self.refuse(stream, peer, proto, FULL.0, FULL.1);
        }
        if self.clients.from_ip(peer.ip()) >= self.cfg.max_per_ip {
            return self.refuse(
                stream,
                peer,
                proto,
                "too many connections from address",
                "too many connections from your address",
            );
        }
        let Some(slot) = self.clients.take_slot() else {
            return self.refuse(stream, peer, proto, FULL.0, FULL.1);
        };
        if let Err((e, stream)) = self.fork_child(slot, stream, peer, proto, Arrival::New) {
            self.clients.return_slot(slot);
            error!(event = "fork_failed", peer = %peer, error = %e, "cannot start a child for {peer}: {e}");
            let reason = match e.downcast_ref::<nix::errno::Errno>() {
                Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE) => {
                    "out of file descriptors"
                }
                _ => "cannot start a child",
            };
            self.refuse(stream, peer, proto, reason, "server busy, try again later");
        }
    }

    pub(super) fn refuse(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        reason: &str,
        why: &str,
    ) {
        self.stats.refused += 1;
        self.stats.refusals_by[super::refusal_label(reason)] += 1;
        warn!(event = "refused", peer = %peer, reason, "refused {peer}: {reason}");
        let _ = stream.set_nonblocking(true);
        // A TLS client is closed without a word: the master speaks no TLS.
        let line = match (service.proto, service.tls) {
            (_, true) => String::new(),
            (Proto::Line, false) => protocol::line::refusal(why),
            (Proto::Irc, false) => protocol::irc::refusal(why),
        };
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn configure_socket(&self, stream: &TcpStream) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        setsockopt(stream, sockopt::SndBuf, &CLIENT_SNDBUF)?;
        if self.cfg.keepalive > 0 {
            setsockopt(stream, sockopt::KeepAlive, &true)?;
            // A vanished peer (no FIN, no RST) is dropped after `keepalive`
            // idle seconds plus 3 unanswered probes; TCP_USER_TIMEOUT gives
            // the same bound when data to it stays unacknowledged.
            let idle = self.cfg.keepalive;
            let interval = idle.min(10);
            setsockopt(stream, sockopt::TcpKeepIdle, &idle)?;
            setsockopt(stream, sockopt::TcpKeepInterval, &interval)?;
            setsockopt(stream, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
            let give_up_ms = (idle + interval * KEEPALIVE_PROBES).saturating_mul(1000);
            setsockopt(stream, sockopt::TcpUserTimeout, &give_up_ms)?;
        }
        Ok(())
    }

    /// Forks the child for a client in `slot`: a new one, or one a
    /// previous master left (`arrival`, see [`super::handover`]). On
    /// failure (no fds, no processes left) nothing was started and the
    /// stream comes back, so that the client can be told.
    pub(super) fn fork_child(
        &mut self,
        slot: usize,
        stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        arrival: Arrival,
    ) -> Result<(), (anyhow::Error, TcpStream)> {
        let started = std::time::Instant::now();
        let proto = service.proto;
        if let Err(e) = self.configure_socket(&stream) {
            return Err((e.into(), stream));
        }
        let pair = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        );
        let (mine, theirs) = match pair {
            Ok(p) => p,
            Err(e) => return Err((e.into(), stream)),
        };
        let resumed = match &arrival {
            Arrival::Resume { rec, .. } => Some(rec),
            _ => None,
        };
        let mut history = [0u64; HISTORY_MAX];
        let (mut history_len, mut live_from) = (0, 0);
        let (id, serial, nick) = match resumed {
            // The previous child's id, ring and log cursor go on.
            Some(rec) => (rec.id, rec.serial, rec.nick.clone()),
            None => {
                let ctl = self.region.control(slot);
                let gen = self.region.next_gen();
                // The previous owner of the slot has been reaped: nobody
                // else writes here.
                ctl.gen.store(gen, SeqCst);
                ctl.consumed.store(0, SeqCst);
                ctl.evicted.store(0, SeqCst);
                let hdr = self.region.slot_header(slot);
                hdr.head.store(0, SeqCst);
                hdr.sent.store(0, SeqCst);
                // Start after everything appended so far, published so the
                // child never sees a head behind its cursor; a newcomer
                // first reads the room's recent lines, from the first of
                // them (the log keeps them while its cursor is there).
                live_from = self.relay.publish();
                if matches!(arrival, Arrival::New) {
                    history_len = self
                        .relay
                        .history(self.cfg.history_lines as usize, &mut history);
                }
                let start = if history_len > 0 {
                    history[0]
                } else {
                    live_from
                };
                hdr.cursor.store(start, SeqCst);
                let serial = self.stats.connects + 1;
                // Users cannot choose guest-* nicks, and serials never repeat.
                (gen << 32 | slot as u64, serial, format!("guest-{serial}"))
            }
        };
        self.region.slot_header(slot).ready_ns.store(0, SeqCst);
        self.region.slot_header(slot).own_fds.store(0, SeqCst);
        let online = self.clients.in_room() + 1;
        // The greeting waits in the child's control socket before the fork:
        // it comes before anything else the child reads there or relays, and
        // the child needs nothing the master allocated (see crate::arena).
        let setup = Setup {
            server: self.cfg.server_name.clone(),
            channel: self.cfg.irc_channel.clone(),
            topic: self.cfg.topic.clone(),
            motd: self.cfg.motd.clone(),
            online,
        };
        let greeting = match &arrival {
            Arrival::New => Event::new(Kind::Setup, &nick, &setup.to_text()).encode(),
            Arrival::Resume { rec, missed } => {
                let mut flags = 0;
                if rec.in_room {
                    flags |= crate::protocol::event::RESUME_JOINED;
                }
                if *missed {
                    flags |= crate::protocol::event::RESUME_MISSED;
                }
                Event::new(Kind::Resume, &nick, &setup.to_text())
                    .with_flags(flags)
                    .encode()
            }
            Arrival::Fresh => {
                use crate::protocol::event::{RESUME_JOINED, RESUME_MISSED};
                Event::new(Kind::Resume, &nick, &setup.to_text())
                    .with_flags(RESUME_JOINED | RESUME_MISSED)
                    .encode()
            }
        };
        // A TLS child is first told the certificate chain (never the key).
        let offer = match (&self.tls, service.tls) {
            (_, false) => Vec::new(),
            (Some(t), true) => ipc::frames(ipc::OFFER, &t.offer_bytes),
            (None, true) => return Err((anyhow!("TLS is not set up"), stream)),
        };
        for msg in offer.iter().chain(&ipc::frames(ipc::EVENT, &greeting)) {
            match ipc::send_raw(mine.as_fd(), msg) {
                Ok(true) => {}
                Ok(false) => return Err((anyhow!("control socket full"), stream)),
                Err(e) => return Err((e.into(), stream)),
            }
        }
        // Plain values, on this stack: the child inherits them as they are.
        let spec = Spec {
            slot,
            client_id: id,
            proto,
            tls: service.tls,
            handshake_timeout: Duration::from_secs_f64(self.cfg.tls_handshake_timeout),
            max_line: match proto {
                Proto::Line => self.cfg.max_line,
                Proto::Irc => protocol::irc::MAX_LINE,
            },
            keepalive: self.cfg.keepalive,
            registration_timeout: Duration::from_secs_f64(self.cfg.registration_timeout),
            max_sendq: self.cfg.max_sendq,
            flood_burst: self.cfg.flood_burst,
            flood_rate: self.cfg.flood_rate,
            line_timeout: (self.cfg.line_timeout > 0.0)
                .then(|| Duration::from_secs_f64(self.cfg.line_timeout)),
            carried: self.keep.is_some() && !service.tls,
            resumed: resumed.is_some(),
            history,
            history_len,
            live_from,
            started,
        };
        // The sockets at low fd numbers, for a fork that shares the fd table
        // (see super::handoff); else a plain fork.
        let cut = self.handoff.as_ref().map_or(0, |h| h.cut());
        let pair = self
            .handoff
            .as_mut()
            .and_then(|h| h.place(slot, stream.as_fd(), theirs.as_fd()));
        // SAFETY: the master is single-threaded (fork_bare's contract); the
        // child only runs `child::setup` and `child::run` and leaves through
        // `_exit`, never returning into the master's code. Sharing the fd
        // table: the child touches no fd before it has its own.
        let forked = match unsafe { fork_bare(pair.is_some()) } {
            Ok(f) => f,
            Err(e) => {
                if let Some(h) = self.handoff.as_mut() {
                    h.release(|s| s == slot);
                }
                return Err((e.into(), stream));
            }
        };
        if !matches!(forked, ForkResult::Child) {
            match pair {
                Some(_) => self.stats.forks_shared += 1,
                None => self.stats.forks_copied += 1,
            }
        }
        match forked {
            ForkResult::Child => {
                let (stream, theirs) = match pair {
                    None => (stream, theirs),
                    Some(p) => {
                        // First of all: a table of its own, without the
                        // master's thousands of fds.
                        child::setup::own_fd_table(cut);
                        // The originals are not in this table; the pair's
                        // copies are this child's.
                        std::mem::forget(stream);
                        std::mem::forget(theirs);
                        // SAFETY: the pair's fds are open in this table and
                        // nothing else here refers to them.
                        unsafe {
                            (
                                TcpStream::from_raw_fd(p.client),
                                OwnedFd::from_raw_fd(p.ctl),
                            )
                        }
                    }
                };
                // Before anything allocates: the arena is not mapped here.
                crate::arena::leave();
                let (region, own) = child::setup::confine_memory(self.region, slot, spec.max_sendq);
                // Told through the slot at its new place (a write at the old
                // one would cost a page-table page).
                if pair.is_some() {
                    region.slot_header(slot).own_fds.store(1, SeqCst);
                }
                let jail = child::setup::Jail {
                    master: self.pid,
                    filter: &self.child_filter,
                    carried: spec.carried,
                };
                let wake = std::os::fd::AsRawFd::as_raw_fd(&self.wake);
                let title = format!("chatd: client {peer}");
                let p =
                    child::setup::prepare(jail, OwnedFd::from(stream), theirs, wake, own, &title);
                let client = TcpStream::from(p.client);
                let (ctl, wake, epoll, note) = (p.ctl, p.wake, p.epoll, p.fault_note);
                // From here on, nothing of this stack is used.
                child::stack::enter(p.leave, move || {
                    child::run(region, spec, client, ctl, wake, epoll, note)
                })
            }
            ForkResult::Parent { child: pid } => {
                drop(theirs);
                // A plain client's socket goes to systemd's fd store, so
                // that it outlives this master (see super::handover); one
                // a previous master stored is there already.
                if spec.carried && resumed.is_none() {
                    self.keep_socket(id, stream.as_fd());
                }
                drop(stream);
                let watched = self
                    .epoll
                    .add(&mine, EpollEvent::new(EpollFlags::EPOLLIN, id));
                let mut c = new_client(slot, id, serial, pid, peer, nick.clone(), service, mine);
                c.relayed_at_join = self.stats.relayed;
                if let Some(rec) = resumed {
                    (c.in_room, c.registered, c.since_unix) =
                        (rec.in_room, rec.registered, rec.since);
                    c.muted = super::state::mute_from(rec.muted, super::control::unix_now());
                } else if matches!(arrival, Arrival::Fresh) {
                    (c.in_room, c.registered) = (true, true);
                }
                if let Err(e) = watched {
                    // The child cannot be heard: end it; the reaper cleans up.
                    error!(event = "fork_failed", peer = %peer, error = %e, "cannot watch the child for {peer}: {e}");
                    c.ctl_open = false;
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                self.clients.insert(c);
                if resumed.is_none() {
                    self.stats.connects += 1;
                }
                self.save_client(slot);
                match &arrival {
                    Arrival::New => info!(
                        event = "connect",
                        client = serial,
                        pid = pid.as_raw(),
                        peer = %peer,
                        protocol = ?proto,
                        tls = service.tls,
                        nick = %nick,
                        "{nick} connected from {peer} ({service})"
                    ),
                    _ => info!(
                        event = "resume",
                        client = serial,
                        pid = pid.as_raw(),
                        peer = %peer,
                        protocol = ?proto,
                        nick = %nick,
                        "{nick} ({peer}, {service}) taken over from the previous master"
                    ),
                }
                // A plain line-protocol client is in the room at once; a
                // TLS one after its handshake and an IRC client once
                // registered (a Join request). A resumed one is where it was.
                let joins = match arrival {
                    Arrival::New => proto == Proto::Line && !service.tls,
                    Arrival::Fresh => true,
                    Arrival::Resume { .. } => false,
                };
                if joins {
                    self.announce(id, Event::new(Kind::Join, &nick, "").encode(), true);
                }
                Ok(())
            }
        }
    }
}

/// fork(2) as a bare `clone(SIGCHLD)` system call, without glibc's `fork`.
///
/// Why: glibc's `fork` takes and releases its internal locks around the
/// clone (the dynamic loader's lock, stdio's list lock, malloc's arena
/// locks) and so writes, in the master, pages that the new child already
/// shares. Each such write after a fork leaves every child forked before it
/// with a private copy: measured, 3 pages (12.8 KiB) per idle child, about
/// an eighth of its memory (ARCHITECTURE.md, "Memory: what an idle child
/// costs").
///
/// What glibc's `fork` does besides, and why chatd does not need it:
/// - it runs `pthread_atfork` handlers: neither chatd nor its crates
///   register any;
/// - it holds those locks so that a child of a multi-threaded process finds
///   them free: the master has one thread, so no lock is held at the clone;
/// - it records the child's thread id in glibc's thread descriptor: here
///   the child's copy keeps the master's. glibc (2.34 and later) asks the
///   kernel for the thread id where it signals the calling thread (`raise`,
///   `abort`), and the child never signals another thread, so the stale
///   value is never used.
///
/// # Safety
/// The caller must be single-threaded, and the child must not return into
/// code that assumes it is the parent (chatd's child ends in `_exit`).
///
/// With `share_fds` the child shares this process's fd table
/// (`CLONE_FILES`) until it takes one of its own (`super::handoff`): it must
/// touch no fd before.
unsafe fn fork_bare(share_fds: bool) -> nix::Result<ForkResult> {
    let flags = match share_fds {
        true => libc::SIGCHLD | libc::CLONE_FILES,
        false => libc::SIGCHLD,
    };
    // SAFETY: clone with SIGCHLD (and CLONE_FILES) is fork(2): a new process
    // with a copy of this one's memory, continuing on its own copy of this
    // stack (the null stack argument). No lock is held (single-threaded, by
    // contract).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as libc::pid_t),
        }),
    }
}

/// Ends the kernel's restartable-sequences bookkeeping for the master
/// (and so for every child it forks, which inherit the registration).
///
/// Why: glibc registers an `rseq` area in the thread descriptor of every
/// thread, and the kernel writes the current CPU number into it whenever
/// the thread resumes after being preempted or moved. For the master that
/// is a write to a page every child shares after every fork, and children
/// write it again themselves: one private page in every child, measured
/// with the pagemap script (4 KiB of 70). chatd does not use rseq (glibc
/// reads the area only in `sched_getcpu`, which chatd never calls; it then
/// falls back to the system call).
///
/// Returns whether an area was unregistered: false if glibc registered
/// none (an old kernel, `glibc.pthread.rseq=0`, or not glibc).
pub(super) fn stop_rseq() -> nix::Result<bool> {
    #[cfg(all(target_env = "gnu", target_arch = "x86_64"))]
    {
        /// glibc's signature for rseq on x86 (`RSEQ_SIG`).
        const RSEQ_SIG: u32 = 0x5305_3053;
        // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
        let off = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
        // SAFETY: as above.
        let size = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
        if off.is_null() || size.is_null() {
            return Ok(false);
        }
        // SAFETY: glibc (2.35+) exports these as `const ptrdiff_t` and
        // `const unsigned int`, set before main and never changed.
        let (off, size) = unsafe { (*(off as *const isize), *(size as *const u32)) };
        if size == 0 {
            return Ok(false);
        }
        let tp: usize;
        // SAFETY: reads the thread pointer, the first word of glibc's
        // thread control block on x86_64 (it points to itself).
        unsafe {
            std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
        };
        let area = tp.wrapping_add_signed(off);
        let mut last = nix::errno::Errno::EINVAL;
        // glibc 2.35-2.39 registers 32 bytes whatever `__rseq_size` says;
        // later versions register the size they export.
        for len in [32, size as usize] {
            // SAFETY: unregistering the area glibc registered for this
            // thread; the kernel only checks the arguments and stops
            // writing to it.
            let r = unsafe { libc::syscall(libc::SYS_rseq, area, len as u32, 1u32, RSEQ_SIG) };
            if r == 0 {
                return Ok(true);
            }
            last = nix::errno::Errno::last();
        }
        Err(last)
    }
    #[cfg(not(all(target_env = "gnu", target_arch = "x86_64")))]
    Ok(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rseq_is_unregistered_once() {
        // On a thread of its own: glibc registers an area per thread.
        std::thread::spawn(|| match super::stop_rseq() {
            Ok(true) => {
                let again = super::stop_rseq();
                assert_eq!(again, Err(nix::errno::Errno::EINVAL), "unregistered twice");
            }
            Ok(false) => eprintln!("glibc registered no rseq area here; nothing to check"),
            Err(e) => panic!("cannot unregister rseq: {e}"),
        })
        .join()
        .unwrap();
    }
}
