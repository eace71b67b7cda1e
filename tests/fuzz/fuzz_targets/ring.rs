//! The master's reader of a child's input ring, with a hostile child.
//!
//! A child may write any bytes into its own slot (its ring and its slot
//! header) at any time; the master reads the ring with `RingReader` and
//! `master::request::validate`, exactly as the relay does. The input is a
//! script of honest pushes and publishes by slot 1's writer, arbitrary
//! stores into slot 1 ("pokes"), and master reads of every slot.
//!
//! A `Scan` reads the ring as the master and child that take a client
//! over after a restart do (`handed_over`).
//!
//! Checked: no panic and no out-of-bounds read (the slices are bounds
//! checked), every payload within the ring's limit, every validated line
//! sanitised and within the line limit; while slot 1 has not been poked,
//! the master reads exactly what was pushed, in order (nothing torn, lost
//! or repeated); the honest slots 0 and 2 always read exactly their own
//! entries, whatever slot 1 holds (nothing foreign). After the reader
//! reports corruption the master stops reading that slot (it kills the
//! child), so does the script.
#![no_main]

use chatd::config::MAX_LINE_LIMIT;
use chatd::master::request::{validate, Request};
use chatd::protocol::sanitize;
use chatd::protocol::Ask;
use chatd::shm::ring::{handed_over, Kind, RingReader, RingWriter, MAX_PAYLOAD, RING_BYTES};
use chatd::shm::Region;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
enum Op {
    Push {
        kind: u8,
        len: u16,
        fill: u8,
    },
    Publish,
    PokeRing {
        word: u16,
        value: u64,
    },
    PokeHeader {
        field: u8,
        value: u64,
    },
    /// Overwrites a ring word with a plausible entry header.
    PokeEntry {
        word: u16,
        pos_delta: i16,
        kind: u8,
        len: u16,
    },
    Read {
        max: u8,
    },
    Scan,
}

const KINDS: [Kind; 10] = [
    Kind::Chat,
    Kind::Me,
    Kind::Nick,
    Kind::Who,
    Kind::Quit,
    Kind::Join,
    Kind::Part,
    Kind::Private,
    Kind::Carry,
    Kind::Handover,
];

fn region() -> &'static Region {
    static R: OnceLock<&'static Region> = OnceLock::new();
    R.get_or_init(|| Box::leak(Box::new(Region::create(3).expect("memfd region"))))
}

fn reset(r: &Region) {
    for s in 0..3 {
        for w in r.ring(s) {
            w.store(0, SeqCst);
        }
        let h = r.slot_header(s);
        for f in [&h.head, &h.cursor] {
            f.store(0, SeqCst);
        }
        r.control(s).consumed.store(0, SeqCst);
    }
}

fn payload(len: usize, fill: u8, n: usize) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add((i + n) as u8)).collect()
}

/// Checks what the master would do with one entry.
fn check_entry(kind: Kind, p: &[u8]) {
    assert!(p.len() <= MAX_PAYLOAD);
    match validate(kind, p) {
        Ok(Request::Ask(Ask::Chat(text) | Ask::Action(text))) => {
            assert!(text.len() <= MAX_LINE_LIMIT);
            assert!(sanitize::check_formatted(text.as_bytes()).is_ok());
        }
        Ok(Request::Ask(Ask::Nick(n))) => {
            assert!(sanitize::check(n.as_bytes()).is_ok());
        }
        Ok(
            Request::Quit(t)
            | Request::Ask(Ask::Part(t))
            | Request::Ask(Ask::Private { text: t, .. }),
        ) => {
            assert!(sanitize::check_formatted(t.as_bytes()).is_ok());
        }
        _ => {}
    }
}

