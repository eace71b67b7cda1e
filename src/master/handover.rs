//! Restart without dropping a client: what the master keeps in systemd's fd
//! store, and how the next master takes it over.
//!
//! Under systemd (`NOTIFY_SOCKET` set) the master hands the service
//! manager, with `FDSTORE=1`:
//! - `kept-shm`: the shared region's memfd (relay log, rings, cursors);
//! - `kept-state`: its own state file ([`super::state`]: nicks, ids,
//!   serials, who is in the room), rewritten in place on every change;
//! - `kept-c<slot>-<gen>`: each plain client's socket, when it is accepted
//!   (TLS sessions live in their child and cannot be carried), removed
//!   with `FDSTOREREMOVE=1` when its slot is freed.
//!
//! Nothing is written at shutdown, so a crashed master leaves what one
//! stopping on purpose does. systemd keeps the store while a restart job
//! runs and across an automatic restart, and discards it when the unit
//! stops for good. The next master gets every kept fd back in
//! `LISTEN_FDS` (names in `LISTEN_FDNAMES`), and [`Master::take_over`]
//! forks one child per kept client before it accepts anyone:
//! 1. the region and the state file are validated as untrusted input;
//!    if either does not check out, every kept client is taken over with
//!    fresh state (a new guest nick) and told that lines may have been
//!    missed;
//! 2. a client with a valid record keeps its id, nick and ring; its log
//!    cursor (checked against the log head) is where the new child starts,
//!    so nothing is sent twice or skipped; the previous child's
//!    `Handover` ring entry says it stopped cleanly (whole lines only, its
//!    unread input in `Carry` entries for the new child); without one the
//!    client is told lines may have been missed, on a fresh line;
//! 3. a record without a socket (the client left while no master ran) has
//!    its ring relayed and its leave announced;
//! 4. an IRC client that had not registered, and any fd the master cannot
//!    place, is refused and closed.
//!
//! On the children's side (`crate::child`): a carried child whose master
//! is gone (its control socket reports EOF) finishes writing its queue,
//! leaves its unread input in its ring and exits without closing the
//! connection (the store still holds it). Children ignore SIGTERM; the
//! unit's `KillMode=control-group` then waits for them.
//!
//! `systemctl stop` and `systemctl restart` both end with SIGTERM. The unit
//! tells them apart in `ExecStop=` (on systemd 252 only the job type says
//! which it is: `systemctl list-jobs` shows `restart`) and then sends
//! SIGUSR2 first: [`Master::hand_over`] closes only the clients that
//! cannot be carried and exits, leaving the rest to the next master.

use super::clients::new_client;
use super::state::{Record, Snapshot, State};
use super::Master;
use crate::protocol::event::{Event, Kind};
use crate::protocol::{Proto, Service};
use crate::shm::ring::handed_over;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;
use tracing::{info, warn};

/// Every name chatd gives a stored fd starts with this.
pub const PREFIX: &str = "kept-";
pub const SHM: &str = "kept-shm";
pub const STATE: &str = "kept-state";

/// The store name of a client's socket.
pub fn client_name(id: u64) -> String {
    format!("{PREFIX}c{}-{}", id & 0xffff_ffff, id >> 32)
}

/// The client id in a store name, if it is a client's.
pub fn parse_client_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('c')?;
    let (slot, gen) = rest.split_once('-')?;
    let (slot, gen): (u32, u32) = (slot.parse().ok()?, gen.parse().ok()?);
    (gen != 0).then_some((gen as u64) << 32 | slot as u64)
}

/// How a client comes to a child.
pub enum Arrival {
    /// Accepted now.
    New,
    /// Taken over with its record; `missed`: lines may have been lost.
    Resume { rec: Record, missed: bool },
    /// Taken over without a usable record: a new nick, in the room.
    Fresh,
}

/// The fds a previous master stored, sorted by kind.
#[derive(Default)]
pub struct Kept {
    pub shm: Option<OwnedFd>,
    pub state: Option<OwnedFd>,
    /// (client id, socket).
    pub clients: Vec<(u64, OwnedFd)>,
}

