//! What happened in the room, as data: the one format every protocol renders.
//!
//! The master never formats a line for everyone. It records what a line
//! *is* (an [`Event`]: a kind, a nick and a text) in the relay log for the
//! room, or sends it on one child's control socket for that client alone
//! (a private message, a reply); each child renders it for its own
//! protocol (`protocol::line`, `protocol::irc`). Encoded as
//! `[kind][flags][nick length][nick][text]`.
//!
//! Decoding is as strict as the master's validation of ring entries, because
//! a child reads the log from shared memory: a payload that does not decode
//! (unknown kind, lengths out of range, invalid UTF-8) is skipped by the
//! renderer, never trusted.

/// What an event is. Room events go through the relay log; the others are
/// replies or private messages for one client (control socket `EVENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `nick` said `text` to the room.
    Chat = 1,
    /// `nick` did `text` (`/me`, CTCP ACTION).
    Action = 2,
    /// `nick` joined the room.
    Join = 3,
    /// `nick` left the room (IRC PART) with reason `text`; still connected.
    Part = 4,
    /// `nick` disconnected with reason `text`.
    Quit = 5,
    /// `nick` is now called `text`.
    Nick = 6,
    /// A server notice to the room (`text`).
    Notice = 7,
    /// An operator removed `nick` from the server; `text` is the reason.
    Kick = 8,
    /// The room's topic is now `text`.
    Topic = 9,
    /// A private message from `nick`; flags: [`PRIV_ACTION`], [`PRIV_NOTICE`].
    Private = 20,
    /// Reply: your nick changed from `nick` to `text`.
    NickOk = 21,
    /// Reply: you cannot take nick `nick`; `text` says why; flags:
    /// [`NICK_IN_USE`] or [`NICK_INVALID`].
    NickError = 22,
    /// Reply: nobody is called `nick` (a private message's target).
    NoSuchNick = 23,
    /// Reply: the nicks in the room, space-separated in `text`, in answer
    /// to the request named by the flags ([`List`]).
    Names = 24,
    /// Set-up, sent before the fork: your nick is `nick`; `text` holds
    /// the server's name, the room's name, its topic and the motd, one a
    /// line (see [`Setup`]).
    Setup = 25,
    /// The server closes this connection; `text` says why. Flags:
    /// [`CLOSING_ERROR`] when it is the client's doing (SendQ).
    Closing = 26,
    /// Set-up of a child that takes over a client after a restart, in
    /// place of [`Kind::Setup`]: the client keeps its nick `nick`; `text`
    /// is a [`Setup`]'s. Flags: [`RESUME_JOINED`], [`RESUME_MISSED`].
    Resume = 27,
}

/// Flags of [`Kind::Resume`]: the client is in the channel (IRC).
pub const RESUME_JOINED: u8 = 1;
/// Flag of [`Kind::Resume`]: lines may have been lost in the restart (the
/// stored state did not check out, or the previous child did not stop
/// cleanly): the session says so, and starts on a fresh line.
pub const RESUME_MISSED: u8 = 2;
/// What a resumed client is told.
pub const RESTARTED: &str = "The server restarted; you are still connected.";
/// ... and when lines may have been lost.
pub const RESTARTED_MISSED: &str =
    "The server restarted; you are still connected, but lines may have been missed.";

/// Flags of [`Kind::Private`].
pub const PRIV_ACTION: u8 = 1;
pub const PRIV_NOTICE: u8 = 2;
/// Flags of [`Kind::NickError`].
pub const NICK_IN_USE: u8 = 1;
pub const NICK_INVALID: u8 = 2;
/// Flag of [`Kind::Closing`].
pub const CLOSING_ERROR: u8 = 1;
/// Flag of [`Kind::Notice`]: for this client alone (sent on its control
/// socket), not the room's.
pub const NOTICE_PERSONAL: u8 = 1;

/// What a [`Kind::Names`] reply answers (its flags): the child that asked
/// renders it accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum List {
    /// The line protocol's `/who`.
    Who = 0,
    /// IRC NAMES.
    Names = 1,
    /// IRC WHO.
    IrcWho = 2,
    /// The client's own join: JOIN, topic, names.
    Joined = 3,
    /// IRC WHOIS of the nick the child asked about.
    Whois = 4,
    /// IRC LUSERS.
    Lusers = 5,
    /// IRC ISON.
    Ison = 6,
}

impl List {
    pub fn from_u8(v: u8) -> Option<List> {
        Some(match v {
            0 => List::Who,
            1 => List::Names,
            2 => List::IrcWho,
            3 => List::Joined,
            4 => List::Whois,
            5 => List::Lusers,
            6 => List::Ison,
            _ => return None,
        })
    }
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Chat,
            2 => Kind::Action,
            3 => Kind::Join,
            4 => Kind::Part,
            5 => Kind::Quit,
            6 => Kind::Nick,
            7 => Kind::Notice,
            8 => Kind::Kick,
            9 => Kind::Topic,
            20 => Kind::Private,
            21 => Kind::NickOk,
            22 => Kind::NickError,
            23 => Kind::NoSuchNick,
            24 => Kind::Names,
            25 => Kind::Setup,
            26 => Kind::Closing,
            27 => Kind::Resume,
            _ => return None,
        })
    }
}

