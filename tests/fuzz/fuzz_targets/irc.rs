//! The protocol sessions as a child drives them: `protocol::irc::Irc` and
//! `protocol::line::Line`, fed arbitrary client lines (already framed, at
//! most the protocol's line limit), arbitrary events (as a hostile or
//! broken relay log would hold), as live lines or as history with an
//! arbitrary time, and clock ticks.
//!
//! Checked: no panic; an input line yields at most `max_asks` requests,
//! each with text the master would accept (sanitised, IRC formatting codes
//! allowed); every IRC line written is at most 512 bytes with its CR LF
//! (besides a leading `@time=` tag, which has its own budget)
//! and carries no control character but the formatting codes and CTCP's
//! 0x01; the line protocol writes no control character at all but tab and
//! its newline (no terminal escape, and no formatting code, reaches a
//! line-protocol user).
#![no_main]

use chatd::protocol::event::Event;
use chatd::protocol::irc::{Irc, MAX_LINE};
use chatd::protocol::line::Line;
use chatd::protocol::{sanitize, Ask, Session};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

#[derive(Arbitrary, Debug)]
enum Op {
    Line(Vec<u8>),
    Event(Vec<u8>),
    History(Vec<u8>, u64),
    Tick(u16),
}

fn check_asks(asks: &[Ask]) {
    for a in asks {
        let t = match a {
            Ask::Chat(t) | Ask::Action(t) | Ask::Nick(t) | Ask::Part(t) => t,
            Ask::Private { text, .. } => text,
            Ask::List(_) | Ask::Join => continue,
        };
        assert!(sanitize::check_formatted(t.as_bytes()).is_ok(), "{a:?}");
    }
}

fn check_irc_output(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"));
    for l in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let l = match l.strip_prefix(b"@time=") {
            Some(rest) => {
                let (tag, msg) =
                    rest.split_at(rest.iter().position(|&b| b == b' ').expect("tag ends"));
                assert!(tag.len() == 24 && tag.ends_with(b"Z"), "{tag:?}");
                &msg[1..]
            }
            None => l,
        };
        assert!(l.len() < 512, "IRC line of {} bytes", l.len() + 1);
        let l = l.strip_suffix(b"\r").expect("CR LF");
        let text = std::str::from_utf8(l).expect("UTF-8");
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\x01' && c != '\t' && !sanitize::is_formatting(c)),
            "{text:?}"
        );
    }
}

fn check_line_output(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("UTF-8");
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{text:?}"
    );
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let mut irc = Irc::new(now, Duration::from_secs(30), Duration::from_secs(60));
    let mut line = Line::new();
    for op in ops {
        let (mut io, mut lo) = (Vec::new(), Vec::new());
        let (mut ia, mut la) = (Vec::new(), Vec::new());
        match op {
            Op::Line(mut raw) => {
                raw.retain(|&b| b != b'\n');
                let mut irc_raw = raw.clone();
                irc_raw.truncate(MAX_LINE);
                irc.on_line(&irc_raw, now, &mut io, &mut ia);
                assert!(ia.len() <= irc.max_asks());
                line.on_line(&raw, now, &mut lo, &mut la);
                assert!(la.len() <= line.max_asks());
            }
            Op::Event(p) => {
                if let Some(ev) = Event::decode(&p) {
                    irc.on_event(&ev, &mut io, &mut ia);
                    line.on_event(&ev, &mut lo, &mut la);
                }
            }
            Op::History(p, time) => {
                if let Some(ev) = Event::decode(&p) {
                    // Times up to the year 10000: the tag's fixed width.
                    let time = time % 253_402_300_800_000;
                    irc.on_history(&ev, time, time.saturating_add(1000), &mut io);
                    line.on_history(&ev, time, time.saturating_add(1000), &mut lo);
                }
            }
            Op::Tick(ms) => {
                now += Duration::from_millis(ms as u64 * 100);
                if irc.deadline().is_some_and(|d| d <= now) {
                    irc.on_deadline(now, &mut io);
                }
            }
        }
        check_asks(&ia);
        check_asks(&la);
        check_irc_output(&io);
        check_line_output(&lo);
    }
});
