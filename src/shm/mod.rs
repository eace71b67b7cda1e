//! The shared-memory region: layout, creation and typed views.
//!
//! The master creates one region from a memfd before it forks anything and
//! maps it `MAP_SHARED` at a 2 MiB-aligned address; every child inherits
//! the mapping. Nothing in it is a lock: each part has exactly one writing
//! process, and readers treat what they read as untrusted input (see
//! [`ring`] and [`log`]).
//!
//! A child keeps only what it needs ([`Region::confine_to_slot`]): the
//! header, the control array and the log, read-only, and its own slot,
//! moved to `slots_off`, writable. Every other slot is unmapped in the
//! child, so it can neither write nor read another client's input. The
//! child's view is then one contiguous range from the aligned start, which
//! with the child's own small heap placed right after it
//! ([`crate::arena`]) lies in one 2 MiB page-table block: one page of page
//! tables for all of it, instead of one per scattered part.
//!
//! ```text
//!  offset 0         +--------------------------------------+
//!                   | Header (one page): magic, sizes,     |  master writes
//!                   | log_head, trim, history, last_gen    |
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
//!
//!  a child's view:  [header | control | log] read-only, then its own slot
//!                   at slots_off (read-write), then its own heap
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

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{
    madvise, mmap, mmap_anonymous, mremap, munmap, MRemapFlags, MapFlags, MmapAdvise, ProtFlags,
};
use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Page size assumed for the layout (x86_64 and aarch64 with 4 KiB pages).
pub const PAGE: usize = 4096;
/// The region starts on this boundary: the span one page-table page maps.
pub const BLOCK: usize = 2 << 20;
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
    /// Bumped by the master once a room has been quiet for a while (see
    /// `master::relay`); a child that sees it change gives back the pages
    /// of its (empty) send queue.
    pub trim: AtomicU64,
    /// Where the room's recent lines are in the log (history for
    /// newcomers): the master's record, kept here so that it survives a
    /// restart with the log. A region of an older chatd has zeros here.
    pub history: History,
    /// The last generation handed to a slot's new owner ([`Region::next_gen`]):
    /// one counter for all slots, so that the control words of free slots
    /// can be given back (they read zero afterwards) without a client id
    /// ever coming round again. A region of an older chatd has zero here
    /// and its slots' own counters ([`Region::adopt`] takes their maximum).
    pub last_gen: AtomicU64,
}

/// Most lines of history the master keeps track of (`history_lines`).
pub const HISTORY_MAX: usize = 100;

/// The log positions of the last [`HISTORY_MAX`] chat lines: entry `n`
/// (counting from the first line ever) is at `pos[n % HISTORY_MAX]`.
/// Written by the master only; children never read it (a newcomer is told
/// its history positions in its `Spec`).
#[repr(C, align(64))]
pub struct History {
    /// Lines recorded so far.
    pub count: AtomicU64,
    pub pos: [AtomicU64; HISTORY_MAX],
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
    /// Bytes written to the client so far (metrics).
    pub sent: AtomicU64,
    /// Nanoseconds from accept until the child was ready to serve (its
    /// confinement done); 0 until then. For the metrics' histogram.
    pub ready_ns: AtomicU64,
    /// Non-zero once the child has a file descriptor table of its own (see
    /// `master::handoff`): the master may reuse the fds it handed over.
    pub own_fds: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= PAGE);
const _: () = assert!(std::mem::size_of::<SlotControl>() == 64);
const _: () = assert!(std::mem::size_of::<SlotHeader>() == 64);

/// Slots whose control words share one page.
pub const CONTROL_PER_PAGE: usize = PAGE / std::mem::size_of::<SlotControl>();

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

/// The mapped region. Inherited by every child through fork; leaked, so the
/// mapping lives as long as the process.
pub struct Region {
    base: NonNull<u8>,
    layout: Layout,
    /// A child's view ([`Region::confine_to_slot`]): its slot, mapped at
    /// `slots_off`; None in the master's view.
    own: Option<usize>,
}

// SAFETY: the mapping is shared memory that every access reaches through
// atomics (see `at` and `words`); the pointer itself never changes, so the
// region may be used from any thread.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-empty range")
}

impl Region {
    /// Creates an anonymous memfd of the right size and maps it shared, at
    /// a [`BLOCK`]-aligned address.
    pub fn create(max_slots: usize) -> io::Result<Region> {
        Region::create_kept(max_slots).map(|(r, _)| r)
    }

