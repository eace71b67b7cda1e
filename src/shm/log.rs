//! The relay log: the master writes, every child reads.
//!
//! Entries are `[pos][origin][len | time << 16][payload, zero-padded]`: an
//! encoded `protocol::event::Event` (what was said or done, by whom), the
//! client id it came from, which that client's child skips (no self-echo),
//! and when the master relayed it (milliseconds since the Unix epoch; 0:
//! unknown). Each child renders the payloads for its own protocol. The
//! log's order is the one global order every client sees.
//!
//! History: a newcomer's child starts with its cursor at the oldest of the
//! room's recent lines, which the master therefore does not overwrite; it
//! reads those lines ([`LogReader::replay`]) and then moves its cursor to
//! where its live part begins.
//!
//! Flow control: the master never writes past the lowest cursor of the
//! children it still waits for ([`LogWriter::set_tail`]). A child that holds
//! the log up for too long is evicted: the master sets `evicted` with a
//! release fence *before* it overwrites anything that child may still read,
//! and the child checks the flag after an acquire fence *after* copying
//! (a seqlock), so it discards anything that might be torn.

use super::words::{load, read_bytes, store, words_for, write_bytes};
use super::{Header, Region, SlotControl, SlotHeader, LOG_BYTES};
use std::sync::atomic::{fence, AtomicU64, Ordering::*};

/// Largest payload of one log entry.
pub const MAX_PAYLOAD: usize = 8192;
const ENTRY_HEADER: u64 = 24;
/// The length's bits in an entry's third word; the time is above them.
const LEN_BITS: u32 = 16;
const _: () = assert!(MAX_PAYLOAD < 1 << LEN_BITS);

/// An entry's third word: its payload length and time.
fn len_word(len: usize, time_ms: u64) -> u64 {
    len as u64 | (time_ms & (u64::MAX >> LEN_BITS)) << LEN_BITS
}

/// Space an entry with `len` payload bytes takes.
pub fn entry_size(len: usize) -> u64 {
    ENTRY_HEADER + 8 * words_for(len) as u64
}

/// The master's side of the log.
pub struct LogWriter {
    log: &'static [AtomicU64],
    header: &'static Header,
    head: u64,
    tail: u64,
}

impl LogWriter {
    pub fn new(region: &'static Region) -> LogWriter {
        let head = region.header().log_head.load(SeqCst);
        LogWriter {
            log: region.log(),
            header: region.header(),
            head,
            tail: head,
        }
    }

    /// Position after the last appended entry.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The lowest position a reader still needs, as last set.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Sets the lowest position a reader still needs.
    pub fn set_tail(&mut self, tail: u64) {
        debug_assert!(tail <= self.head && self.head - tail <= LOG_BYTES as u64);
        self.tail = tail;
    }

    /// Whether an entry of `len` payload bytes fits without passing the tail.
    pub fn fits(&self, len: usize) -> bool {
        self.head + entry_size(len) - self.tail <= LOG_BYTES as u64
    }

    /// Appends one entry (not yet visible), said at `time_ms`; false if it
    /// does not fit.
    pub fn append(&mut self, origin: u64, time_ms: u64, payload: &[u8]) -> bool {
        assert!(payload.len() <= MAX_PAYLOAD);
        if !self.fits(payload.len()) {
            return false;
        }
        let w = self.head / 8;
        store(self.log, w, self.head);
        store(self.log, w + 1, origin);
        store(self.log, w + 2, len_word(payload.len(), time_ms));
        write_bytes(self.log, w + 3, payload);
        self.head += entry_size(payload.len());
        true
    }

    /// Makes appended entries visible; true if anything was new.
    pub fn publish(&mut self) -> bool {
        if self.header.log_head.load(Relaxed) == self.head {
            return false;
        }
        self.header.log_head.store(self.head, SeqCst);
        true
    }

    /// Marks a child as evicted. Must precede any write past its cursor.
    pub fn evict(ctl: &SlotControl) {
        ctl.evicted.store(1, Relaxed);
        fence(Release);
    }
}

/// Why a child must stop reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("evicted: fell too far behind the relay log")]
    Evicted,
    #[error("corrupt relay log: {0}")]
    Corrupt(&'static str),
}

/// A child's side of the log.
pub struct LogReader {
    log: &'static [AtomicU64],
    header: &'static Header,
    mine: &'static SlotHeader,
    ctl: &'static SlotControl,
    me: u64,
    cursor: u64,
}