impl Kept {
    /// Sorts what systemd passed back. Unknown names and duplicates are
    /// removed from the store (by `remove`) and closed.
    pub fn sort(fds: Vec<(String, OwnedFd)>, mut remove: impl FnMut(&str)) -> Kept {
        let mut k = Kept::default();
        for (name, fd) in fds {
            let place = match name.as_str() {
                SHM if k.shm.is_none() => &mut k.shm,
                STATE if k.state.is_none() => &mut k.state,
                n => match parse_client_name(n) {
                    Some(id) if !k.clients.iter().any(|(i, _)| *i == id) => {
                        k.clients.push((id, fd));
                        continue;
                    }
                    // A second fd under a name in use: the first counts.
                    Some(_) => continue,
                    None if n == SHM || n == STATE => continue,
                    None => {
                        warn!(event = "handover_stray", name = %n, "closing a stored fd chatd does not know: {n}");
                        remove(n);
                        continue;
                    }
                },
            };
            *place = Some(fd);
        }
        k
    }
}

/// The master's side of the fd store.
pub struct Keep {
    pub state: State,
}

impl Master {
    /// Hands a new client's socket to the fd store.
    pub(super) fn keep_socket(&mut self, id: u64, fd: BorrowedFd<'_>) {
        if self.keep.is_some() {
            self.notifier.store_fd(&client_name(id), fd);
        }
    }