    /// Like [`Region::create`], and keeps the memfd (for systemd's fd
    /// store, so that the next master can take the region over).
    pub fn create_kept(max_slots: usize) -> io::Result<(Region, OwnedFd)> {
        let layout = Layout::new(max_slots);
        let fd = memfd_create(
            c"chatd-shm",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len(layout.len as u64)?;
        let region = Region::map(&file, layout)?;
        let h = region.header();
        h.magic.store(MAGIC, Relaxed);
        h.max_slots.store(max_slots as u64, Relaxed);
        h.log_bytes.store(LOG_BYTES as u64, Relaxed);
        Ok((region, file.into()))
    }

    /// Maps the region a previous master left (a memfd from systemd's fd
    /// store). Untrusted: it must be a region of exactly this layout, or
    /// it is refused and the caller starts a fresh one. What is inside
    /// (heads, cursors, entries) is checked where it is read, as always.
    pub fn adopt(fd: OwnedFd, max_slots: usize) -> io::Result<Region> {
        let layout = Layout::new(max_slots);
        let file = File::from(fd);
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if file.metadata()?.len() != layout.len as u64 {
            return Err(bad("its size is not this layout's"));
        }
        let region = Region::map(&file, layout)?;
        let h = region.header();
        if h.magic.load(Relaxed) != MAGIC
            || h.max_slots.load(Relaxed) != max_slots as u64
            || h.log_bytes.load(Relaxed) != LOG_BYTES as u64
        {
            // The mapping stays (leaked address space of a refused region
            // is harmless and rare); nothing refers to it.
            return Err(bad("its header is not this layout's"));
        }
        if h.last_gen.load(Relaxed) == 0 {
            // An older chatd counted generations per slot.
            let last = (0..max_slots).map(|s| region.control(s).gen.load(Relaxed));
            h.last_gen.store(last.max().unwrap_or(0), Relaxed);
        }
        Ok(region)
    }

    /// The generation for a slot's new owner (the master's view): 32 bits,
    /// never 0 (client id 0 is nobody's), not used again for 2^32 - 1 new
    /// clients.
    pub fn next_gen(&self) -> u64 {
        let h = self.header();
        loop {
            let gen = h.last_gen.fetch_add(1, Relaxed).wrapping_add(1) & 0xffff_ffff;
            if gen != 0 {
                return gen;
            }
        }
    }

    fn map(file: &File, layout: Layout) -> io::Result<Region> {
        // Reserve len + BLOCK of address space, map the memfd over its first
        // aligned address, give back the rest.
        let span = layout.len + BLOCK;
        // SAFETY: a fresh inaccessible reservation at an address the kernel
        // picks; nothing refers to it.
        let hold = unsafe {
            mmap_anonymous(
                None,
                nz(span),
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }?;
        let start = hold.as_ptr() as usize;
        let aligned = start.next_multiple_of(BLOCK);
        // SAFETY: [aligned, aligned + len) lies inside the reservation just
        // made (aligned - start < BLOCK), so MAP_FIXED replaces only it. The
        // memfd is private to this process tree and the service manager's
        // fd store (no name in any filesystem), so nobody truncates it under
        // the mapping (its size was checked or set by the caller); all access
        // to the bytes goes through atomics, which is sound for memory
        // written concurrently by other processes.
        let base = unsafe {
            mmap(
                NonZeroUsize::new(aligned),
                nz(layout.len),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                file,
                0,
            )
        }?;
        for (from, to) in [(start, aligned), (aligned + layout.len, start + span)] {
            if from < to {
                // SAFETY: what is left of the reservation outside the region.
                unsafe {
                    munmap(
                        NonNull::new(from as *mut c_void).expect("non-null"),
                        to - from,
                    )
                }?;
            }
        }
        Ok(Region {
            base: base.cast(),
            layout,
            own: None,
        })
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
        unsafe { &*(self.base.as_ptr().add(off) as *const T) }
    }

    fn words(&self, off: usize, n: usize) -> &[AtomicU64] {
        assert!(off + n * 8 <= self.layout.len && off % 8 == 0);
        // SAFETY: as in `at`: in bounds, 8-aligned, AtomicU64 accepts any bits.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off) as *const AtomicU64, n) }
    }

    /// Where slot `slot` starts in this process: in a confined child, its
    /// own slot sits at `slots_off` and no other slot is mapped.
    fn slot_off(&self, slot: usize) -> usize {
        assert!(slot < self.layout.max_slots);
        match self.own {
            None => self.layout.slot_range(slot).start,
            Some(own) => {
                assert_eq!(slot, own, "another client's slot is not mapped here");
                self.layout.slots_off
            }
        }
    }

    pub fn header(&self) -> &Header {
        self.at(0)
    }

    pub fn control(&self, slot: usize) -> &SlotControl {
        assert!(slot < self.layout.max_slots);
        self.at(self.layout.control_off + slot * std::mem::size_of::<SlotControl>())
    }

    pub fn slot_header(&self, slot: usize) -> &SlotHeader {
        self.at(self.slot_off(slot))
    }

    pub fn ring(&self, slot: usize) -> &[AtomicU64] {
        let off = self.slot_off(slot) + std::mem::size_of::<SlotHeader>();
        self.words(off, RING_WORDS)
    }

    /// In a child: keeps slot `own` writable, moved to `slots_off`; unmaps
    /// every other slot and makes the rest read-only. The seccomp filter then
    /// forbids making any of it writable again, and forbids `mremap`, which
    /// could grow the slot's mapping over the next one. Returns the child's
    /// view of the region (a new value, so that the page holding the
    /// master's `Region`, shared by all children, stays unwritten); the
    /// master's view must not be used in this process afterwards.
    pub fn confine_to_slot(&self, own: usize) -> io::Result<Region> {
        assert!(own < self.layout.max_slots);
        assert!(self.own.is_none(), "confined twice");
        let l = self.layout;
        let at = |off: usize| -> NonNull<c_void> {
            // SAFETY: off <= len, inside (or one past) the mapping.
            NonNull::new(unsafe { self.base.as_ptr().add(off) }.cast()).expect("non-null")
        };
        let mine = l.slot_range(own);
        if mine.start != l.slots_off {
            // SAFETY: both ranges are page-aligned slots of this mapping; the
            // target (slot 0's place) is replaced, which this child never
            // uses; no Rust reference into either range exists yet (the
            // child's ring and log views are made after this).
            unsafe {
                mremap(
                    at(mine.start),
                    SLOT_SIZE,
                    SLOT_SIZE,
                    MRemapFlags::MREMAP_MAYMOVE | MRemapFlags::MREMAP_FIXED,
                    Some(at(l.slots_off)),
                )
            }?;
        }
        let rest = l.slots_off + SLOT_SIZE;
        if rest < l.len {
            // SAFETY: the other slots, which this child never touches (and
            // cannot through the returned view: `slot_off` refuses them).
            unsafe { munmap(at(rest), l.len - rest) }?;
        }
        // SAFETY: [0, slots_off) is page-aligned and inside the mapping; no
        // code writes these parts in a child (single writer per part; see the
        // module docs), so removing write access invalidates nothing.
        let r = unsafe { libc::mprotect(at(0).as_ptr(), l.slots_off, libc::PROT_READ) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            base: self.base,
            layout: l,
            own: Some(own),
        })
    }

    /// The first address past a child's view, where its own heap goes.
    pub fn end_of_child_view(&self) -> *mut u8 {
        // SAFETY: slots_off + SLOT_SIZE <= len: one past the first slot.
        unsafe { self.base.as_ptr().add(self.layout.slots_off + SLOT_SIZE) }
    }

    /// Gives a free slot's pages back to the system (the master's view
    /// only): the memfd's pages behind it are freed, and the slot reads as
    /// zeros until its next owner writes it. Without this, every slot ever
    /// used would keep its pages (and the master its mapping of them) after
    /// a crowd has left.
    pub fn release_slot(&self, slot: usize) -> io::Result<()> {
        assert!(self.own.is_none(), "a child never releases a slot");
        let r = self.layout.slot_range(slot);
        // SAFETY: one page-aligned slot inside the mapping; the caller (the
        // master, freeing the slot) has no reference into it, no child maps
        // it any more (its owner was reaped, and other children unmapped it
        // at start), and every later access goes through atomics that read
        // the zeros MADV_REMOVE leaves.
        unsafe { self.remove_pages(r.start, SLOT_SIZE) }
    }

    /// Gives back the page of control words of the [`CONTROL_PER_PAGE`]
    /// slots from `first` (the master's view, once none of them has an
    /// owner): they read zero afterwards, which is what a new owner's
    /// words start from (its generation comes from [`Region::next_gen`]).
    pub fn release_control_page(&self, first: usize) -> io::Result<()> {
        assert!(self.own.is_none(), "a child never releases control words");
        assert!(first % CONTROL_PER_PAGE == 0 && first < self.layout.max_slots);
        let off = self.layout.control_off + first * std::mem::size_of::<SlotControl>();
        // SAFETY: one page-aligned page of the control array inside the
        // mapping. Its slots have no owner: children only read their own
        // slot's words, and the master reads these through atomics, which
        // see the zeros MADV_REMOVE leaves.
        unsafe { self.remove_pages(off, PAGE) }
    }

    /// Gives back the log's bytes at positions `[from, to)` (rounded inwards
    /// to whole pages; at most one lap), which no reader may still read:
    /// they read zero afterwards, and the master writes over them as over
    /// any old entry.
    pub fn release_log(&self, from: u64, to: u64) -> io::Result<()> {
        assert!(self.own.is_none(), "a child never releases the log");
        let lap = LOG_BYTES as u64;
        let (from, to) = (
            from.next_multiple_of(PAGE as u64),
            to / PAGE as u64 * PAGE as u64,
        );
        if to <= from {
            return Ok(());
        }
        assert!(to - from <= lap);
        let (a, b) = ((from % lap) as usize, (to % lap) as usize);
        let parts = if a < b || b == 0 {
            [(a, if b == 0 { LOG_BYTES } else { b }), (0, 0)]
        } else {
            [(a, LOG_BYTES), (0, b)]
        };
        for (start, end) in parts {
            if start < end {
                // SAFETY: page-aligned and inside the log; per the caller,
                // no reader reads there, and the master writes there only
                // through atomics, which see the zeros MADV_REMOVE leaves.
                unsafe { self.remove_pages(self.layout.log_off + start, end - start) }?;
            }
        }
        Ok(())
    }

    /// `MADV_REMOVE`: frees the memfd's pages behind `[off, off + len)`.
    ///
    /// # Safety
    /// The range is page-aligned and inside the mapping, and nothing reads
    /// it other than through atomics that accept zeros.
    unsafe fn remove_pages(&self, off: usize, len: usize) -> io::Result<()> {
        // SAFETY: per the contract.
        unsafe { self.advise(off, len, MmapAdvise::MADV_REMOVE) }
    }

    /// Drops the master's page-table entries for all slots (`MADV_DONTNEED`
    /// on its shared mapping: the contents stay in the memfd, and the next
    /// access maps them again). A kernel that reclaims empty page-table
    /// pages (`CONFIG_PT_RECLAIM`) then frees those of every 2 MiB of slots
    /// that nobody holds: after ten thousand clients have left, 320 KiB.
    pub fn drop_slot_page_tables(&self) -> io::Result<()> {
        assert!(self.own.is_none(), "a child keeps its view");
        let off = self.layout.slots_off;
        // SAFETY: page-aligned and inside the mapping; on a shared mapping
        // DONTNEED changes no byte of it.
        unsafe { self.advise(off, self.layout.len - off, MmapAdvise::MADV_DONTNEED) }
    }

    /// `madvise` on `[off, off + len)` of the mapping.
    ///
    /// # Safety
    /// The range is page-aligned and inside the mapping, and what `advice`
    /// does to it is what the caller's users expect (see the callers).
    unsafe fn advise(&self, off: usize, len: usize, advice: MmapAdvise) -> io::Result<()> {
        debug_assert!(off % PAGE == 0 && len % PAGE == 0 && off + len <= self.layout.len);
        // SAFETY: inside the mapping, per the contract.
        let at = unsafe { self.base.as_ptr().add(off) }.cast::<c_void>();
        // SAFETY: per the contract.
        unsafe { madvise(NonNull::new(at).expect("non-null"), len, advice) }
            .map_err(io::Error::from)
    }

    /// The address of byte `off` of the mapping, for the fault tests.
    #[cfg(feature = "fault-injection")]
    pub fn raw_ptr(&self, off: usize) -> *mut u8 {
        assert!(off < self.layout.len);
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { self.base.as_ptr().add(off) }
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
    fn region_is_block_aligned() {
        let r = Region::create(3).unwrap();
        assert_eq!(r.header() as *const Header as usize % BLOCK, 0);
    }

    #[test]
    fn a_released_slot_reads_zero_and_keeps_its_control_words() {
        let r = Region::create(3).unwrap();
        r.slot_header(1).head.store(77, Relaxed);
        r.ring(1)[5].store(5, Relaxed);
        r.slot_header(2).head.store(99, Relaxed);
        r.control(1).gen.store(4, Relaxed);
        r.release_slot(1).unwrap();
        assert_eq!(r.slot_header(1).head.load(Relaxed), 0);
        assert_eq!(r.ring(1)[5].load(Relaxed), 0);
        assert_eq!(r.slot_header(2).head.load(Relaxed), 99);
        assert_eq!(r.control(1).gen.load(Relaxed), 4);
        // Usable again.
        r.slot_header(1).head.store(1, Relaxed);
        assert_eq!(r.slot_header(1).head.load(Relaxed), 1);
    }

    /// Whether the page at `off` of the region's memfd holds a page (not
    /// a hole): `mincore` on the master's shared mapping.
    fn resident(r: &Region, off: usize) -> bool {
        let mut v = [0u8; 1];
        // SAFETY: one page-aligned page inside the mapping; mincore only
        // writes the vector.
        let rc = unsafe { libc::mincore(r.base.as_ptr().add(off).cast(), PAGE, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v[0] & 1 == 1
    }

    #[test]
    fn a_released_control_page_reads_zero_and_generations_go_on() {
        let r = Region::create(2 * CONTROL_PER_PAGE).unwrap();
        let g1 = r.next_gen();
        r.control(3).gen.store(g1, Relaxed);
        r.control(3).consumed.store(9, Relaxed);
        r.control(CONTROL_PER_PAGE).gen.store(r.next_gen(), Relaxed);
        let page = r.layout.control_off;
        assert!(resident(&r, page));
        r.release_control_page(0).unwrap();
        assert!(!resident(&r, page), "the page is given back");
        assert_eq!(r.control(3).gen.load(Relaxed), 0);
        assert_eq!(r.control(3).consumed.load(Relaxed), 0);
        assert_eq!(r.control(CONTROL_PER_PAGE).gen.load(Relaxed), g1 + 1);
        // A new owner of slot 3 gets a generation never handed out.
        assert_eq!(r.next_gen(), g1 + 2);
        // After 2^32 - 1 generations the count comes round, skipping 0.
        r.header().last_gen.store(0xffff_ffff, Relaxed);
        assert_eq!(r.next_gen(), 1);
    }

    #[test]
    fn an_older_region_counts_generations_from_its_slots() {
        let (r, fd) = Region::create_kept(3).unwrap();
        r.control(1).gen.store(41, Relaxed);
        r.control(2).gen.store(7, Relaxed);
        let adopted = Region::adopt(fd, 3).unwrap();
        assert_eq!(adopted.next_gen(), 42);
    }

    #[test]
    fn the_log_gives_back_whole_pages_around_the_lap() {
        let r = Region::create(1).unwrap();
        let lap = LOG_BYTES as u64;
        let page = PAGE as u64;
        let at = |pos: u64| r.layout.log_off + (pos % lap) as usize / PAGE * PAGE;
        for w in r.log() {
            w.store(1, Relaxed);
        }
        // Keep [head - 3 pages - 8, head + 100): give back the rest of the
        // lap, which wraps past the log's end.
        let head = 5 * lap + 100;
        let keep = head - 3 * page - 8;
        r.release_log(head, keep + lap).unwrap();
        let word = |pos: u64| r.log()[(pos % lap / 8) as usize].load(Relaxed);
        assert_eq!(word(keep), 1, "partly kept pages stay");
        assert_eq!(word(head), 1);
        assert_eq!(word(head - 8), 1);
        assert_eq!(
            word(head.next_multiple_of(page)),
            0,
            "the next page is gone"
        );
        assert_eq!(
            word(keep - 8),
            1,
            "the page holding keep - 8 also holds keep"
        );
        assert_eq!(word(keep / page * page - 8), 0);
        assert!(!resident(&r, at(head + lap / 2)));
        assert!(resident(&r, at(keep)));
        // Nothing to give back: nothing changes.
        r.release_log(head, head).unwrap();
        assert_eq!(word(head), 1);
    }

    #[test]
    fn dropping_the_slots_page_tables_keeps_their_contents() {
        let r = Region::create(3).unwrap();
        r.ring(2)[9].store(99, Relaxed);
        r.drop_slot_page_tables().unwrap();
        assert_eq!(r.ring(2)[9].load(Relaxed), 99);
    }

    #[test]
    fn region_is_shared_across_fork() {
        use std::sync::atomic::Ordering;
        let r = Region::create(4).unwrap();
        // SAFETY: the child only stores to the shared mapping and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // Confined like a chatd child: slot 2 moves, the view shrinks.
                let Ok(v) = r.confine_to_slot(2) else {
                    // SAFETY: as below.
                    unsafe { libc::_exit(1) };
                };
                let base = v.header() as *const Header as usize;
                let ok = v.end_of_child_view() as usize == base + v.layout().slots_off + SLOT_SIZE;
                v.slot_header(2).cursor.store(42, Ordering::SeqCst);
                v.ring(2)[0].store(7, Ordering::SeqCst);
                // SAFETY: _exit is async-signal-safe and skips the test harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert_eq!(r.slot_header(2).cursor.load(Ordering::SeqCst), 42);
                assert_eq!(r.ring(2)[0].load(Ordering::SeqCst), 7);
                assert_eq!(r.slot_header(0).cursor.load(Ordering::SeqCst), 0);
            }
        }
    }
}
