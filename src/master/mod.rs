//! The master process: one thread, one epoll loop.
//!
//! The loop ([`Master::run`]) waits on the listening sockets, a signalfd
//! (SIGCHLD, SIGTERM, SIGINT, SIGHUP), a timerfd and one control socket per
//! child. Each turn it dispatches the ready events, then runs the relay
//! ([`relay`]: input rings → relay log) once, publishes the log and wakes the
//! children that sleep. Accepting and forking live in [`spawn`], the client
//! table in [`clients`], the sockets in [`listen`], the messages to systemd
//! in [`notify`]. [`Master::new`] ends with the master's confinement
//! ([`confine`]), so no loop ever runs unconfined.

pub mod bans;
pub mod clients;
pub mod confine;
pub mod control;
pub mod crowd;
pub mod handoff;
pub mod handover;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod relay;
pub mod request;
pub mod spawn;
pub mod state;
pub mod topic;

use crate::config::Config;
use crate::ipc;
use crate::shm::Region;
use anyhow::{Context, Result};
use clients::Clients;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use notify::Notifier;
use relay::Relay;
use sd_notify::NotifyState;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

const TOKEN_SIGNAL: u64 = 1 << 62;
const TOKEN_TIMER: u64 = (1 << 62) + 1;
const TOKEN_WAKE_TIMER: u64 = (1 << 62) + 2;
const TOKEN_LISTEN: u64 = 1 << 61;
const TOKEN_CONTROL: u64 = (1 << 62) + 3;
/// How long a child told to close may linger before SIGKILL.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How to reload the configuration on SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, crate::config::ConfigError>>;

/// Counters shown in the status line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub connects: u64,
    pub relayed: u64,
    pub kicked: u64,
    pub refused: u64,
    /// Kicks by reason, named by [`KICK_REASONS`].
    pub kicks_by: [u64; 3],
    /// Refusals by reason, named by [`REFUSAL_REASONS`].
    pub refusals_by: [u64; 7],
    /// Bytes written to clients whose slots are freed.
    pub bytes_out_gone: u64,
    /// Children's set-up times.
    pub setup: metrics::Histogram,
    /// Forks sharing the fd table (through hand-off slots), and copying it.
    pub forks_shared: u64,
    pub forks_copied: u64,
}

/// Why clients were kicked (metrics labels): a full send queue, an
/// operator's kick, a ban.
pub const KICK_REASONS: [&str; 3] = ["sendq", "operator", "ban"];
pub const KICK_SENDQ: usize = 0;
pub const KICK_OPERATOR: usize = 1;
pub const KICK_BAN: usize = 2;
/// Why connections were refused (metrics labels).
pub const REFUSAL_REASONS: [&str; 7] = [
    "full", "per_ip", "banned", "fds", "fork", "restart", "other",
];

/// The label of a refusal's logged reason.
pub fn refusal_label(reason: &str) -> usize {
    match reason {
        "server full" => 0,
        "too many connections from address" => 1,
        "banned" => 2,
        "out of file descriptors" => 3,
        "cannot start a child" => 4,
        r if r.starts_with("restarted") => 5,
        _ => 6,
    }
}

pub struct Master {
    cfg: Config,
    /// Joins and leaves of a large room, not announced one by one.
    folded: crowd::Folded,
    /// Low fd numbers a new child finds its sockets at (see `handoff`).
    handoff: Option<handoff::Handoff>,
    reload: Reloader,
    region: &'static Region,
    epoll: Epoll,
    listeners: Vec<listen::Listener>,
    signals: SignalFd,
    timer: TimerFd,
    /// One-shot: brings the loop back to re-check a held-back wake-up.
    wake_timer: TimerFd,
    wake_timer_armed: bool,
    /// Written once per published batch; every child waits on it (edge-
    /// triggered), so one write wakes them all.
    wake: nix::sys::eventfd::EventFd,
    timer_fast: bool,
    /// A spare fd, closed for a moment to refuse a client with a line when
    /// the fd limit is reached (see `spawn::shed_one`).
    reserve_fd: Option<std::os::fd::OwnedFd>,
    /// Listeners are not polled until then (accept failed for resources).
    accept_paused_until: Option<Instant>,
    /// Listeners are not polled until a hand-off slot is free.
    accept_waiting: bool,
    clients: Clients,
    relay: Relay,
    stats: Stats,
    pid: Pid,
    shutdown_at: Option<Instant>,
    last_status: Instant,
    /// The status counters last sent to systemd.
    sent_status: (usize, u64, u64),
    /// `$WATCHDOG_USEC`: ping at half of it.
    watchdog: Option<Duration>,
    last_ping: Instant,
    notifier: Notifier,
    /// Compiled once before the first fork; every child installs it.
    child_filter: seccompiler::BpfProgram,
    /// The certificate and key, when a listener speaks TLS.
    tls: Option<crate::tls::keys::Monitor>,
    /// Receives children's control messages.
    ctl_buf: Vec<u8>,
    /// The state file and fd store, under systemd (see [`handover`]).
    keep: Option<handover::Keep>,
    /// SIGUSR2: ending so that the next master takes the clients over.
    handing_over: bool,
    /// chatctl's socket (see [`control`]).
    control: Option<control::Control>,
    started: Instant,
    /// The topic the configuration file gave at the last (re)load.
    file_topic: String,
    /// Who may not connect (see [`bans`]).
    bans: bans::Bans,
}

