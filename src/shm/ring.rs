//! A client's input ring: its child writes, the master reads (SPSC).
//!
//! Entries are `[pos][kind | len << 8][payload, zero-padded to words]`, where
//! `pos` is the entry's own byte position (its sequence number): a reader
//! that finds any other value there is not looking at a complete entry.
//! Positions only grow; the word index is `pos / 8 % RING_WORDS`.
//!
//! Publication: the child stores `SlotHeader::head` after writing an entry;
//! the master stores `SlotControl::consumed` after handling entries, which
//! frees the space. Both are SeqCst so that the "do I need to notify the
//! master" check ([`RingWriter::publish`]) and the master's "has more
//! arrived" re-check ([`RingReader::refresh`]) cannot both miss.

use super::words::{load, read_bytes, store, words_for, write_bytes};
use super::{Region, SlotControl, SlotHeader, RING_WORDS};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Bytes of a slot's ring.
pub const RING_BYTES: u64 = (RING_WORDS * 8) as u64;
/// Largest payload of one entry.
pub const MAX_PAYLOAD: usize = 4096;
const ENTRY_HEADER: u64 = 16;

/// What a ring entry asks the master to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Say the payload to the room.
    Chat = 1,
    /// Do the payload in the room (`/me`).
    Me = 2,
    /// Change nick to the payload.
    Nick = 3,
    /// Reply with the nicks in the room; the payload is one byte, what the
    /// list is for (`protocol::event::List`).
    Who = 4,
    /// The client is leaving; the payload is the reason.
    Quit = 5,
    /// Put the client in the room.
    Join = 6,
    /// Take the client out of the room; the payload is the reason.
    Part = 7,
    /// A private message: `[flags][target length][target][text]`.
    Private = 8,
    /// Handing over (the master is gone): input read from the client and
    /// not yet handled, for the child that takes the client over. Only
    /// that child reads it; the master skips it.
    Carry = 9,
    /// Handing over: the child stopped cleanly. Everything up to its log
    /// cursor was written to the client, whole lines only, and the
    /// `Carry` entries just before this one hold the rest of its input.
    Handover = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Chat,
            2 => Kind::Me,
            3 => Kind::Nick,
            4 => Kind::Who,
            5 => Kind::Quit,
            6 => Kind::Join,
            7 => Kind::Part,
            8 => Kind::Private,
            9 => Kind::Carry,
            10 => Kind::Handover,
            _ => return None,
        })
    }
}

/// Space an entry with `len` payload bytes takes.
pub fn entry_size(len: usize) -> u64 {
    ENTRY_HEADER + 8 * words_for(len) as u64
}

/// The child's side of its ring.
pub struct RingWriter {
    ring: &'static [AtomicU64],
    hdr: &'static SlotHeader,
    ctl: &'static SlotControl,
    head: u64,
    published: u64,
}

impl RingWriter {
    pub fn new(region: &'static Region, slot: usize) -> RingWriter {
        let hdr = region.slot_header(slot);
        let head = hdr.head.load(SeqCst);
        RingWriter {
            ring: region.ring(slot),
            hdr,
            ctl: region.control(slot),
            head,
            published: head,
        }
    }

    /// Free bytes in the ring.
    pub fn free(&self) -> u64 {
        let consumed = self.ctl.consumed.load(SeqCst).min(self.head);
        RING_BYTES.saturating_sub(self.head - consumed)
    }

    /// Writes one entry; false if it does not fit now. Not yet visible to
    /// the master until [`RingWriter::publish`].
    pub fn push(&mut self, kind: Kind, payload: &[u8]) -> bool {
        assert!(payload.len() <= MAX_PAYLOAD);
        let size = entry_size(payload.len());
        if size > self.free() {
            return false;
        }
        let w = self.head / 8;
        store(self.ring, w, self.head);
        store(self.ring, w + 1, kind as u64 | (payload.len() as u64) << 8);
        write_bytes(self.ring, w + 2, payload);
        self.head += size;
        true
    }

