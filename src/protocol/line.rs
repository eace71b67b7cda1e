//! The line protocol: what `nc`, `telnet` and `socat` users speak.
//!
//! Input is one UTF-8 line at a time: chat, or a `/command`
//! ([`super::command`]). Output is lines for people: `<nick> text`, server
//! notices starting with `* `, errors with `! `. IRC formatting codes that
//! IRC users may send are removed here, never shown as raw bytes.

use super::clock;
use super::command::{self, Command};
use super::event::{self, Event, Kind, List, Setup};
use super::{nick, sanitize, Ask, Leave, Session, ERR, NOTICE};
use std::time::Instant;

/// A line-protocol client's session.
#[derive(Debug, Default)]
pub struct Line {}

impl Line {
    pub fn new() -> Line {
        Line {}
    }
}

/// The greeting a new line-protocol client reads first.
pub fn greeting(s: &Setup, nick: &str, out: &mut Vec<u8>) {
    let users = if s.online == 1 {
        "1 user".to_string()
    } else {
        format!("{} users", s.online)
    };
    let welcome = format!(
        "Welcome to {}! {users} online. You are {nick}. Type /help for commands.",
        s.server
    );
    line(out, NOTICE, &[&welcome]);
    for l in s.motd.lines() {
        line(out, NOTICE, &[l]);
    }
    if !s.topic.is_empty() {
        line(out, NOTICE, &["topic: ", &s.topic]);
    }
}

/// The one line a refused connection gets before it is closed.
pub fn refusal(why: &str) -> String {
    format!("{ERR}{why}\n")
}

/// Appends `prefix`, the parts without IRC formatting codes, and a newline.
fn line(out: &mut Vec<u8>, prefix: &str, parts: &[&str]) {
    out.extend_from_slice(prefix.as_bytes());
    for p in parts {
        strip_formatting(p, out);
    }
    out.push(b'\n');
}