/// Whether an encoded event is one of the room's lines that newcomers get
/// as history: something a person said or did (private messages never
/// enter the relay log at all).
pub fn is_history(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(&k) if k == Kind::Chat as u8 || k == Kind::Action as u8)
}

/// One decoded event, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: Kind,
    pub flags: u8,
    pub nick: &'a str,
    pub text: &'a str,
    /// Decoding found no control byte at all (no formatting code, no tab):
    /// a renderer may copy the text as it is. False when not decoded.
    pub plain: bool,
}

/// Longest nick field (nicks are shorter; the field has a byte of length).
pub const MAX_NICK_FIELD: usize = 255;
/// Bytes before the nick.
pub const HEADER: usize = 3;

impl<'a> Event<'a> {
    pub fn new(kind: Kind, nick: &'a str, text: &'a str) -> Event<'a> {
        Event {
            kind,
            flags: 0,
            nick,
            text,
            plain: false,
        }
    }

    pub fn with_flags(mut self, flags: u8) -> Event<'a> {
        self.flags = flags;
        self
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let nick = &self.nick.as_bytes()[..self.nick.len().min(MAX_NICK_FIELD)];
        out.reserve(HEADER + nick.len() + self.text.len());
        out.extend_from_slice(&[self.kind as u8, self.flags, nick.len() as u8]);
        out.extend_from_slice(nick);
        out.extend_from_slice(self.text.as_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes a payload; `None` if it is not a well-formed event.
    ///
    /// Every child decodes every relayed entry, so the common case is one
    /// UTF-8 pass and one byte scan over nick and text together.
    pub fn decode(p: &'a [u8]) -> Option<Event<'a>> {
        let (&[kind, flags, n], rest) = p.split_first_chunk::<HEADER>()?;
        let kind = Kind::from_u8(kind)?;
        let n = n as usize;
        let all = std::str::from_utf8(rest).ok()?;
        if !all.is_char_boundary(n) {
            return None;
        }
        let (nick, text) = all.split_at(n);
        let plain = !super::sanitize::may_hold_control(rest);
        // What every renderer may pass on: no control character in a nick;
        // in a text only tab and IRC formatting codes (and the set-up's
        // line breaks).
        if !plain {
            super::sanitize::check(nick.as_bytes()).ok()?;
            super::sanitize::check_allowing(text.as_bytes(), |c| {
                super::sanitize::is_formatting(c)
                    || (matches!(kind, Kind::Setup | Kind::Resume) && c == '\n')
            })
            .ok()?;
        }
        Some(Event {
            kind,
            flags,
            nick,
            text,
            plain,
        })
    }
}

/// What a [`Kind::Setup`] event tells a new child.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Setup {
    pub server: String,
    pub channel: String,
    pub topic: String,
    pub motd: String,
    pub online: usize,
}

impl Setup {
    /// The text of a [`Kind::Setup`] event.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.server, self.channel, self.online, self.topic, self.motd
        )
    }

    pub fn from_text(t: &str) -> Setup {
        let mut it = t.splitn(5, '\n');
        let mut next = || it.next().unwrap_or("").to_string();
        Setup {
            server: next(),
            channel: next(),
            online: next().parse().unwrap_or(0),
            topic: next(),
            motd: next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Event::new(Kind::Nick, "alice", "bob").with_flags(7);
        let p = e.encode();
        let d = Event::decode(&p).unwrap();
        assert_eq!(
            (d.kind, d.flags, d.nick, d.text, d.plain),
            (e.kind, 7, "alice", "bob", true)
        );
        let e = Event::new(Kind::Chat, "a", "\x02bold\x02\ttab");
        let p = e.encode();
        let d = Event::decode(&p).unwrap();
        assert_eq!((d.text, d.plain), (e.text, false));
        // A nick split inside a character does not decode.
        assert_eq!(Event::decode(&[1, 0, 1, 0xc3, 0xa9]), None);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert_eq!(Event::decode(b""), None);
        assert_eq!(Event::decode(&[1, 0]), None);
        assert_eq!(Event::decode(&[99, 0, 0]), None);
        assert_eq!(Event::decode(&[1, 0, 9, b'a']), None);
        assert_eq!(Event::decode(&[1, 0, 1, 0xff]), None);
        assert_eq!(Event::decode(&[1, 0, 1, b'a', 0xc3]), None);
        assert_eq!(Event::decode(&[1, 0, 1, b'a', b'\r', b'\n']), None);
        assert_eq!(Event::decode(&[1, 0, 1, 0x1b, b'x']), None);
    }

    #[test]
    fn setup_round_trip() {
        let s = Setup {
            server: "chatd".into(),
            channel: "#chatd".into(),
            topic: "hello".into(),
            motd: "line 1\nline 2".into(),
            online: 3,
        };
        assert_eq!(Setup::from_text(&s.to_text()), s);
    }
}
