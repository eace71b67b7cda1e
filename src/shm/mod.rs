//! The shared-memory region: layout, creation and typed views.
//!
//! The master creates one region from a memfd before it forks anything and
//! maps it `MAP_SHARED`; every child inherits the mapping. Nothing in it is
//! a lock: each part has exactly one writing process, and readers treat what
//! they read as untrusted input (see [`ring`] and [`log`]).
//!
//! ```text
//!  offset 0         +--------------------------------------+
//!                   | Header (one page): magic, sizes,     |  master writes
//!                   | log_head                             |
//!  PAGE             +--------------------------------------+
//!                   | SlotControl[max_slots], 64 B each:   |  master writes
//!                   | gen, consumed (ring ack), evicted    |
//!  log_off          +--------------------------------------+
//!                   | Relay log: LOG_BYTES ring of         |  master writes,
//!                   | formatted lines in global order      |  children read
//!  slots_off        +--------------------------------------+
//!                   | Slot 0 (SLOT_SIZE, page-aligned)     |  child 0 writes,
//!                   |   SlotHeader: head, cursor           |  master reads
//!                   |   ring of child 0's input entries    |
//!                   +--------------------------------------+
//!                   | Slot 1 ...                           |
//!                   +--------------------------------------+
//! ```
//!
//! The message path: a child validates a client line and appends it to its
//! own slot's ring ([`ring::RingWriter`]); the master reads it
//! ([`ring::RingReader`]), re-validates it, formats it with the sender's nick
//! and appends it to the relay log ([`log::LogWriter`]), whose order is the
//! one global order; every child copies new log entries, except its own, to
//! its client ([`log::LogReader`]). ARCHITECTURE.md has the full story.

pub mod log;
pub mod ring;
mod words;

use memmap2::MmapMut;
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

/// Page size assumed for the layout (x86_64 and aarch64 with 4 KiB pages).
pub const PAGE: usize = 4096;
/// Bytes per client slot: a 64-byte header and the client's input ring.
pub const SLOT_SIZE: usize = 4 * PAGE;
/// Bytes of the relay log.
pub const LOG_BYTES: usize = 1 << 20;
/// Identifies a chatd region (and its layout version).
pub const MAGIC: u64 = 0x6368_6174_6401_0001;

/// The first page of the region. Written by the master only.
#[repr(C, align(64))]
pub struct Header {
    pub magic: AtomicU64,
    pub max_slots: AtomicU64,
    pub log_bytes: AtomicU64,
    /// Byte position one past the last published log entry (monotonic).
    pub log_head: AtomicU64,
}

/// Per-slot state kept by the master. Written by the master only.
#[repr(C, align(64))]
pub struct SlotControl {
    /// Generation of the slot's current owner; bumped on every reuse.
    pub gen: AtomicU64,
    /// Ring position up to which the master has consumed the slot's ring.
    pub consumed: AtomicU64,
    /// Non-zero once the master stopped waiting for this child to read the
    /// log; the child must discard what it read and leave.
    pub evicted: AtomicU64,
}

/// The head of a client's slot. Written by that client's child only.
#[repr(C, align(64))]
pub struct SlotHeader {
    /// Ring position one past the last published entry (monotonic).
    pub head: AtomicU64,
    /// Log position up to which this child has copied the relay log.
    pub cursor: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= PAGE);
const _: () = assert!(std::mem::size_of::<SlotControl>() == 64);
const _: () = assert!(std::mem::size_of::<SlotHeader>() == 64);

/// Words of a slot's input ring.
pub const RING_WORDS: usize = (SLOT_SIZE - std::mem::size_of::<SlotHeader>()) / 8;
/// Words of the relay log.
pub const LOG_WORDS: usize = LOG_BYTES / 8;

/// Byte offsets of the region's parts for a given number of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_slots: usize,
    pub control_off: usize,
    pub log_off: usize,
    pub slots_off: usize,
    pub len: usize,
}

impl Layout {
    pub fn new(max_slots: usize) -> Layout {
        let round = |n: usize| n.div_ceil(PAGE) * PAGE;
        let control_off = PAGE;
        let log_off = control_off + round(max_slots * std::mem::size_of::<SlotControl>());
        let slots_off = log_off + LOG_BYTES;
        let len = slots_off + max_slots * SLOT_SIZE;
        Layout {
            max_slots,
            control_off,
            log_off,
            slots_off,
            len,
        }
    }

    /// Byte range of slot `i` (page-aligned), for the per-child protections.
    pub fn slot_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.slots_off + i * SLOT_SIZE;
        start..start + SLOT_SIZE
    }
}

