//! IRC (RFC 1459/2812, as the Modern IRC documents describe what clients
//! expect): irssi, WeeChat, HexChat and bots join the one room as the
//! channel `irc_channel`.
//!
//! [`message`] parses and writes single IRC lines; [`Irc`] is a client's
//! session: registration (CAP, NICK, USER), the command table
//! ([`commands`]), and the rendering of room events as IRC messages. Pure:
//! no I/O, the child's loop drives it like the line protocol's.

pub mod commands;
pub mod message;

use super::event::{self, Event, Kind, List, Setup};
use super::{clock, sanitize, Ask, Leave, Session};
use message::{write, write_parts};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use message::MAX_LINE;

/// Most targets of one PRIVMSG or NOTICE (`TARGMAX`); more get 407.
pub const MAX_TARGETS: usize = 4;
/// The version in 002 and 004.
pub const VERSION: &str = concat!("chatd-", env!("CARGO_PKG_VERSION"));

/// The one line a refused connection gets before it is closed.
pub fn refusal(why: &str) -> String {
    format!("ERROR :Closing Link: ({why})\r\n")
}

/// A server name usable in IRC prefixes: `server_name` without spaces.
fn irc_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() {
        "chatd".into()
    } else {
        n
    }
}

/// An IRC client's session.
pub struct Irc {
    /// The nick the master confirmed (the guest nick until then).
    nick: String,
    server: String,
    channel: String,
    topic: String,
    motd: String,
    /// CAP LS was sent and CAP END not yet.
    cap_open: bool,
    /// The client enabled IRCv3 `server-time` (CAP REQ): history lines
    /// carry a `time` tag instead of a time in their text.
    server_time: bool,
    /// The room's history, kept until the client joins the channel:
    /// `[time: u64 LE][length: u32 LE][encoded event]`...
    history: Vec<u8>,
    /// When the history was received (ms since the epoch).
    history_now: u64,
    got_user: bool,
    /// The client chose a nick (not the guest one) and the master took it.
    got_nick: bool,
    registered: bool,
    joined: bool,
    /// WHO masks, WHOIS and ISON targets, in the order their lists come.
    queries: VecDeque<String>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    register_by: Instant,
    keepalive: Duration,
}

impl Irc {
    pub fn new(now: Instant, registration: Duration, keepalive: Duration) -> Irc {
        Irc {
            nick: "*".into(),
            server: "chatd".into(),
            channel: "#chatd".into(),
            topic: String::new(),
            motd: String::new(),
            cap_open: false,
            server_time: false,
            history: Vec::new(),
            history_now: 0,
            got_user: false,
            got_nick: false,
            registered: false,
            joined: false,
            queries: VecDeque::new(),
            last_heard: now,
            ping_sent: None,
            register_by: now + registration,
            keepalive,
        }
    }

    /// Takes what a `Setup` or `Resume` event says: the nick `n` and the
    /// server's names, topic and motd in `t`.
    fn set_up(&mut self, n: &str, t: &str) {
        let s = Setup::from_text(t);
        self.server = irc_name(&s.server);
        self.channel = s.channel;
        self.topic = s.topic;
        self.motd = s.motd;
        self.nick = n.to_string();
    }

    /// The nick in numerics: `*` until registered.
    fn target(&self) -> &str {
        if self.registered {
            &self.nick
        } else {
            "*"
        }
    }

    /// Appends a numeric reply: `:server NNN target params...`.
    fn reply(&self, out: &mut Vec<u8>, code: &str, params: &[&str]) {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(self.target());
        all.extend_from_slice(params);
        write(out, &self.server, code, &all);
    }

    fn notice(&self, out: &mut Vec<u8>, text: &str) {
        write(out, &self.server, "NOTICE", &[self.target(), text]);
    }

