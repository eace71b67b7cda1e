//! The master's heap arena: why an idle child costs little memory.
//!
//! A forked child shares every page of the master's heap copy-on-write. The
//! master keeps writing its heap (the client table, hash maps, malloc's own
//! bookkeeping, one allocation per relayed line), and every page it writes
//! after a fork stays behind as a private copy in each child forked before:
//! measured, 13-14 heap pages per join, so each idle child carried 50-200
//! KiB of the master's heap that it never reads.
//!
//! So once set up, the master allocates from an arena of its own: a
//! private anonymous mapping marked `MADV_DONTFORK`, which children do not
//! inherit at all (nor its page tables), managed by the `talc` allocator.
//! [`Global`] is chatd's global allocator (`main.rs` installs it) and
//! routes by address: pointers inside the arena go to talc, all others to
//! the system allocator. talc's state sits at the base of the arena it
//! manages and the choice of arena in thread-local storage, so that the
//! master's allocations write no page that children share. In a child,
//! the first thing after `fork` is [`leave`], and once the shared region
//! is confined, [`child`]: the child gets an arena of its own in fresh
//! pages, placed right after its view of the shared region (one page-table
//! block for both), so it does not write the inherited system heap either.
//! Its last set-up step unmaps that heap ([`drop_system_heap`]).
//!
//! The rule this imposes: a child must not touch anything the master
//! allocated after [`enter`]; it would fault on the missing mapping. What a
//! child needs from the master is its `Spec` (plain values on the master's
//! stack) and its greeting, which waits in its control socket before the
//! fork. Everything the master set up before [`enter`] (the region, the
//! seccomp program) is inherited normally, and used only during set-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::NonNull;
use talc::{OomHandler, Span, Talc};

/// The page size chatd assumes everywhere (`crate::shm::PAGE`).
const PAGE: usize = crate::shm::PAGE;

/// Address space reserved for the master's arena (populated as used).
pub const ARENA_BYTES: usize = 256 << 20;
/// Address space a child's own arena needs besides its send queue.
const CHILD_ARENA_BASE: usize = 1 << 20;

/// Bytes by which talc's heap grows inside the reserved mapping (at least).
const GROW_STEP: usize = 16 << 10;
/// What talc manages at first in the master (fewer extensions while it
/// sets up its tables).
const MASTER_FIRST: usize = 1 << 20;
/// What talc manages at first in a child: two pages, so that its top tag
/// shares a page with the child's first allocations.
const CHILD_FIRST: usize = 8 << 10;

/// talc's out-of-memory handler: the heap starts small at the bottom of
/// the reservation and grows upwards in [`GROW_STEP`]s. talc keeps a tag
/// at the top of its heap; claiming the whole reservation at once would
/// put that tag (and a page-table page) at its far end.
struct Grow {
    /// What talc manages now.
    heap: Span,
    /// The whole reservation.
    limit: Span,
    /// Never grow (while [`give_back_free`] probes for free space).
    frozen: bool,
}

impl OomHandler for Grow {
    fn handle_oom(talc: &mut Talc<Self>, layout: std::alloc::Layout) -> Result<(), ()> {
        let Grow {
            heap,
            limit,
            frozen,
        } = talc.oom_handler;
        if frozen {
            return Err(());
        }
        let want = (layout.size() + layout.align()).next_multiple_of(GROW_STEP);
        let new = heap.extend(0, want).fit_within(limit);
        if heap.is_empty() || new == heap {
            return Err(());
        }
        // SAFETY: `new` extends the current heap within the reservation,
        // which is this allocator's alone.
        talc.oom_handler.heap = unsafe { talc.extend(heap, new) };
        Ok(())
    }
}

/// talc's state. It lives at the base of the arena it manages: in the
/// master, inside the mapping children do not inherit, so the master's
/// allocations write no page a child shares (a static here would be such a
/// page, left behind as a private copy in every child forked before each
/// write).
struct Heap(Talc<Grow>);

/// Where this process's allocations go. Kept in thread-local storage,
/// whose page every process writes anyway (errno lives there), not in a
/// static: a child setting it up would make its own copy of a page of the
/// binary's data, and the master's writes would leave one in every child.
///
/// chatd's master is single-threaded (see `master::spawn::fork_bare`), so
/// "this thread" is "this process". Another thread would allocate from the
/// system heap and must not free arena blocks.
#[derive(Clone, Copy)]
struct Route {
    /// The arena's talc state, at `base`; null: the system allocator.
    heap: *mut Heap,
    /// The arena mapping is `[base, end)`.
    base: usize,
    end: usize,
    /// In a child: never `realloc` in the system heap, which may `mremap`,
    /// a call outside the child's seccomp allowlist.
    no_remap: bool,
    /// In a child that has unmapped the system heap ([`drop_system_heap`]):
    /// never call the system allocator again.
    no_system: bool,
}