    /// Publishes pushed entries. Returns true when the master had consumed
    /// everything before them and so must be told over the control socket.
    pub fn publish(&mut self) -> bool {
        if self.head == self.published {
            return false;
        }
        let before = self.published;
        self.hdr.head.store(self.head, SeqCst);
        self.published = self.head;
        self.ctl.consumed.load(SeqCst) == before
    }
}

/// What a child that handed its client over left at the end of its ring.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// The last entry is a [`Kind::Handover`]: the child stopped cleanly.
    pub clean: bool,
    /// The input it carried over (the `Carry` entries before that).
    pub carry: Vec<u8>,
    /// A `Quit` entry is among them: the client was leaving.
    pub quit: bool,
}

/// Reads the unconsumed part of a slot's ring, without consuming anything,
/// for what a child that handed its client over left there. Used by the
/// master that adopts the client (was it clean?) and by the new child
/// (its carried input). Never writes.
pub fn handed_over(
    ring: &[AtomicU64],
    hdr: &SlotHeader,
    ctl: &SlotControl,
) -> Result<HandedOver, Corrupt> {
    let mut r = RingReader::from_parts(ring, hdr, ctl);
    let mut out = HandedOver::default();
    let (mut pieces, mut payload) = (Vec::new(), Vec::new());
    r.refresh()?;
    while let Some(kind) = r.peek(&mut payload)? {
        r.advance();
        out.clean = kind == Kind::Handover;
        out.quit |= kind == Kind::Quit;
        match kind {
            Kind::Carry => pieces.extend_from_slice(&payload),
            Kind::Handover => out.carry = std::mem::take(&mut pieces),
            _ => pieces.clear(),
        }
    }
    if !out.clean {
        out.carry.clear();
    }
    Ok(out)
}

/// A ring entry that cannot be valid: the child is broken or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt input ring: {0}")]
pub struct Corrupt(pub &'static str);

/// The master's side of a slot's ring. Everything read is validated.
pub struct RingReader<'a> {
    ring: &'a [AtomicU64],
    hdr: &'a SlotHeader,
    ctl: &'a SlotControl,
    consumed: u64,
    head: u64,
    next: u64,
}

impl<'a> RingReader<'a> {
    pub fn new(region: &'a Region, slot: usize) -> RingReader<'a> {
        Self::from_parts(
            region.ring(slot),
            region.slot_header(slot),
            region.control(slot),
        )
    }

    pub fn from_parts(
        ring: &'a [AtomicU64],
        hdr: &'a SlotHeader,
        ctl: &'a SlotControl,
    ) -> RingReader<'a> {
        let consumed = ctl.consumed.load(SeqCst);
        RingReader {
            ring,
            hdr,
            ctl,
            consumed,
            head: consumed,
            next: consumed,
        }
    }

    /// Loads the writer's head; true if there are entries to read.
    pub fn refresh(&mut self) -> Result<bool, Corrupt> {
        let head = self.hdr.head.load(SeqCst);
        if head < self.consumed || head - self.consumed > RING_BYTES || head % 8 != 0 {
            return Err(Corrupt("head out of range"));
        }
        self.head = head;
        Ok(head != self.consumed)
    }

    /// Reads the entry at the read position into `payload` without consuming it.
    pub fn peek(&mut self, payload: &mut Vec<u8>) -> Result<Option<Kind>, Corrupt> {
        let pos = self.consumed;
        if pos == self.head {
            return Ok(None);
        }
        if self.head - pos < ENTRY_HEADER {
            return Err(Corrupt("truncated entry"));
        }
        let w = pos / 8;
        if load(self.ring, w) != pos {
            return Err(Corrupt("entry sequence mismatch"));
        }
        let meta = load(self.ring, w + 1);
        let kind = Kind::from_u8(meta as u8).ok_or(Corrupt("unknown entry kind"))?;
        let len = meta >> 8;
        if len > MAX_PAYLOAD as u64 {
            return Err(Corrupt("entry too long"));
        }
        let end = pos + entry_size(len as usize);
        if end > self.head {
            return Err(Corrupt("entry past head"));
        }
        payload.clear();
        read_bytes(self.ring, w + 2, len as usize, payload);
        self.next = end;
        Ok(Some(kind))
    }

