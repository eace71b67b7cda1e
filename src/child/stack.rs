//! The child's own stack, and its process title.
//!
//! A forked child runs on its copy of the master's stack, at the top of the
//! address space, far from everything else it uses. For two pages of
//! frames that stack costs every child a page-table page, a page-middle
//! directory page and often an upper-directory page of its own: 8-12 KiB,
//! an eighth of an idle child (ARCHITECTURE.md, "Memory"). So a child
//! moves to a stack of its own, mapped with a guard page between its view
//! of the shared region and its arena (one page-table block for all
//! three), and unmaps the inherited one.
//!
//! The inherited stack also holds argv and the environment, which is where
//! the kernel reads `/proc/PID/cmdline` (what `ps` shows) from. So before
//! the move the child points the kernel at a title in its arena instead,
//! with `prctl(PR_SET_MM, PR_SET_MM_MAP)` (no privilege needed as long as
//! the executable link is left alone): `ps` shows `chatd: client
//! 192.0.2.7:51234`. If the kernel refuses (built without
//! `CONFIG_CHECKPOINT_RESTORE`), or on an architecture without the switch
//! below, the child keeps the inherited stack and the master's command
//! line, as before.
//!
//! Once moved, nothing may read the old stack: not `std::env` (argv, the
//! environment), not glibc's `getenv` or `getauxval`, and no reference
//! into the master's frames. The child's loop uses none: everything it
//! needs is moved onto the new stack ([`enter`]).

use super::image;
use crate::shm::PAGE;
use std::convert::Infallible;
use std::num::NonZeroUsize;

/// The child's stack. Its loop needs a few KiB (two pages measured); the
/// rest is never touched, so costs nothing.
pub const STACK_BYTES: usize = 128 << 10;

/// A mapped stack of the child's own: a guard page, then [`STACK_BYTES`]
/// up to `top`.
#[derive(Clone, Copy, Debug)]
pub struct OwnStack {
    top: usize,
}

impl OwnStack {
    /// The first byte above the stack (where the child's arena goes).
    pub fn top(&self) -> *mut u8 {
        self.top as *mut u8
    }
}

/// What [`enter`] needs: where to go, and what to unmap.
#[derive(Clone, Copy, Debug)]
pub struct Leave {
    top: usize,
    old_lo: usize,
    old_hi: usize,
}

/// Maps the new stack at `at` (page-aligned, right after the child's view
/// of the shared region), its lowest page a guard. None if that address
/// range is taken or cannot be protected: the child keeps its stack.
pub fn map(at: *mut u8) -> Option<OwnStack> {
    use nix::sys::mman::{mmap_anonymous, mprotect, MapFlags, ProtFlags};
    let len = NonZeroUsize::new(PAGE + STACK_BYTES)?;
    let at = NonZeroUsize::new(at as usize)?;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE | MapFlags::MAP_FIXED_NOREPLACE;
    // SAFETY: a fresh private anonymous mapping; MAP_FIXED_NOREPLACE fails
    // rather than replace anything mapped there. Nothing refers to it yet.
    let base = unsafe {
        mmap_anonymous(
            Some(at),
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            flags,
        )
    }
    .ok()?;
    // SAFETY: the guard is the first page of the mapping just made.
    if unsafe { mprotect(base, PAGE, ProtFlags::PROT_NONE) }.is_err() {
        // SAFETY: the mapping just made, referred to by nothing.
        let _ = unsafe { nix::sys::mman::munmap(base, len.get()) };
        return None;
    }
    Some(OwnStack {
        top: base.as_ptr() as usize + len.get(),
    })
}

/// The layout `prctl(PR_SET_MM, PR_SET_MM_MAP)` takes (`struct
/// prctl_mm_map` in `linux/prctl.h`; not in the libc crate).
#[repr(C)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: *const u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// Before the child's seccomp filter: sets the process title to `title`
/// (copied into the child's arena), and finds the inherited stack's exact
/// bounds. None (not an error) when the child is to keep its stack: no
/// stack of its own, nothing noted by the master, the kernel refused the
/// title, or no stack switch for this architecture.
pub fn prepare(own: Option<OwnStack>, title: &str) -> Option<Leave> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return None;
    }
    let (own, img) = (own?, image::noted()?);
    let t: &'static str = format!("{title}\0").leak();
    let (arg_start, arg_end) = (t.as_ptr() as u64, t.as_ptr() as u64 + t.len() as u64);
    let map = MmMap {
        start_code: img.start_code,
        end_code: img.end_code,
        start_data: img.start_data,
        end_data: img.end_data,
        start_brk: img.start_brk,
        // SAFETY: sbrk(0) only reads glibc's record of the current break.
        brk: unsafe { libc::sbrk(0) } as u64,
        start_stack: img.start_stack,
        arg_start,
        arg_end,
        env_start: arg_end,
        env_end: arg_end,
        auxv: std::ptr::null(),
        auxv_size: 0,
        // Leave /proc/PID/exe alone (changing it needs a capability).
        exe_fd: u32::MAX,
    };
    // The fault hook (tests only) stands in for a kernel that refuses.
    #[cfg(feature = "fault-injection")]
    let refused = crate::sandbox::fault::refuse_set_mm();
    #[cfg(not(feature = "fault-injection"))]
    let refused = false;
    let r = if refused {
        -1
    } else {
        // SAFETY: PR_SET_MM_MAP reads `size_of::<MmMap>()` bytes at `&map`,
        // a live value of the kernel's layout. It only changes what procfs
        // reports (the kernel checks the ranges); the title it points to is
        // leaked, so it lives as long as the process.
        unsafe {
            libc::prctl(
                libc::PR_SET_MM,
                libc::PR_SET_MM_MAP as libc::c_ulong,
                &map as *const MmMap as libc::c_ulong,
                std::mem::size_of::<MmMap>() as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }
    };
    if r != 0 {
        return None;
    }
    let (mut lo, hi) = (img.stack_lo as usize, img.stack_hi as usize);
    // The stack may have grown below what the master noted: walk down while
    // the page below is mapped (madvise on an unmapped page is ENOMEM;
    // MADV_NORMAL changes nothing on a stack page).
    // SAFETY: advice only; it neither reads nor changes memory.
    while lo > PAGE
        && unsafe { libc::madvise((lo - PAGE) as *mut libc::c_void, PAGE, libc::MADV_NORMAL) } == 0
    {
        lo -= PAGE;
    }
    // This frame must be on it, or it is not the stack we run on.
    let here = &lo as *const usize as usize;
    (lo <= here && here < hi).then_some(Leave {
        top: own.top,
        old_lo: lo,
        old_hi: hi,
    })
}