impl Master {
    /// Sets up signals, the shared region, the listeners and the loop's fds,
    /// then confines the process as `plan` says (see [`confine`]).
    pub fn new(cfg: Config, reload: Reloader, plan: confine::Plan) -> Result<Master> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
        ] {
            mask.add(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("blocking signals")?;
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.context("ignoring SIGPIPE")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("signalfd")?;

        let (listeners, origin, mut kept) = listen::open(&cfg.listen_addrs())?;
        let control_fd = kept
            .iter()
            .position(|(n, _)| n == "control")
            .map(|i| kept.remove(i).1);
        let bans = open_bans(&cfg, &plan);
        let kept_topic = read_topic(&cfg);
        let control = control::Control::open(control_fd, &cfg.control_socket, &cfg.control_group)
            .unwrap_or_else(|e| {
                warn!(event = "control_unavailable", error = %format!("{e:#}"), "no control socket (chatctl): {e:#}");
                None
            });
        let capacity = cfg.max_clients as usize;
        let mut notifier = Notifier::from_env();
        // Under systemd, clients outlive this master (see handover).
        let keeping = notifier.enabled();
        let kept = handover::Kept::sort(kept, |n| notifier.remove_fd(n));
        let (region, keep, taken) = handover_state(capacity, keeping, kept, &mut notifier)?;
        let region: &'static Region = Box::leak(Box::new(region));

        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
        let wake = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .context("eventfd")?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd")?;
        let wake_timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd")?;
        epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))?;
        epoll.add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))?;
        epoll.add(
            &wake_timer,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE_TIMER),
        )?;
        if let Some(c) = &control {
            epoll.add(
                c.listener(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CONTROL),
            )?;
        }
        for (i, (l, service)) in listeners.iter().enumerate() {
            epoll.add(
                l,
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTEN + i as u64),
            )?;
            info!(
                event = "listen",
                address = %l.local_addr()?,
                protocol = ?service.proto,
                tls = service.tls,
                source = ?origin,
                "listening on {} ({service})", l.local_addr()?
            );
        }
        // Step 1 of crate::tls: pin the files' directories while they can
        // still be reached (before a chroot).
        // The files are read now, with the privileges chatd started with (a
        // key only root may read included); the key into a mapping no
        // child inherits.
        let tls_files = match listeners.iter().any(|(_, s)| s.tls) {
            true => {
                let src = crate::tls::keys::Sources::open(&cfg.tls_cert, &cfg.tls_key)?;
                let read = src.read()?;
                Some((src, read))
            }
            false => None,
        };
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        // Last of what the master keeps open: the hand-off slots lie above.
        let handoff = handoff::Handoff::new()
            .map_err(|e| warn!(event = "handoff", error = %e, "no hand-off slots ({e}); every fork copies the fd table"))
            .ok();
        crate::child::image::note();
        if let Err(e) = spawn::stop_rseq() {
            warn!(event = "rseq", error = %e, "cannot unregister rseq: {e}; each child keeps a page more");
        }
        let confined = plan.apply().context("confinement")?;
        crate::child::setup::install_panic_hook();
        // From here on the master's allocations (its client table above
        // all) go to an arena that forked children do not inherit.
        if let Err(e) = crate::arena::enter() {
            warn!(event = "arena", error = %e, "{e}; children will share the master's heap");
        }
        // Step 2: the key is read into memory no child inherits.
        let tls = match tls_files {
            Some((src, read)) => {
                let m = crate::tls::keys::Monitor::start(src, read)?;
                log_identity(&m, "loaded");
                Some(m)
            }
            None => None,
        };
        let mut m = Master {
            clients: Clients::new(capacity),
            relay: Relay::new(region),
            cfg,
            reload,
            region,
            epoll,
            listeners,
            signals,
            timer,
            wake_timer,
            wake_timer_armed: false,
            wake,
            timer_fast: true,
            reserve_fd: None,
            accept_paused_until: None,
            accept_waiting: false,
            stats: Stats::default(),
            folded: crowd::Folded::default(),
            handoff,
            pid: nix::unistd::getpid(),
            shutdown_at: None,
            last_status: Instant::now(),
            sent_status: (0, 0, 0),
            watchdog,
            last_ping: Instant::now(),
            notifier,
            child_filter: confined.child_filter,
            tls,
            ctl_buf: vec![0; ipc::MAX_MSG],
            keep,
            handing_over: false,
            control,
            started: Instant::now(),
            file_topic: String::new(),
            bans,
        };
        m.file_topic = m.cfg.topic.clone();
        if let Some(t) = kept_topic {
            m.cfg.topic = t;
        }
        m.set_timer(false)?;
        m.reserve_fd = Some(m.timer.as_fd().try_clone_to_owned().context("reserve fd")?);
        if let Some((clients, snap)) = taken {
            m.take_over(clients, snap);
        }
        Ok(m)
    }

    /// The master's loop. Returns when shutdown is complete.
    pub fn run(&mut self) -> Result<()> {
        let status = self.status_line();
        self.notifier
            .send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.sent_status = self.status_counters();
        if let Some(w) = self.watchdog {
            self.notifier.send(&[NotifyState::Watchdog]);
            info!(
                event = "watchdog",
                usec = w.as_micros() as u64,
                "systemd watchdog: pinging every {:?}",
                w / 2
            );
        }
        info!(
            event = "ready",
            pid = self.pid.as_raw(),
            max_clients = self.cfg.max_clients,
            "chatd ready"
        );
        // Rings of clients taken over may hold lines already.
        self.relay_turn();
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            // Children still starting in hand-off slots are checked every
            // millisecond, so that the master lets go of their sockets.
            let timeout = match self.handoff.as_ref().is_some_and(|h| h.busy()) {
                true => EpollTimeout::from(1u8),
                false => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.events())?;
            }
            self.release_handoffs();
            self.resume_after_handoff();
            self.relay_turn();
            if self.shutdown_at.is_some() && self.clients.is_empty() {
                info!(event = "stopped", "all clients gone; exiting");
                return Ok(());
            }
            if self.handover_done() {
                info!(
                    event = "handed_over",
                    clients = self.clients.online(),
                    "exiting; the clients wait for the next master"
                );
                return Ok(());
            }
        }
    }

    /// Frees the hand-off slots of children that have their own fd table
    /// or are gone (see `handoff`).
    pub(super) fn release_handoffs(&mut self) {
        let Some(h) = self.handoff.as_mut().filter(|h| h.busy()) else {
            return;
        };
        let (clients, region) = (&self.clients, self.region);
        h.release(|slot| {
            clients.get(slot).is_none_or(|c| c.reaped)
                || region
                    .slot_header(slot)
                    .own_fds
                    .load(std::sync::atomic::Ordering::SeqCst)
                    != 0
        });
    }

    fn dispatch(&mut self, token: u64, flags: EpollFlags) -> Result<()> {
        match token {
            TOKEN_SIGNAL => self.handle_signals(),
            TOKEN_TIMER => {
                let _ = self.timer.wait();
                self.tick();
                Ok(())
            }
            TOKEN_WAKE_TIMER => {
                // The relay turn after this dispatch re-checks the gate.
                let _ = self.wake_timer.wait();
                self.wake_timer_armed = false;
                Ok(())
            }
            TOKEN_CONTROL => {
                self.control_accept();
                Ok(())
            }
            t if (TOKEN_LISTEN..TOKEN_SIGNAL).contains(&t) => {
                self.accept_all((t - TOKEN_LISTEN) as usize);
                Ok(())
            }
            t if (control::CONN_TOKEN..TOKEN_LISTEN).contains(&t) => {
                self.control_io(t);
                Ok(())
            }
            id => {
                self.handle_ctl(id, flags);
                Ok(())
            }
        }
    }

    fn handle_signals(&mut self) -> Result<()> {
        while let Some(info) = self.signals.read_signal().context("reading signalfd")? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => self.begin_shutdown(s),
                Ok(Signal::SIGHUP) => {
                    let _ = self.reload_config();
                }
                Ok(Signal::SIGUSR2) => self.hand_over(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Collects every exited child.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            // SIGSYS: the child made a syscall outside its allowlist.
            let mut violation = false;
            let (pid, reason) = match status {
                WaitStatus::Exited(pid, 0) => (pid, None),
                WaitStatus::Exited(pid, code) => (pid, Some(format!("exited with status {code}"))),
                WaitStatus::Signaled(pid, Signal::SIGSYS, _) => {
                    violation = true;
                    let r = "killed by SIGSYS (sandbox violation)";
                    (pid, Some(r.to_string()))
                }
                WaitStatus::Signaled(pid, sig, _) => (pid, Some(format!("killed by {sig}"))),
                _ => continue,
            };
            let Some(slot) = self.clients.slot_of_pid(pid) else {
                continue;
            };
            let c = self.clients.get_mut(slot).unwrap();
            c.reaped = true;
            if violation {
                // Compromised, or a chatd bug: either way, say so loudly.
                warn!(
                    event = "security",
                    client = c.serial,
                    pid = pid.as_raw(),
                    peer = %c.peer,
                    nick = %c.nick,
                    reason = "seccomp violation",
                    "security: child {} (client {}, {}) killed by SIGSYS: it made a forbidden syscall",
                    pid,
                    c.serial,
                    c.peer
                );
            } else if let Some(r) = &reason {
                if self.shutdown_at.is_none() {
                    warn!(
                        event = "child_died",
                        client = c.serial,
                        pid = pid.as_raw(),
                        peer = %c.peer,
                        nick = %c.nick,
                        reason = %r,
                        "child {} {r}", pid
                    );
                }
            }
            // The leave notice waits until the ring is drained (relay), so
            // the last lines the client sent come before it.
            c.exit_reason = reason;
            self.relay.mark_ready(&mut self.clients, slot);
        }
    }

    /// Reads a child's control messages.
    fn handle_ctl(&mut self, id: u64, flags: EpollFlags) {
        let Some(c) = self.clients.by_id_mut(id) else {
            return;
        };
        let slot = c.slot;
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush_outbox(slot);
        }
        let c = self.clients.get_mut(slot).unwrap();
        // NOTIFY, the common case, is one byte; a SIGN request (TLS) at
        // most a page: received into a buffer kept for it, not zeroed on
        // every call.
        let buf = &mut self.ctl_buf;
        let mut notified = false;
        let mut closed = flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        let mut sign: Vec<Vec<u8>> = Vec::new();
        loop {
            match ipc::recv_msg(c.ctl.as_fd(), buf) {
                Ok(None) => break,
                Ok(Some(0)) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(Some(n)) if buf[0] == ipc::SIGN => sign.push(buf[1..n].to_vec()),
                Ok(Some(_)) => notified = true,
            }
        }
        for req in sign {
            self.answer_sign(slot, &req);
        }
        let c = self.clients.get_mut(slot).unwrap();
        if closed && c.ctl_open {
            c.ctl_open = false;
            let _ = self.epoll.delete(&c.ctl);
        }
        if notified || closed {
            self.relay.mark_ready(&mut self.clients, slot);
        }
    }

    /// Signs a TLS child's one handshake signature (step 4 of
    /// `crate::tls`), or kills the child: a second request, a request from
    /// a plain client, or a message that is not a handshake's is what a
    /// compromised child would send.
    fn answer_sign(&mut self, slot: usize, req: &[u8]) {
        let Some(c) = self.clients.get(slot) else {
            return;
        };
        let verdict = match (&self.tls, crate::tls::parse_sign_request(req)) {
            _ if !c.tls => Err("a signing request from a client without TLS"),
            (None, _) => Err("a signing request without a key"),
            (_, None) => Err("a malformed signing request"),
            (_, Some((_, msg))) if !crate::tls::is_handshake_message(msg) => {
                Err("a signing request that is not a handshake message")
            }
            _ if c.signed => Err("a second signing request"),
            (Some(t), Some((scheme, msg))) => t
                .identity
                .sign(scheme, msg)
                .ok_or("a signing request for a scheme the key cannot use"),
        };
        let (pid, serial, peer) = (c.pid, c.serial, c.peer);
        match verdict {
            Ok(sig) => {
                self.clients.get_mut(slot).unwrap().signed = true;
                self.send_ctl(slot, ipc::SIGNED, &sig);
            }
            Err(why) => {
                warn!(event = "sign_refused", client = serial, pid = pid.as_raw(), peer = %peer, reason = why, "killed the child of client {serial} ({peer}): {why}");
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }

    /// Sends a control message to a child (in pieces of at most
    /// `ipc::MAX_MSG`), queueing it if the socket is full.
    pub(crate) fn send_ctl(&mut self, slot: usize, tag: u8, body: &[u8]) {
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        if !c.ctl_open {
            return;
        }
        let was_idle = c.outbox.is_empty();
        c.outbox.extend(ipc::frames(tag, body));
        if was_idle {
            self.flush_outbox(slot);
        }
    }

    fn flush_outbox(&mut self, slot: usize) {
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        let was_waiting = !c.outbox.is_empty();
        while let Some(msg) = c.outbox.front() {
            match ipc::send_raw(c.ctl.as_fd(), msg) {
                Ok(true) => {
                    c.outbox.pop_front();
                }
                Ok(false) => break,
                Err(_) => {
                    c.outbox.clear();
                    break;
                }
            }
        }
        let want_out = !c.outbox.is_empty();
        if c.ctl_open && (want_out || was_waiting) {
            let mut f = EpollFlags::EPOLLIN;
            if want_out {
                f |= EpollFlags::EPOLLOUT;
            }
            let _ = self.epoll.modify(&c.ctl, &mut EpollEvent::new(f, c.id));
        }
    }

    fn begin_shutdown(&mut self, sig: Signal) {
        if self.shutdown_at.is_some() || self.handing_over {
            return;
        }
        let timeout = Duration::from_secs_f64(self.cfg.shutdown_timeout);
        info!(event = "shutdown", signal = %sig, clients = self.clients.len(), "shutting down");
        self.notifier.send(&[NotifyState::Stopping]);
        self.shutdown_at = Some(Instant::now() + timeout);
        for (l, _) in self.listeners.drain(..) {
            let _ = self.epoll.delete(&l);
        }
        let why = crate::protocol::event::Event::new(
            crate::protocol::event::Kind::Closing,
            "",
            "server shutting down",
        );
        let line = why.encode();
        for slot in self.clients.live_slots() {
            self.send_ctl(slot, ipc::CLOSE, &line);
        }
        // Tick often enough to meet the deadline precisely.
        let _ = self.set_timer(true);
    }

    /// SIGHUP or `chatctl reload`: the configuration file and the TLS
    /// pair again. Err says what failed (the running ones stay).
    fn reload_config(&mut self) -> Result<(), String> {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.notifier.send(&states);
        let mut failed = None;
        match (self.reload)() {
            Err(e) => {
                error!(event = "reload_failed", error = %e, "reload failed, keeping the running configuration: {e}");
                failed = Some(e.to_string());
            }
            Ok(mut new) => {
                if new.listen != self.cfg.listen || new.irc_listen != self.cfg.irc_listen {
                    warn!(
                        event = "reload_ignored",
                        key = "listen",
                        "listen and irc_listen cannot change at runtime; ignored until restart"
                    );
                    new.listen = self.cfg.listen.clone();
                    new.irc_listen = self.cfg.irc_listen.clone();
                }
                if new.max_clients as usize > self.clients.capacity() {
                    warn!(
                        event = "reload_ignored",
                        key = "max_clients",
                        "max_clients above {} needs a restart; using {}",
                        self.clients.capacity(),
                        self.clients.capacity()
                    );
                    new.max_clients = self.clients.capacity() as u32;
                }
                if new.tls_cert != self.cfg.tls_cert || new.tls_key != self.cfg.tls_key {
                    warn!(
                        event = "reload_ignored",
                        key = "tls_cert",
                        "tls_cert and tls_key name other files now; the files chatd started with are read again, the new names need a restart"
                    );
                }
                // The file's topic wins only when it changed: a topic set
                // with chatctl survives a reload for something else.
                let file_topic = new.topic.clone();
                if file_topic == self.file_topic {
                    new.topic = self.cfg.topic.clone();
                } else {
                    // What an operator set is no longer kept either.
                    let _ = self.keep_topic(&file_topic, &file_topic);
                }
                if file_topic != self.file_topic && new.topic != self.cfg.topic {
                    let ev = crate::protocol::event::Event::new(
                        crate::protocol::event::Kind::Topic,
                        "",
                        &new.topic,
                    );
                    self.relay.emit(0, ev.encode());
                }
                self.file_topic = file_topic;
                self.cfg = new;
                info!(event = "reload", "configuration reloaded");
            }
        }
        // Step 5 of crate::tls: read the pair again; a bad one keeps the old.
        if let Some(t) = &mut self.tls {
            match t.reload() {
                Ok(_) => log_identity(t, "reloaded"),
                Err(e) => {
                    error!(event = "tls_reload_failed", error = %e, "TLS reload failed, keeping the running certificate: {e}");
                    failed.get_or_insert(format!("TLS: {e}"));
                }
            }
        }
        self.notifier.send(&[NotifyState::Ready]);
        failed.map_or(Ok(()), Err)
    }

    /// Periodic work: deadlines, stalls, status.
    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(deadline) = self.shutdown_at {
            if now >= deadline {
                self.kill_all_and_reap();
            }
        }
        for slot in self.clients.live_slots() {
            let c = self.clients.get(slot).unwrap();
            if c.kill_at.is_some_and(|t| now >= t) && !c.reaped {
                warn!(
                    event = "kill",
                    client = c.serial,
                    pid = c.pid.as_raw(),
                    "child did not close in time; killing it"
                );
                let _ = kill(c.pid, Signal::SIGKILL);
                self.clients.get_mut(slot).unwrap().kill_at = None;
            }
        }
        self.relay_check_stall(now);
        self.trim_if_quiet(now);
        self.sum_up_if_due(now);
        self.resume_accepting(now);
        self.notify_tick(now);
        let fast = self.shutdown_at.is_some()
            || self.relay.is_blocked()
            || self.accept_paused_until.is_some();
        if fast != self.timer_fast {
            let _ = self.set_timer(fast);
        }
    }

    /// STATUS= when the line changed (or every 5 s), WATCHDOG=1 at half
    /// of `$WATCHDOG_USEC`. Runs on every timer tick, so a stuck loop stops
    /// the pings and systemd notices.
    fn notify_tick(&mut self, now: Instant) {
        if !self.notifier.enabled() {
            return;
        }
        if let Some(w) = self.watchdog {
            if now.duration_since(self.last_ping) >= w / 2 {
                self.last_ping = now;
                self.notifier.send(&[NotifyState::Watchdog]);
            }
        }
        let counters = self.status_counters();
        if counters != self.sent_status
            || now.duration_since(self.last_status) >= Duration::from_secs(5)
        {
            self.last_status = now;
            self.sent_status = counters;
            let s = self.status_line();
            self.notifier.send(&[NotifyState::Status(&s)]);
        }
    }

    /// What the status line shows: clients online, relayed, kicked.
    fn status_counters(&self) -> (usize, u64, u64) {
        (self.clients.online(), self.stats.relayed, self.stats.kicked)
    }

    pub fn status_line(&self) -> String {
        let (online, relayed, kicked) = self.status_counters();
        format!("{online} clients, {relayed} messages relayed, {kicked} kicked")
    }

    fn kill_all_and_reap(&mut self) {
        let slots = self.clients.live_slots();
        warn!(
            event = "shutdown_timeout",
            clients = slots.len(),
            "shutdown timeout; killing remaining children"
        );
        for &slot in &slots {
            let c = self.clients.get(slot).unwrap();
            if !c.reaped {
                let _ = kill(c.pid, Signal::SIGKILL);
                let _ = waitpid(c.pid, None);
            }
        }
        for slot in slots {
            self.account_child(slot, true);
            if let Some(c) = self.clients.remove(slot) {
                self.forget_client(slot, c.id, c.tls);
            }
        }
    }

    /// Arms the one-shot wake-up timer unless it is already running.
    /// False if the timer cannot be set.
    fn arm_wake_timer(&mut self, after: Duration) -> bool {
        if self.wake_timer_armed {
            return true;
        }
        let armed = self.wake_timer.set(
            Expiration::OneShot(TimeSpec::from_duration(after.max(Duration::from_micros(1)))),
            TimerSetTimeFlags::empty(),
        );
        self.wake_timer_armed = armed.is_ok();
        self.wake_timer_armed
    }

    fn set_timer(&mut self, fast: bool) -> Result<()> {
        // Slow ticks still come often enough to ping the watchdog in time.
        let slow = self.watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
        });
        let period = if fast { Duration::from_millis(5) } else { slow };
        self.timer
            .set(
                Expiration::Interval(TimeSpec::from_duration(period)),
                TimerSetTimeFlags::empty(),
            )
            .context("timerfd_settime")?;
        self.timer_fast = fast;
        Ok(())
    }
}