    /// Rewrites a client's record in the state file.
    pub(super) fn save_client(&mut self, slot: usize) {
        let (Some(k), Some(c)) = (&self.keep, self.clients.get(slot)) else {
            return;
        };
        let rec = Record {
            slot,
            id: c.id,
            serial: c.serial,
            proto: c.proto,
            tls: c.tls,
            in_room: c.in_room,
            registered: c.registered,
            since: c.since_unix,
            nick: c.nick.clone(),
            muted: c.muted.map(|until| match until {
                None => 0,
                // Rounded up, and never 0 (which means until unmuted).
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    (super::control::unix_now() + left.as_secs() + 1).min(u32::MAX as u64) as u32
                }
            }),
        };
        k.state.put(slot, Some(&rec));
        k.state.set_next_serial(self.stats.connects);
    }

    /// Forgets a client whose slot is freed: its record, its stored socket.
    pub(super) fn forget_client(&mut self, slot: usize, id: u64, tls: bool) {
        let Some(k) = &self.keep else { return };
        k.state.put(slot, None);
        if !tls {
            self.notifier.remove_fd(&client_name(id));
        }
    }

    /// SIGUSR2 (the unit's `ExecStop=` during a restart): closes the
    /// clients that cannot be carried (TLS, IRC not yet registered) and
    /// lets the loop end once their children are gone; the others stay
    /// connected, their sockets in the fd store, for the next master.
    pub(super) fn hand_over(&mut self) {
        if self.keep.is_none() {
            warn!(
                event = "handover_ignored",
                "SIGUSR2 without systemd's fd store: nothing can be handed over; ignored"
            );
            return;
        }
        if self.shutdown_at.is_some() || self.handing_over {
            return;
        }
        self.handing_over = true;
        for (l, _) in self.listeners.drain(..) {
            let _ = self.epoll.delete(&l);
        }
        let why = "server restarting, please reconnect";
        let line = Event::new(Kind::Closing, "", why).encode();
        let mut closed = 0;
        for slot in self.clients.live_slots() {
            let c = self.clients.get(slot).unwrap();
            if c.leaving.is_some() || carried(c.tls, c.proto, c.registered) {
                continue;
            }
            let (id, tls) = (c.id, c.tls);
            self.send_ctl(slot, crate::ipc::CLOSE, &line);
            self.leave(slot, "server restarting");
            self.forget_client(slot, id, tls);
            closed += 1;
        }
        self.notifier.send(&[sd_notify::NotifyState::Stopping]);
        info!(
            event = "handover",
            clients = self.clients.online(),
            closed,
            "handing {} clients over to the next master",
            self.clients.online()
        );
        let _ = self.set_timer(true);
    }

    /// Whether a handover is complete: every child that could not be
    /// carried is gone (or `shutdown_timeout` passed).
    pub(super) fn handover_done(&self) -> bool {
        self.handing_over
            && self
                .clients
                .iter()
                .all(|c| c.reaped || carried(c.tls, c.proto, c.registered) && c.leaving.is_none())
    }

    /// Takes over what a previous master left (see the module docs); runs
    /// before the first accept.
    pub(super) fn take_over(&mut self, kept: Vec<(u64, OwnedFd)>, snap: Option<Snapshot>) {
        let missed_all = snap.is_none();
        let snap = snap.unwrap_or_default();
        let mut records: HashMap<usize, Record> = HashMap::new();
        for r in snap.records {
            self.stats.connects = self.stats.connects.max(r.serial);
            records.insert(r.slot, r);
        }
        self.stats.connects = self.stats.connects.max(snap.next_serial);
        let (n_kept, mut resumed, mut refused) = (kept.len(), 0, 0);
        let mut fresh = Vec::new();
        for (id, fd) in kept {
            let slot = (id & 0xffff_ffff) as usize;
            let stream = TcpStream::from(fd);
            let Ok(peer) = stream.peer_addr() else {
                self.notifier.remove_fd(&client_name(id));
                continue;
            };
            let rec = records
                .remove(&slot)
                .filter(|r| r.id == id && !r.tls && slot < self.clients.capacity());
            let service = self.service_of(&stream, rec.as_ref());
            match rec {
                Some(rec) if !(rec.registered || rec.in_room) => {
                    // Mid-registration: its session cannot be rebuilt.
                    self.notifier.remove_fd(&client_name(id));
                    let why = "server restarted during registration, please reconnect";
                    self.refuse(stream, peer, service, "restarted during registration", why);
                    refused += 1;
                }
                Some(rec) if self.clients.nick_taken(&rec.nick) => {
                    fresh.push((id, stream, peer, service))
                }
                Some(rec) => match self.ring_state(slot, id) {
                    // It quit before the restart: announce, do not resume.
                    Some((_, true)) => {
                        self.notifier.remove_fd(&client_name(id));
                        drop(stream);
                        self.ghost(rec);
                    }
                    check => {
                        let missed = check.is_none_or(|(clean, _)| !clean);
                        if !self.clients.take_slot_at(slot) {
                            fresh.push((id, stream, peer, service));
                            continue;
                        }
                        let arrival = Arrival::Resume { rec, missed };
                        if self.fork_taken(slot, stream, peer, service, arrival) {
                            self.relay.mark_ready(&mut self.clients, slot);
                            resumed += 1;
                        }
                    }
                },
                None => fresh.push((id, stream, peer, service)),
            }
        }
        // Records whose client left while no master ran.
        for (_, rec) in records {
            if rec.in_room && !self.clients.nick_taken(&rec.nick) {
                self.ghost(rec);
            }
        }
        // Readers' cursors hold the log before anything new is appended.
        self.refresh_tail();
        let n_fresh = fresh.len();
        for (old, stream, peer, service) in fresh {
            self.notifier.remove_fd(&client_name(old));
            let Some(slot) = self.clients.take_slot() else {
                self.refuse(
                    stream,
                    peer,
                    service,
                    "server full",
                    "server full, try again later",
                );
                continue;
            };
            self.fork_taken(slot, stream, peer, service, Arrival::Fresh);
        }
        if n_kept > 0 || missed_all && !self.clients.is_empty() {
            info!(
                event = "takeover",
                clients = n_kept,
                resumed,
                fresh = n_fresh,
                refused,
                "took over {n_kept} clients from the previous master: {resumed} resumed, {n_fresh} with fresh state, {refused} refused"
            );
        }
    }

    /// Forks the child for a client taken over, in `slot` (taken); if that
    /// fails, frees the slot and refuses the client. True if it runs.
    fn fork_taken(
        &mut self,
        slot: usize,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        service: Service,
        arrival: Arrival,
    ) -> bool {
        let stored = match &arrival {
            Arrival::Resume { rec, .. } => Some(rec.id),
            _ => None,
        };
        let Err((e, stream)) = self.fork_child(slot, stream, peer, service, arrival) else {
            return true;
        };
        self.clients.return_slot(slot);
        if let Some(id) = stored {
            self.notifier.remove_fd(&client_name(id));
        }
        warn!(event = "fork_failed", peer = %peer, error = %e, "cannot take over {peer}: {e}");
        let why = "server busy, try again later";
        self.refuse(stream, peer, service, "cannot start a child", why);
        false
    }

    /// What a kept socket speaks: the listener on its local port, else its
    /// record's protocol.
    fn service_of(&self, s: &TcpStream, rec: Option<&Record>) -> Service {
        let port = s.local_addr().map(|a| a.port()).ok();
        self.listeners
            .iter()
            .find(|(l, _)| l.local_addr().ok().map(|a| a.port()) == port)
            .map(|(_, svc)| *svc)
            .unwrap_or(Service {
                proto: rec.map_or(Proto::Line, |r| r.proto),
                tls: false,
            })
    }

    /// Checks a kept slot's shared state for resuming client `id`: its
    /// generation, eviction flag and log cursor (reset to the head, and
    /// counted as missed, if out of range), and what the previous child
    /// left in its ring: Some((stopped cleanly, had quit)), or None if the
    /// ring is unusable (then emptied).
    fn ring_state(&mut self, slot: usize, id: u64) -> Option<(bool, bool)> {
        let head = self.relay.publish();
        let ctl = self.region.control(slot);
        let hdr = self.region.slot_header(slot);
        // A fresh region (the previous one was lost) counts generations
        // from zero: never hand this client's again.
        self.region.header().last_gen.fetch_max(id >> 32, SeqCst);
        let cur = hdr.cursor.load(SeqCst);
        let bad_cursor = cur > head || head - cur > crate::shm::LOG_BYTES as u64 || cur % 8 != 0;
        if bad_cursor || ctl.evicted.load(SeqCst) != 0 || ctl.gen.load(SeqCst) != id >> 32 {
            ctl.gen.store(id >> 32, SeqCst);
            ctl.evicted.store(0, SeqCst);
            hdr.cursor.store(head, SeqCst);
            ctl.consumed.store(0, SeqCst);
            hdr.head.store(0, SeqCst);
            return None;
        }
        match handed_over(self.region.ring(slot), hdr, ctl) {
            Ok(h) => Some((h.clean, h.quit)),
            Err(_) => {
                ctl.consumed.store(0, SeqCst);
                hdr.head.store(0, SeqCst);
                None
            }
        }
    }

    /// A client that left while no master ran: its ring is relayed and its
    /// leave announced, like any client whose child is gone.
    fn ghost(&mut self, rec: Record) {
        let slot = rec.slot;
        if !self.clients.take_slot_at(slot) {
            return;
        }
        let Ok((ctl, _)) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) else {
            self.clients.return_slot(slot);
            return;
        };
        let service = Service {
            proto: rec.proto,
            tls: rec.tls,
        };
        let peer = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        let mut c = new_client(
            slot,
            rec.id,
            rec.serial,
            Pid::from_raw(0),
            peer,
            rec.nick,
            service,
            ctl,
        );
        (c.in_room, c.registered, c.since_unix) = (rec.in_room, rec.registered, rec.since);
        c.reaped = true;
        c.ctl_open = false;
        c.exit_reason = Some("connection lost during a restart".into());
        self.clients.insert(c);
        self.relay.mark_ready(&mut self.clients, slot);
    }
}