const NO_ARENA: Route = Route {
    heap: std::ptr::null_mut(),
    base: 0,
    end: 0,
    no_remap: false,
    no_system: false,
};

thread_local! {
    static ROUTE: Cell<Route> = const { Cell::new(NO_ARENA) };
}

fn route() -> Route {
    ROUTE.with(Cell::get)
}

fn set_route(f: impl FnOnce(&mut Route)) {
    ROUTE.with(|r| {
        let mut v = r.get();
        f(&mut v);
        r.set(v);
    });
}

impl Route {
    fn owns(&self, p: *mut u8) -> bool {
        let a = p as usize;
        a >= self.base && a < self.end
    }
}

/// talc, if `heap` is an arena's (non-null).
///
/// # Safety
/// No other reference to the heap may be live: the allocator's methods
/// take it for the length of one call and never re-enter (talc does not
/// allocate), and only this thread has the route.
unsafe fn talc<'a>(heap: *mut Heap) -> Option<&'a mut Talc<Grow>> {
    // SAFETY: a non-null `heap` points to the Heap that use_arena wrote at
    // the base of a mapping this process keeps for good; exclusive per the
    // contract.
    unsafe { heap.as_mut() }.map(|h| &mut h.0)
}

/// chatd's global allocator (`main.rs` installs it): the arena this
/// process uses, if any, or the system allocator. It has no state of its
/// own: that is `Route` (thread-local) and `Heap` (in the arena).
pub struct Global;

// SAFETY: every pointer handed out comes either from the system allocator
// or from talc on memory reserved for it alone, and goes back to the one it
// came from (arena pointers are recognised by address). talc's own
// requirements (non-zero sizes, matching layouts) are GlobalAlloc's.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let r = route();
        // SAFETY: one use of talc for this call, as `talc` requires.
        if let Some(t) = unsafe { talc(r.heap) } {
            // SAFETY: GlobalAlloc callers never ask for zero bytes.
            if let Ok(p) = unsafe { t.malloc(layout) } {
                return p.as_ptr();
            }
        }
        if r.no_system {
            return std::ptr::null_mut(); // out of memory: the arena is full
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let r = route();
        // SAFETY: one use of talc for this call, as `talc` requires.
        match unsafe { talc(r.heap) } {
            // SAFETY: ptr came from talc.malloc with this layout.
            Some(t) if r.owns(ptr) => unsafe { t.free(NonNull::new_unchecked(ptr), layout) },
            // SAFETY: ptr came from System with this layout.
            _ if !r.no_system => unsafe { System.dealloc(ptr, layout) },
            // It lay in the unmapped system heap: nothing to give back.
            _ => {}
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let r = route();
        let in_arena = r.owns(ptr);
        if !in_arena && r.no_system {
            // The block lay in the unmapped system heap; nothing can be
            // copied from it.
            return std::ptr::null_mut();
        }
        if !in_arena && r.heap.is_null() && !r.no_remap {
            // SAFETY: forwarded unchanged.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if in_arena {
            // SAFETY: one use of talc for this call, as `talc` requires.
            if let Some(t) = unsafe { talc(r.heap) } {
                let p = NonNull::new(ptr).expect("non-null");
                if new_size <= layout.size() {
                    // SAFETY: ptr is a live talc allocation of `layout`.
                    unsafe { t.shrink(p, layout, new_size) };
                    return ptr;
                }
                // SAFETY: as above; talc moves the block if it cannot grow it.
                if let Ok(q) = unsafe { t.grow(p, layout, new_size) } {
                    return q.as_ptr();
                }
            }
        }
        // Moving between the arena and the system heap (or talc is full):
        // allocate anew, copy, free the old block.
        // SAFETY: the new layout is valid (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: non-zero size, per the contract.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks are live and at least this long, and
            // distinct allocations never overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        q
    }
}

/// Why the arena could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("master arena: {0}")]
pub struct ArenaError(String);

