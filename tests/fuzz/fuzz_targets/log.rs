//! A child's reader of the relay log (`shm::log::LogReader`) against the
//! master's writer, with evictions and arbitrary stores into the log.
//!
//! The script: appends by the master (origin 0..4, this reader is client
//! 1), publishes, reader drains, the master advancing its tail to the
//! reader's cursor (the flow control), evictions (the master marks the
//! reader evicted and then overwrites the entries it has not read), and
//! arbitrary stores into the log or its head ("pokes", standing for a
//! broken master or memory corruption).
//!
//! A replay (a newcomer's history) reads some of the published, unread
//! entries by position, plus a position that is not an entry's start, and
//! moves the cursor to the head.
//!
//! Checked: no panic or out-of-bounds read; while nothing was poked, each
//! drain yields exactly the published lines not from client 1, in order
//! (no loss, no self-echo, nothing repeated), and each replay exactly the
//! chosen entries with their times; once evicted, a drain never
//! yields anything (no torn line); whatever happens, a failed drain leaves
//! the output as it was, and a successful one never yields more bytes than
//! lie between the cursor and the head.
#![no_main]

use chatd::shm::log::{LogError, LogReader, LogWriter, MAX_PAYLOAD};
use chatd::shm::{Region, LOG_BYTES};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::OnceLock;

const ME: u64 = 1;

#[derive(Arbitrary, Debug)]
enum Op {
    Append {
        origin: u8,
        len: u16,
        fill: u8,
        times: u8,
    },
    Publish,
    Drain,
    Replay {
        pick: u64,
        junk: u8,
    },
    Evict {
        len: u16,
    },
    PokeLog {
        word: u32,
        value: u64,
    },
    PokeHead {
        value: u64,
    },
}

fn region() -> &'static Region {
    static R: OnceLock<&'static Region> = OnceLock::new();
    R.get_or_init(|| Box::leak(Box::new(Region::create(1).expect("memfd region"))))
}

/// Zeroes what a run wrote (the log words up to `head`, or all of them once
/// it wrapped, and the poked words), so every run starts from the same state.
fn reset(r: &Region, head: u64, poked: &[usize]) {
    let log = r.log();
    let written = (head.div_ceil(8) as usize).min(log.len());
    for w in &log[..written] {
        w.store(0, SeqCst);
    }
    for &i in poked {
        log[i].store(0, SeqCst);
    }
    r.header().log_head.store(0, SeqCst);
    r.slot_header(0).cursor.store(0, SeqCst);
    r.control(0).evicted.store(0, SeqCst);
}

fuzz_target!(|ops: Vec<Op>| {
    let r = region();
    let mut w = LogWriter::new(r);
    let mut rd = LogReader::new(r, 0, ME);
    let mut pending = Vec::new(); // appended, not yet published
    let mut expected = Vec::new(); // published, for this reader
                                   // Every entry appended / published and not yet read: (pos, time, payload).
    let mut pending_all: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut unread: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut poked = false;
    let mut poked_words = Vec::new();
    let mut evicted = false;
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Append {
                origin,
                len,
                fill,
                times,
            } => {
                for _ in 0..=times % 8 {
                    let origin = origin as u64 % 4;
                    let len = len as usize % (MAX_PAYLOAD + 1);
                    let line: Vec<u8> = (0..len).map(|i| fill ^ (i + n) as u8).collect();
                    n += 1;
                    let (pos, time) = (w.head(), n as u64 * 1000);
                    if !w.append(origin, time, &line) {
                        break;
                    }
                    pending_all.push((pos, time, line.clone()));
                    if origin != ME {
                        pending.extend_from_slice(&line);
                    }
                }
            }
            Op::Publish => {
                w.publish();
                expected.append(&mut pending);
                unread.append(&mut pending_all);
            }
            Op::Replay { pick, junk } => {
                let before = b"prefix".to_vec();
                let mut out = before.clone();
                let head = r.header().log_head.load(SeqCst);
                let chosen: Vec<&(u64, u64, Vec<u8>)> = unread
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| pick >> (i % 64) & 1 == 1)
                    .map(|(_, e)| e)
                    .collect();
                let mut positions: Vec<u64> = chosen.iter().map(|e| e.0).collect();
                // Positions that are no entry's start: misaligned, or at
                // or past the head. Skipped.
                positions.push(head.wrapping_add(8 * (junk as u64 % 16)));
                if let Some(e) = chosen.first() {
                    positions.push(e.0 + 1 + junk as u64 % 7);
                }
                positions.sort();
                let mut scratch = Vec::new();
                let got = rd.replay(&positions, head, &mut out, &mut scratch, |p, t, out| {
                    out.extend_from_slice(&t.to_le_bytes());
                    out.extend_from_slice(p);
                });
                match got {
                    Ok(_) => {
                        assert!(!evicted, "an evicted reader yielded lines");
                        if !poked {
                            let mut want = before.clone();
                            for (_, t, p) in &chosen {
                                want.extend_from_slice(&t.to_le_bytes());
                                want.extend_from_slice(p);
                            }
                            assert_eq!(out, want);
                            expected.clear();
                            unread.clear();
                            w.set_tail(r.slot_header(0).cursor.load(SeqCst));
                        }
                    }
                    Err(e) => {
                        assert_eq!(out, before, "a failed replay changed the output");
                        assert!(poked || (evicted && e == LogError::Evicted), "{e:?}");
                        break;
                    }
                }
            }
            Op::Drain => {
                let before = b"prefix".to_vec();
                let mut out = before.clone();
                let head = r.header().log_head.load(SeqCst);
                let cursor = r.slot_header(0).cursor.load(SeqCst);
                match rd.drain(&mut out) {
                    Ok(_) => {
                        assert!(!evicted, "an evicted reader yielded lines");
                        assert!((out.len() - before.len()) as u64 <= head.wrapping_sub(cursor));
                        if !poked {
                            assert_eq!(&out[before.len()..], &expected[..]);
                            expected.clear();
                            unread.clear();
                            // The master's flow control: free what was read.
                            w.set_tail(r.slot_header(0).cursor.load(SeqCst));
                        }
                    }
                    Err(e) => {
                        assert_eq!(out, before, "a failed drain changed the output");
                        assert!(poked || (evicted && e == LogError::Evicted), "{e:?}");
                        break;
                    }
                }
            }
            Op::Evict { len } => {
                // The master gives up on this reader: mark, then overwrite
                // everything it has not read yet with a lap of new entries.
                LogWriter::evict(r.control(0));
                evicted = true;
                w.set_tail(w.head());
                // One entry of the script's length, then big ones for a lap.
                let mut len = len as usize % (MAX_PAYLOAD + 1);
                let lap_end = w.head() + LOG_BYTES as u64;
                while w.head() < lap_end {
                    assert!(w.append(2, 0, &vec![b'x'; len]));
                    w.set_tail(w.head());
                    len = MAX_PAYLOAD;
                }
                w.publish();
            }
            Op::PokeLog { word, value } => {
                let i = word as usize % r.log().len();
                r.log()[i].store(value, SeqCst);
                poked_words.push(i);
                poked = true;
            }
            Op::PokeHead { value } => {
                r.header().log_head.store(value, SeqCst);
                poked = true;
            }
        }
    }
    reset(r, w.head(), &poked_words);
});