impl LogReader {
    /// A reader for client `me` in `slot`, starting at the slot's cursor
    /// (set by the master before the fork).
    pub fn new(region: &'static Region, slot: usize, me: u64) -> LogReader {
        let mine = region.slot_header(slot);
        LogReader {
            log: region.log(),
            header: region.header(),
            mine,
            ctl: region.control(slot),
            me,
            cursor: mine.cursor.load(SeqCst),
        }
    }

    /// Appends the payload of every new entry not from this client to
    /// `out`; returns the number of entries read. On error, `out` is left
    /// as it was.
    pub fn drain(&mut self, out: &mut Vec<u8>) -> Result<usize, LogError> {
        let mut scratch = Vec::new();
        self.drain_with(out, &mut scratch, |p, out| out.extend_from_slice(p))
    }

    /// Like [`LogReader::drain`], but each payload is copied to `scratch`
    /// and handed to `render`, which appends what the client is to read.
    /// `render` may see torn data (the master overwrote an entry while it
    /// was copied); that output is discarded, since the drain then fails
    /// (evicted), so `render` must only not panic on any bytes.
    pub fn drain_with(
        &mut self,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        render: impl FnMut(&[u8], &mut Vec<u8>),
    ) -> Result<usize, LogError> {
        let start_len = out.len();
        let r = self.read_into(out, scratch, render);
        if r.is_err() {
            out.truncate(start_len);
        }
        r
    }

    fn read_into(
        &mut self,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        mut render: impl FnMut(&[u8], &mut Vec<u8>),
    ) -> Result<usize, LogError> {
        let head = self.header.log_head.load(Acquire);
        if head == self.cursor {
            // Nothing new, but a reader the master gave up on must still
            // learn it: eviction is final whatever the head says.
            return if self.evicted() {
                Err(LogError::Evicted)
            } else {
                Ok(0)
            };
        }
        if head < self.cursor || head - self.cursor > LOG_BYTES as u64 || head % 8 != 0 {
            return Err(self.why("head out of range"));
        }
        let mut pos = self.cursor;
        let mut n = 0;
        while pos < head {
            if head - pos < ENTRY_HEADER {
                return Err(self.why("truncated entry"));
            }
            let w = pos / 8;
            if load(self.log, w) != pos {
                return Err(self.why("entry sequence mismatch"));
            }
            let origin = load(self.log, w + 1);
            let len = load(self.log, w + 2) & ((1 << LEN_BITS) - 1);
            if len > MAX_PAYLOAD as u64 || pos + entry_size(len as usize) > head {
                return Err(self.why("bad entry length"));
            }
            if origin != self.me {
                scratch.clear();
                read_bytes(self.log, w + 3, len as usize, scratch);
                render(scratch, out);
            }
            pos += entry_size(len as usize);
            n += 1;
        }
        // Seqlock check: anything overwritten while we copied implies the
        // master set `evicted` before it.
        if self.evicted() {
            return Err(LogError::Evicted);
        }
        self.cursor = pos;
        self.mine.cursor.store(pos, Release);
        Ok(n)
    }

    /// A newcomer's history: hands `render` the payload and time of the
    /// entry at each of `positions` (ascending, from the reader's cursor,
    /// before `end`), then moves the cursor to `end`, where the live part
    /// begins. The master keeps those entries (the cursor holds the log's
    /// tail) until the cursor moves. A position that is not an entry's
    /// start is skipped. On error, `out` is left as it was.
    pub fn replay(
        &mut self,
        positions: &[u64],
        end: u64,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        mut render: impl FnMut(&[u8], u64, &mut Vec<u8>),
    ) -> Result<usize, LogError> {
        let head = self.header.log_head.load(Acquire);
        if end < self.cursor || end > head || head - self.cursor > LOG_BYTES as u64 || end % 8 != 0
        {
            return Err(self.why("history out of range"));
        }
        let start_len = out.len();
        let mut n = 0;
        for &pos in positions {
            if pos < self.cursor || pos >= end || end - pos < ENTRY_HEADER || pos % 8 != 0 {
                continue;
            }
            let w = pos / 8;
            let word = load(self.log, w + 2);
            let len = word & ((1 << LEN_BITS) - 1);
            if load(self.log, w) != pos || len > MAX_PAYLOAD as u64 {
                continue;
            }
            if pos + entry_size(len as usize) > end {
                continue;
            }
            scratch.clear();
            read_bytes(self.log, w + 3, len as usize, scratch);
            render(scratch, word >> LEN_BITS, out);
            n += 1;
        }
        if self.evicted() {
            out.truncate(start_len);
            return Err(LogError::Evicted);
        }
        self.cursor = end;
        self.mine.cursor.store(end, Release);
        Ok(n)
    }

    fn why(&self, what: &'static str) -> LogError {
        if self.evicted() {
            LogError::Evicted
        } else {
            LogError::Corrupt(what)
        }
    }