    /// Consumes the entry returned by the last [`RingReader::peek`].
    pub fn advance(&mut self) {
        self.consumed = self.next;
    }

    /// Frees what was consumed, making it visible to the writer.
    pub fn ack(&mut self) {
        self.ctl.consumed.store(self.consumed, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> &'static Region {
        Box::leak(Box::new(Region::create(2).unwrap()))
    }

    #[test]
    fn write_read_wrap_and_backpressure() {
        let r = region();
        let mut w = RingWriter::new(r, 1);
        let mut rd = RingReader::new(r, 1);
        let mut buf = Vec::new();
        let mut sent = 0u32;
        let mut got = 0u32;
        for round in 0..50 {
            while w.push(
                Kind::Chat,
                format!("msg {sent} {}", "x".repeat(round * 7)).as_bytes(),
            ) {
                sent += 1;
            }
            let notify = w.publish();
            assert!(notify, "master was idle, so the writer must notify");
            while rd.refresh().unwrap() {
                while let Some(k) = rd.peek(&mut buf).unwrap() {
                    assert_eq!(k, Kind::Chat);
                    assert!(buf.starts_with(format!("msg {got} ").as_bytes()));
                    got += 1;
                    rd.advance();
                }
                rd.ack();
            }
        }
        assert_eq!(sent, got);
        assert!(sent > 500);
    }

    #[test]
    fn no_notify_while_master_behind() {
        let r = region();
        let mut w = RingWriter::new(r, 0);
        assert!(w.push(Kind::Chat, b"a"));
        assert!(w.publish());
        assert!(w.push(Kind::Chat, b"b"));
        assert!(!w.publish(), "first notify is still outstanding");
    }

    #[test]
    fn a_handover_is_read_back_without_consuming() {
        let r = region();
        let scan = || handed_over(r.ring(0), r.slot_header(0), r.control(0)).unwrap();
        let mut w = RingWriter::new(r, 0);
        assert_eq!(scan(), HandedOver::default());
        assert!(w.push(Kind::Chat, b"hello"));
        assert!(w.push(Kind::Carry, b"half a li"));
        assert!(w.push(Kind::Carry, b"ne"));
        assert!(w.push(Kind::Handover, b""));
        w.publish();
        let h = scan();
        assert!(h.clean && !h.quit);
        assert_eq!(h.carry, b"half a line");
        // A second handover carries only its own input; a line after it
        // makes the stop unclean; a quit is seen.
        assert!(w.push(Kind::Handover, b""));
        w.publish();
        assert_eq!(scan().carry, b"");
        assert!(w.push(Kind::Quit, b"bye"));
        w.publish();
        let h = scan();
        assert!(!h.clean && h.quit && h.carry.is_empty());
        assert_eq!(r.control(0).consumed.load(SeqCst), 0, "nothing consumed");
    }

    #[test]
    fn garbage_is_rejected() {
        let r = region();
        let hdr = r.slot_header(0);
        let mut rd = RingReader::new(r, 0);
        hdr.head.store(RING_BYTES + 8, SeqCst);
        assert!(rd.refresh().is_err());
        hdr.head.store(64, SeqCst);
        assert!(rd.refresh().unwrap());
        let mut buf = Vec::new();
        r.ring(0)[0].store(999, SeqCst);
        assert_eq!(rd.peek(&mut buf), Err(Corrupt("entry sequence mismatch")));
        r.ring(0)[0].store(0, SeqCst);
        r.ring(0)[1].store(0xff, SeqCst);
        assert_eq!(rd.peek(&mut buf), Err(Corrupt("unknown entry kind")));
        assert!(rd.peek(&mut buf).is_err());
        r.ring(0)[1].store(1 | (1 << 40), SeqCst);
        assert_eq!(rd.peek(&mut buf), Err(Corrupt("entry too long")));
        r.ring(0)[1].store(1 | (100 << 8), SeqCst);
        assert_eq!(rd.peek(&mut buf), Err(Corrupt("entry past head")));
    }
}
