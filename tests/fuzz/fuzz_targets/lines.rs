//! The client input path of a child: `protocol::lines::LineReader` framing a
//! byte stream that arrives in arbitrary pieces, then `sanitize::check`,
//! `command::parse` and `nick::validate` on every line, as `child` does.
//!
//! Checked: the framing equals a model computed on the whole stream (so the
//! way the bytes were split never changes what is seen: lines split at
//! `\n`, one trailing `\r` dropped, longer than the limit → one `TooLong`,
//! the rest of that line skipped), no line exceeds the limit, the reader
//! always has room to read after its lines were taken (it cannot stall),
//! and nothing with a control character reaches the command parser.
#![no_main]

use chatd::protocol::command::{self, Command};
use chatd::protocol::lines::{Input, LineReader};
use chatd::protocol::{nick, sanitize};
use libfuzzer_sys::fuzz_target;

/// `Some(line)` or `None` for "too long".
type Item = Option<Vec<u8>>;

fn model(stream: &[u8], max: usize) -> Vec<Item> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let unterminated = parts.pop().unwrap_or_default();
    for p in parts {
        let p = p.strip_suffix(b"\r").unwrap_or(p);
        out.push((p.len() <= max).then(|| p.to_vec()));
    }
    // An unterminated line is reported as soon as it cannot fit any more.
    if unterminated.len() > max + 1 {
        out.push(None);
    }
    out
}

fn parse_line(line: &[u8]) {
    let Ok(text) = sanitize::check(line) else {
        return;
    };
    assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
    match command::parse(text) {
        Command::Nick(n) if nick::validate(n).is_ok() => {
            assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(nick::fold(n).len(), n.len());
        }
        Command::Chat(t) | Command::Me(t) => assert!(text.contains(t)),
        Command::Quit(Some(r)) => assert!(text.contains(r)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 1 + data[0] as usize % 80;
    let chunk = 1 + data[1] as usize % 40;
    let steps = data[2];
    let stream = &data[3..];
    let mut r = LineReader::new(max, chunk);
    let mut got: Vec<Item> = Vec::new();
    let mut rest = stream;
    let mut turn = 0usize;
    loop {
        while let Some(item) = r.next_line() {
            got.push(match item {
                Input::Line(l) => {
                    assert!(l.len() <= max);
                    parse_line(l);
                    Some(l.to_vec())
                }
                Input::TooLong => None,
            });
        }
        assert!(!r.has_line());
        if rest.is_empty() {
            break;
        }
        let spare = r.spare();
        assert!(!spare.is_empty(), "no room to read with no line pending");
        // Read sizes vary like a socket's: 1..=chunk, driven by the input.
        turn += 1;
        let want = 1 + (steps as usize).wrapping_mul(turn) % spare.len();
        let n = want.min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        r.filled(n);
        rest = &rest[n..];
    }
    assert_eq!(got, model(stream, max));
});