/// One relay pass over a slot, as `drain_ring` does: up to `max` entries.
/// Returns the entries read, or None on corruption.
fn read(r: &Region, slot: usize, max: usize) -> Option<Vec<(Kind, Vec<u8>)>> {
    let mut rd = RingReader::new(r, slot);
    let mut got = Vec::new();
    let mut buf = Vec::new();
    loop {
        match rd.refresh() {
            Ok(true) => {}
            Ok(false) => return Some(got),
            Err(_) => return None,
        }
        loop {
            match rd.peek(&mut buf) {
                Ok(Some(kind)) => {
                    check_entry(kind, &buf);
                    got.push((kind, buf.clone()));
                    rd.advance();
                    if got.len() >= max {
                        rd.ack();
                        return Some(got);
                    }
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        rd.ack();
    }
}

/// Fills an honest slot with a few entries of its own.
fn honest(r: &'static Region, slot: usize) -> Vec<(Kind, Vec<u8>)> {
    let mut w = RingWriter::new(r, slot);
    let mut sent = Vec::new();
    for n in 0..7 {
        let p = format!("slot {slot} line {n}").into_bytes();
        assert!(w.push(Kind::Chat, &p));
        sent.push((Kind::Chat, p));
    }
    w.publish();
    sent
}

fuzz_target!(|ops: Vec<Op>| {
    let r = region();
    reset(r);
    let neighbours = [honest(r, 0), honest(r, 2)];
    let mut w = RingWriter::new(r, 1);
    let mut pushed: Vec<(Kind, Vec<u8>)> = Vec::new();
    let mut published: VecDeque<(Kind, Vec<u8>)> = VecDeque::new();
    let mut poked = false;
    for op in ops {
        match op {
            Op::Push { kind, len, fill } => {
                let kind = KINDS[kind as usize % KINDS.len()];
                let p = payload(len as usize % (MAX_PAYLOAD + 1), fill, pushed.len());
                if w.push(kind, &p) {
                    pushed.push((kind, p));
                }
            }
            Op::Publish => {
                w.publish();
                published.extend(pushed.drain(..));
            }
            Op::PokeRing { word, value } => {
                r.ring(1)[word as usize % r.ring(1).len()].store(value, SeqCst);
                poked = true;
            }
            Op::PokeHeader { field, value } => {
                let h = r.slot_header(1);
                [&h.head, &h.cursor][field as usize % 2].store(value, SeqCst);
                poked |= field % 2 == 0;
            }
            Op::PokeEntry {
                word,
                pos_delta,
                kind,
                len,
            } => {
                let ring = r.ring(1);
                let i = word as usize % (ring.len() - 1);
                let pos = (8 * i as u64).wrapping_add(pos_delta as u64);
                ring[i].store(pos, SeqCst);
                ring[i + 1].store(kind as u64 | (len as u64) << 8, SeqCst);
                poked = true;
            }
            Op::Scan => {
                // What a new master and a new child read after a restart.
                let h = handed_over(r.ring(1), r.slot_header(1), r.control(1));
                if let Ok(h) = &h {
                    assert!(h.carry.len() as u64 <= RING_BYTES);
                    assert!(h.clean || h.carry.is_empty());
                }
                if !poked {
                    let h = h.expect("an honest ring scans");
                    let (mut carry, mut pieces) = (Vec::new(), Vec::new());
                    for (k, p) in &published {
                        match k {
                            Kind::Carry => pieces.extend_from_slice(p),
                            Kind::Handover => carry = std::mem::take(&mut pieces),
                            _ => pieces.clear(),
                        }
                    }
                    let clean = published.back().is_some_and(|e| e.0 == Kind::Handover);
                    assert_eq!(h.clean, clean);
                    assert_eq!(h.quit, published.iter().any(|e| e.0 == Kind::Quit));
                    if clean {
                        assert_eq!(h.carry, carry);
                    }
                }
            }
            Op::Read { max } => {
                let Some(got) = read(r, 1, 1 + max as usize) else {
                    assert!(poked, "an honest ring was reported corrupt");
                    break;
                };
                if !poked {
                    for e in got {
                        assert_eq!(Some(e), published.pop_front(), "honest entry changed");
                    }
                }
            }
        }
    }
    for (i, slot) in [0, 2].into_iter().enumerate() {
        assert_eq!(read(r, slot, usize::MAX).as_ref(), Some(&neighbours[i]));
    }
});