/// The shared region and, under systemd, the state file: the ones a
/// previous master left if they check out (with the clients to take over),
/// else new ones, handed to the fd store.
#[allow(clippy::type_complexity)]
fn handover_state(
    capacity: usize,
    keeping: bool,
    mut kept: handover::Kept,
    notifier: &mut Notifier,
) -> Result<(
    Region,
    Option<handover::Keep>,
    Option<(Vec<(u64, std::os::fd::OwnedFd)>, Option<state::Snapshot>)>,
)> {
    let region = match kept.shm.take().filter(|_| keeping) {
        Some(fd) => Region::adopt(fd, capacity).map_err(|e| {
            warn!(event = "handover_rejected", part = "shared region", error = %e, "the previous master's shared region is unusable ({e}); starting a fresh one");
        }).ok(),
        None => None,
    };
    let adopted = region.is_some();
    let region = match region {
        Some(r) => r,
        None => {
            let (r, fd) =
                Region::create_kept(capacity).context("creating the shared memory region")?;
            if keeping {
                notifier.remove_fd(handover::SHM);
                notifier.store_fd(handover::SHM, fd.as_fd());
            }
            r
        }
    };
    if !keeping {
        return Ok((region, None, None));
    }
    let old = match kept.state.take() {
        Some(fd) => state::State::adopt(fd, capacity).map_err(|e| {
            warn!(event = "handover_rejected", part = "state", error = %e, "the previous master's state is unusable ({e}); its clients get fresh state");
        }).ok(),
        None => None,
    };
    let (st, snap) = match old {
        Some((st, snap)) if adopted => (st, Some(snap)),
        _ => {
            let st = state::State::create(capacity).context("creating the state file")?;
            notifier.remove_fd(handover::STATE);
            notifier.store_fd(handover::STATE, st.fd().as_fd());
            (st, None)
        }
    };
    let taken = (!kept.clients.is_empty() || snap.is_some()).then_some((kept.clients, snap));
    Ok((region, Some(handover::Keep { state: st }), taken))
}