    /// Whether the master has given up on this reader. The fence orders it
    /// after every load of the log before it (the seqlock's check).
    fn evicted(&self) -> bool {
        fence(Acquire);
        self.ctl.evicted.load(Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_skip_own_and_see_all_others() {
        let r: &'static Region = Box::leak(Box::new(Region::create(3).unwrap()));
        let mut w = LogWriter::new(r);
        let mut a = LogReader::new(r, 0, 100);
        let mut b = LogReader::new(r, 1, 200);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let mut expect_a = Vec::new();
        let mut expect_b = Vec::new();
        for i in 0..100_000u64 {
            let origin = [100, 200, 0][i as usize % 3];
            let line = format!("line {i}\n");
            if !w.append(origin, 0, line.as_bytes()) {
                w.publish();
                a.drain(&mut out_a).unwrap();
                b.drain(&mut out_b).unwrap();
                let tail = r
                    .slot_header(0)
                    .cursor
                    .load(SeqCst)
                    .min(r.slot_header(1).cursor.load(SeqCst));
                w.set_tail(tail);
                assert!(w.append(origin, 0, line.as_bytes()));
            }
            if origin != 100 {
                expect_a.extend_from_slice(line.as_bytes());
            }
            if origin != 200 {
                expect_b.extend_from_slice(line.as_bytes());
            }
        }
        w.publish();
        a.drain(&mut out_a).unwrap();
        b.drain(&mut out_b).unwrap();
        assert_eq!(out_a, expect_a);
        assert_eq!(out_b, expect_b);
    }

    #[test]
    fn evicted_reader_discards() {
        let r: &'static Region = Box::leak(Box::new(Region::create(1).unwrap()));
        let mut w = LogWriter::new(r);
        let mut a = LogReader::new(r, 0, 1);
        assert!(w.append(0, 0, b"x\n"));
        w.publish();
        LogWriter::evict(r.control(0));
        let mut out = b"keep".to_vec();
        assert_eq!(a.drain(&mut out), Err(LogError::Evicted));
        assert_eq!(out, b"keep");
    }

    /// Found by the `log` fuzz target: a reader marked evicted whose cursor
    /// equals the head (here a head reset to 0) used to get Ok(0).
    #[test]
    fn evicted_reader_with_nothing_new_is_told() {
        let r: &'static Region = Box::leak(Box::new(Region::create(1).unwrap()));
        let mut a = LogReader::new(r, 0, 1);
        assert_eq!(a.drain(&mut Vec::new()), Ok(0));
        LogWriter::evict(r.control(0));
        assert_eq!(a.drain(&mut Vec::new()), Err(LogError::Evicted));
    }

    #[test]
    fn replay_reads_the_given_entries_with_their_time() {
        let r: &'static Region = Box::leak(Box::new(Region::create(1).unwrap()));
        let mut w = LogWriter::new(r);
        let mut positions = Vec::new();
        for i in 0..10u64 {
            positions.push(w.head());
            assert!(w.append(7, 1_000 + i, format!("line {i}").as_bytes()));
        }
        let end = w.head();
        assert!(w.append(7, 2_000, b"live"));
        w.publish();
        r.slot_header(0).cursor.store(positions[0], SeqCst);
        let mut a = LogReader::new(r, 0, 1);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        // Every other line, a position inside an entry and one past `end`.
        let mut asked: Vec<u64> = positions.iter().copied().step_by(2).collect();
        asked.insert(1, positions[1] + 8);
        asked.push(end);
        let got = a.replay(&asked, end, &mut out, &mut scratch, |p, t, out| {
            out.extend_from_slice(format!("{t}:{} ", String::from_utf8_lossy(p)).as_bytes())
        });
        assert_eq!(got, Ok(5));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1000:line 0 1002:line 2 1004:line 4 1006:line 6 1008:line 8 "
        );
        assert_eq!(r.slot_header(0).cursor.load(SeqCst), end);
        let mut live = Vec::new();
        a.drain(&mut live).unwrap();
        assert_eq!(live, b"live");
    }

    #[test]
    fn garbage_head_is_rejected() {
        let r: &'static Region = Box::leak(Box::new(Region::create(1).unwrap()));
        let mut a = LogReader::new(r, 0, 1);
        r.header().log_head.store(13, SeqCst);
        assert!(matches!(
            a.drain(&mut Vec::new()),
            Err(LogError::Corrupt(_))
        ));
        r.header().log_head.store(64, SeqCst);
        assert!(matches!(
            a.drain(&mut Vec::new()),
            Err(LogError::Corrupt(_))
        ));
    }
}
