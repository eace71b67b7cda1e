//! The control socket: `chatctl` talks to the master here.
//!
//! A unix stream socket, passed by systemd (`chatd-control.socket`, named
//! `control`, mode 0660, group `chatd-admin`) or created at start-up at
//! `control_socket` (mode 0600). It is opened before the master confines
//! itself; afterwards the master only accepts on it and reads and writes
//! the connections (AF_UNIX `accept4`, `recvfrom`, `sendto`, `getsockopt`,
//! all already in its allowlist).
//!
//! Every connection's peer is checked when it is accepted (SO_PEERCRED and
//! SO_PEERGROUPS): root, chatd's own user, or a member of `control_group`;
//! anyone else gets one error line, and the refusal is logged. Then one
//! request line ([`crate::control::parse`]), one reply, and the master
//! closes the connection. Requests and replies are bounded, and every
//! connection is non-blocking in the master's epoll loop: a client that
//! never sends or never reads holds nothing up.

use super::Master;
use crate::control::{self, Command, Request, MAX_REQUEST};
use crate::protocol::event::{self, Event, Kind};
use crate::protocol::{sanitize, Proto};
use anyhow::{Context, Result};
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// Epoll tokens of control connections: `CONN_TOKEN + index`.
pub const CONN_TOKEN: u64 = 1 << 60;
/// Control connections open at once; more are closed at once.
const MAX_CONNS: usize = 16;

/// Who is at the other end of a control connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
}

struct Conn {
    stream: UnixStream,
    /// Order of arrival.
    opened: u64,
    peer: Peer,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// A reply is queued: read no more.
    answered: bool,
}

/// The listening socket and the open connections.
pub struct Control {
    listener: UnixListener,
    conns: HashMap<u64, Conn>,
    next: u64,
    /// Allowed besides root: chatd's own uid, and this group's members.
    own_uid: u32,
    group: Option<(String, u32)>,
}

impl Control {
    /// The control socket systemd passed (`fd`), or a new one at `path`
    /// (an empty path: none). Run before confinement.
    pub fn open(fd: Option<OwnedFd>, path: &Path, group: &str) -> Result<Option<Control>> {
        let listener = match fd {
            Some(fd) => UnixListener::from(fd),
            None if path.as_os_str().is_empty() => return Ok(None),
            None => bind(path).with_context(|| format!("control socket {}", path.display()))?,
        };
        listener.set_nonblocking(true)?;
        let group = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| (g.name, g.gid.as_raw()));
        Ok(Some(Control {
            listener,
            conns: HashMap::new(),
            next: 0,
            own_uid: nix::unistd::geteuid().as_raw(),
            group,
        }))
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Whether this peer may give orders.
    fn allowed(&self, fd: &UnixStream) -> Result<Peer, String> {
        let cred = getsockopt(fd, sockopt::PeerCredentials).map_err(|e| e.to_string())?;
        let peer = Peer {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Ok(peer);
        }
        if let Some((name, gid)) = &self.group {
            if cred.gid() == *gid || peer_groups(fd).contains(gid) {
                return Ok(peer);
            }
            return Err(format!("uid {} is not root or in group {name}", peer.uid));
        }
        Err(format!("uid {} is not root", peer.uid))
    }
}