/// Appends `text` without IRC formatting codes (bold, colour with its
/// digits, reset, reverse, italic, underline, strike, monospace).
pub fn strip_formatting(text: &str, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    // Most text has no control byte at all: one copy.
    if !sanitize::has_c0(b) {
        out.extend_from_slice(b);
        return;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0x02 | 0x0f | 0x11 | 0x16 | 0x1d | 0x1e | 0x1f => i += 1,
            0x03 => {
                i += 1;
                i += digits(&b[i..]);
                if b.get(i) == Some(&b',') && digits(&b[i + 1..]) > 0 {
                    i += 1 + digits(&b[i + 1..]);
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// How many ASCII digits (at most two) `b` starts with.
fn digits(b: &[u8]) -> usize {
    b.iter().take(2).take_while(|c| c.is_ascii_digit()).count()
}

impl Session for Line {
    fn max_asks(&self) -> usize {
        1
    }

    fn on_line(
        &mut self,
        raw: &[u8],
        _now: Instant,
        out: &mut Vec<u8>,
        asks: &mut Vec<Ask>,
    ) -> Option<Leave> {
        let text = match sanitize::check(raw) {
            Ok(t) => t,
            Err(r) => {
                line(out, ERR, &[r.message()]);
                return None;
            }
        };
        let err = |out: &mut Vec<u8>, m: &str| line(out, ERR, &[m]);
        match command::parse(text) {
            Command::Empty => {}
            Command::Chat(t) => asks.push(Ask::Chat(t.to_string())),
            Command::Me(t) => asks.push(Ask::Action(t.to_string())),
            Command::Nick(n) => match nick::validate(n) {
                Ok(()) => asks.push(Ask::Nick(n.to_string())),
                Err(why) => err(out, &format!("cannot use nick {n}: {why}")),
            },
            Command::Msg(target, text) => asks.push(Ask::Private {
                flags: 0,
                target: target.to_string(),
                text: text.to_string(),
            }),
            Command::Who => asks.push(Ask::List(List::Who)),
            Command::Help => {
                for l in command::HELP {
                    line(out, NOTICE, &[l]);
                }
            }
            Command::Quit(r) => return Some(Leave::Quit(r.unwrap_or("quit").to_string())),
            Command::Usage(u) => err(out, u),
            Command::Unknown(name) => err(out, &format!("unknown command /{name}; type /help")),
        }
        None
    }

    fn on_history(&mut self, ev: &Event, time: u64, now: u64, out: &mut Vec<u8>) {
        if !matches!(ev.kind, Kind::Chat | Kind::Action) {
            return;
        }
        let start = out.len();
        if let Some(t) = clock::stamp(time, now) {
            out.extend_from_slice(format!("[{t}] ").as_bytes());
        }
        let mark = out.len();
        self.on_event(ev, out, &mut Vec::new());
        if out.len() == mark {
            out.truncate(start);
        }
    }

    fn on_too_long(&mut self, max: usize, out: &mut Vec<u8>) {
        line(
            out,
            ERR,
            &[&format!("line too long (max {max} bytes), discarded")],
        );
    }

    fn on_event(&mut self, ev: &Event, out: &mut Vec<u8>, _asks: &mut Vec<Ask>) {
        let (n, t) = (ev.nick, ev.text);
        match ev.kind {
            // The hot path: most lines are chat without a control byte.
            Kind::Chat if ev.plain => {
                for part in ["<", n, "> ", t, "\n"] {
                    out.extend_from_slice(part.as_bytes());
                }
            }
            Kind::Chat => line(out, "<", &[n, "> ", t]),
            Kind::Action => line(out, NOTICE, &[n, " ", t]),
            Kind::Join => line(out, NOTICE, &[n, " joined"]),
            Kind::Part if t.is_empty() => line(out, NOTICE, &[n, " left the room"]),
            Kind::Part => line(out, NOTICE, &[n, " left the room (", t, ")"]),
            Kind::Quit => line(out, NOTICE, &[n, " left (", t, ")"]),
            Kind::Nick => line(out, NOTICE, &[n, " is now ", t]),
            Kind::Notice => line(out, NOTICE, &[t]),
            Kind::Kick if t.is_empty() => line(out, NOTICE, &[n, " was kicked"]),
            Kind::Kick => line(out, NOTICE, &[n, " was kicked (", t, ")"]),
            Kind::Topic if t.is_empty() => line(out, NOTICE, &["the topic was cleared"]),
            Kind::Topic => line(out, NOTICE, &["topic: ", t]),
            Kind::Private if ev.flags & event::PRIV_ACTION != 0 => {
                line(out, "[private] ", &[NOTICE, n, " ", t])
            }
            Kind::Private => line(out, "[private] <", &[n, "> ", t]),
            Kind::NickOk => line(out, NOTICE, &["you are now ", t]),
            Kind::NickError => line(out, ERR, &["nick ", n, " ", t]),
            Kind::NoSuchNick => line(out, ERR, &["no such nick: ", n]),
            // The answer to joining: a line client's greeting said it all.
            Kind::Names if ev.flags == List::Joined as u8 => {}
            Kind::Names => {
                let count = t.split(' ').filter(|s| !s.is_empty()).count();
                let mut l = format!("{count} online:");
                for nick in t.split(' ').filter(|s| !s.is_empty()) {
                    l.push(' ');
                    l.push_str(nick);
                }
                line(out, NOTICE, &[&l]);
            }
            Kind::Setup => greeting(&Setup::from_text(t), n, out),
            Kind::Resume => {
                if ev.flags & event::RESUME_MISSED != 0 {
                    // The previous child may have stopped mid-line.
                    out.push(b'\n');
                    line(out, NOTICE, &[event::RESTARTED_MISSED]);
                } else {
                    line(out, NOTICE, &[event::RESTARTED]);
                }
                line(out, NOTICE, &["you are ", n]);
            }
            Kind::Closing if ev.flags & event::CLOSING_ERROR != 0 => line(out, ERR, &[t]),
            Kind::Closing => line(out, NOTICE, &[t]),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn on_deadline(&mut self, _now: Instant, _out: &mut Vec<u8>) -> Option<Leave> {
        None
    }

    fn on_flood(&mut self, out: &mut Vec<u8>) {
        line(
            out,
            ERR,
            &["flood control: you are sending too fast, your lines are delayed"],
        );
    }

    fn farewell(&mut self, leave: &Leave, out: &mut Vec<u8>) {
        match leave {
            Leave::Quit(_) => line(out, NOTICE, &["Bye!"]),
            Leave::Error(e) => line(out, ERR, &[e]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(ev: Event) -> String {
        let mut out = Vec::new();
        Line::new().on_event(&ev, &mut out, &mut Vec::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_room_events() {
        assert_eq!(
            render(Event::new(Kind::Chat, "alice", "hi")),
            "<alice> hi\n"
        );
        assert_eq!(
            render(Event::new(Kind::Action, "alice", "waves")),
            "* alice waves\n"
        );
        assert_eq!(render(Event::new(Kind::Join, "bob", "")), "* bob joined\n");
        assert_eq!(
            render(Event::new(Kind::Quit, "bob", "quit")),
            "* bob left (quit)\n"
        );
        assert_eq!(
            render(Event::new(Kind::Nick, "guest-3", "bob")),
            "* guest-3 is now bob\n"
        );
        assert_eq!(
            render(Event::new(Kind::Names, "", "alice bob")),
            "* 2 online: alice bob\n"
        );
    }

    #[test]
    fn formatting_codes_are_removed() {
        assert_eq!(
            render(Event::new(
                Kind::Chat,
                "a",
                "\x02bold\x02 \x0304,12red\x03 \x1fu\x0f"
            )),
            "<a> bold red u\n"
        );
        assert_eq!(render(Event::new(Kind::Chat, "a", "\x03,x")), "<a> ,x\n");
        assert_eq!(render(Event::new(Kind::Chat, "a", "\x0399")), "<a> \n");
    }

    #[test]
    fn private_messages_and_errors() {
        let mut asks = Vec::new();
        let mut out = Vec::new();
        let mut s = Line::new();
        s.on_line(b"/msg bob hello there", Instant::now(), &mut out, &mut asks);
        assert_eq!(
            asks,
            [Ask::Private {
                flags: 0,
                target: "bob".into(),
                text: "hello there".into()
            }]
        );
        assert_eq!(
            render(Event::new(Kind::Private, "alice", "psst")),
            "[private] <alice> psst\n"
        );
        assert_eq!(
            render(Event::new(Kind::NoSuchNick, "carol", "")),
            "! no such nick: carol\n"
        );
        s.on_line(b"\x1b[2J", Instant::now(), &mut out, &mut asks);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("! line refused"));
    }
}