/// Whether a client can outlive its master: a plain connection whose
/// session the next child can rebuild (line protocol, registered IRC).
pub fn carried(tls: bool, proto: Proto, registered: bool) -> bool {
    !tls && (proto == Proto::Line || registered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_round_trip() {
        let id = 7u64 << 32 | 4095;
        assert_eq!(client_name(id), "kept-c4095-7");
        assert_eq!(parse_client_name(&client_name(id)), Some(id));
        for bad in [
            "kept-c1",
            "kept-c1-0",
            "kept-x1-2",
            "c1-2",
            "kept-c-1-2",
            "kept-c1-2-3",
        ] {
            assert_eq!(parse_client_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn kept_fds_are_sorted_and_strays_removed() {
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut removed = Vec::new();
        let k = Kept::sort(
            vec![
                (SHM.into(), fd()),
                ("kept-c3-1".into(), fd()),
                ("kept-nonsense".into(), fd()),
                ("kept-c3-1".into(), fd()),
                (STATE.into(), fd()),
                (SHM.into(), fd()),
            ],
            |n| removed.push(n.to_string()),
        );
        assert!(k.shm.is_some() && k.state.is_some());
        assert_eq!(k.clients.len(), 1);
        assert_eq!(removed, ["kept-nonsense"]);
    }
}