/// Runs `run` (the child's loop) on the child's own stack after unmapping
/// the inherited one, if `leave` says so; else right here. Never returns
/// (`run` cannot: `Infallible` has no value).
/// Everything `run` needs must be moved into it: nothing on the old stack
/// survives.
pub fn enter<F: FnOnce() -> Infallible>(leave: Option<Leave>, run: F) -> ! {
    match leave {
        Some(l) => switch(l, run),
        None => match run() {},
    }
}

/// What crosses to the new stack, in the child's arena.
struct Crossing<F> {
    run: F,
    old_lo: usize,
    old_hi: usize,
    /// The lowest usable address of the new stack (above its guard).
    new_lo: usize,
}

thread_local! {
    /// The lowest usable address of the child's own stack; 0 while it runs
    /// on the stack it was forked on.
    static OWN_LO: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Stack kept below the caller's frame by [`release_unused`]: what the
/// loop's deepest calls (epoll_wait, send, the allocator) need.
const KEEP_BELOW: usize = 1024;

/// Gives back the pages of the child's own stack more than
/// [`KEEP_BELOW`] under the caller's frame. A TLS handshake runs deep once
/// (rustls, ring: four pages more than the loop ever needs again), and a
/// stack does not shrink by itself. Nothing below the caller is live, so
/// the pages come back zeroed if touched again.
#[inline(never)]
pub fn release_unused() {
    let lo = OWN_LO.with(|c| c.get());
    let here = std::hint::black_box(&lo) as *const usize as usize;
    let below = here.saturating_sub(KEEP_BELOW) / PAGE * PAGE;
    if lo == 0 || below <= lo {
        return;
    }
    // SAFETY: [lo, below) lies in this child's own stack (from `map`),
    // more than KEEP_BELOW under the current frame: no live data is there.
    let _ = unsafe {
        nix::sys::mman::madvise(
            std::ptr::NonNull::new_unchecked(lo as *mut libc::c_void),
            below - lo,
            nix::sys::mman::MmapAdvise::MADV_DONTNEED,
        )
    };
}

/// The first function on the new stack: takes the crossing out of the
/// arena, unmaps the old stack, runs the loop.
extern "C" fn on_new_stack<F: FnOnce() -> Infallible>(c: *mut Crossing<F>) -> ! {
    // SAFETY: `c` is the Box that `switch` leaked for this call, used once.
    let Crossing {
        run,
        old_lo,
        old_hi,
        new_lo,
    } = *unsafe { Box::from_raw(c) };
    OWN_LO.with(|c| c.set(new_lo));
    let start = std::ptr::NonNull::new(old_lo as *mut libc::c_void).expect("non-null");
    // SAFETY: [old_lo, old_hi) is the stack this process was forked on. We
    // no longer run on it, and nothing refers into it: `run` and its
    // values were moved here, and the child reads no argv, environment or
    // auxiliary vector (see the module doc).
    let r = unsafe { nix::sys::mman::munmap(start, old_hi - old_lo) };
    super::setup::step("inherited stack", r);
    match run() {}
}

fn switch<F: FnOnce() -> Infallible>(l: Leave, run: F) -> ! {
    let c = Box::into_raw(Box::new(Crossing {
        run,
        old_lo: l.old_lo,
        old_hi: l.old_hi,
        new_lo: l.top - STACK_BYTES,
    }));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `l.top` is the 16-byte-aligned top of a mapped, writable
    // stack no one uses (`map`), with a guard page below. The call pushes
    // the return address, so `on_new_stack` starts with the alignment the
    // ABI promises; it never returns (`ud2` would trap if it did). Nothing
    // after this point runs on the old stack.
    unsafe {
        std::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            top = in(reg) l.top,
            entry = sym on_new_stack::<F>,
            in("rdi") c,
            options(noreturn),
        )
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as for x86_64: `sp` becomes the 16-byte-aligned top of the
    // new stack; the frame pointer and link register are cleared so that
    // no unwinder walks back onto the old stack; `on_new_stack` never
    // returns (`brk` would trap if it did).
    unsafe {
        std::arch::asm!(
            "mov sp, {top}",
            "mov x29, xzr",
            "mov x30, xzr",
            "bl {entry}",
            "brk #1",
            top = in(reg) l.top,
            entry = sym on_new_stack::<F>,
            in("x0") c,
            options(noreturn),
        )
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // `prepare` never says to leave on other architectures.
        let _ = c;
        unreachable!("no stack switch on this architecture")
    }
}
