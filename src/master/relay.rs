//! The relay: from the children's input rings to the relay log, and wake-ups.
//!
//! Each loop turn the master
//! 1. appends queued notices, then reads the rings of the slots that
//!    notified it, in notification order, validating every entry, turning
//!    chat into formatted lines and handling `/nick`, `/who` and quits;
//! 2. publishes the new log head once, and wakes every child with one
//!    write to the shared wake-up eventfd: one wake-up per batch, whatever
//!    the number of messages and children; but not while the children are
//!    still busy with the previous wake-up (the wake gate, below);
//! 3. frees the slots of children that are gone and fully drained.
//!
//! The wake gate: a wake-up costs every child a context switch and a send,
//! however few lines it brings, so the master holds a new wake-up back
//! - until every reader's cursor has passed the head of the previous one
//!   (the round is done; a straggler still behind the round before is not
//!   waited for), re-checking every [`WAKE_RECHECK`];
//! - in a busy room (the last wake-up announced [`BUSY_LINES`] or more),
//!   also until [`WAKE_GAP`] has passed since the last wake-up and
//!   [`BUSY_SETTLE`] since the first line held (a burst comes together);
//! - but never longer than [`WAKE_DEFER_MAX`] after the first line held.
//!
//! A quiet room (one line per wake-up) is woken at once. Published lines
//! are visible at once: a child still in the previous round copies them in
//! the same drain. See ARCHITECTURE.md, "Wake-ups".
//!
//! When the log is full (a reader is behind) the relay stops reading rings,
//! so senders' rings fill and their children stop reading their sockets:
//! TCP pushes back, nothing is dropped. A reader that holds the log up for
//! longer than `stall_timeout` is evicted ("SendQ exceeded").

use super::request::{validate, Request};
use super::Master;
use crate::config::MAX_LINE_LIMIT;
use crate::ipc;
use crate::protocol::event::{self, Event, Kind, List};
use crate::protocol::Ask;
use crate::shm::log::LogWriter;
use crate::shm::ring::{Corrupt, RingReader};
use crate::shm::{History, Region, HISTORY_MAX, LOG_BYTES};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest a line waits for its wake-up, whatever the gate says.
pub const WAKE_DEFER_MAX: Duration = Duration::from_millis(3);
/// Least time between two wake-ups in a busy room.
pub const WAKE_GAP: Duration = Duration::from_millis(2);
/// A wake-up that announced at least this many lines makes the room busy.
pub const BUSY_LINES: usize = 4;
/// In a busy room, how long a wake-up waits after the first line it holds,
/// for the lines that come in the same burst.
pub const BUSY_SETTLE: Duration = Duration::from_micros(600);
/// How long a room is quiet (no wake-up) before the children are told to
/// give back idle memory (`Master::trim_if_quiet`); the timer's tick
/// (1 s when idle) comes on top.
pub const TRIM_AFTER: Duration = Duration::from_secs(1);
/// How often a held-back wake-up re-checks the readers' cursors.
pub const WAKE_RECHECK: Duration = Duration::from_micros(100);

pub struct Relay {
    log: LogWriter,
    /// Log entries waiting for room, in order: (origin, time, payload).
    pending: VecDeque<(u64, u64, Vec<u8>)>,
    /// Where the room's recent lines are (in the region's header).
    history: &'static History,
    /// Slots whose rings may hold unread entries, in notification order.
    ready: VecDeque<usize>,
    blocked_since: Option<Instant>,
    /// Published entries whose sleepers have not been woken yet.
    unwoken: bool,
    /// The log head at the last wake-up: the round is done when every
    /// reader's cursor has reached it; and at the one before: a reader
    /// still behind that is a straggler (stopped, starved) and not waited for.
    woken_head: u64,
    prev_woken_head: u64,
    /// Since when a wake-up is held back (the wake gate).
    held_since: Option<Instant>,
    /// The reader that was behind at the last check: checked first.
    laggard: Option<usize>,
    /// When the children were last woken, and how many lines that wake-up
    /// announced: a busy room (several lines per wake-up) gets [`WAKE_GAP`].
    last_wake: Option<Instant>,
    lines_at_last_wake: usize,
    lines_since_wake: usize,
    /// The children were told to trim since the last wake-up.
    trimmed: bool,
    /// Wake-ups so far (metrics).
    wakeups: u64,
    payload: Vec<u8>,
}