    /// A user's prefix, `nick!nick@server`, in pieces for [`write_parts`].
    fn from<'a>(&'a self, nick: &'a str) -> [&'a str; 5] {
        [nick, "!", nick, "@", &self.server]
    }

    fn is_channel(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.channel)
    }

    /// Registration ends once NICK, USER and CAP END (if CAP started) are in.
    fn try_register(&mut self, out: &mut Vec<u8>, asks: &mut Vec<Ask>) {
        if self.registered || !self.got_nick || !self.got_user || self.cap_open {
            return;
        }
        self.registered = true;
        let me = self.from(&self.nick).concat();
        self.reply(
            out,
            "001",
            &[&format!("Welcome to the {} IRC Network {me}", self.server)],
        );
        self.reply(
            out,
            "002",
            &[&format!(
                "Your host is {}, running version {VERSION}",
                self.server
            )],
        );
        self.reply(out, "003", &["This server was created with chatd"]);
        self.reply(out, "004", &[&self.server, VERSION, "io", "bnt"]);
        let network = format!("NETWORK={}", self.server);
        let nicklen = format!("NICKLEN={}", crate::config::MAX_NICK);
        let targmax = format!("TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS}");
        self.reply(
            out,
            "005",
            &[
                "CHANTYPES=#",
                "PREFIX=(ov)@+",
                "CHANMODES=b,,,nt",
                "CASEMAPPING=ascii",
                &nicklen,
                "CHANNELLEN=50",
                "TOPICLEN=300",
                &network,
                &targmax,
                "are supported by this server",
            ],
        );
        self.motd(out);
        asks.push(Ask::Join);
    }

    fn motd(&self, out: &mut Vec<u8>) {
        if self.motd.is_empty() {
            self.reply(out, "422", &["MOTD File is missing"]);
            return;
        }
        self.reply(
            out,
            "375",
            &[&format!("- {} Message of the day - ", self.server)],
        );
        for l in self.motd.lines() {
            self.reply(out, "372", &[&format!("- {l}")]);
        }
        self.reply(out, "376", &["End of /MOTD command."]);
    }

    /// 353 lines (split to fit) and 366.
    fn names(&self, out: &mut Vec<u8>, nicks: &str) {
        let room = MAX_LINE
            .saturating_sub(self.server.len() + self.target().len() + self.channel.len() + 16)
            .max(64);
        let mut line = String::new();
        for n in nicks.split(' ').filter(|n| !n.is_empty()) {
            if !line.is_empty() && line.len() + 1 + n.len() > room {
                self.reply(out, "353", &["=", &self.channel, &line]);
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(n);
        }
        if !line.is_empty() {
            self.reply(out, "353", &["=", &self.channel, &line]);
        }
        self.reply(out, "366", &[&self.channel, "End of /NAMES list."]);
    }

    /// A message to a channel or nick, split so that every line fits.
    fn privmsg(
        &self,
        out: &mut Vec<u8>,
        from: &str,
        command: &str,
        to: &str,
        text: &str,
        ctcp: bool,
    ) {
        let prefix = self.from(from);
        let prefix_len: usize = prefix.iter().map(|p| p.len()).sum();
        let ctcp_len = if ctcp { 9 } else { 0 };
        let room = MAX_LINE.saturating_sub(prefix_len + command.len() + to.len() + 6 + ctcp_len);
        for piece in message::split(text, room) {
            let body;
            let t = if ctcp {
                body = format!("\x01ACTION {piece}\x01");
                &body
            } else {
                piece
            };
            write_parts(out, &prefix, command, &[to, t]);
        }
    }

    /// The history kept for the first join, rendered after its names list.
    fn replay_history(&mut self, out: &mut Vec<u8>) {
        let kept = std::mem::take(&mut self.history);
        let mut rest = &kept[..];
        while rest.len() >= 12 {
            let time = u64::from_le_bytes(rest[..8].try_into().unwrap());
            let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
            let Some(payload) = rest.get(12..12 + len) else {
                break;
            };
            rest = &rest[12 + len..];
            let Some(ev) = Event::decode(payload) else {
                continue;
            };
            let action = ev.kind == Kind::Action;
            if self.server_time && time != 0 {
                let mut lines = Vec::new();
                self.privmsg(
                    &mut lines,
                    ev.nick,
                    "PRIVMSG",
                    &self.channel,
                    ev.text,
                    action,
                );
                let tag = format!("@time={} ", clock::iso8601(time));
                for l in lines.split_inclusive(|&b| b == b'\n') {
                    out.extend_from_slice(tag.as_bytes());
                    out.extend_from_slice(l);
                }
            } else {
                let text = match clock::stamp(time, self.history_now) {
                    Some(t) => format!("[{t}] {}", ev.text),
                    None => ev.text.to_string(),
                };
                self.privmsg(out, ev.nick, "PRIVMSG", &self.channel, &text, action);
            }
        }
    }

    fn on_list(&mut self, list: List, nicks: &str, out: &mut Vec<u8>) {
        let mut all = nicks.split(' ').filter(|n| !n.is_empty());
        match list {
            List::Joined => {
                self.joined = true;
                write_parts(out, &self.from(&self.nick), "JOIN", &[&self.channel]);
                if !self.topic.is_empty() {
                    self.reply(out, "332", &[&self.channel, &self.topic]);
                }
                self.names(out, nicks);
                self.replay_history(out);
            }
            List::Names | List::Who => self.names(out, nicks),
            List::IrcWho => {
                let mask = self.queries.pop_front().unwrap_or_default();
                let everyone = self.is_channel(&mask) || mask.is_empty() || mask == "*";
                for n in all.filter(|n| everyone || n.eq_ignore_ascii_case(&mask)) {
                    let info = format!("0 {n}");
                    let server = self.server.clone();
                    self.reply(
                        out,
                        "352",
                        &[&self.channel, n, &server, &server, n, "H", &info],
                    );
                }
                self.reply(out, "315", &[&mask, "End of /WHO list."]);
            }
            List::Whois => {
                let who = self.queries.pop_front().unwrap_or_default();
                match all.find(|n| n.eq_ignore_ascii_case(&who)) {
                    Some(n) => {
                        let server = self.server.clone();
                        self.reply(out, "311", &[n, n, &server, "*", n]);
                        self.reply(out, "319", &[n, &self.channel]);
                        self.reply(out, "312", &[n, &server, "chatd"]);
                    }
                    None => self.reply(out, "401", &[&who, "No such nick/channel"]),
                }
                self.reply(out, "318", &[&who, "End of /WHOIS list."]);
            }
            List::Lusers => {
                let n = all.count();
                let users = format!("There are {n} users and 0 invisible on 1 servers");
                self.reply(out, "251", &[&users]);
                self.reply(out, "255", &[&format!("I have {n} clients and 0 servers")]);
            }
            List::Ison => {
                let asked = self.queries.pop_front().unwrap_or_default();
                let nicks: Vec<&str> = all.collect();
                let on: Vec<&str> = asked
                    .split(' ')
                    .filter(|a| nicks.iter().any(|n| n.eq_ignore_ascii_case(a)))
                    .collect();
                self.reply(out, "303", &[&on.join(" ")]);
            }
        }
    }
}

