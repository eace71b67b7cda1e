//! The master's state that outlives it: who each connected client is.
//!
//! The master keeps one record per slot in a memfd of its own (`chatd-state`,
//! mapped only in the master: children do not inherit it) and hands the
//! memfd to systemd's fd store next to the shared region and the client
//! sockets (see [`super::handover`]). Records are rewritten in place when a
//! client connects, changes nick, joins or parts, and cleared when its slot
//! is freed, so that what the store holds is current at every instant: a
//! crashed master leaves the same state as one that stopped on purpose.
//!
//! The layout, all little-endian 64-bit words:
//!
//! ```text
//!  header (64 B)   magic "chatdST1", version, capacity, next serial, 4 spare
//!  record[slot]    sum, id, serial, flags, since, nick (3 words)
//!                  flags: proto (bits 0-7), tls (8), in_room (9),
//!                  registered (10), muted (11), nick length (16-23),
//!                  muted until (32-63: seconds since the epoch; 0:
//!                  until unmuted)
//! ```
//!
//! A record is valid when its checksum matches: a record the master was
//! writing when it was killed does not, and its client is adopted with
//! fresh state. [`parse`] is the reader: it takes the bytes as untrusted
//! input (the next master may be another version, the file may be
//! anything), is pure, and is fuzzed (`tests/fuzz`, target `state`).

use crate::config::MAX_NICK;
use crate::protocol::{nick, Proto};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// "chatdST1": identifies a chatd state file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"chatdST1");
/// The layout version this master writes and reads.
pub const VERSION: u64 = 1;
const HEADER_WORDS: usize = 8;
const RECORD_WORDS: usize = 8;
const NICK_WORDS: usize = 3;
const _: () = assert!(MAX_NICK <= NICK_WORDS * 8);

/// What the next master must know of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub slot: usize,
    /// generation << 32 | slot.
    pub id: u64,
    pub serial: u64,
    pub proto: Proto,
    pub tls: bool,
    pub in_room: bool,
    pub registered: bool,
    /// Seconds since the epoch when it connected.
    pub since: u64,
    pub nick: String,
    /// Muted by an operator: until then (seconds since the epoch; 0: until
    /// unmuted).
    pub muted: Option<u32>,
}

/// What [`parse`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub next_serial: u64,
    /// Valid records, by slot.
    pub records: Vec<Record>,
    /// Slots whose record is there but does not check out.
    pub broken: Vec<usize>,
}

/// Why a state file cannot be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("too short")]
    Short,
    #[error("not a chatd state file")]
    Magic,
    #[error("layout version {0}, this chatd reads {VERSION}")]
    Version(u64),
    #[error("made for {0} slots, this chatd has {1}")]
    Capacity(u64, u64),
}

/// A record's mute as the master keeps it: Some(until when, or None:
/// until unmuted); a mute that has run out by `now` (seconds since the
/// epoch) is none.
pub fn mute_from(muted: Option<u32>, now: u64) -> Option<Option<std::time::Instant>> {
    match muted? {
        0 => Some(None),
        t if t as u64 > now => Some(Some(
            std::time::Instant::now() + std::time::Duration::from_secs(t as u64 - now),
        )),
        _ => None,
    }
}

/// Bytes of a state file for `capacity` slots.
pub fn size(capacity: usize) -> usize {
    (HEADER_WORDS + capacity * RECORD_WORDS) * 8
}

fn checksum(words: &[u64]) -> u64 {
    // FNV-1a over the words: detects torn and stray writes, not forgery
    // (only the master can write the file).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h | 1 // never 0, the value of a free slot's sum
}

