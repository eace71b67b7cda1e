//! The master's table of clients: slots, generations, pids, nicks, per-IP counts.
//!
//! A slot is allocated when a child is forked and freed only after the child
//! has been reaped *and* everything it left in its ring has been relayed.
//! Every allocation takes a new generation (one counter for all slots, in
//! the region's header: `Region::next_gen`), and clients are named by
//! `id = generation << 32 | slot`, so nothing that refers to a previous
//! owner (an epoll token, a log entry's origin) can match the new one.

use crate::protocol::{nick, Proto, Service};
use crate::shm::CONTROL_PER_PAGE;
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Instant;

/// One connected (or departing) client, as the master sees it.
pub struct Client {
    pub slot: usize,
    /// Internal id: generation << 32 | slot.
    pub id: u64,
    /// Connection number shown in logs and default nicks (guest-N).
    pub serial: u64,
    pub pid: Pid,
    pub peer: SocketAddr,
    pub nick: String,
    /// The protocol its listener speaks.
    pub proto: Proto,
    /// Its listener speaks TLS.
    pub tls: bool,
    /// TLS: the master has signed its one handshake signature.
    pub signed: bool,
    /// In the room: sees and is seen in it. A plain line-protocol client is
    /// from the start, a TLS one once its handshake is done, an IRC client
    /// once registered, until it parts.
    pub in_room: bool,
    /// Others may address it: from when it is in the room (an IRC client's
    /// guest nick before registration is nobody's to write to).
    pub registered: bool,
    pub ctl: OwnedFd,
    /// The control socket is still registered with epoll.
    pub ctl_open: bool,
    /// Control messages waiting for room in the socket.
    pub outbox: VecDeque<Vec<u8>>,
    /// Set once the leave notice is posted; the client no longer reads the log.
    pub leaving: Option<String>,
    /// Wait status collected; the process is gone.
    pub reaped: bool,
    /// Why the process ended, if it did not exit normally.
    pub exit_reason: Option<String>,
    /// Queued in the relay's ready list.
    pub in_ready: bool,
    /// When to SIGKILL a child that was told to close and has not exited.
    pub kill_at: Option<Instant>,
    pub since: Instant,
    /// When it connected, in seconds since the epoch (kept across restarts).
    pub since_unix: u64,
    /// Lines it said to the room, and private messages it was sent.
    pub lines_in: u64,
    pub private_in: u64,
    /// The master's relayed-lines counter when it arrived (its lines out
    /// are the room's lines since, but its own).
    pub relayed_at_join: u64,
    /// Muted by an operator: until then (None: until unmuted).
    pub muted: Option<Option<Instant>>,
    /// Its child's set-up time is in the metrics.
    pub setup_seen: bool,
    live_idx: usize,
}

impl Client {
    /// Whether it is muted at `now`: Some(time left, or None: until
    /// unmuted).
    pub fn muted_until(&self, now: Instant) -> Option<Option<std::time::Duration>> {
        match self.muted? {
            None => Some(None),
            Some(t) if t > now => Some(Some(t - now)),
            Some(_) => None,
        }
    }

    /// Whether the relay log must wait for this client's cursor.
    pub fn is_reader(&self) -> bool {
        self.leaving.is_none() && !self.reaped && self.ctl_open
    }
}

/// All clients, indexed by slot.
pub struct Clients {
    slots: Vec<Option<Box<Client>>>,
    free: Vec<usize>,
    live: Vec<usize>,
    by_pid: HashMap<Pid, usize>,
    nicks: HashMap<String, usize>,
    per_ip: HashMap<IpAddr, u32>,
    /// Clients in the room that have not left: kept by [`Clients::insert`],
    /// [`Clients::remove`], [`Clients::set_in_room`] and
    /// [`Clients::set_leaving`], so that a join costs O(1), not O(N).
    in_room: usize,
    /// Most slots in use at once since the last [`Clients::shrink`].
    peak: usize,
    /// Per page of slot control words in the shared region: a slot on it
    /// was taken since the page was last given back.
    control_used: Vec<bool>,
}

/// A room that shrank by at least this many clients (and by half) gives
/// memory back ([`Clients::emptied`]).
const SHRUNK_BY: usize = 64;

