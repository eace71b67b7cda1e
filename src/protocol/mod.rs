//! The client protocols: bytes in, requests out; events in, bytes out.
//!
//! Everything here is pure (no I/O) so that it can be unit-tested and
//! fuzzed. Shared pieces: [`lines`] frames a byte stream into lines with a
//! length limit, [`sanitize`] decides whether text may be forwarded,
//! [`nick`] validates nicknames, and [`event`] is what the room says, as
//! data. One module per protocol turns a client's lines into [`Ask`]s for
//! the master and renders [`event::Event`]s for its client:
//! [`line`] (the plain line protocol: `nc`, `telnet`) and [`irc`].
//! The child's loop (`crate::child`) runs either through [`Session`] and
//! does not care which.

pub mod clock;
pub mod command;
pub mod event;
pub mod irc;
pub mod line;
pub mod lines;
pub mod nick;
pub mod sanitize;

use event::List;
use std::time::Instant;

/// Prefix of every error line sent to a line-protocol client.
pub const ERR: &str = "! ";
/// Prefix of server notices to a line-protocol client.
pub const NOTICE: &str = "* ";

/// Which protocol a listener speaks and a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Line,
    Irc,
}

/// What a listener speaks: a protocol, over TLS or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub proto: Proto,
    pub tls: bool,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Line => "line",
            Proto::Irc => "IRC",
        };
        match self.tls {
            true => write!(f, "{p} over TLS"),
            false => f.write_str(p),
        }
    }
}

/// What a client asks of the master (through its ring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Say `text` to the room.
    Chat(String),
    /// Do `text` in the room (`/me`).
    Action(String),
    /// Take this nick.
    Nick(String),
    /// Send me the nicks in the room, for this purpose.
    List(List),
    /// Put me in the room.
    Join,
    /// Take me out of the room, with this reason.
    Part(String),
    /// Send `text` to `target` alone (flags: `event::PRIV_*`).
    Private {
        flags: u8,
        target: String,
        text: String,
    },
}

/// Why a session ends the connection; rendered as its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leave {
    /// The client asked to leave, with this reason.
    Quit(String),
    /// The server ends it (`text` is the error shown, and the reason).
    Error(String),
}

/// What the child's loop needs from a protocol.
pub trait Session {
    /// Most [`Ask`]s one input line can produce (the child keeps room in
    /// its ring for that many before it takes a line).
    fn max_asks(&self) -> usize;
    /// Handles one framed input line (not yet sanitised): replies go to
    /// `out`, requests to `asks`.
    fn on_line(
        &mut self,
        line: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        asks: &mut Vec<Ask>,
    ) -> Option<Leave>;
    /// An input line was longer than the limit and is being discarded.
    fn on_too_long(&mut self, max: usize, out: &mut Vec<u8>);
    /// Renders one event (from the relay log, or sent to this client
    /// alone); `asks` takes what it makes the client ask in turn.
    fn on_event(&mut self, ev: &event::Event, out: &mut Vec<u8>, asks: &mut Vec<Ask>);
    /// Renders one line of the room's history for a newcomer: `ev` was
    /// said at `time` (ms since the epoch; 0: unknown), it is now `now`.
    /// Called before any live event; a session whose client is not in the
    /// room yet (IRC) keeps the lines until it is.
    fn on_history(&mut self, ev: &event::Event, time: u64, now: u64, out: &mut Vec<u8>);
    /// When [`Session::on_deadline`] must run next, if ever.
    fn deadline(&self) -> Option<Instant>;
    /// Timers: keepalive pings, registration timeout.
    fn on_deadline(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Leave>;
    /// Flood control told the client its lines are delayed.
    fn on_flood(&mut self, out: &mut Vec<u8>);
    /// The last line before the connection closes.
    fn farewell(&mut self, leave: &Leave, out: &mut Vec<u8>);
}