fn encode(r: &Record) -> [u64; RECORD_WORDS] {
    let proto = match r.proto {
        Proto::Line => 1u64,
        Proto::Irc => 2,
    };
    let flags = proto
        | (r.tls as u64) << 8
        | (r.in_room as u64) << 9
        | (r.registered as u64) << 10
        | (r.muted.is_some() as u64) << 11
        | (r.nick.len() as u64) << 16
        | (r.muted.unwrap_or(0) as u64) << 32;
    let mut nick = [0u8; NICK_WORDS * 8];
    nick[..r.nick.len()].copy_from_slice(r.nick.as_bytes());
    let mut w = [0u64; RECORD_WORDS];
    w[1] = r.id;
    w[2] = r.serial;
    w[3] = flags;
    w[4] = r.since;
    for i in 0..NICK_WORDS {
        w[5 + i] = u64::from_le_bytes(nick[i * 8..i * 8 + 8].try_into().unwrap());
    }
    w[0] = checksum(&w[1..]);
    w
}

fn decode(slot: usize, w: &[u64]) -> Option<Record> {
    if checksum(&w[1..]) != w[0] || w[1] & 0xffff_ffff != slot as u64 || w[1] >> 32 == 0 {
        return None;
    }
    let flags = w[3];
    let proto = match flags & 0xff {
        1 => Proto::Line,
        2 => Proto::Irc,
        _ => return None,
    };
    let len = (flags >> 16 & 0xff) as usize;
    let muted = flags >> 11 & 1 == 1;
    if flags & !0xffff_ffff_00ff_0fff != 0 || len == 0 || len > MAX_NICK {
        return None;
    }
    if !muted && flags >> 32 != 0 {
        return None;
    }
    let bytes: Vec<u8> = w[5..5 + NICK_WORDS]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    if bytes[len..].iter().any(|&b| b != 0) {
        return None;
    }
    let nick = std::str::from_utf8(&bytes[..len]).ok()?;
    // Users' nicks follow the rules; guest nicks are the master's own.
    let guest = nick
        .strip_prefix("guest-")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if !guest && nick::validate(nick).is_err() {
        return None;
    }
    Some(Record {
        slot,
        id: w[1],
        serial: w[2],
        proto,
        tls: flags >> 8 & 1 == 1,
        in_room: flags >> 9 & 1 == 1,
        registered: flags >> 10 & 1 == 1,
        since: w[4],
        nick: nick.to_string(),
        muted: muted.then_some((flags >> 32) as u32),
    })
}

/// A whole state file for `capacity` slots holding `records` (what the
/// master's in-place writes add up to); for tests and the fuzz target.
pub fn render(capacity: usize, next_serial: u64, records: &[Record]) -> Vec<u8> {
    let mut w = vec![0u64; size(capacity) / 8];
    w[..4].copy_from_slice(&[MAGIC, VERSION, capacity as u64, next_serial]);
    for r in records.iter().filter(|r| r.slot < capacity) {
        let base = HEADER_WORDS + r.slot * RECORD_WORDS;
        w[base..base + RECORD_WORDS].copy_from_slice(&encode(r));
    }
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reads a state file made for `capacity` slots. Untrusted input: anything
/// that does not check out is an error (the whole file) or a broken record
/// (one slot).
pub fn parse(bytes: &[u8], capacity: usize) -> Result<Snapshot, Invalid> {
    let word = |i: usize| -> Option<u64> {
        let b = bytes.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(b.try_into().unwrap()))
    };
    if bytes.len() < HEADER_WORDS * 8 {
        return Err(Invalid::Short);
    }
    if word(0) != Some(MAGIC) {
        return Err(Invalid::Magic);
    }
    match word(1) {
        Some(VERSION) => {}
        Some(v) => return Err(Invalid::Version(v)),
        None => return Err(Invalid::Short),
    }
    let cap = word(2).unwrap_or(0);
    if cap != capacity as u64 {
        return Err(Invalid::Capacity(cap, capacity as u64));
    }
    if bytes.len() < size(capacity) {
        return Err(Invalid::Short);
    }
    let mut snap = Snapshot {
        next_serial: word(3).unwrap_or(0),
        ..Snapshot::default()
    };
    let mut w = [0u64; RECORD_WORDS];
    for slot in 0..capacity {
        let base = HEADER_WORDS + slot * RECORD_WORDS;
        for (i, x) in w.iter_mut().enumerate() {
            *x = word(base + i).unwrap_or(0);
        }
        if w == [0; RECORD_WORDS] {
            continue;
        }
        match decode(slot, &w) {
            Some(r) => snap.records.push(r),
            None => snap.broken.push(slot),
        }
    }
    Ok(snap)
}