/// Maps `len` bytes of fresh private memory (at `at` if that address range
/// is free, else where the kernel puts it), `MADV_DONTFORK` if asked, and
/// makes it the arena new allocations come from.
fn use_arena(
    len: usize,
    first: usize,
    dont_fork: bool,
    at: Option<usize>,
) -> Result<(), ArenaError> {
    use nix::sys::mman::{madvise, mmap_anonymous, MapFlags, MmapAdvise, ProtFlags};
    let nz = std::num::NonZeroUsize::new(len).expect("non-empty arena");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
    let at = at.and_then(std::num::NonZeroUsize::new);
    // SAFETY: a fresh private anonymous mapping; with MAP_FIXED_NOREPLACE it
    // fails rather than replace anything already mapped at `at`. Nothing
    // else refers to it.
    let placed = at.and_then(|a| {
        unsafe { mmap_anonymous(Some(a), nz, prot, flags | MapFlags::MAP_FIXED_NOREPLACE) }.ok()
    });
    let base = match placed {
        Some(b) => b,
        // SAFETY: as above, at an address the kernel picks.
        None => unsafe { mmap_anonymous(None, nz, prot, flags) }
            .map_err(|e| ArenaError(format!("mmap: {e}")))?,
    };
    if dont_fork {
        // SAFETY: the range is exactly the mapping just made.
        unsafe { madvise(base, len, MmapAdvise::MADV_DONTFORK) }
            .map_err(|e| ArenaError(format!("madvise(MADV_DONTFORK): {e}")))?;
    }
    let base = base.as_ptr() as *mut u8;
    // talc's state first, then the memory it manages. A fresh talc: any
    // previous one managed a mapping this process no longer has (the
    // master's, in a child) and is forgotten.
    let state = std::mem::size_of::<Heap>().next_multiple_of(64);
    let limit = Span::from_base_size(base.wrapping_add(state), len - state);
    let heap = base as *mut Heap;
    // SAFETY: the mapping is fresh, writable, page-aligned (so aligned for
    // Heap) and longer than Heap; nothing else refers to it.
    unsafe {
        heap.write(Heap(Talc::new(Grow {
            heap: Span::empty(),
            limit,
            frozen: false,
        })))
    };
    // SAFETY: the Heap was just written and nobody else has it yet.
    let talc = unsafe { &mut (*heap).0 };
    let claim = Span::from_base_size(
        base.wrapping_add(state),
        first.min(len).saturating_sub(state),
    );
    // SAFETY: the span is memory reserved for talc alone, never freed.
    let claimed = unsafe { talc.claim(claim) }
        .map_err(|()| ArenaError("talc could not claim the arena".into()))?;
    talc.oom_handler.heap = claimed;
    set_route(|r| {
        r.heap = heap;
        r.base = base as usize;
        r.end = base as usize + len;
    });
    Ok(())
}

/// The address range `[start, end)` of the arena in use, if any (for the
/// fault-injection hook, which must not mistake it for another slot).
#[cfg(feature = "fault-injection")]
pub fn span() -> Option<(usize, usize)> {
    let r = route();
    (r.base != 0).then_some((r.base, r.end))
}

/// Whether this process's new allocations land in an arena of chatd's (in
/// the master after [`enter`]: memory children do not inherit). Checked
/// with a real allocation, so it also fails when [`Global`] is not the
/// global allocator.
pub fn in_arena() -> bool {
    let r = route();
    if r.base == 0 {
        return false;
    }
    let probe = Box::new(0u8);
    let at = &*probe as *const u8 as usize;
    (r.base..r.end).contains(&at)
}

/// Reserves the master's arena (`MADV_DONTFORK`) and sends the master's
/// later allocations there. Does nothing useful unless [`Global`] is the
/// global allocator (`main.rs`).
pub fn enter() -> Result<(), ArenaError> {
    use_arena(ARENA_BYTES, MASTER_FIRST, true, None)
}

/// In a freshly forked child, before anything allocates: the master's
/// arena is not mapped here, so allocations go to the system heap until
/// [`child`] gives the child an arena of its own.
pub fn leave() {
    set_route(|r| {
        *r = Route {
            no_remap: true,
            ..NO_ARENA
        }
    });
}

/// The child's own arena, at `at` if free: address space for `sendq_max`
/// bytes of send queue (a `Vec` that doubles, copied when it moves) plus
/// [`CHILD_ARENA_BASE`], populated as used. Its allocations stay together
/// in fresh pages instead of writing into the inherited system heap (whose
/// pages all children share). Past it, or if it cannot be mapped, the
/// system heap.
pub fn child(at: *mut u8, sendq_max: usize) {
    let len = CHILD_ARENA_BASE + sendq_max.saturating_mul(4);
    let _ = use_arena(len, CHILD_FIRST, false, Some(at as usize));
}

