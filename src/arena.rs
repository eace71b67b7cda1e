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
//! [`Allocator`] is chatd's global allocator (`main.rs` installs it through
//! [`Global`]) and routes by address: pointers inside the arena go to talc, all others to
//! the system allocator. In a child, the first thing after `fork` is
//! [`leave`]: the child gets a small arena of its own in fresh pages, so it
//! does not write the inherited system heap either, whose pages (which the
//! master no longer writes) stay shared by all children.
//!
//! The rule this imposes: a child must not touch anything the master
//! allocated after [`enter`]; it would fault on the missing mapping. What a
//! child needs from the master (its `Spec`, the greeting) is built under
//! [`outside`], in the system heap. Everything the master set up before
//! [`enter`] (the region, the seccomp program, the logger) is inherited
//! normally.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use talc::{ErrOnOom, Span, Talc};

/// Address space reserved for the master's arena (populated as used).
pub const ARENA_BYTES: usize = 256 << 20;
/// Address space reserved for a child's own arena (populated as used).
pub const CHILD_ARENA_BYTES: usize = 1 << 20;

/// talc's state; its pointers refer to the arena mapping.
struct Heap(Talc<ErrOnOom>);

// SAFETY: the raw pointers inside Talc point into the arena mapping, which
// belongs to the process, not to a thread; the heap is only used under the
// mutex below.
unsafe impl Send for Heap {}

/// chatd's global allocator: the master's arena, or the system allocator.
pub struct Allocator {
    heap: Mutex<Heap>,
    /// New allocations go to the arena (set by `enter`, cleared by `leave`).
    active: AtomicBool,
    base: AtomicUsize,
    end: AtomicUsize,
}

impl Allocator {
    pub const fn new() -> Allocator {
        Allocator {
            heap: Mutex::new(Heap(Talc::new(ErrOnOom))),
            active: AtomicBool::new(false),
            base: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
        }
    }

    fn owns(&self, p: *mut u8) -> bool {
        let a = p as usize;
        a >= self.base.load(Relaxed) && a < self.end.load(Relaxed)
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, Heap> {
        // A panic while the lock is held cannot leave talc half-updated in
        // a way that matters here (panic = abort in release builds).
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator::new()
    }
}

// SAFETY: every pointer handed out comes either from the system allocator
// or from talc on memory reserved for it alone, and goes back to the one it
// came from (arena pointers are recognised by address). talc's own
// requirements (non-zero sizes, matching layouts) are GlobalAlloc's.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.active.load(Relaxed) {
            // SAFETY: GlobalAlloc callers never ask for zero bytes.
            if let Ok(p) = unsafe { self.heap().0.malloc(layout) } {
                return p.as_ptr();
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            // SAFETY: ptr came from talc.malloc with this layout.
            unsafe { self.heap().0.free(NonNull::new_unchecked(ptr), layout) }
        } else {
            // SAFETY: ptr came from System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let in_arena = self.owns(ptr);
        if in_arena == self.active.load(Relaxed) {
            if !in_arena {
                // SAFETY: forwarded unchanged.
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            let p = NonNull::new(ptr).expect("non-null");
            let mut h = self.heap();
            if new_size <= layout.size() {
                // SAFETY: ptr is a live talc allocation of `layout`.
                unsafe { h.0.shrink(p, layout, new_size) };
                return ptr;
            }
            // SAFETY: as above; talc moves the block if it cannot grow it.
            if let Ok(q) = unsafe { h.0.grow(p, layout, new_size) } {
                return q.as_ptr();
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

/// The one [`Allocator`]; [`enter`] and [`leave`] act on it.
pub static GLOBAL: Allocator = Allocator::new();

/// A handle to [`GLOBAL`] to install with `#[global_allocator]`.
pub struct Global;

// SAFETY: forwards every call unchanged to GLOBAL, a valid GlobalAlloc.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { GLOBAL.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { GLOBAL.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { GLOBAL.realloc(ptr, layout, new_size) }
    }
}

/// Why the arena could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("master arena: {0}")]
pub struct ArenaError(String);

/// Maps `len` bytes of fresh private memory, `MADV_DONTFORK` if asked,
/// and makes it the arena new allocations come from.
fn use_arena(len: usize, dont_fork: bool) -> Result<(), ArenaError> {
    use nix::sys::mman::{madvise, mmap_anonymous, MapFlags, MmapAdvise, ProtFlags};
    let nz = std::num::NonZeroUsize::new(len).expect("non-empty arena");
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // picks; nothing else refers to it.
    let base = unsafe {
        mmap_anonymous(
            None,
            nz,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }
    .map_err(|e| ArenaError(format!("mmap: {e}")))?;
    if dont_fork {
        // SAFETY: the range is exactly the mapping just made.
        unsafe { madvise(base, len, MmapAdvise::MADV_DONTFORK) }
            .map_err(|e| ArenaError(format!("madvise(MADV_DONTFORK): {e}")))?;
    }
    let base = base.as_ptr() as *mut u8;
    let mut h = GLOBAL.heap();
    // A fresh talc: any previous one managed a mapping this process no
    // longer has (the master's, in a child) and is forgotten.
    h.0 = Talc::new(ErrOnOom);
    // SAFETY: the span is memory reserved for talc alone, never freed.
    unsafe { h.0.claim(Span::from_base_size(base, len)) }
        .map_err(|()| ArenaError("talc could not claim the arena".into()))?;
    GLOBAL.base.store(base as usize, Relaxed);
    GLOBAL.end.store(base as usize + len, Relaxed);
    GLOBAL.active.store(true, Relaxed);
    Ok(())
}

/// Reserves the master's arena (`MADV_DONTFORK`) and sends the master's
/// later allocations there. Does nothing useful unless [`GLOBAL`] is the
/// global allocator (`main.rs`).
pub fn enter() -> Result<(), ArenaError> {
    use_arena(ARENA_BYTES, true)
}

/// In a freshly forked child, before anything allocates: the master's
/// arena is not mapped here. The child gets a small arena of its own, so
/// that its allocations stay together in fresh pages instead of writing
/// into the inherited system heap (whose pages all children share); past
/// it, or if it cannot be mapped, the system heap.
pub fn leave() {
    GLOBAL.active.store(false, Relaxed);
    GLOBAL.base.store(0, Relaxed);
    GLOBAL.end.store(0, Relaxed);
    let _ = use_arena(CHILD_ARENA_BYTES, false);
}

/// Runs `f` with the master's new allocations in the system heap, for data
/// a child will inherit (its `Spec`).
pub fn outside<T>(f: impl FnOnce() -> T) -> T {
    let was = GLOBAL.active.swap(false, Relaxed);
    let r = f();
    GLOBAL.active.store(was, Relaxed);
    r
}