/// The master's writable state file.
pub struct State {
    words: &'static [AtomicU64],
    fd: OwnedFd,
    capacity: usize,
}

impl State {
    /// A new, empty state file for `capacity` slots.
    pub fn create(capacity: usize) -> io::Result<State> {
        let fd = memfd_create(c"chatd-state", MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
        File::from(fd.try_clone()?).set_len(size(capacity) as u64)?;
        let s = State::map(fd, capacity)?;
        s.words[0].store(MAGIC, Relaxed);
        s.words[1].store(VERSION, Relaxed);
        s.words[2].store(capacity as u64, Relaxed);
        Ok(s)
    }

    /// The state file a previous master left (`fd`, from the fd store):
    /// what it says, and the file to go on writing. The snapshot is taken
    /// from a copy, so it does not change under the reader.
    pub fn adopt(fd: OwnedFd, capacity: usize) -> Result<(State, Snapshot), String> {
        let len = File::from(fd.try_clone().map_err(|e| e.to_string())?)
            .metadata()
            .map_err(|e| e.to_string())?
            .len();
        if len != size(capacity) as u64 {
            return Err(format!("{len} bytes, expected {}", size(capacity)));
        }
        let s = State::map(fd, capacity).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = s
            .words
            .iter()
            .flat_map(|w| w.load(Relaxed).to_le_bytes())
            .collect();
        let snap = parse(&bytes, capacity).map_err(|e| e.to_string())?;
        Ok((s, snap))
    }

    fn map(fd: OwnedFd, capacity: usize) -> io::Result<State> {
        let len = size(capacity);
        // SAFETY: a fresh shared mapping of a memfd of exactly `len` bytes
        // (checked or set by the callers) that only this process maps and
        // nobody truncates (it has no name in any filesystem; the fd store
        // only holds it). Every access goes through atomics.
        let base = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).expect("non-empty"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        // Children must not inherit it: nothing in it is theirs.
        // SAFETY: advice on the mapping just made; no data changes.
        unsafe { nix::sys::mman::madvise(base, len, nix::sys::mman::MmapAdvise::MADV_DONTFORK) }?;
        let p: NonNull<AtomicU64> = base.cast();
        // SAFETY: page-aligned, `len` bytes, mapped for the life of the
        // process (never unmapped); AtomicU64 accepts any bit pattern.
        let words = unsafe { std::slice::from_raw_parts(p.as_ptr(), len / 8) };
        Ok(State {
            words,
            fd,
            capacity,
        })
    }

    /// The memfd, for the fd store.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn set_next_serial(&self, n: u64) {
        self.words[3].store(n, Relaxed);
    }

