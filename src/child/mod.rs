//! The child: one process per client, forked by the master.
//!
//! After [`setup`] has prepared the process, [`run`] is the child's loop:
//! it frames its client's lines and hands them to the client's protocol
//! session ([`crate::protocol::Session`]: the line protocol or IRC; the loop
//! does not care which), appends what the session asks for to its own
//! slot's ring ([`crate::shm::ring`]); it renders new relay-log entries from
//! the other clients through the same session ([`crate::shm::log`]); and it
//! sleeps in
//! `epoll_wait` on three fds: the client socket, the control socket, and the
//! wake-up eventfd the master writes once per published batch (one write
//! wakes every child; see ARCHITECTURE.md, "Wake-ups").
//!
//! The child never logs: everything worth logging reaches the master (the
//! reason it leaves travels as a `Quit` ring entry), so one process owns the
//! journal connection.

pub mod conn;
pub mod flood;
pub mod image;
pub mod setup;
pub mod stack;

use crate::ipc;
use crate::master::request::private_payload;
use crate::protocol::event::Event;
use crate::protocol::irc::Irc;
use crate::protocol::line::Line;
use crate::protocol::lines::{Input, LineReader};
use crate::protocol::{Ask, Leave, Proto, Session};
use crate::shm::log::{LogError, LogReader};
use crate::shm::ring::{entry_size, Kind, RingWriter};
use crate::shm::{Region, HISTORY_MAX};
use crate::tls::remote::{self, Mailbox};
use conn::Conn;
use flood::TokenBucket;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the master decided for this client before forking: plain
/// values, nothing on the heap (the greeting waits in the control socket).
#[derive(Clone, Copy)]
pub struct Spec {
    pub slot: usize,
    pub client_id: u64,
    /// The protocol the client's listener speaks.
    pub proto: Proto,
    /// Whether the listener speaks TLS (the master's `OFFER` comes first).
    pub tls: bool,
    /// TLS: how long the handshake may take.
    pub handshake_timeout: Duration,
    pub max_line: usize,
    /// IRC: idle seconds before the server pings the client (0: never).
    pub keepalive: u32,
    /// IRC: how long the client may take to register.
    pub registration_timeout: Duration,
    pub max_sendq: usize,
    pub flood_burst: u32,
    pub flood_rate: f64,
    /// Longest time a line may take to arrive (slowloris); None: no limit.
    pub line_timeout: Option<Duration>,
    /// The client's socket is in systemd's fd store: if the master goes
    /// away, hand the client over to the next one instead of closing it
    /// (see `crate::master::handover`).
    pub carried: bool,
    /// This child takes over from a previous master's child: its ring may
    /// hold that child's unread input (`Carry`), which comes first.
    pub resumed: bool,
    /// A newcomer's history: the log positions of the room's recent lines
    /// (the first `history_len`; the child's cursor starts at the first),
    /// and where its live part begins.
    pub history: [u64; HISTORY_MAX],
    pub history_len: usize,
    pub live_from: u64,
    /// When the master began to start this child (its set-up time, for
    /// the metrics, runs from here to the first turn of the loop).
    pub started: Instant,
}

/// Bytes read from the client at a time, besides room for one whole line.
/// (2048 saved a page per child but made a timing-sensitive test fail; see
/// ARCHITECTURE.md, "Memory: what an idle child costs".)
const READ_CHUNK: usize = 4096;
/// Longest `/quit` reason forwarded.
const MAX_REASON: usize = 128;
/// Ring space kept free so that the final `Quit` entry always fits.
const QUIT_RESERVE: u64 = 16 + MAX_REASON as u64;
/// A ring entry's payload beyond the line itself (a private message's
/// flags and target).
const ASK_OVERHEAD: usize = 2 + crate::config::MAX_NICK;
/// What a history line may take beyond its event's bytes once rendered
/// (time tag or mark, sender's prefix, command, channel).
const HISTORY_LINE_OVERHEAD: usize = 160;
/// How long the child keeps trying to deliver its last lines.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Minimum time between two flood-control notices.
const FLOOD_NOTICE_EVERY: Duration = Duration::from_secs(10);