impl Relay {
    pub fn new(region: &'static Region) -> Relay {
        Relay {
            log: LogWriter::new(region),
            pending: VecDeque::new(),
            history: &region.header().history,
            ready: VecDeque::new(),
            blocked_since: None,
            unwoken: false,
            woken_head: 0,
            prev_woken_head: 0,
            held_since: None,
            laggard: None,
            last_wake: None,
            lines_at_last_wake: 0,
            lines_since_wake: 0,
            trimmed: false,
            wakeups: 0,
            payload: Vec::with_capacity(MAX_LINE_LIMIT),
        }
    }

    /// Publishes what was appended; the position a new child starts from.
    pub fn publish(&mut self) -> u64 {
        self.unwoken |= self.log.publish();
        self.log.head()
    }

    /// Queues a line for every client but `origin` (0: for everyone).
    pub fn emit(&mut self, origin: u64, line: Vec<u8>) {
        self.lines_since_wake += 1;
        let time = unix_ms();
        if !self.pending.is_empty() || !self.append(origin, time, &line) {
            self.pending.push_back((origin, time, line));
        }
    }

    /// Appends one entry; a chat line's position goes into the history.
    fn append(&mut self, origin: u64, time: u64, payload: &[u8]) -> bool {
        let pos = self.log.head();
        if !self.log.append(origin, time, payload) {
            return false;
        }
        if event::is_history(payload) {
            let n = self.history.count.load(Relaxed);
            self.history.pos[n as usize % HISTORY_MAX].store(pos, Relaxed);
            self.history.count.store(n + 1, Relaxed);
        }
        true
    }

    /// The positions of the last `want` (at most [`HISTORY_MAX`]) chat
    /// lines the log still holds, oldest first, for a newcomer starting at
    /// the head; the log's tail moves back to the first of them, so that
    /// nothing is overwritten before the newcomer's cursor (which starts
    /// there) holds it. Positions from a previous master's header are
    /// checked like any: ascending, aligned, within the log's last lap.
    pub fn history(&mut self, want: usize, out: &mut [u64; HISTORY_MAX]) -> usize {
        let n = self.recent(want, out);
        if n > 0 && out[0] < self.log.tail() {
            self.log.set_tail(out[0]);
        }
        n
    }

    /// The positions of the last `want` chat lines the log still holds
    /// (see [`Relay::history`]), without touching the tail.
    fn recent(&self, want: usize, out: &mut [u64; HISTORY_MAX]) -> usize {
        let head = self.log.head();
        let count = self.history.count.load(Relaxed);
        let take = (want.min(HISTORY_MAX) as u64).min(count);
        let mut n = 0;
        let mut last = None;
        for i in count - take..count {
            let pos = self.history.pos[i as usize % HISTORY_MAX].load(Relaxed);
            let fresh = pos < head && head - pos <= LOG_BYTES as u64 && pos % 8 == 0;
            if !fresh {
                n = 0;
                last = None;
                continue;
            }
            // Out of order: the record is not to be trusted before it.
            if last.is_some_and(|l| pos <= l) {
                n = 0;
            }
            out[n] = pos;
            n += 1;
            last = Some(pos);
        }
        n
    }

