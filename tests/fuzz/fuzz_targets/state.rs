//! The next master's reader of the state file a previous master left in
//! systemd's fd store (`chatd::master::state::parse`): untrusted bytes.
//!
//! Two modes, by the first byte: raw bytes as a state file; or a valid
//! file (rendered from records the input describes) with some bytes
//! flipped. Checked: no panic; a valid file reads back exactly; every
//! record returned lies in range, has a nick of at most MAX_NICK bytes that
//! is valid or a guest nick, and its slot in its id; after flips, every
//! record none of whose bytes was flipped reads back as it was written, and
//! no record appears twice.
#![no_main]

use chatd::config::MAX_NICK;
use chatd::master::state::{parse, render, Record};
use chatd::protocol::{nick, Proto};
use libfuzzer_sys::fuzz_target;

const NICKS: [&str; 6] = [
    "alice",
    "Bob",
    "guest-12",
    "x-y_z9",
    "a_very_long_nick_24chars",
    "z",
];

fn check(bytes: &[u8], capacity: usize) -> Option<Vec<Record>> {
    let snap = parse(bytes, capacity).ok()?;
    let mut seen = std::collections::HashSet::new();
    for r in &snap.records {
        assert!(r.slot < capacity && r.id & 0xffff_ffff == r.slot as u64 && r.id >> 32 != 0);
        assert!(!r.nick.is_empty() && r.nick.len() <= MAX_NICK);
        assert!(nick::validate(&r.nick).is_ok() || r.nick.starts_with("guest-"));
        assert!(seen.insert(r.slot), "slot {} twice", r.slot);
    }
    for b in &snap.broken {
        assert!(*b < capacity && !seen.contains(b));
    }
    Some(snap.records)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let capacity = 1 + (mode as usize >> 1) % 16;
    if mode & 1 == 0 {
        check(rest, capacity);
        return;
    }
    // Records from the input: 4 bytes each (slot, gen, nick, flags).
    let mut records: Vec<Record> = Vec::new();
    let mut chunks = rest.chunks_exact(4);
    for c in chunks.by_ref().take(capacity) {
        let slot = c[0] as usize % capacity;
        if records.iter().any(|r| r.slot == slot) {
            continue;
        }
        records.push(Record {
            slot,
            id: (1 + c[1] as u64) << 32 | slot as u64,
            serial: c[1] as u64 * 7,
            proto: if c[3] & 1 == 0 {
                Proto::Line
            } else {
                Proto::Irc
            },
            tls: c[3] & 2 != 0,
            in_room: c[3] & 4 != 0,
            registered: c[3] & 8 != 0,
            since: c[2] as u64 * 1000,
            nick: NICKS[c[2] as usize % NICKS.len()].to_string(),
            muted: (c[3] & 16 != 0).then_some(c[1] as u32 * 1000),
        });
    }
    records.sort_by_key(|r| r.slot);
    let mut file = render(capacity, 99, &records);
    let clean = check(&file, capacity).expect("a rendered file reads");
    assert_eq!(clean, records, "a rendered file reads back exactly");
    // Then flips: (offset, xor) pairs from the rest of the input.
    let mut touched = std::collections::HashSet::new();
    for f in chunks
        .remainder()
        .chunks(3)
        .chain(rest.chunks_exact(3).skip(capacity * 2))
    {
        if f.len() < 3 {
            continue;
        }
        let off = u16::from_le_bytes([f[0], f[1]]) as usize % file.len();
        if f[2] != 0 {
            file[off] ^= f[2];
            touched.insert(off);
        }
    }
    let Some(after) = check(&file, capacity) else {
        return; // the header was hit: the whole file is refused
    };
    for r in &records {
        let start = 64 + r.slot * 64;
        if (start..start + 64).all(|o| !touched.contains(&o)) {
            assert!(after.contains(r), "untouched record {} lost", r.slot);
        }
    }
});