/// Binds a new socket at `path`, replacing a stale one, mode 0600; its
/// directory is created if missing (0755: /run/chatd when run as root).
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The peer's supplementary groups (SO_PEERGROUPS), as far as they fit.
fn peer_groups(fd: &UnixStream) -> Vec<u32> {
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * 4) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups`, which
    // has that many, and sets `len` to what it wrote.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / 4);
    groups
}

/// A reply: text for people, JSON for scripts; `ok` decides chatctl's
/// exit status.
struct Reply {
    ok: bool,
    text: String,
    json: Value,
}

fn ok(text: impl Into<String>, json: Value) -> Reply {
    Reply {
        ok: true,
        text: text.into(),
        json,
    }
}

fn err(text: impl Into<String>) -> Reply {
    let text = text.into();
    Reply {
        ok: false,
        json: json!({ "error": text }),
        text,
    }
}

impl Master {
    /// Accepts waiting control connections.
    pub(super) fn control_accept(&mut self) {
        loop {
            let Some(ctl) = &mut self.control else { return };
            let stream = match ctl.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let _ = stream.set_nonblocking(true);
            if ctl.conns.len() >= MAX_CONNS {
                // The oldest gives way: idle connections cannot lock an
                // admin out.
                let oldest = ctl
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.opened)
                    .map(|(t, _)| *t);
                if let Some(t) = oldest {
                    self.control_close(t);
                }
            }
            let Some(ctl) = &mut self.control else { return };
            let peer = match ctl.allowed(&stream) {
                Ok(p) => p,
                Err(why) => {
                    let cred = getsockopt(&stream, sockopt::PeerCredentials).ok();
                    let (uid, pid) = cred.map_or((u32::MAX, 0), |c| (c.uid(), c.pid()));
                    warn!(event = "control_refused", uid, pid, reason = %why, "control connection refused: {why}");
                    let _ = (&stream)
                        .write_all(format!("error: permission denied: {why}\n").as_bytes());
                    continue;
                }
            };
            let opened = ctl.next;
            let token = CONN_TOKEN + opened % (1 << 20);
            ctl.next += 1;
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, token);
            if self.epoll.add(&stream, ev).is_err() {
                continue;
            }
            let conn = Conn {
                stream,
                opened,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                answered: false,
            };
            self.control.as_mut().unwrap().conns.insert(token, conn);
        }
    }

    /// A control connection is readable or writable.
    pub(super) fn control_io(&mut self, token: u64) {
        let Some(ctl) = &mut self.control else { return };
        let Some(c) = ctl.conns.get_mut(&token) else {
            return;
        };
        let mut request = None;
        if !c.answered {
            let mut buf = [0u8; 1024];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        // EOF: what came is the request, newline or not.
                        request = Some(std::mem::take(&mut c.input));
                        break;
                    }
                    Ok(n) => {
                        c.input.extend_from_slice(&buf[..n]);
                        if let Some(i) = c.input.iter().position(|&b| b == b'\n') {
                            c.input.truncate(i);
                            request = Some(std::mem::take(&mut c.input));
                            break;
                        }
                        if c.input.len() > MAX_REQUEST {
                            request = Some(std::mem::take(&mut c.input));
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.control_close(token);
                        return;
                    }
                }
            }
        }
        if let Some(bytes) = request {
            let peer = c.peer;
            let (reply, json) = match std::str::from_utf8(&bytes) {
                Err(_) => (err("the request is not UTF-8"), false),
                Ok(line) => match control::parse(line.trim_end_matches('\r')) {
                    Err(e) => (err(e), line.trim_start().starts_with("--json")),
                    Ok(req) => {
                        let json = req.json;
                        (self.control_request(req, peer), json)
                    }
                },
            };
            let out = match json {
                true => format!("{}\n", reply.json),
                false if reply.ok => reply.text,
                false => format!("error: {}\n", reply.text),
            };
            let Some(c) = self.control.as_mut().and_then(|x| x.conns.get_mut(&token)) else {
                return;
            };
            c.output = out.into_bytes();
            c.answered = true;
        }
        self.control_flush(token);
    }

    /// Writes what is queued; closes the connection once all is written.
    fn control_flush(&mut self, token: u64) {
        let Some(c) = self.control.as_mut().and_then(|x| x.conns.get_mut(&token)) else {
            return;
        };
        if !c.answered {
            return;
        }
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let ev = EpollFlags::EPOLLOUT;
                    let _ = self
                        .epoll
                        .modify(c.stream.as_fd(), &mut EpollEvent::new(ev, token));
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.control_close(token);
    }

    fn control_close(&mut self, token: u64) {
        if let Some(c) = self.control.as_mut().and_then(|x| x.conns.remove(&token)) {
            let _ = self.epoll.delete(c.stream.as_fd());
        }
    }

    /// Carries out one request from an allowed peer.
    fn control_request(&mut self, req: Request, admin: Peer) -> Reply {
        match req.command {
            Command::Status => self.ctl_status(),
            Command::Who => self.ctl_who(),
            Command::Kick { nick, reason } => self.ctl_kick(&nick, &reason, admin),
            Command::Mute { nick, time } => self.ctl_mute(&nick, Some(time), admin),
            Command::Unmute { nick } => self.ctl_mute(&nick, None, admin),
            Command::Say { text } => self.ctl_say(&text, admin),
            Command::Topic { text } => self.ctl_topic(&text, admin),
            Command::Ban {
                target,
                time,
                reason,
            } => self.ctl_ban(&target, time, &reason, admin),
            Command::Unban { target } => {
                let now = unix_now();
                match self.bans.remove(&target, now) {
                    Ok(true) => {
                        info!(event = "unban", target = %target, admin_uid = admin.uid, admin_pid = admin.pid, "ban on {target} lifted by uid {}", admin.uid);
                        ok(
                            format!("unbanned {target}\n"),
                            json!({ "unbanned": target }),
                        )
                    }
                    Ok(false) => err(format!("no ban on {target}")),
                    Err(e) => err(e),
                }
            }
            Command::Bans => self.ctl_bans(),
            Command::Reload => match self.reload_config() {
                Ok(()) => ok("configuration reloaded\n", json!({ "reloaded": true })),
                Err(e) => err(format!(
                    "reload failed, the running configuration stays: {e}"
                )),
            },
            Command::Metrics => {
                let text = self.metrics_text();
                ok(text.clone(), json!({ "metrics": text }))
            }
        }
    }

    fn ctl_status(&self) -> Reply {
        let up = self.started.elapsed().as_secs();
        let count = |f: &dyn Fn(&super::clients::Client) -> bool| {
            self.clients
                .iter()
                .filter(|c| c.leaving.is_none() && f(c))
                .count()
        };
        let line = count(&|c| c.proto == Proto::Line);
        let irc = count(&|c| c.proto == Proto::Irc);
        let tls = count(&|c| c.tls);
        let text = format!(
            "chatd {} (pid {}), up {}\n{} clients: {line} line, {irc} IRC, {tls} over TLS\n{} lines relayed, {} kicked, {} refused, {} connects\n",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            human(up),
            line + irc,
            self.stats.relayed,
            self.stats.kicked,
            self.stats.refused,
            self.stats.connects,
        );
        ok(
            text,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": self.pid.as_raw(),
                "uptime_s": up,
                "clients": { "line": line, "irc": irc, "tls": tls },
                "relayed": self.stats.relayed,
                "kicked": self.stats.kicked,
                "refused": self.stats.refused,
                "connects": self.stats.connects,
                "max_clients": self.cfg.max_clients,
            }),
        )
    }

    fn ctl_who(&self) -> Reply {
        let now = unix_now();
        let mut rows = Vec::new();
        let mut text = format!(
            "{:<24} {:<5} {:<4} {:<40} {:>9} {:>8} {:>8} {:>8}\n",
            "NICK", "PROTO", "TLS", "PEER", "CONNECTED", "IN", "OUT", "PID"
        );
        let mut clients: Vec<_> = self
            .clients
            .iter()
            .filter(|c| c.leaving.is_none())
            .collect();
        clients.sort_by_key(|c| c.serial);
        for c in clients {
            let proto = match c.proto {
                Proto::Line => "line",
                Proto::Irc => "irc",
            };
            let out = self
                .stats
                .relayed
                .saturating_sub(c.relayed_at_join + c.lines_in)
                + c.private_in;
            let muted = c
                .muted_until(Instant::now())
                .map(|t| t.map(|d| d.as_secs()));
            text.push_str(&format!(
                "{:<24} {:<5} {:<4} {:<40} {:>9} {:>8} {:>8} {:>8}{}\n",
                c.nick,
                proto,
                if c.tls { "yes" } else { "no" },
                c.peer.to_string(),
                human(now.saturating_sub(c.since_unix)),
                c.lines_in,
                out,
                c.pid.as_raw(),
                match muted {
                    None => String::new(),
                    Some(None) => "  (muted)".into(),
                    Some(Some(s)) => format!("  (muted, {} left)", human(s)),
                }
            ));
            rows.push(json!({
                "nick": c.nick,
                "protocol": proto,
                "tls": c.tls,
                "peer": c.peer.to_string(),
                "connected_since": c.since_unix,
                "lines_in": c.lines_in,
                "lines_out": out,
                "pid": c.pid.as_raw(),
                "in_room": c.in_room,
                "muted": muted.is_some(),
            }));
        }
        ok(text, json!({ "clients": rows }))
    }

    /// The connected client called `nick` (any case), if any.
    fn ctl_find(&self, nick: &str) -> Result<usize, Reply> {
        self.clients
            .slot_of_nick(nick)
            .filter(|&s| self.clients.get(s).is_some_and(|c| c.leaving.is_none()))
            .ok_or_else(|| err(format!("no client called {nick}")))
    }

    fn ctl_kick(&mut self, nick: &str, reason: &str, admin: Peer) -> Reply {
        let slot = match self.ctl_find(nick) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let reason = match sanitize::check(reason.as_bytes()) {
            Ok(r) => r.to_string(),
            Err(_) => return err("the reason holds characters that cannot be sent"),
        };
        let c = self.clients.get(slot).unwrap();
        let (nick, serial, peer) = (c.nick.clone(), c.serial, c.peer);
        let told = match reason.is_empty() {
            true => "kicked by an operator".to_string(),
            false => format!("kicked by an operator: {reason}"),
        };
        self.ctl_remove(slot, &told, &reason, super::KICK_OPERATOR);
        warn!(event = "kick", client = serial, peer = %peer, nick = %nick, reason = %told, admin_uid = admin.uid, admin_pid = admin.pid, "{nick} kicked by uid {}: {told}", admin.uid);
        ok(format!("kicked {nick}\n"), json!({ "kicked": nick }))
    }

    /// Disconnects a client for an operator: it reads `told`, the room
    /// sees a kick with `reason`.
    fn ctl_remove(&mut self, slot: usize, told: &str, reason: &str, why: usize) {
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        c.kill_at = Some(Instant::now() + super::CLOSE_GRACE);
        let nick = c.nick.clone();
        let close = Event::new(Kind::Closing, "", told).with_flags(event::CLOSING_ERROR);
        self.send_ctl(slot, crate::ipc::CLOSE, &close.encode());
        let kick = Event::new(Kind::Kick, &nick, reason).encode();
        self.leave_with(slot, told, Some(kick));
        self.stats.kicked += 1;
        self.stats.kicks_by[why] += 1;
    }

    /// Mutes (`time`: Some(for how long, or None: until unmuted)) or
    /// unmutes (`time`: None) a client.
    fn ctl_mute(&mut self, nick: &str, time: Option<Option<Duration>>, admin: Peer) -> Reply {
        let slot = match self.ctl_find(nick) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let c = self.clients.get_mut(slot).unwrap();
        let nick = c.nick.clone();
        let serial = c.serial;
        let (room, told, done) = match time {
            Some(t) => {
                c.muted = Some(t.map(|d| Instant::now() + d));
                let how = t.map_or(String::new(), |d| format!(" for {}", human(d.as_secs())));
                (
                    format!("{nick} was muted by an operator{how}"),
                    format!("an operator muted you{how}: your lines are not relayed"),
                    "muted",
                )
            }
            None => {
                if c.muted.take().is_none() {
                    return err(format!("{nick} is not muted"));
                }
                (
                    format!("{nick} may speak again"),
                    "an operator unmuted you".to_string(),
                    "unmuted",
                )
            }
        };
        // Kept in the state file: a mute outlasts a restart.
        self.save_client(slot);
        let personal = Event::new(Kind::Notice, "", &told).with_flags(event::NOTICE_PERSONAL);
        self.send_event(slot, personal);
        self.relay
            .emit(0, Event::new(Kind::Notice, "", &room).encode());
        info!(event = done, client = serial, nick = %nick, admin_uid = admin.uid, admin_pid = admin.pid, "{room} (uid {})", admin.uid);
        ok(format!("{done} {nick}\n"), json!({ done: nick }))
    }

    fn ctl_ban(
        &mut self,
        target: &str,
        time: Option<Duration>,
        reason: &str,
        admin: Peer,
    ) -> Reply {
        let (parsed, text) = match super::bans::parse_target(target) {
            Ok(t) => t,
            Err(e) => return err(e),
        };
        let Ok(reason) = sanitize::check(reason.as_bytes()) else {
            return err("the reason holds characters that cannot be sent");
        };
        let now = unix_now();
        let ban = super::bans::Ban {
            target: parsed,
            text: text.clone(),
            until: time.map_or(0, |d| now + d.as_secs()),
            set: now,
            reason: reason.to_string(),
        };
        if let Err(e) = self.bans.add(ban.clone(), now) {
            return err(e);
        }
        // Who matches now goes.
        let told = match reason.is_empty() {
            true => "banned by an operator".to_string(),
            false => format!("banned by an operator: {reason}"),
        };
        let hit: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| c.leaving.is_none())
            .filter(|c| ban.target.matches_addr(c.peer.ip()) || ban.target.matches_nick(&c.nick))
            .map(|c| c.slot)
            .collect();
        for &slot in &hit {
            self.ctl_remove(slot, &told, reason, super::KICK_BAN);
        }
        let how = time.map_or(String::new(), |d| format!(" for {}", human(d.as_secs())));
        warn!(event = "ban", target = %text, until = ban.until, reason = %reason, kicked = hit.len(), admin_uid = admin.uid, admin_pid = admin.pid, "{text} banned{how} by uid {}: {reason}", admin.uid);
        let kept = if self.bans.kept() {
            ""
        } else {
            " (not kept: no state_dir)"
        };
        ok(
            format!(
                "banned {text}{how}; {} connected client(s) removed{kept}\n",
                hit.len()
            ),
            json!({ "banned": text, "until": ban.until, "kicked": hit.len(), "kept": self.bans.kept() }),
        )
    }

    fn ctl_bans(&self) -> Reply {
        let now = unix_now();
        let mut text = String::new();
        let mut rows = Vec::new();
        for b in self.bans.active(now) {
            let left = match b.until {
                0 => "for good".to_string(),
                t => format!("{} left", human(t - now)),
            };
            text.push_str(&format!("{:<40} {:<16} {}\n", b.text, left, b.reason));
            rows.push(
                json!({ "target": b.text, "until": b.until, "set": b.set, "reason": b.reason }),
            );
        }
        if rows.is_empty() {
            text.push_str("no bans\n");
        }
        ok(text, json!({ "bans": rows }))
    }

    fn ctl_say(&mut self, text: &str, admin: Peer) -> Reply {
        let Ok(text) = sanitize::check(text.as_bytes()) else {
            return err("the text holds characters that cannot be sent");
        };
        self.relay
            .emit(0, Event::new(Kind::Notice, "", text).encode());
        info!(
            event = "say",
            admin_uid = admin.uid,
            admin_pid = admin.pid,
            "notice to the room by uid {}",
            admin.uid
        );
        ok("said\n", json!({ "said": text }))
    }

    fn ctl_topic(&mut self, text: &str, admin: Peer) -> Reply {
        let Ok(text) = sanitize::check(text.as_bytes()) else {
            return err("the topic holds characters that cannot be sent");
        };
        if text.len() > super::topic::MAX_TOPIC {
            return err("the topic is too long");
        }
        self.cfg.topic = text.to_string();
        self.relay
            .emit(0, Event::new(Kind::Topic, "", text).encode());
        info!(event = "topic", admin_uid = admin.uid, admin_pid = admin.pid, topic = %text, "topic set by uid {}", admin.uid);
        let file_topic = self.file_topic.clone();
        match self.keep_topic(&file_topic, text) {
            Ok(()) => ok("topic set\n", json!({ "topic": text })),
            Err(e) => ok(
                format!("topic set (not kept across restarts: {e})\n"),
                json!({ "topic": text, "kept": false }),
            ),
        }
    }

    /// Writes the operator's topic to `state_dir` (see `master::topic`);
    /// a failure is logged and returned.
    pub(super) fn keep_topic(&mut self, file_topic: &str, topic: &str) -> Result<(), String> {
        let text = super::topic::render(file_topic, topic);
        self.bans
            .write_file(super::topic::FILE, &text)
            .map_err(|e| {
                warn!(event = "topic_file", error = %e, "cannot keep the topic in state_dir: {e}");
                e.to_string()
            })
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The two largest units: 3d 4h, 2h 5m, 4m 10s, 12s, 10m.
fn human(secs: u64) -> String {
    let parts = [
        (secs / 86400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|p| p.0 > 0).unwrap_or(3);
    let mut out = format!("{}{}", parts[first].0, parts[first].1);
    if let Some((n, u)) = parts.get(first + 1).filter(|p| p.0 > 0) {
        out.push_str(&format!(" {n}{u}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_durations() {
        assert_eq!(super::human(0), "0s");
        assert_eq!(super::human(600), "10m");
        assert_eq!(super::human(3725), "1h 2m");
        assert_eq!(super::human(90061), "1d 1h");
        assert_eq!(super::human(59), "59s");
    }
}