/// In a child whose room has gone quiet (see `crate::child`, the trim):
/// shrinks talc's heap to the pages its live blocks reach and gives the
/// pages above back to the kernel (`MADV_DONTNEED`). The heap grows again
/// on demand (its out-of-memory handler), in fresh zero pages. Without
/// this, the free space at the top of the heap keeps two pages in use for
/// good: talc's record at the start of that free span and its size at the
/// end.
pub fn give_back() {
    let r = route();
    // SAFETY: one use of talc for this call, as `talc` requires.
    let Some(t) = (unsafe { talc(r.heap) }) else {
        return;
    };
    let old = t.oom_handler.heap;
    let Some((base, acme)) = old.get_base_acme() else {
        return;
    };
    // SAFETY: `old` is the heap talc manages (the last value its claim,
    // extend or truncate returned).
    let used = unsafe { t.get_allocated_span(old) };
    let keep = match used.get_base_acme() {
        Some((_, top)) => (top as usize).next_multiple_of(PAGE),
        None => base as usize,
    };
    if keep >= acme as usize {
        return;
    }
    let want = Span::new(base, keep as *mut u8).fit_over(used);
    // SAFETY: `want` lies within the current heap and covers every live
    // block (`fit_over` the allocated span).
    let new = unsafe { t.truncate(old, want) };
    t.oom_handler.heap = new;
    let from = new.get_base_acme().map_or(base, |(_, a)| a) as usize;
    let from = from.next_multiple_of(PAGE);
    let to = acme as usize / PAGE * PAGE;
    if to <= from {
        return;
    }
    // SAFETY: [from, to) is page-aligned, inside this process's arena
    // mapping and above the heap talc now manages: nothing refers to it,
    // and talc extends into it again only as fresh memory.
    let _ = unsafe {
        nix::sys::mman::madvise(
            NonNull::new_unchecked(from as *mut libc::c_void),
            to - from,
            nix::sys::mman::MmapAdvise::MADV_DONTNEED,
        )
    };
}

/// Largest and smallest free span [`give_back_free`] takes in one piece.
const PROBE_MAX: usize = 16 << 20;
const PROBE_MIN: usize = 2 * PAGE;

/// In the master, once a crowd has left (`Master::trim_if_quiet`): gives
/// the pages of the free space *inside* talc's heap back to the kernel
/// (`MADV_DONTNEED`), as [`give_back`] does for the space at its top.
/// What ten thousand clients left behind (their `Client` records, names,
/// the grown tables) is free space between live blocks, which talc keeps
/// resident; without this the master would keep its high-water mark.
///
/// talc has no way to list its free spans, so this finds them with its
/// public calls: with growth switched off it allocates page-aligned
/// blocks, largest first, until none fits; the pages of each block are
/// given back while it is held; then all are freed. talc never reads the
/// inside of a block it handed out, and freeing writes only its records,
/// which lie outside the pages given back (the word after each block
/// holds the link to the next, on the page talc's own tag shares).
/// Returns the bytes given back.
pub fn give_back_free() -> usize {
    give_back();
    let r = route();
    // SAFETY: one use of talc for this call, as `talc` requires; nothing
    // allocates while it is held (the list of blocks lives in the blocks).
    let Some(t) = (unsafe { talc(r.heap) }) else {
        return 0;
    };
    t.oom_handler.frozen = true;
    // Each block is `size` bytes of whole pages and a trailer: the next
    // block in the list and its own size.
    const TRAILER: usize = 16;
    let mut list: *mut u8 = std::ptr::null_mut();
    let (mut size, mut given) = (PROBE_MAX, 0);
    while size >= PROBE_MIN {
        let layout = Layout::from_size_align(size + TRAILER, PAGE).expect("valid layout");
        // SAFETY: a non-zero size.
        let Ok(p) = (unsafe { t.malloc(layout) }) else {
            size /= 2; // nothing of this size is free (any more)
            continue;
        };
        let p = p.as_ptr();
        // SAFETY: the trailer is the block's last 16 bytes, past the pages
        // given back, on the page that talc's tag after the block shares.
        let trailer = unsafe { p.add(size) };
        // SAFETY: as above, inside the block.
        unsafe {
            trailer.cast::<*mut u8>().write_unaligned(list);
            trailer.add(8).cast::<usize>().write_unaligned(size);
        }
        list = trailer;
        // SAFETY: [p, p + size) is page-aligned and inside the block just
        // allocated, which nothing reads until it is freed below.
        let _ = unsafe {
            nix::sys::mman::madvise(
                NonNull::new_unchecked(p.cast()),
                size,
                nix::sys::mman::MmapAdvise::MADV_DONTNEED,
            )
        };
        given += size;
    }
    while !list.is_null() {
        // SAFETY: `list` is the trailer of a block allocated above, with
        // the size it was allocated with; the block starts `size` before.
        unsafe {
            let trailer = list;
            list = trailer.cast::<*mut u8>().read_unaligned();
            let size = trailer.add(8).cast::<usize>().read_unaligned();
            let layout = Layout::from_size_align_unchecked(size + TRAILER, PAGE);
            t.free(NonNull::new_unchecked(trailer.sub(size)), layout);
        }
    }
    t.oom_handler.frozen = false;
    given
}