/// Why the child ends; becomes the reason in "* alice left (reason)".
enum Exit {
    /// The session ends it: the client quit, or a protocol rule (ping
    /// timeout, registration timeout).
    Leave(Leave),
    /// The connection ended (EOF, reset, keepalive timeout).
    Closed(&'static str),
    /// The client stopped reading and its queue overflowed.
    SendQ,
    /// A line took longer than `line_timeout` to arrive.
    LineTimeout,
    /// The master asked us to close (kick or shutdown); text is queued.
    ClosedByMaster,
    /// TLS failed (handshake, timeout, bad record); the reason says how.
    Tls(String),
    /// The master is gone or the shared state is unusable.
    Fatal(&'static str),
    /// The master is gone and the client is in the fd store: hand it over.
    Handover,
}

struct Child {
    region: &'static Region,
    /// This child's slot header (shared memory it alone writes).
    mine: &'static crate::shm::SlotHeader,
    /// The client's protocol (line or IRC).
    session: Box<dyn Session>,
    /// What the session asked for, on its way into the ring.
    asks: Vec<Ask>,
    /// One relay-log payload at a time, for the session to render.
    scratch: Vec<u8>,
    conn: Conn,
    ctl: OwnedFd,
    /// TLS: what the signer kept from the control socket while it waited.
    mailbox: Option<Arc<Mailbox>>,
    /// TLS: when the handshake must be complete.
    handshake_by: Option<Instant>,
    lines: LineReader,
    ring: RingWriter,
    log: LogReader,
    epoll: Epoll,
    /// Keeps the wake-up eventfd open (registered in `epoll`).
    _wake: OwnedFd,
    /// epoll reported the control socket readable.
    ctl_ready: bool,
    flood: TokenBucket,
    last_flood_notice: Option<Instant>,
    sendq: Vec<u8>,
    sent: usize,
    /// The first pieces of a long control text (`ipc::MORE`), held until
    /// its last piece so that the text reaches the send queue whole.
    ctl_held: Vec<u8>,
    /// The master's trim epoch this child last acted on.
    trim_seen: u64,
    /// When the line being received began (see `Spec::line_timeout`), and
    /// which line that was ([`LineReader::ended`] then).
    partial_since: Option<(u64, Instant)>,
    spec: Spec,
    client_eof: bool,
    readable: bool,
    writable: bool,
}

/// Runs the child's loop for one client until it leaves, then exits the
/// process. Never returns. The greeting is the first control message;
/// `note` (fault-injection builds) follows it.
pub fn run(
    region: &'static Region,
    spec: Spec,
    client: TcpStream,
    ctl: OwnedFd,
    wake: OwnedFd,
    epoll: Epoll,
    note: Option<String>,
) -> ! {
    let session = match spec.proto {
        Proto::Line => Box::new(Line::new()) as Box<dyn Session>,
        Proto::Irc => Box::new(Irc::new(
            Instant::now(),
            spec.registration_timeout,
            Duration::from_secs(spec.keepalive.into()),
        )),
    };
    let mut child = Child {
        session,
        asks: Vec::new(),
        scratch: Vec::new(),
        lines: LineReader::new(spec.max_line, READ_CHUNK),
        ring: RingWriter::new(region, spec.slot),
        log: LogReader::new(region, spec.slot, spec.client_id),
        epoll,
        _wake: wake,
        ctl_ready: true,
        flood: TokenBucket::new(spec.flood_burst, spec.flood_rate),
        last_flood_notice: None,
        sendq: Vec::new(),
        sent: 0,
        ctl_held: Vec::new(),
        trim_seen: region.header().trim.load(Relaxed),
        partial_since: None,
        client_eof: false,
        readable: true,
        writable: true,
        region,
        mine: region.slot_header(spec.slot),
        conn: Conn::plain(client),
        ctl,
        mailbox: None,
        handshake_by: None,
        spec,
    };
    if spec.resumed {
        child.take_carried_input();
    }
    // The TLS offer, then the greeting, were queued on the control socket
    // before the fork.
    let started = match spec.tls {
        true => child.start_tls(),
        false => Ok(()),
    };
    let exit = match started.map(|()| child.handle_ctl()) {
        Err(e) => e,
        Ok(Some(e)) => e,
        Ok(None) => {
            if let Some(n) = note {
                child.sendq.extend_from_slice(n.as_bytes());
            }
            match child.replay_history() {
                Ok(()) => {
                    let took = child.spec.started.elapsed().as_nanos() as u64;
                    child.mine.ready_ns.store(took.max(1), Relaxed);
                    child.run()
                }
                Err(e) => e,
            }
        }
    };
    match exit {
        Exit::Handover => child.hand_over(),
        exit => child.finish(exit),
    }
    setup::exit(0)
}

impl Child {
    /// Reads the master's TLS offer (certificate chain, key schemes) and
    /// makes the connection a TLS server's.
    fn start_tls(&mut self) -> Result<(), Exit> {
        let fail = || Exit::Fatal("TLS set-up failed");
        let mut held = Vec::new();
        loop {
            match ipc::recv_append(self.ctl.as_fd(), &mut held) {
                Ok(ipc::Recv::Msg(ipc::OFFER)) => break,
                Ok(ipc::Recv::Msg(ipc::MORE)) => {}
                _ => return Err(fail()),
            }
        }
        let offer = crate::tls::Offer::decode(&held).ok_or_else(fail)?;
        let mailbox = Arc::new(Mailbox::default());
        let link = remote::Link {
            ctl: self.ctl.as_raw_fd(),
            epoll: self.epoll.0.as_raw_fd(),
            mailbox: mailbox.clone(),
        };
        let cfg = remote::server_config(&offer, link).map_err(|_| fail())?;
        self.conn.start_tls(cfg).map_err(|_| fail())?;
        self.mailbox = Some(mailbox);
        self.handshake_by = Some(Instant::now() + self.spec.handshake_timeout);
        Ok(())
    }

    /// Renders the room's recent lines (see `Spec::history`) after the
    /// greeting, before anything live. The newest lines that fit in half
    /// of `max_sendq` are kept, so that history never costs a newcomer its
    /// connection.
    fn replay_history(&mut self) -> Result<(), Exit> {
        let n = self.spec.history_len.min(HISTORY_MAX);
        if n == 0 {
            return Ok(());
        }
        let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
        let collect = |p: &[u8], time: u64, _: &mut Vec<u8>| lines.push((time, p.to_vec()));
        let positions = &self.spec.history[..n];
        let end = self.spec.live_from;
        match self
            .log
            .replay(positions, end, &mut Vec::new(), &mut self.scratch, collect)
        {
            Ok(_) => {}
            Err(LogError::Evicted) => return Err(Exit::SendQ),
            Err(LogError::Corrupt(_)) => return Err(Exit::Fatal("internal error")),
        }
        let mut budget = self.spec.max_sendq / 2;
        let mut first = lines.len();
        while first > 0 {
            let cost = lines[first - 1].1.len() + HISTORY_LINE_OVERHEAD;
            if cost > budget {
                break;
            }
            budget -= cost;
            first -= 1;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (time, payload) in &lines[first..] {
            if let Some(ev) = Event::decode(payload) {
                self.session.on_history(&ev, *time, now, &mut self.sendq);
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Exit {
        loop {
            if let Some(e) = self.handle_ctl() {
                return e;
            }
            let session = &mut self.session;
            let render = |p: &[u8], out: &mut Vec<u8>| {
                if let Some(ev) = Event::decode(p) {
                    session.on_event(&ev, out, &mut Vec::new());
                }
            };
            match self
                .log
                .drain_with(&mut self.sendq, &mut self.scratch, render)
            {
                Ok(_) => {}
                Err(LogError::Evicted) => return Exit::SendQ,
                Err(LogError::Corrupt(_)) => return Exit::Fatal("internal error"),
            }
            if self.sendq.len() - self.sent > self.spec.max_sendq {
                return Exit::SendQ;
            }
            self.check_trim();
            if let Err(e) = self.read_client() {
                return e;
            }
            // One clock read per turn of the loop, for every timer in it.
            let now = Instant::now();
            if let Some(e) = self.handle_lines(now) {
                return e;
            }
            if let Some(e) = self.check_line_timeout(now) {
                return e;
            }
            if let Some(e) = self.check_session_deadline(now) {
                return e;
            }
            if self.handshake_by.is_some_and(|t| now >= t) {
                return Exit::Tls("TLS handshake timeout".into());
            }
            if self.ring.publish() {
                self.notify_master();
            }
            if let Err(e) = self.flush() {
                return e;
            }
            if self.client_eof && self.lines.pending() == 0 {
                return Exit::Closed("connection closed");
            }
            if let Err(e) = self.wait(now) {
                return e;
            }
        }
    }

    /// Handles every waiting control message (when epoll said there are).
    fn handle_ctl(&mut self) -> Option<Exit> {
        if !std::mem::take(&mut self.ctl_ready) {
            return None;
        }
        loop {
            let kept = self.mailbox.as_ref().and_then(|m| m.pop());
            let got = match kept {
                Some(d) => Ok(ipc::append_datagram(&d, &mut self.ctl_held)),
                None => ipc::recv_append(self.ctl.as_fd(), &mut self.ctl_held),
            };
            match got {
                Ok(ipc::Recv::Empty) => return None,
                Ok(ipc::Recv::Eof) | Err(_) if self.spec.carried => return Some(Exit::Handover),
                Ok(ipc::Recv::Eof) | Err(_) => return Some(Exit::Fatal("master gone")),
                Ok(ipc::Recv::Msg(tag @ (ipc::EVENT | ipc::CLOSE))) => {
                    let held = std::mem::take(&mut self.ctl_held);
                    if let Some(ev) = Event::decode(&held) {
                        let s = &mut self.session;
                        s.on_event(&ev, &mut self.sendq, &mut self.asks);
                    }
                    self.ctl_held = held;
                    self.ctl_held.clear();
                    self.push_asks();
                    if tag == ipc::CLOSE {
                        return Some(Exit::ClosedByMaster);
                    }
                }
                Ok(ipc::Recv::Msg(_)) => {}
            }
        }
    }

    /// Appends what the session asked for to the ring, in order. Room for
    /// [`Session::max_asks`] entries was checked before a line was taken;
    /// what a reply makes the session ask (the join after registration)
    /// waits here if the ring is full, and no line is taken meanwhile.
    fn push_asks(&mut self) {
        let mut pushed = 0;
        for ask in &self.asks {
            let (private, list);
            let (kind, payload): (Kind, &[u8]) = match ask {
                Ask::Chat(t) => (Kind::Chat, t.as_bytes()),
                Ask::Action(t) => (Kind::Me, t.as_bytes()),
                Ask::Nick(n) => (Kind::Nick, n.as_bytes()),
                Ask::List(l) => {
                    list = [*l as u8];
                    (Kind::Who, &list)
                }
                Ask::Join => (Kind::Join, &[]),
                Ask::Part(r) => (Kind::Part, r.as_bytes()),
                Ask::Private {
                    flags,
                    target,
                    text,
                } => {
                    private = private_payload(*flags, target, text);
                    (Kind::Private, &private)
                }
            };
            if !self.ring.push(kind, payload) {
                break;
            }
            pushed += 1;
        }
        self.asks.drain(..pushed);
    }

    /// Runs the session's timers (IRC keepalive and registration).
    fn check_session_deadline(&mut self, now: Instant) -> Option<Exit> {
        let s = &mut self.session;
        let due = s.deadline()?;
        if due > now {
            return None;
        }
        s.on_deadline(now, &mut self.sendq).map(Exit::Leave)
    }

    /// Reads once from the client if there is room and input is not paused.
    fn read_client(&mut self) -> Result<(), Exit> {
        if !self.readable || self.client_eof || !self.may_take_line() {
            return Ok(());
        }
        let spare = self.lines.spare();
        if spare.is_empty() {
            return Ok(());
        }
        let got = self.conn.read(spare);
        if self.mailbox.as_ref().is_some_and(|m| m.take_waited()) {
            // The signer waited in epoll and may have taken this loop's
            // edge-triggered events: look at everything again.
            self.ctl_ready = true;
            self.readable = true;
            self.writable = true;
        }
        if self.conn.take_established() {
            self.handshake_by = None;
            self.writable = true;
            stack::release_unused();
            // A TLS line client enters the room once the handshake is
            // done (a failed handshake is nothing the room sees).
            if self.spec.proto == Proto::Line {
                self.asks.push(Ask::Join);
            }
        }
        match got {
            Ok(0) => {
                self.client_eof = true;
                // A last line without a newline still counts.
                if self.lines.pending() > 0 {
                    self.lines.spare()[0] = b'\n';
                    self.lines.filled(1);
                }
            }
            Ok(n) => self.lines.filled(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_exit(&e)),
        }
        Ok(())
    }

    /// Starts or stops the clock of a line being received, and ends a client
    /// whose line has taken longer than `line_timeout` (slowloris).
    fn check_line_timeout(&mut self, now: Instant) -> Option<Exit> {
        let limit = self.spec.line_timeout?;
        if !self.lines.in_partial_line() {
            self.partial_since = None;
            return None;
        }
        // A line that ended since the clock started, even in the same read
        // as this one's first byte, gives this one a clock of its own.
        let line = self.lines.ended();
        let since = match self.partial_since {
            Some((l, since)) if l == line => since,
            _ => {
                self.partial_since = Some((line, now));
                now
            }
        };
        (now - since >= limit).then_some(Exit::LineTimeout)
    }

    /// How long the child may sleep before the line timeout expires.
    fn line_deadline(&self, now: Instant) -> Option<Duration> {
        let (_, since) = self.partial_since?;
        let limit = self.spec.line_timeout?;
        Some((since + limit).saturating_duration_since(now))
    }

    /// Ring room the next line may need: its session's most entries.
    fn room_for_line(&mut self) -> u64 {
        let asks = self.session.max_asks() as u64;
        asks * entry_size(self.spec.max_line + ASK_OVERHEAD) + QUIT_RESERVE
    }

    /// Whether the next line may be processed now (ring room, nothing
    /// waiting for it, flood tokens).
    fn may_take_line(&mut self) -> bool {
        self.asks.is_empty()
            && self.ring.free() >= self.room_for_line()
            && self.flood.wait() == Duration::ZERO
    }

    /// Processes complete input lines while the ring and flood control allow.
    fn handle_lines(&mut self, now: Instant) -> Option<Exit> {
        self.push_asks();
        loop {
            if !self.asks.is_empty() || self.ring.free() < self.room_for_line() {
                return None;
            }
            if !self.flood.take(now) {
                if self.lines.pending() > 0 && self.flood_notice_due(now) {
                    self.session.on_flood(&mut self.sendq);
                }
                return None;
            }
            let session = &mut self.session;
            let leave = match self.lines.next_line() {
                None => {
                    self.flood.give_back();
                    return None;
                }
                Some(Input::TooLong) => {
                    session.on_too_long(self.spec.max_line, &mut self.sendq);
                    None
                }
                Some(Input::Line(raw)) => {
                    #[cfg(feature = "fault-injection")]
                    if let Some(name) = raw.strip_prefix(crate::sandbox::fault::COMMAND.as_bytes())
                    {
                        let name = String::from_utf8_lossy(name);
                        let note = match name.trim() {
                            n @ ("sign" | "sign-handshake") => {
                                self.ctl_ready = true;
                                fault_sign(n, &self.ctl, &self.epoll, &self.mailbox)
                            }
                            n => crate::sandbox::fault::trigger(n, self.region, self.spec.slot),
                        };
                        self.sendq.extend_from_slice(note.as_bytes());
                        continue;
                    }
                    if raw.iter().all(|b| b.is_ascii_whitespace()) {
                        self.flood.give_back();
                    }
                    session.on_line(raw, now, &mut self.sendq, &mut self.asks)
                }
            };
            self.push_asks();
            if let Some(l) = leave {
                return Some(Exit::Leave(l));
            }
        }
    }

    fn flood_notice_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_flood_notice
            .is_none_or(|t| now - t >= FLOOD_NOTICE_EVERY);
        if due {
            self.last_flood_notice = Some(now);
        }
        due
    }

    fn notify_master(&self) {
        // A full socket means the master has notifications waiting anyway.
        let _ = ipc::send_raw(self.ctl.as_fd(), &[ipc::NOTIFY]);
    }

    /// Writes queued output with one syscall per wake.
    fn flush(&mut self) -> Result<(), Exit> {
        if !self.writable {
            return Ok(());
        }
        let wrote = if self.sent < self.sendq.len() {
            self.conn.write(&self.sendq[self.sent..])
        } else if self.conn.pending() {
            self.conn.flush_pending().map(|()| 0)
        } else {
            return Ok(());
        };
        match wrote {
            Ok(n) => {
                self.sent += n;
                // Its own counter, written by this process alone.
                let sent = &self.mine.sent;
                sent.store(sent.load(Relaxed) + n as u64, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_exit(&e)),
        }
        if self.sent == self.sendq.len() {
            // The capacity stays until the client is idle (see
            // release_idle_pages): shrinking now would leave the freed
            // pages dirty inside the allocator, out of release's reach.
            self.sendq.clear();
            self.sent = 0;
        } else if self.sent >= 64 * 1024 {
            self.sendq.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Sleeps in epoll_wait until the client, the master or a timer needs
    /// us. `now` is this turn's clock reading: a timeout computed from it
    /// is late by the turn's work at most (microseconds).
    fn wait(&mut self, now: Instant) -> Result<(), Exit> {
        let want_read = !self.client_eof;
        let can_take = self.may_take_line();
        let pending_lines = can_take && self.lines.has_line();
        if pending_lines || (self.readable && want_read && can_take) {
            return Ok(()); // more to do without sleeping
        }
        if self.writable && (self.sent < self.sendq.len() || self.conn.pending()) {
            return Ok(());
        }
        let flood = Some(self.flood.wait()).filter(|d| !d.is_zero());
        let session = self
            .session
            .deadline()
            .map(|t| t.saturating_duration_since(now));
        let handshake = self.handshake_by.map(|t| t.saturating_duration_since(now));
        let timeout = match [flood, self.line_deadline(now), session, handshake]
            .into_iter()
            .flatten()
            .min()
        {
            None => EpollTimeout::NONE,
            Some(d) => {
                EpollTimeout::try_from(d + Duration::from_millis(1)).unwrap_or(EpollTimeout::MAX)
            }
        };
        // No announcement is needed before sleeping: the wake-up eventfd is
        // edge-triggered and registered, so a batch published since the log
        // was last drained has already queued an event here.
        self.sleep(timeout).map_err(|_| Exit::Fatal("epoll failed"))
    }

    /// When the master says the room has gone quiet (the header's trim
    /// epoch changed), gives memory back if the send queue is empty and
    /// something is allocated to give.
    fn check_trim(&mut self) {
        let epoch = self.region.header().trim.load(Relaxed);
        if epoch != self.trim_seen {
            self.trim_seen = epoch;
            let holding = self.sendq.capacity() > 0
                || self.ctl_held.capacity() > 0
                || self.lines.is_allocated();
            if holding && self.sendq.is_empty() {
                self.release_idle_pages();
            }
        }
    }

    /// Gives the (empty) send queue's buffer back, and the input buffer if
    /// no partial line waits in it, and then the heap pages no live block
    /// needs, when the master's trim says the room is quiet.
    /// The queue is allocated again when next used. Without this, every
    /// child that once relayed a burst (a crowd joining, say) would keep
    /// that burst's pages for good.
    fn release_idle_pages(&mut self) {
        self.sendq = Vec::new();
        if self.ctl_held.is_empty() {
            self.ctl_held = Vec::new();
        }
        self.lines.release();
        crate::arena::give_back();
        stack::release_unused();
    }

    /// One `epoll_wait`: records what became readable or writable.
    fn sleep(&mut self, timeout: EpollTimeout) -> nix::Result<()> {
        let mut events = [EpollEvent::empty(); 3];
        let n = match self.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                setup::TOKEN_CTL => self.ctl_ready = true,
                setup::TOKEN_CLIENT => {
                    let f = ev.events();
                    let gone = EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                    if f.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | gone) {
                        self.readable = true;
                    }
                    if f.intersects(EpollFlags::EPOLLOUT | gone) {
                        self.writable = true;
                    }
                }
                _ => {} // the wake-up: the loop re-checks the log anyway.
            }
        }
        Ok(())
    }

    /// Announces the departure to the master, sends the last line and exits.
    fn finish(&mut self, exit: Exit) {
        let plain: Option<String> = match &exit {
            Exit::Closed(r) | Exit::Fatal(r) => Some(r.to_string()),
            Exit::Tls(r) => Some(r.clone()),
            _ => None,
        };
        let leave = match exit {
            Exit::Leave(l) => Some(l),
            Exit::SendQ => {
                // Drop what is queued, but finish the line already started.
                let keep = match self.sendq[self.sent..].iter().position(|&b| b == b'\n') {
                    Some(i) if self.sent > 0 && self.sendq[self.sent - 1] != b'\n' => {
                        self.sent + i + 1
                    }
                    _ => self.sent,
                };
                self.sendq.truncate(keep);
                Some(Leave::Error(
                    "SendQ exceeded: you were not reading; disconnecting".into(),
                ))
            }
            Exit::LineTimeout => {
                let secs = self.spec.line_timeout.unwrap_or_default().as_secs_f64();
                Some(Leave::Error(format!(
                    "line timeout: no end of line within {secs} s; disconnecting"
                )))
            }
            _ => None,
        };
        let reason: String = exit_reason(&leave).or(plain).unwrap_or_default();
        if !reason.is_empty() {
            let mut r = reason.as_bytes();
            if r.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                r = &r[..cut];
            }
            if self.ring.push(Kind::Quit, r) && self.ring.publish() {
                self.notify_master();
            }
        }
        if let Some(l) = &leave {
            self.session.farewell(l, &mut self.sendq);
        }
        if self.conn.handshaking() {
            // Nothing queued can be sent without a session.
            self.sendq.clear();
            self.sent = 0;
        }
        self.flush_all(Instant::now() + FINAL_FLUSH);
        self.conn.close();
    }

    /// Writes everything queued, waiting for the client to read until
    /// `deadline`. True if all of it went out.
    fn flush_all(&mut self, deadline: Instant) -> bool {
        self.writable = true;
        while self.sent < self.sendq.len() || self.conn.pending() {
            if self.flush().is_err() {
                return false;
            }
            if self.writable {
                continue; // a partial write: try the rest at once
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // The socket is full (EAGAIN): its next EPOLLOUT edge, or the
            // deadline. Other events just bring another try.
            let t = EpollTimeout::try_from(left).unwrap_or(EpollTimeout::MAX);
            if self.sleep(t).is_err() {
                return false;
            }
        }
        true
    }

    /// The master is gone and the client's socket is in systemd's fd
    /// store: stop reading, write out every line already rendered (whole
    /// lines: the queue holds nothing else), leave the input not yet
    /// handled in the ring (`Carry`) and mark the stop clean (`Handover`),
    /// then exit without closing the connection. The next master's child
    /// for this client starts at this child's log cursor. If the client
    /// does not read its queue in time, or the ring is full, no
    /// `Handover` entry is written, and the next child tells the client
    /// that lines may have been missed.
    fn hand_over(&mut self) {
        if !self.flush_all(Instant::now() + FINAL_FLUSH) || !self.asks.is_empty() {
            return;
        }
        let rest = self.lines.unread().to_vec();
        for piece in rest.chunks(crate::shm::ring::MAX_PAYLOAD) {
            if !self.ring.push(Kind::Carry, piece) {
                return;
            }
        }
        if self.ring.push(Kind::Handover, &[]) {
            self.ring.publish();
        }
    }

    /// A resumed child: the previous child's unread input comes before
    /// anything read from the socket.
    fn take_carried_input(&mut self) {
        let r = self.region;
        let slot = self.spec.slot;
        let Ok(h) =
            crate::shm::ring::handed_over(r.ring(slot), r.slot_header(slot), r.control(slot))
        else {
            return;
        };
        let spare = self.lines.spare();
        let n = h.carry.len().min(spare.len());
        spare[..n].copy_from_slice(&h.carry[..n]);
        self.lines.filled(n);
    }
}

/// The reason the master records and the room sees, for a session's leave.
fn exit_reason(leave: &Option<Leave>) -> Option<String> {
    leave.as_ref().map(|l| match l {
        Leave::Quit(r) => r.clone(),
        Leave::Error(e) => e.split(':').next().unwrap_or(e).to_string(),
    })
}

/// `/fault sign` and `/fault sign-handshake` (fault-injection builds): asks
/// the master for a signature as a compromised child would, over a message
/// that is not a handshake's, or one that is (a second request after the
/// handshake's). The master must kill this process.
#[cfg(feature = "fault-injection")]
fn fault_sign(name: &str, ctl: &OwnedFd, epoll: &Epoll, mailbox: &Option<Arc<Mailbox>>) -> String {
    let mut msg = vec![b' '; 64];
    msg.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    msg.extend_from_slice(&[0x5a; 32]);
    if name == "sign" {
        msg = b"please sign this for me".to_vec();
    }
    let link = remote::Link {
        ctl: ctl.as_raw_fd(),
        epoll: epoll.0.as_raw_fd(),
        mailbox: mailbox.clone().unwrap_or_default(),
    };
    let scheme = rustls::SignatureScheme::ECDSA_NISTP256_SHA256;
    let got = remote::ask_master(&link, scheme, &msg);
    format!("{}fault {name}: survived: {got:?}\n", crate::protocol::ERR)
}

/// Why a read or write error ends the child.
fn io_exit(e: &io::Error) -> Exit {
    match conn::tls_reason(e) {
        Some(r) => Exit::Tls(r),
        None => Exit::Closed(io_reason(e)),
    }
}

fn io_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ETIMEDOUT) => "connection timed out",
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "connection reset",
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
            "peer unreachable"
        }
        _ => "connection error",
    }
}