/// Whether an IRC line may be handled: UTF-8, and no control character
/// but tab, the formatting codes and CTCP's 0x01.
fn check_line(raw: &[u8]) -> Result<&str, sanitize::Reject> {
    sanitize::check_allowing(raw, |c| c == '\x01' || sanitize::is_formatting(c))
}

impl Session for Irc {
    fn max_asks(&self) -> usize {
        MAX_TARGETS
    }

    fn on_line(
        &mut self,
        raw: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        asks: &mut Vec<Ask>,
    ) -> Option<Leave> {
        self.last_heard = now;
        self.ping_sent = None;
        match check_line(raw) {
            Ok(line) => commands::dispatch(self, line, out, asks),
            Err(r) => {
                self.notice(out, r.message());
                None
            }
        }
    }

    fn on_history(&mut self, ev: &Event, time: u64, now: u64, _out: &mut Vec<u8>) {
        if !matches!(ev.kind, Kind::Chat | Kind::Action) {
            return;
        }
        let start = self.history.len();
        self.history.extend_from_slice(&time.to_le_bytes());
        self.history.extend_from_slice(&[0; 4]);
        ev.encode_into(&mut self.history);
        let len = (self.history.len() - start - 12) as u32;
        self.history[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
        self.history_now = now;
    }

    fn on_too_long(&mut self, _max: usize, out: &mut Vec<u8>) {
        self.reply(out, "417", &["Input line was too long"]);
    }

    fn on_event(&mut self, ev: &Event, out: &mut Vec<u8>, asks: &mut Vec<Ask>) {
        let (n, t) = (ev.nick, ev.text);
        let room = matches!(
            ev.kind,
            Kind::Chat
                | Kind::Action
                | Kind::Join
                | Kind::Part
                | Kind::Quit
                | Kind::Nick
                | Kind::Notice
                | Kind::Kick
                | Kind::Topic
        );
        if ev.kind == Kind::Topic {
            // Kept for a later JOIN's 332, even while parted.
            self.topic = t.to_string();
        }
        let personal = ev.kind == Kind::Notice && ev.flags & event::NOTICE_PERSONAL != 0;
        if room && !personal && !self.joined {
            return;
        }
        match ev.kind {
            Kind::Chat => self.privmsg(out, n, "PRIVMSG", &self.channel, t, false),
            Kind::Action => self.privmsg(out, n, "PRIVMSG", &self.channel, t, true),
            Kind::Join => write_parts(out, &self.from(n), "JOIN", &[&self.channel]),
            Kind::Part => {
                write_parts(out, &self.from(n), "PART", &[&self.channel, t]);
                if n == self.nick {
                    self.joined = false;
                }
            }
            Kind::Quit => write_parts(out, &self.from(n), "QUIT", &[t]),
            Kind::Nick => write_parts(out, &self.from(n), "NICK", &[t]),
            Kind::Notice if personal => self.notice(out, t),
            Kind::Notice => write(out, &self.server, "NOTICE", &[&self.channel, t]),
            Kind::Kick => {
                let reason = if t.is_empty() {
                    "kicked by an operator"
                } else {
                    t
                };
                write(out, &self.server, "KICK", &[&self.channel, n, reason]);
            }
            Kind::Topic => write(out, &self.server, "TOPIC", &[&self.channel, t]),
            Kind::Private => {
                let notice = ev.flags & event::PRIV_NOTICE != 0;
                let cmd = if notice { "NOTICE" } else { "PRIVMSG" };
                let action = ev.flags & event::PRIV_ACTION != 0;
                self.privmsg(out, n, cmd, &self.nick, t, action);
            }
            Kind::NickOk => {
                let was_chosen = self.got_nick;
                self.got_nick = true;
                if self.registered {
                    write_parts(out, &self.from(n), "NICK", &[t]);
                }
                self.nick = t.to_string();
                if !was_chosen {
                    self.try_register(out, asks);
                }
            }
            Kind::NickError => {
                let code = if ev.flags & event::NICK_INVALID != 0 {
                    "432"
                } else {
                    "433"
                };
                let why = if code == "433" {
                    "Nickname is already in use"
                } else {
                    "Erroneous nickname"
                };
                self.reply(out, code, &[n, why]);
            }
            Kind::NoSuchNick => self.reply(out, "401", &[n, "No such nick/channel"]),
            Kind::Names => {
                if let Some(list) = List::from_u8(ev.flags) {
                    self.on_list(list, t, out);
                }
            }
            Kind::Setup => self.set_up(n, t),
            Kind::Resume => {
                self.set_up(n, t);
                (self.got_nick, self.got_user, self.registered) = (true, true, true);
                self.cap_open = false;
                self.joined = ev.flags & event::RESUME_JOINED != 0;
                let text = if ev.flags & event::RESUME_MISSED != 0 {
                    // The previous child may have stopped mid-line: an
                    // empty line ends it, which clients ignore.
                    out.extend_from_slice(b"\r\n");
                    event::RESTARTED_MISSED
                } else {
                    event::RESTARTED
                };
                self.notice(out, text);
            }
            Kind::Closing => {
                self.notice(out, t);
                let e = format!("Closing Link: {} ({t})", self.nick);
                write(out, &self.server, "ERROR", &[&e]);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if !self.registered {
            return Some(self.register_by);
        }
        if self.keepalive.is_zero() {
            return None;
        }
        Some(self.ping_sent.unwrap_or(self.last_heard) + self.keepalive)
    }

    fn on_deadline(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Leave> {
        if !self.registered {
            return Some(Leave::Error("Registration timeout".into()));
        }
        if self.ping_sent.is_some() {
            let secs = (now - self.last_heard).as_secs();
            return Some(Leave::Error(format!("Ping timeout: {secs} seconds")));
        }
        self.ping_sent = Some(now);
        write(out, &self.server, "PING", &[&self.server]);
        None
    }

    fn on_flood(&mut self, out: &mut Vec<u8>) {
        self.notice(
            out,
            "flood control: you are sending too fast, your lines are delayed",
        );
    }

    fn farewell(&mut self, leave: &Leave, out: &mut Vec<u8>) {
        let why = match leave {
            Leave::Quit(r) => format!("Quit: {r}"),
            Leave::Error(e) => e.clone(),
        };
        let e = format!("Closing Link: {} ({why})", self.nick);
        write(out, &self.server, "ERROR", &[&e]);
    }
}