    /// The log positions `[from, to)` that nothing will read before the
    /// master writes them again: everything outside what the readers have
    /// still to read (from the tail, as last set) and the recent lines a
    /// newcomer may be given (all [`HISTORY_MAX`] the header records,
    /// whatever `history_lines` says now), up to the head. For
    /// `Region::release_log`.
    pub fn unused_log(&self) -> (u64, u64) {
        let mut recent = [0u64; HISTORY_MAX];
        let n = self.recent(HISTORY_MAX, &mut recent);
        let head = self.log.head();
        let mut keep = self.log.tail();
        if n > 0 {
            keep = keep.min(recent[0]);
        }
        (head, keep + LOG_BYTES as u64)
    }

    /// Lets the queues' memory go once they are empty and much larger
    /// than a quiet room needs (after a crowd).
    pub fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending.shrink_to(16);
        }
        if self.ready.is_empty() {
            self.ready.shrink_to(64);
        }
    }

    pub fn mark_ready(&mut self, clients: &mut super::clients::Clients, slot: usize) {
        if let Some(c) = clients.get_mut(slot) {
            if !c.in_ready {
                c.in_ready = true;
                self.ready.push_back(slot);
            }
        }
    }

    /// Wake-ups of the children so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups
    }

    /// Bytes of the log that readers still need, and its size.
    pub fn log_fill(&self) -> (u64, u64) {
        (self.log.head() - self.log.tail(), LOG_BYTES as u64)
    }

    /// Whether the log is full and the relay is waiting for readers.
    pub fn is_blocked(&self) -> bool {
        self.blocked_since.is_some()
    }

    fn flush_pending(&mut self) -> bool {
        while let Some((origin, time, line)) = self.pending.pop_front() {
            if !self.append(origin, time, &line) {
                self.pending.push_front((origin, time, line));
                return false;
            }
        }
        true
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the clock alone says about a held-back wake-up.
#[derive(Debug, PartialEq, Eq)]
enum Clock {
    /// The first line held has waited [`WAKE_DEFER_MAX`]: wake now.
    Overdue,
    /// Time allows it: wake once the round is done.
    Ready,
    /// Come back after this long (never past the moment it is overdue).
    Wait(Duration),
}

/// The wake gate's timing: `held` is when the first line held arrived,
/// `last_wake` the last wake-up, `busy` whether that one announced
/// [`BUSY_LINES`] or more. A busy room waits [`WAKE_GAP`] after the last
/// wake-up and [`BUSY_SETTLE`] after the first line held; a quiet one not.
fn gate_clock(now: Instant, held: Instant, last_wake: Option<Instant>, busy: bool) -> Clock {
    let waited = now.duration_since(held);
    if waited >= WAKE_DEFER_MAX {
        return Clock::Overdue;
    }
    if !busy {
        return Clock::Ready;
    }
    let since_wake = last_wake.map_or(Duration::MAX, |t| now.duration_since(t));
    let left = WAKE_GAP
        .saturating_sub(since_wake)
        .max(BUSY_SETTLE.saturating_sub(waited));
    if left.is_zero() {
        Clock::Ready
    } else {
        Clock::Wait(left.min(WAKE_DEFER_MAX - waited))
    }
}

impl Master {
    /// One relay pass: rings → log, publish, wake, clean up.
    pub(super) fn relay_turn(&mut self) {
        let mut done = self.relay_pass();
        if !done && self.refresh_tail() {
            done = self.relay_pass();
        }
        if done {
            self.relay.blocked_since = None;
        } else if self.relay.blocked_since.is_none() {
            self.relay.blocked_since = Some(Instant::now());
            if !self.timer_fast {
                let _ = self.set_timer(true);
            }
        }
        self.relay.publish();
        if self.relay.unwoken {
            self.gate_wake();
        }
    }

    /// Wakes the children now if the gate allows it; otherwise holds the
    /// wake-up back and arms the wake timer to come back and check.
    ///
    /// The gate opens when the round of the last wake-up is done
    /// ([`Master::round_done`]) and, in a busy room (the last wake-up
    /// announced [`BUSY_LINES`] or more), [`WAKE_GAP`] has passed since it
    /// and [`BUSY_SETTLE`] since the first line held; or when the first
    /// line held back has waited [`WAKE_DEFER_MAX`].
    fn gate_wake(&mut self) {
        let now = Instant::now();
        let r = &mut self.relay;
        let held = *r.held_since.get_or_insert(now);
        let busy = r.lines_at_last_wake >= BUSY_LINES;
        let come_back = match gate_clock(now, held, r.last_wake, busy) {
            Clock::Overdue => None,
            Clock::Ready if self.round_done() => None,
            Clock::Ready => Some(WAKE_RECHECK.min(WAKE_DEFER_MAX - now.duration_since(held))),
            Clock::Wait(d) => Some(d),
        };
        // Without a timer to come back with, wake now rather than late.
        if come_back.is_none_or(|d| !self.arm_wake_timer(d)) {
            self.wake_now(now);
        }
    }

    fn wake_now(&mut self, now: Instant) {
        let r = &mut self.relay;
        r.last_wake = Some(now);
        r.lines_at_last_wake = std::mem::take(&mut r.lines_since_wake);
        r.trimmed = false;
        r.wakeups += 1;
        r.unwoken = false;
        r.held_since = None;
        r.prev_woken_head = r.woken_head;
        r.woken_head = r.log.head();
        self.wake_children();
    }

    /// Whether every reader that had finished the round before the last
    /// wake-up has drained the log up to the last wake-up. A reader still
    /// behind the round before (a stopped or starved child) is a straggler:
    /// it holds one round up by [`WAKE_DEFER_MAX`] at most, then no more.
    /// The reader found behind last time is checked first, so a round in
    /// progress costs O(1) to confirm.
    fn round_done(&mut self) -> bool {
        let (target, prev) = (self.relay.woken_head, self.relay.prev_woken_head);
        let behind = |m: &Master, slot: usize| {
            m.clients.get(slot).is_some_and(|c| c.is_reader())
                && (prev..target).contains(&m.region.slot_header(slot).cursor.load(Acquire))
        };
        if let Some(slot) = self.relay.laggard {
            if behind(self, slot) {
                return false;
            }
        }
        self.relay.laggard = self
            .clients
            .iter()
            .map(|c| c.slot)
            .find(|&slot| behind(self, slot));
        self.relay.laggard.is_none()
    }

    fn ring_idle(&self, slot: usize) -> bool {
        let hdr = self.region.slot_header(slot);
        hdr.head.load(SeqCst) == self.region.control(slot).consumed.load(SeqCst)
    }

    /// Processes ready slots while the log has room. Returns false if it
    /// stopped because the log is full.
    fn relay_pass(&mut self) -> bool {
        if !self.relay.flush_pending() {
            return false;
        }
        while let Some(&slot) = self.relay.ready.front() {
            match self.drain_ring(slot) {
                Ok(true) => {
                    self.relay.ready.pop_front();
                    if let Some(c) = self.clients.get_mut(slot) {
                        c.in_ready = false;
                    }
                    self.maybe_finalize(slot);
                }
                Ok(false) => return false,
                Err(e) => {
                    self.relay.ready.pop_front();
                    self.corrupt_child(slot, e);
                }
            }
        }
        true
    }

    /// Reads a slot's ring until it is empty (true) or the log is full (false).
    fn drain_ring(&mut self, slot: usize) -> Result<bool, Corrupt> {
        if self.clients.get(slot).is_none() {
            return Ok(true);
        }
        let mut reader = RingReader::new(self.region, slot);
        let mut payload = std::mem::take(&mut self.relay.payload);
        let r = (|| {
            while reader.refresh()? {
                while let Some(kind) = reader.peek(&mut payload)? {
                    if !self.relay.pending.is_empty() {
                        reader.ack();
                        return Ok(false);
                    }
                    match validate(kind, &payload)? {
                        Request::Ask(Ask::Chat(text)) => self.relay_line(slot, false, &text),
                        Request::Ask(Ask::Action(text)) => self.relay_line(slot, true, &text),
                        other => self.handle_request(slot, other),
                    }
                    reader.advance();
                }
                reader.ack();
            }
            Ok(true)
        })();
        self.relay.payload = payload;
        r
    }

    /// The hot path: records one chat or /me line from a client in the room.
    fn relay_line(&mut self, slot: usize, action: bool, text: &str) {
        let c = self.clients.get_mut(slot).unwrap();
        if !c.in_room || c.leaving.is_some() {
            return;
        }
        if c.muted.is_some() {
            if c.muted_until(Instant::now()).is_some() {
                let ev = Event::new(Kind::Notice, "", "you are muted: your line was not relayed")
                    .with_flags(event::NOTICE_PERSONAL);
                self.send_event(slot, ev);
                return;
            }
            c.muted = None;
        }
        c.lines_in += 1;
        let c = self.clients.get(slot).unwrap();
        let kind = if action { Kind::Action } else { Kind::Chat };
        let mut payload = Vec::with_capacity(event::HEADER + c.nick.len() + text.len());
        Event::new(kind, &c.nick, text).encode_into(&mut payload);
        self.relay.emit(c.id, payload);
        self.stats.relayed += 1;
    }

    /// Sends one event to one client alone (a reply, a private message).
    pub(super) fn send_event(&mut self, slot: usize, ev: Event) {
        self.send_ctl(slot, ipc::EVENT, &ev.encode());
    }

    fn handle_request(&mut self, slot: usize, req: Request) {
        let c = self.clients.get(slot).unwrap();
        let (id, serial, nick_now, in_room) = (c.id, c.serial, c.nick.clone(), c.in_room);
        if c.leaving.is_some() {
            return;
        }
        match req {
            Request::Ask(Ask::Chat(text)) => self.relay_line(slot, false, &text),
            Request::Ask(Ask::Action(text)) => self.relay_line(slot, true, &text),
            Request::Ask(Ask::Nick(new))
                if self
                    .bans
                    .banning_nick(&new, super::control::unix_now())
                    .is_some() =>
            {
                let ev =
                    Event::new(Kind::NickError, &new, "is banned").with_flags(event::NICK_IN_USE);
                self.send_event(slot, ev);
            }
            Request::Ask(Ask::Nick(new)) => match self.clients.rename(slot, &new) {
                Ok(old) if old == new => {}
                Ok(old) => {
                    info!(event = "nick", client = serial, nick = %new, old_nick = %old, "{old} is now {new}");
                    if in_room {
                        self.relay
                            .emit(id, Event::new(Kind::Nick, &old, &new).encode());
                    }
                    self.send_event(slot, Event::new(Kind::NickOk, &old, &new));
                    self.save_client(slot);
                }
                Err(why) => {
                    let ev = Event::new(Kind::NickError, &new, why).with_flags(event::NICK_IN_USE);
                    self.send_event(slot, ev);
                }
            },
            Request::Ask(Ask::List(list)) => {
                let nicks = self.clients.nicks_in_room().join(" ");
                self.send_event(
                    slot,
                    Event::new(Kind::Names, "", &nicks).with_flags(list as u8),
                );
            }
            Request::Ask(Ask::Join) => {
                if !in_room {
                    self.clients.set_in_room(slot, true);
                    self.clients.get_mut(slot).unwrap().registered = true;
                    self.announce(id, Event::new(Kind::Join, &nick_now, "").encode(), true);
                    self.save_client(slot);
                }
                let nicks = self.clients.nicks_in_room().join(" ");
                let ev = Event::new(Kind::Names, "", &nicks).with_flags(List::Joined as u8);
                self.send_event(slot, ev);
            }
            Request::Ask(Ask::Part(reason)) => {
                if in_room {
                    self.clients.set_in_room(slot, false);
                    self.save_client(slot);
                    // To everyone, the client too: it sees its own part.
                    self.announce(
                        0,
                        Event::new(Kind::Part, &nick_now, &reason).encode(),
                        false,
                    );
                }
            }
            Request::Ask(Ask::Private {
                flags,
                target,
                text,
            }) => match self.clients.find_nick(&target) {
                Some(to) => {
                    let ev = Event::new(Kind::Private, &nick_now, &text).with_flags(flags);
                    self.send_event(to, ev);
                    if let Some(c) = self.clients.get_mut(to) {
                        c.private_in += 1;
                    }
                }
                None => self.send_event(slot, Event::new(Kind::NoSuchNick, &target, "")),
            },
            Request::Skip => {}
            Request::Quit(reason) => {
                if reason == "SendQ exceeded" {
                    self.stats.kicked += 1;
                    self.stats.kicks_by[super::KICK_SENDQ] += 1;
                    let c = self.clients.get(slot).unwrap();
                    warn!(event = "kick", client = serial, peer = %c.peer, nick = %nick_now, reason = %reason, "{nick_now} kicked: {reason}");
                }
                self.leave(slot, &reason);
            }
        }
    }

    /// Posts the leave notice once and stops waiting for the client's reads.
    pub(super) fn leave(&mut self, slot: usize, reason: &str) {
        self.leave_with(slot, reason, None);
    }

    /// Like [`Master::leave`], with `notice` (an encoded event) for the
    /// room instead of a Quit: a kick.
    pub(super) fn leave_with(&mut self, slot: usize, reason: &str, notice: Option<Vec<u8>>) {
        if !self.clients.set_leaving(slot, reason) {
            return;
        }
        let c = self.clients.get(slot).unwrap();
        if self.shutdown_at.is_none() && c.in_room {
            match notice {
                // A kick is announced whatever the room's size.
                Some(ev) => self.relay.emit(0, ev),
                None => {
                    let ev = Event::new(Kind::Quit, &c.nick, reason).encode();
                    self.announce(0, ev, false);
                }
            }
        }
    }

    /// Frees the slot of a child that is gone and whose ring is drained.
    fn maybe_finalize(&mut self, slot: usize) {
        let Some(c) = self.clients.get(slot) else {
            return;
        };
        if !c.reaped || c.in_ready || !self.ring_idle(slot) {
            return;
        }
        if c.leaving.is_none() {
            let reason = c
                .exit_reason
                .clone()
                .unwrap_or_else(|| "connection closed".into());
            self.leave(slot, &reason);
        }
        self.account_child(slot, true);
        let c = self.clients.remove(slot).unwrap();
        // Best effort: a slot that keeps its pages is only memory.
        let _ = self.region.release_slot(slot);
        if c.ctl_open {
            let _ = self.epoll.delete(&c.ctl);
        }
        self.forget_client(slot, c.id, c.tls);
        info!(
            event = "disconnect",
            client = c.serial,
            pid = c.pid.as_raw(),
            peer = %c.peer,
            nick = %c.nick,
            reason = %c.leaving.as_deref().unwrap_or(""),
            duration_s = c.since.elapsed().as_secs(),
            "{} disconnected ({})", c.nick, c.leaving.as_deref().unwrap_or("")
        );
    }

    /// A child wrote something impossible into its ring: kick it.
    fn corrupt_child(&mut self, slot: usize, e: Corrupt) {
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        c.in_ready = false;
        warn!(event = "security", client = c.serial, pid = c.pid.as_raw(), peer = %c.peer, error = %e, "killing child: {e}");
        let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
        // Skip whatever is left in its ring.
        let head = self.region.slot_header(slot).head.load(SeqCst);
        self.region.control(slot).consumed.store(head, SeqCst);
        self.leave(slot, "protocol violation");
    }

    /// Recomputes the log tail from the readers' cursors. True if it moved.
    pub(super) fn refresh_tail(&mut self) -> bool {
        let head = self.relay.log.head();
        let mut tail = head;
        let mut bad = Vec::new();
        for c in self.clients.iter().filter(|c| c.is_reader()) {
            let cur = self.region.slot_header(c.slot).cursor.load(Acquire);
            if cur > head || head - cur > LOG_BYTES as u64 || cur % 8 != 0 {
                bad.push(c.slot);
                continue;
            }
            tail = tail.min(cur);
        }
        for slot in bad {
            self.corrupt_child(slot, Corrupt("log cursor out of range"));
        }
        let moved = tail != self.relay.log.tail();
        self.relay.log.set_tail(tail);
        moved
    }

    /// Called by the timer: retries a blocked relay, evicts stalled readers.
    pub(super) fn relay_check_stall(&mut self, now: Instant) {
        let Some(since) = self.relay.blocked_since else {
            return;
        };
        self.refresh_tail();
        self.relay_turn();
        if self.relay.blocked_since.is_none() {
            return;
        }
        if now.duration_since(since) < Duration::from_secs_f64(self.cfg.stall_timeout) {
            return;
        }
        // Evict the readers at the tail: they have not read for too long.
        let tail = self.relay.log.tail();
        let laggards: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| {
                c.is_reader() && self.region.slot_header(c.slot).cursor.load(Acquire) == tail
            })
            .map(|c| c.slot)
            .collect();
        for slot in laggards {
            LogWriter::evict(self.region.control(slot));
            let c = self.clients.get_mut(slot).unwrap();
            c.kill_at = Some(now + super::CLOSE_GRACE);
            let (serial, peer, nick) = (c.serial, c.peer, c.nick.clone());
            self.stats.kicked += 1;
            self.stats.kicks_by[super::KICK_SENDQ] += 1;
            warn!(event = "kick", client = serial, peer = %peer, nick = %nick, reason = "SendQ exceeded", "{nick} kicked: stalled for {:.1}s", self.cfg.stall_timeout);
            let why = Event::new(
                Kind::Closing,
                "",
                "SendQ exceeded: you were not reading; disconnecting",
            );
            self.send_ctl(
                slot,
                ipc::CLOSE,
                &why.with_flags(event::CLOSING_ERROR).encode(),
            );
            self.leave(slot, "SendQ exceeded");
        }
        self.relay.blocked_since = Some(now);
        self.refresh_tail();
        self.relay_turn();
    }

    /// Called by the timer: once the room has had no wake-up for
    /// [`TRIM_AFTER`], wakes every child one more time with the header's
    /// trim epoch bumped, and a child whose send queue is empty gives its
    /// pages back. Idle children thus return what a burst (a crowd joining)
    /// made them hold, without a timer of their own: a timeout on every
    /// child's sleep cost about 8% more CPU in the open-loop benchmark.
    pub(super) fn trim_if_quiet(&mut self, now: Instant) {
        let r = &mut self.relay;
        let quiet = r
            .last_wake
            .is_some_and(|t| now.duration_since(t) >= TRIM_AFTER);
        if !quiet || r.trimmed || r.unwoken {
            return;
        }
        r.trimmed = true;
        self.region.header().trim.fetch_add(1, Release);
        self.wake_children();
        self.give_back_memory();
    }

    /// Wakes every child at once: one write to the shared eventfd, which
    /// each child watches edge-triggered. Never blocks (the counter would
    /// need 2^64 writes to fill); a failure only means the children wake on
    /// their next event instead.
    fn wake_children(&mut self) {
        let _ = self.wake.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1000.0)
    }

    fn chat(text: &str) -> Vec<u8> {
        Event::new(Kind::Chat, "alice", text).encode()
    }

    #[test]
    fn history_is_the_last_chat_lines_the_log_still_holds() {
        let region: &'static Region = Box::leak(Box::new(Region::create(1).unwrap()));
        let mut relay = Relay::new(region);
        let mut out = [0; HISTORY_MAX];
        assert_eq!(relay.history(20, &mut out), 0);
        let mut chats = Vec::new();
        for i in 0..30 {
            relay.emit(0, Event::new(Kind::Join, "bob", "").encode());
            chats.push(relay.log.head());
            relay.emit(0, chat(&format!("line {i}")));
        }
        relay.log.set_tail(relay.log.head());
        assert_eq!(relay.history(20, &mut out), 20);
        assert_eq!(out[..20], chats[10..]);
        // The tail moved back to the first of them: nothing is
        // overwritten before the newcomer's cursor holds it.
        assert_eq!(relay.log.tail(), chats[10]);
        assert_eq!(relay.history(500, &mut out), 30);
        assert_eq!(out[..30], chats[..]);

        // A lap of other entries later, only the lines still in the log.
        let big = Event::new(Kind::Notice, "", &"x".repeat(8000)).encode();
        let lap_end = chats[26] + LOG_BYTES as u64;
        let small = Event::new(Kind::Notice, "", "y").encode();
        for (entry, size) in [(&big, 8100), (&small, 32)] {
            while relay.log.head() + size <= lap_end {
                relay.log.set_tail(relay.log.head());
                relay.emit(0, entry.clone());
            }
        }
        relay.log.set_tail(relay.log.head());
        assert_eq!(relay.history(20, &mut out), 4);
        assert_eq!(out[..4], chats[26..]);
        assert!(relay.log.head() - out[0] <= LOG_BYTES as u64);

        // A previous master's record out of order is not trusted before
        // the break.
        let h = &region.header().history;
        let count = h.count.load(Relaxed);
        h.pos[(count - 2) as usize % HISTORY_MAX].store(chats[29] + 8, Relaxed);
        assert_eq!(relay.history(20, &mut out), 1);
        assert_eq!(out[0], chats[29]);
    }

    #[test]
    fn a_quiet_room_is_woken_at_once() {
        let t = Instant::now();
        assert_eq!(gate_clock(t, t, Some(t), false), Clock::Ready);
        assert_eq!(gate_clock(t, t, None, false), Clock::Ready);
    }

    #[test]
    fn a_busy_room_waits_for_the_gap_and_the_settle() {
        let t0 = Instant::now();
        // A line right after a busy wake-up: the gap (2 ms) decides.
        assert_eq!(gate_clock(t0, t0, Some(t0), true), Clock::Wait(WAKE_GAP));
        // Long after the last wake-up: the settle (0.6 ms) decides.
        let held = t0 + ms(10.0);
        assert_eq!(
            gate_clock(held + ms(0.2), held, Some(t0), true),
            Clock::Wait(BUSY_SETTLE - ms(0.2))
        );
        assert_eq!(
            gate_clock(held + BUSY_SETTLE, held, Some(t0), true),
            Clock::Ready
        );
        // Both passed.
        let t = t0 + WAKE_GAP;
        assert_eq!(gate_clock(t, t0 + ms(1.0), Some(t0), true), Clock::Ready);
    }

    #[test]
    fn no_line_waits_past_the_cap() {
        let t0 = Instant::now();
        // Held 2.5 ms, last wake-up 1 ms ago: the gap wants 1 ms more, the
        // cap allows 0.5.
        let held = t0;
        let now = t0 + ms(2.5);
        assert_eq!(
            gate_clock(now, held, Some(now - ms(1.0)), true),
            Clock::Wait(WAKE_DEFER_MAX - ms(2.5))
        );
        assert_eq!(
            gate_clock(t0 + WAKE_DEFER_MAX, held, Some(t0), true),
            Clock::Overdue
        );
        assert_eq!(
            gate_clock(t0 + WAKE_DEFER_MAX, held, None, false),
            Clock::Overdue
        );
    }
}