/// In a child, as the last step of its set-up: unmaps the system heap
/// inherited from the master, and with it the heap's page-table page and
/// every heap page the master writes after the fork (its log-line buffer,
/// allocated before the master's arena existed). Returns the bytes
/// unmapped; 0 if there is no child arena (the system heap is still the
/// allocator) or the heap's start is unknown.
///
/// What the child used from there (the master's `Region`, the seccomp
/// program) is done with by then; its own allocations are in its arena.
/// From here the system allocator is never called: an allocation the
/// arena cannot serve fails (and the child aborts), and a block from the
/// old heap is never freed. Nothing else may call glibc's `malloc` either,
/// which the child's code does not do (no stdio, no locale, no thread-local
/// value with a destructor touched for the first time).
pub fn drop_system_heap() -> Result<usize, nix::Error> {
    let start = crate::child::image::noted().map_or(0, |i| i.start_brk as usize);
    if start == 0 || route().heap.is_null() {
        return Ok(0);
    }
    // SAFETY: sbrk(0) only reads glibc's record of the current break.
    let end = unsafe { libc::sbrk(0) } as usize;
    let Some(len) = end.checked_sub(start).filter(|&l| l > 0) else {
        return Ok(0);
    };
    set_route(|r| r.no_system = true);
    let start = std::ptr::NonNull::new(start as *mut libc::c_void).expect("non-null");
    // SAFETY: [start, end) is the brk heap (the kernel's start_brk to
    // glibc's current break): glibc's malloc owns it, and from here on
    // nothing in this process calls glibc's malloc or reads a block in it
    // (see above; the allocator refuses system calls once no_system is set).
    unsafe { nix::sys::mman::munmap(start, len) }?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `[base, base + len)` in memory (`mincore`).
    fn resident(base: usize, len: usize) -> usize {
        let mut v = vec![0u8; len / PAGE];
        // SAFETY: a page-aligned range of this thread's arena mapping;
        // mincore only writes the vector, one byte per page.
        let rc = unsafe { libc::mincore(base as *mut libc::c_void, len, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    /// A block of `layout` from this thread's arena, filled with `fill`.
    fn alloc(layout: Layout, fill: u8) -> *mut u8 {
        // SAFETY: the test's layouts are not zero-sized.
        let p = unsafe { Global.alloc(layout) };
        assert!(route().owns(p), "from the arena");
        // SAFETY: a fresh block of layout.size() bytes.
        unsafe { p.write_bytes(fill, layout.size()) };
        p
    }

    /// Frees a block from [`alloc`] after checking it still holds `fill`.
    fn free(p: *mut u8, layout: Layout, fill: u8) {
        // SAFETY: a live block of layout.size() bytes, from `alloc`.
        let b = unsafe { std::slice::from_raw_parts(p, layout.size()) };
        assert!(b.iter().all(|&x| x == fill), "block intact");
        // SAFETY: allocated by `alloc` with this layout, freed once.
        unsafe { Global.dealloc(p, layout) };
    }

    #[test]
    fn free_space_inside_the_heap_is_given_back_and_reused() {
        // The route is per thread: this test's arena is its own.
        use_arena(64 << 20, MASTER_FIRST, false, None).unwrap();
        let base = route().base;
        let small = Layout::from_size_align(400, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..20_000).map(|i| alloc(small, i as u8)).collect();
        // One block above them stays: the free space is not at the top.
        let keep = alloc(small, 0xab);
        let before = resident(base, 64 << 20);
        for (i, &p) in blocks.iter().enumerate() {
            if i % 1000 != 0 {
                free(p, small, i as u8);
            }
        }
        let given = give_back_free();
        let after = resident(base, 64 << 20);
        assert!(given >= 6 << 20, "gave back {given} bytes");
        assert!(
            before - after >= (6 << 20) / PAGE,
            "resident pages {before} -> {after}"
        );
        // The heap works on, and what was live is intact (checked as freed).
        let again: Vec<*mut u8> = (0..20_000).map(|_| alloc(small, 7)).collect();
        for p in again {
            free(p, small, 7);
        }
        for (i, &p) in blocks.iter().enumerate().step_by(1000) {
            free(p, small, i as u8);
        }
        free(keep, small, 0xab);
        set_route(|r| *r = NO_ARENA);
    }
}