/// The bans kept in `state_dir`; none kept (with a warning) if it cannot
/// be used. Run before confinement.
fn open_bans(cfg: &Config, plan: &confine::Plan) -> bans::Bans {
    if cfg.state_dir.as_os_str().is_empty() {
        return bans::Bans::default();
    }
    let owner = plan.user.as_ref().map(|u| (u.uid.as_raw(), u.gid.as_raw()));
    match bans::Bans::open(&cfg.state_dir, owner) {
        Ok((b, errors)) => {
            for e in errors {
                warn!(event = "bans_file", error = %e, "{}: {e}; skipped", cfg.state_dir.join(bans::FILE).display());
            }
            b
        }
        Err(e) => {
            warn!(event = "state_unavailable", error = %e, "cannot use state_dir {}: {e}; bans last until chatd stops", cfg.state_dir.display());
            bans::Bans::default()
        }
    }
}

/// The topic an operator set with chatctl, if `state_dir` keeps one that
/// still applies (see [`topic`]). Run before confinement.
fn read_topic(cfg: &Config) -> Option<String> {
    if cfg.state_dir.as_os_str().is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(cfg.state_dir.join(topic::FILE)).ok()?;
    topic::parse(&text, &cfg.topic)
}

/// Logs the certificate in use, and warns when it expires soon.
fn log_identity(m: &crate::tls::keys::Monitor, what: &str) {
    let id = &m.identity;
    let path = m.cert_path().display();
    info!(event = "tls", serial = %id.serial, subject = %id.subject, not_after = id.not_after, file = %path, "TLS certificate {what}: {} (serial {}) from {path}", id.subject, id.serial);
    if let Some(days) = id.expires_soon(crate::tls::keys::now_unix()) {
        warn!(event = "tls_expiring", serial = %id.serial, days, file = %path, "the TLS certificate {path} expires in {days} days");
    }
}