    /// Writes a slot's record (the checksum last), or clears it.
    pub fn put(&self, slot: usize, r: Option<&Record>) {
        assert!(slot < self.capacity);
        let base = HEADER_WORDS + slot * RECORD_WORDS;
        let w = match r {
            Some(r) => encode(r),
            None => [0; RECORD_WORDS],
        };
        self.words[base].store(0, Relaxed);
        for (i, x) in w.iter().enumerate().skip(1) {
            self.words[base + i].store(*x, Relaxed);
        }
        self.words[base].store(w[0], Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slot: usize, nick: &str) -> Record {
        Record {
            slot,
            id: 7 << 32 | slot as u64,
            serial: 41,
            proto: Proto::Irc,
            tls: false,
            in_room: true,
            registered: true,
            since: 1_800_000_000,
            nick: nick.into(),
            muted: None,
        }
    }

    fn bytes(s: &State) -> Vec<u8> {
        s.words
            .iter()
            .flat_map(|w| w.load(Relaxed).to_le_bytes())
            .collect()
    }

    #[test]
    fn written_records_read_back() {
        let s = State::create(4).unwrap();
        s.set_next_serial(42);
        let mut muted = rec(0, "mallory");
        muted.muted = Some(1_900_000_000);
        let mut for_good = rec(3, "guest-17");
        for_good.muted = Some(0);
        s.put(0, Some(&muted));
        s.put(1, Some(&rec(1, "alice")));
        s.put(3, Some(&for_good));
        s.put(2, Some(&rec(2, "bob")));
        s.put(2, None);
        let snap = parse(&bytes(&s), 4).unwrap();
        assert_eq!(snap.next_serial, 42);
        let all = vec![muted, rec(1, "alice"), for_good];
        assert_eq!(snap.records, all);
        let rendered = render(4, 42, &all);
        assert_eq!(rendered, bytes(&s));
        assert!(snap.broken.is_empty());
        let fd = s.fd().try_clone().unwrap();
        let (_, again) = State::adopt(fd, 4).unwrap();
        assert_eq!(again, snap);
    }

    #[test]
    fn torn_or_foreign_records_are_broken_not_trusted() {
        let s = State::create(3).unwrap();
        s.put(0, Some(&rec(0, "alice")));
        s.put(1, Some(&rec(1, "bob")));
        s.put(2, Some(&rec(2, "carol")));
        let mut b = bytes(&s);
        // Torn: a nick byte changed after the checksum was written.
        b[(HEADER_WORDS + RECORD_WORDS + 5) * 8] ^= 1;
        // Moved: slot 2's record copied into slot 0.
        let (r0, r2) = (HEADER_WORDS * 8, (HEADER_WORDS + 2 * RECORD_WORDS) * 8);
        let two = b[r2..r2 + 64].to_vec();
        b[r0..r0 + 64].copy_from_slice(&two);
        let snap = parse(&b, 3).unwrap();
        assert_eq!(snap.records, vec![rec(2, "carol")]);
        assert_eq!(snap.broken, vec![0, 1]);
    }

    #[test]
    fn invalid_nicks_and_flags_are_broken() {
        let mut bad = rec(0, "alice");
        bad.nick = "al ice".into();
        let mut w = encode(&bad);
        assert!(decode(0, &w).is_none());
        w = encode(&rec(0, "alice"));
        w[3] |= 1 << 40;
        w[0] = checksum(&w[1..]);
        assert!(
            decode(0, &w).is_none(),
            "a mute's time without the mute bit"
        );
        w[3] |= 1 << 11;
        w[0] = checksum(&w[1..]);
        assert_eq!(decode(0, &w).unwrap().muted, Some(1 << 8));
        w[3] |= 1 << 12;
        w[0] = checksum(&w[1..]);
        assert!(decode(0, &w).is_none(), "an unknown flag");
    }

    #[test]
    fn mutes_read_back_as_the_master_keeps_them() {
        assert_eq!(mute_from(None, 100), None);
        assert_eq!(mute_from(Some(0), 100), Some(None));
        assert_eq!(mute_from(Some(100), 100), None, "run out");
        let left = mute_from(Some(160), 100).unwrap().unwrap();
        let secs = left.duration_since(std::time::Instant::now()).as_secs();
        assert!((59..=60).contains(&secs), "{secs}");
    }

    #[test]
    fn whole_file_errors() {
        let s = State::create(2).unwrap();
        let b = bytes(&s);
        assert_eq!(parse(&b[..10], 2), Err(Invalid::Short));
        assert_eq!(parse(&b, 3), Err(Invalid::Capacity(2, 3)));
        let mut v = b.clone();
        v[8] = 9;
        assert_eq!(parse(&v, 2), Err(Invalid::Version(9)));
        v[0] ^= 1;
        assert_eq!(parse(&v, 2), Err(Invalid::Magic));
        assert_eq!(parse(&b[..b.len() - 8], 2), Err(Invalid::Short));
    }
}