/// The mapped region. Cloned into every child by fork.
pub struct Region {
    map: MmapMut,
    layout: Layout,
}

impl Region {
    /// Creates an anonymous memfd of the right size and maps it shared.
    pub fn create(max_slots: usize) -> io::Result<Region> {
        let layout = Layout::new(max_slots);
        let fd = memfd_create(
            c"chatd-shm",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len(layout.len as u64)?;
        // SAFETY: the memfd is private to this process tree (it has no name in
        // any filesystem and is closed right after mapping), so no other
        // program can truncate it under the mapping. All access to the mapped
        // bytes goes through atomics, which is sound for memory written
        // concurrently by other processes.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let region = Region { map, layout };
        let h = region.header();
        h.magic.store(MAGIC, std::sync::atomic::Ordering::Relaxed);
        h.max_slots
            .store(max_slots as u64, std::sync::atomic::Ordering::Relaxed);
        h.log_bytes
            .store(LOG_BYTES as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(region)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn at<T>(&self, off: usize) -> &T {
        assert!(off + std::mem::size_of::<T>() <= self.layout.len);
        assert!(off % std::mem::align_of::<T>() == 0);
        // SAFETY: in bounds and aligned (asserted above; the mapping itself is
        // page-aligned); T is one of this module's repr(C) structs of atomics
        // or an atomic, for which every bit pattern is valid and shared
        // mutation is sound. The reference lives no longer than the mapping.
        unsafe { &*(self.map.as_ptr().add(off) as *const T) }
    }

    fn words(&self, off: usize, n: usize) -> &[AtomicU64] {
        assert!(off + n * 8 <= self.layout.len && off % 8 == 0);
        // SAFETY: as in `at`: in bounds, 8-aligned, AtomicU64 accepts any bits.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off) as *const AtomicU64, n) }
    }

    pub fn header(&self) -> &Header {
        self.at(0)
    }

    pub fn control(&self, slot: usize) -> &SlotControl {
        assert!(slot < self.layout.max_slots);
        self.at(self.layout.control_off + slot * std::mem::size_of::<SlotControl>())
    }

    pub fn slot_header(&self, slot: usize) -> &SlotHeader {
        assert!(slot < self.layout.max_slots);
        self.at(self.layout.slot_range(slot).start)
    }

    pub fn ring(&self, slot: usize) -> &[AtomicU64] {
        assert!(slot < self.layout.max_slots);
        let off = self.layout.slot_range(slot).start + std::mem::size_of::<SlotHeader>();
        self.words(off, RING_WORDS)
    }

    /// Makes every page of the region read-only in this process except slot
    /// `own`: a child may write its own slot and nothing else it shares.
    /// The seccomp filter then forbids making any of it writable again.
    pub fn confine_to_slot(&self, own: usize) -> io::Result<()> {
        assert!(own < self.layout.max_slots);
        let own = self.layout.slot_range(own);
        let base = self.map.as_ptr() as *mut libc::c_void;
        for (start, end) in [(0, own.start), (own.end, self.layout.len)] {
            if start == end {
                continue;
            }
            // SAFETY: [start, end) lies within this mapping and is
            // page-aligned (slot ranges are); the mapping outlives the
            // process (the region is leaked), and no code writes these pages
            // in a child (single writer per part; see the module docs), so
            // no Rust reference is invalidated by removing write access.
            let r = unsafe { libc::mprotect(base.add(start), end - start, libc::PROT_READ) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The address of byte `off` of the mapping, for the fault tests.
    #[cfg(feature = "fault-injection")]
    pub fn raw_ptr(&self, off: usize) -> *mut u8 {
        assert!(off < self.layout.len);
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { (self.map.as_ptr() as *mut u8).add(off) }
    }

    pub fn log(&self) -> &[AtomicU64] {
        self.words(self.layout.log_off, LOG_WORDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned() {
        let l = Layout::new(1000);
        assert_eq!(l.log_off % PAGE, 0);
        assert_eq!(l.slots_off % PAGE, 0);
        assert_eq!(l.slot_range(7).start % PAGE, 0);
        assert_eq!(l.len, l.slot_range(999).end);
    }

    #[test]
    fn region_is_shared_across_fork() {
        use std::sync::atomic::Ordering;
        let r = Region::create(4).unwrap();
        // SAFETY: the child only stores to the shared mapping and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                r.slot_header(2).cursor.store(42, Ordering::SeqCst);
                // SAFETY: _exit is async-signal-safe and skips the test harness.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(r.slot_header(2).cursor.load(Ordering::SeqCst), 42);
            }
        }
    }
}