/// Normalises IPv4-mapped IPv6 addresses so per-IP limits see one address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Clients {
    pub fn new(capacity: usize) -> Clients {
        Clients {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            live: Vec::new(),
            by_pid: HashMap::new(),
            nicks: HashMap::new(),
            per_ip: HashMap::new(),
            in_room: 0,
            peak: 0,
            control_used: vec![false; capacity.div_ceil(CONTROL_PER_PAGE)],
        }
    }

    /// Whether the room has at most half the clients it had at its
    /// largest since the last [`Clients::shrink`], and [`SHRUNK_BY`] fewer:
    /// a crowd has left, and what it took should be given back.
    pub fn emptied(&self) -> bool {
        let now = self.live.len();
        now * 2 <= self.peak && self.peak - now >= SHRUNK_BY
    }

    /// Shrinks the tables to the clients there are now, and returns the
    /// first slot of each page of control words that no slot on it has
    /// used since (see `Region::release_control_page`), as given back.
    pub fn shrink(&mut self) -> Vec<usize> {
        self.peak = self.live.len();
        let room = |len: usize, cap: usize| cap > 4 * len.max(16);
        if room(self.by_pid.len(), self.by_pid.capacity()) {
            self.by_pid.shrink_to(2 * self.by_pid.len());
        }
        if room(self.nicks.len(), self.nicks.capacity()) {
            self.nicks.shrink_to(2 * self.nicks.len());
        }
        if room(self.per_ip.len(), self.per_ip.capacity()) {
            self.per_ip.shrink_to(2 * self.per_ip.len());
        }
        if room(self.live.len(), self.live.capacity()) {
            self.live.shrink_to(2 * self.live.len());
        }
        let mut pages = Vec::new();
        for (page, used) in self.control_used.iter_mut().enumerate() {
            let first = page * CONTROL_PER_PAGE;
            let end = (first + CONTROL_PER_PAGE).min(self.slots.len());
            if *used && self.slots[first..end].iter().all(Option::is_none) {
                *used = false;
                pages.push(first);
            }
        }
        pages
    }

    /// Slots in use (connected or still being cleaned up).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Clients that have not left yet (connected).
    pub fn online(&self) -> usize {
        self.iter().filter(|c| c.leaving.is_none()).count()
    }

    /// Clients in the room (what the greeting calls "online").
    pub fn in_room(&self) -> usize {
        debug_assert_eq!(
            self.in_room,
            self.iter()
                .filter(|c| c.leaving.is_none() && c.in_room)
                .count()
        );
        self.in_room
    }

    /// Puts a client in the room or takes it out (IRC JOIN and PART).
    pub fn set_in_room(&mut self, slot: usize, in_room: bool) {
        let Some(c) = self.slots.get_mut(slot).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        if c.in_room != in_room && c.leaving.is_none() {
            if in_room {
                self.in_room += 1;
            } else {
                self.in_room -= 1;
            }
        }
        c.in_room = in_room;
    }

    /// Marks a client as leaving, for `reason`; false if it already was.
    pub fn set_leaving(&mut self, slot: usize, reason: &str) -> bool {
        let Some(c) = self.slots.get_mut(slot).and_then(|c| c.as_deref_mut()) else {
            return false;
        };
        if c.leaving.is_some() {
            return false;
        }
        if c.in_room {
            self.in_room -= 1;
        }
        c.leaving = Some(reason.to_string());
        true
    }

    fn counts_in_room(c: &Client) -> bool {
        c.in_room && c.leaving.is_none()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn from_ip(&self, ip: IpAddr) -> u32 {
        self.per_ip.get(&canonical_ip(ip)).copied().unwrap_or(0)
    }

    /// Takes a free slot, if any.
    pub fn take_slot(&mut self) -> Option<usize> {
        let slot = self.free.pop()?;
        self.control_used[slot / CONTROL_PER_PAGE] = true;
        Some(slot)
    }

    /// Takes this free slot (a client taken over after a restart keeps its
    /// slot). False if it is not free.
    pub fn take_slot_at(&mut self, slot: usize) -> bool {
        match self.free.iter().rposition(|&s| s == slot) {
            Some(i) => {
                self.free.remove(i);
                self.control_used[slot / CONTROL_PER_PAGE] = true;
                true
            }
            None => false,
        }
    }

    /// Whether any client has this nick (any case).
    pub fn nick_taken(&self, name: &str) -> bool {
        self.nicks.contains_key(&nick::fold(name))
    }

    /// Returns a slot that was taken but not used (fork failed).
    pub fn return_slot(&mut self, slot: usize) {
        self.free.push(slot);
    }

    /// Records a freshly forked client in its (taken) slot.
    pub fn insert(&mut self, mut c: Client) {
        let slot = c.slot;
        assert!(self.slots[slot].is_none());
        c.live_idx = self.live.len();
        self.live.push(slot);
        self.peak = self.peak.max(self.live.len());
        self.by_pid.insert(c.pid, slot);
        self.nicks.insert(nick::fold(&c.nick), slot);
        *self.per_ip.entry(canonical_ip(c.peer.ip())).or_insert(0) += 1;
        self.in_room += Clients::counts_in_room(&c) as usize;
        self.slots[slot] = Some(Box::new(c));
    }

    /// Removes a client and frees its slot.
    pub fn remove(&mut self, slot: usize) -> Option<Box<Client>> {
        let c = self.slots[slot].take()?;
        self.in_room -= Clients::counts_in_room(&c) as usize;
        let last = *self.live.last().unwrap();
        self.live.swap_remove(c.live_idx);
        if last != slot {
            self.slots[last].as_mut().unwrap().live_idx = c.live_idx;
        }
        self.by_pid.remove(&c.pid);
        if self.nicks.get(&nick::fold(&c.nick)) == Some(&slot) {
            self.nicks.remove(&nick::fold(&c.nick));
        }
        let ip = canonical_ip(c.peer.ip());
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.free.push(slot);
        Some(c)
    }

    pub fn get(&self, slot: usize) -> Option<&Client> {
        self.slots.get(slot)?.as_deref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Client> {
        self.slots.get_mut(slot)?.as_deref_mut()
    }

    /// The client with this id, if it is still the slot's owner.
    pub fn by_id_mut(&mut self, id: u64) -> Option<&mut Client> {
        let slot = (id & 0xffff_ffff) as usize;
        self.get_mut(slot).filter(|c| c.id == id)
    }

    pub fn slot_of_pid(&self, pid: Pid) -> Option<usize> {
        self.by_pid.get(&pid).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.live.iter().map(|&s| self.slots[s].as_deref().unwrap())
    }

    /// Live slots, for loops that need `get_mut`.
    pub fn live_slots(&self) -> Vec<usize> {
        self.live.clone()
    }

    /// Live slot at position `i` of the live list (for allocation-free scans).
    pub fn live_at(&self, i: usize) -> Option<usize> {
        self.live.get(i).copied()
    }

    /// Renames a client. Err with the reason if the nick is taken.
    pub fn rename(&mut self, slot: usize, new: &str) -> Result<String, &'static str> {
        let key = nick::fold(new);
        if let Some(&owner) = self.nicks.get(&key) {
            if owner != slot {
                return Err("is taken");
            }
        }
        let c = self.slots[slot].as_mut().unwrap();
        let old = std::mem::replace(&mut c.nick, new.to_string());
        self.nicks.remove(&nick::fold(&old));
        self.nicks.insert(key, slot);
        Ok(old)
    }

    /// The slot of the client called `name` (any case), if it is online
    /// and registered (an IRC client's guest nick before it registers is
    /// nobody's to write to).
    pub fn find_nick(&self, name: &str) -> Option<usize> {
        let slot = *self.nicks.get(&nick::fold(name))?;
        self.get(slot)
            .filter(|c| c.leaving.is_none() && c.registered)
            .map(|c| c.slot)
    }

    /// The slot of the client called `name` (any case), registered or not.
    pub fn slot_of_nick(&self, name: &str) -> Option<usize> {
        self.nicks.get(&nick::fold(name)).copied()
    }

    /// Nicks of the clients in the room, sorted case-insensitively.
    pub fn nicks_in_room(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .iter()
            .filter(|c| c.leaving.is_none() && c.in_room)
            .map(|c| c.nick.as_str())
            .collect();
        v.sort_by_key(|n| n.to_ascii_lowercase());
        v
    }
}

/// Builds a [`Client`] for [`Clients::insert`].
#[allow(clippy::too_many_arguments)]
pub fn new_client(
    slot: usize,
    id: u64,
    serial: u64,
    pid: Pid,
    peer: SocketAddr,
    nick: String,
    service: Service,
    ctl: OwnedFd,
) -> Client {
    let at_once = service.proto == Proto::Line && !service.tls;
    Client {
        slot,
        id,
        serial,
        pid,
        peer,
        nick,
        proto: service.proto,
        tls: service.tls,
        signed: false,
        in_room: at_once,
        registered: at_once,
        ctl,
        ctl_open: true,
        outbox: VecDeque::new(),
        leaving: None,
        reaped: false,
        exit_reason: None,
        in_ready: false,
        kill_at: None,
        since: Instant::now(),
        lines_in: 0,
        private_in: 0,
        relayed_at_join: 0,
        muted: None,
        setup_seen: false,
        since_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        live_idx: 0,
    }
}
