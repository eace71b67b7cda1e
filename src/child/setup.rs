//! The child's set-up right after fork, before it reads a single byte.
//!
//! First, right after fork and before anything allocates, [`confine_memory`]:
//! the master's arena is gone (`crate::arena::leave`); the shared region is
//! cut down to what this child may see, read-only except its own slot (see
//! [`crate::shm::Region::confine_to_slot`]); the child's own stack (with
//! a guard page; [`crate::child::stack`]) and its own arena go right after
//! it, in the same page-table block.
//!
//! Then [`prepare`], one sequence, in order; any failure is fatal (the
//! child writes one line naming the step to stderr and exits with status
//! 70):
//! 1. (installed by the master before its first fork: [`install_panic_hook`])
//!    a panic hook that writes one line to stderr and `_exit`s (under the
//!    seccomp filter a normal panic would die confusingly of SIGSYS);
//! 2. signals: unblock everything the master blocked for its signalfd;
//!    ignore SIGINT, SIGHUP and SIGTERM (a terminal's Ctrl-C or hangup
//!    reaches the whole process group, and the unit's SIGTERM the whole
//!    control group; the master turns it into an orderly shutdown or a
//!    handover, and a carried child outlives a dead master to finish),
//!    SIGPIPE and SIGXFSZ; default SIGSEGV and SIGBUS (no std handler);
//! 3. PR_SET_PDEATHSIG(SIGKILL), then check that the parent is still the
//!    master, so a master killed by SIGKILL leaves no orphan; except for a
//!    client in systemd's fd store, whose child outlives its master just
//!    long enough to hand the client over (it sees its control socket
//!    close; see `crate::master::handover`);
//! 4. fds: the client socket to 3, the control socket to 4, the shared
//!    wake-up eventfd to 5, close stdin, stdout and every fd above 5
//!    (listeners, other children's sockets, the signalfd, epoll, timerfd,
//!    the config directory, the notify socket); then the child's own epoll
//!    instance (on fd 0) over the three;
//! 5. rlimits: NPROC, FSIZE, CORE 0, NOFILE 6 (fds 0 to 5);
//! 6. Landlock: no filesystem access (and no TCP bind/connect, no signals
//!    or abstract sockets outside the child) where the kernel has it;
//! 7. process title: `/proc/PID/cmdline` points to `chatd: client PEER`
//!    in the child's arena, not to argv on the inherited stack
//!    ([`crate::child::stack::prepare`]; if the kernel refuses, the child
//!    keeps that stack and the master's command line: not fatal);
//! 8. seccomp: the child allowlist ([`crate::sandbox::seccomp::child`]),
//!    stacked on the master's inherited filter;
//! 9. the inherited system heap is unmapped ([`crate::arena::drop_system_heap`]):
//!    what the child needed from it (the master's `Region`, the seccomp
//!    program) is done with, and pages the master writes there after the
//!    fork would otherwise stay behind as private copies;
//! 10. (in `master::spawn`, [`crate::child::stack::enter`]) the child moves
//!     to its own stack, unmaps the inherited one, and runs its loop there.
//!
//! When the master started as root, the child also inherits its chroot in
//! the empty directory, its service uid and gid, and its empty capability
//! sets and no_new_privs (see [`crate::master::confine`]).

use super::stack::{self, OwnStack};
use crate::sandbox::{landlock, rlimits, seccomp};
use crate::shm::Region;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{getppid, Pid};
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Where the client socket, the control socket and the wake-up eventfd end
/// up in the child.
pub const CLIENT_FD: RawFd = 3;
pub const CTL_FD: RawFd = 4;
pub const WAKE_FD: RawFd = 5;

/// Epoll tokens of the child's three fds.
pub const TOKEN_CTL: u64 = 0;
pub const TOKEN_CLIENT: u64 = 1;
pub const TOKEN_WAKE: u64 = 2;

/// Ends the process without running destructors or atexit handlers (which
/// belong to the master's state inherited through fork).
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Makes every panic one line on stderr, `chatd child PID: panic: ...`,
/// after which a child exits with status 101 (the master reports it) and
/// the master aborts (`chatd master PID: panic: ...`). The master installs
/// it before its first fork: a child setting its own hook would write the
/// page of the binary's data that holds it, and keep a private copy of
/// that page.
pub fn install_panic_hook() {
    // A static, not a captured value: the hook must not be a heap block
    // (children unmap the system heap; a closure without captures is not
    // allocated).
    static MASTER: AtomicU32 = AtomicU32::new(0);
    MASTER.store(std::process::id(), Relaxed);
    std::panic::set_hook(Box::new(|info| {
        let pid = std::process::id();
        let master = MASTER.load(Relaxed);
        let who = if pid == master { "master" } else { "child" };
        let _ = writeln!(std::io::stderr(), "chatd {who} {pid}: panic: {info}");
        if pid != master {
            exit(101)
        }
    }));
}

/// What the sandbox needs to know about this child.
pub struct Jail<'a> {
    pub master: Pid,
    pub filter: &'a seccompiler::BpfProgram,
    /// The client is in systemd's fd store (`Spec::carried`): the child
    /// outlives its master to hand it over, so no parent-death signal.
    pub carried: bool,
}

/// The first step after fork (after `crate::arena::leave`): the shared
/// region confined to this child's view; then the child's own stack
/// (`crate::child::stack`, not entered yet) and its arena right after it.
/// Returns the child's view, the only one to use from here on, and the
/// stack, if it could be mapped.
pub fn confine_memory(
    region: &Region,
    slot: usize,
    max_sendq: usize,
) -> (&'static Region, Option<OwnStack>) {
    let view = step("shared memory protection", region.confine_to_slot(slot));
    let end = view.end_of_child_view();
    let own = stack::map(end);
    crate::arena::child(own.map_or(end, |s| s.top()), max_sendq);
    (Box::leak(Box::new(view)), own)
}

/// The child's fds at their fixed numbers, once confined.
pub struct Prepared {
    pub client: OwnedFd,
    pub ctl: OwnedFd,
    /// The wake-up eventfd, kept open so the epoll instance keeps it.
    pub wake: OwnedFd,
    /// ctl (level-triggered), client and wake (edge-triggered).
    pub epoll: Epoll,
    /// A line for the client from the fault hook (fault-injection builds).
    pub fault_note: Option<String>,
    /// Whether and where to leave the inherited stack ([`stack::enter`]).
    pub leave: Option<stack::Leave>,
}

/// Runs steps 2–9. `wake` is the master's wake-up eventfd as inherited by
/// fork (the child owns its copy of every fd); `own` is the stack
/// [`confine_memory`] mapped, and `title` what `ps` is to show.
pub fn prepare(
    jail: Jail<'_>,
    client: OwnedFd,
    ctl: OwnedFd,
    wake: RawFd,
    own: Option<OwnStack>,
    title: &str,
) -> Prepared {
    step("signals", reset_signals());
    if !jail.carried {
        step(
            "parent-death signal",
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
        );
    }
    if getppid() != jail.master {
        exit(0); // the master died between fork and prctl
    }
    // SAFETY: `wake` is open in this process (inherited) and nothing else in
    // the child refers to it; the master's EventFd is never used here.
    let wake = unsafe { OwnedFd::from_raw_fd(wake) };
    let (client, ctl, wake) = step("fd cleanup", arrange_fds(client, ctl, wake));
    let epoll = step("epoll", child_epoll(&client, &ctl, &wake));
    step("rlimits", rlimits::confine_child(WAKE_FD as u64 + 1));
    step("landlock", landlock::restrict_all());
    #[cfg(feature = "fault-injection")]
    let fault_note = crate::sandbox::fault::before_seccomp();
    #[cfg(not(feature = "fault-injection"))]
    let fault_note = None;
    let leave = stack::prepare(own, title);
    step(
        "seccomp",
        seccomp::apply(jail.filter, "seccomp (child filter)"),
    );
    step("system heap", crate::arena::drop_system_heap());
    Prepared {
        client,
        ctl,
        wake,
        epoll,
        fault_note,
        leave,
    }
}

/// In a child forked sharing the master's fd table (`master::handoff`):
/// the very first step, before any fd is opened, closed or duplicated: a
/// private table holding only the fds below `cut`.
pub fn own_fd_table(cut: RawFd) {
    // SAFETY: closes fds (in the new private table) of this process only;
    // no Rust wrapper the child uses refers to one at or above `cut`.
    let r = unsafe { libc::close_range(cut as u32, u32::MAX, libc::CLOSE_RANGE_UNSHARE as i32) };
    if r < 0 {
        step::<(), _>("fd table", Err(std::io::Error::last_os_error()));
    }
}

/// A set-up step's result: its value, or (fatal) one line naming the step
/// on stderr and exit status 70.
pub(super) fn step<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "chatd child {}: {name}: {e}",
                std::process::id()
            );
            exit(70)
        }
    }
}

fn reset_signals() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // SAFETY: installing SIG_IGN/SIG_DFL runs no handler code in this process.
    unsafe {
        signal(Signal::SIGINT, SigHandler::SigIgn)?;
        signal(Signal::SIGHUP, SigHandler::SigIgn)?;
        signal(Signal::SIGPIPE, SigHandler::SigIgn)?;
        // RLIMIT_FSIZE is 0: a panic line to a stderr that is a regular file
        // must fail with EFBIG, not kill the child before it can `_exit`.
        signal(Signal::SIGXFSZ, SigHandler::SigIgn)?;
        // std's stack-overflow handler would make syscalls outside the child
        // allowlist; a memory fault must show as the SIGSEGV/SIGBUS it is.
        signal(Signal::SIGSEGV, SigHandler::SigDfl)?;
        signal(Signal::SIGBUS, SigHandler::SigDfl)?;
        signal(Signal::SIGTERM, SigHandler::SigIgn)?;
        signal(Signal::SIGCHLD, SigHandler::SigDfl)?;
    }
    Ok(())
}

/// Moves the three fds to 3, 4 and 5, closes everything above, and stdin
/// and stdout (stderr stays for the panic line). Closes first, so that it
/// works even when the master's fd table was full at fork.
fn arrange_fds(
    client: OwnedFd,
    ctl: OwnedFd,
    wake: OwnedFd,
) -> std::io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
    let fds = [client.into_raw_fd(), ctl.into_raw_fd(), wake.into_raw_fd()];
    close_all_but(&[2, fds[0], fds[1], fds[2]])?;
    // Park all three above 5, then place them (any may sit on 3 to 5).
    let mut parked = [0; 3];
    for (p, &fd) in parked.iter_mut().zip(&fds) {
        *p = dup_above(fd, WAKE_FD + 1)?;
    }
    // SAFETY: plain fd syscalls on fds this process owns; the Rust wrappers
    // for the originals were consumed above, so nothing else refers to them.
    unsafe {
        for fd in fds {
            libc::close(fd);
        }
        for (p, to) in parked.into_iter().zip([CLIENT_FD, CTL_FD, WAKE_FD]) {
            if libc::dup2(p, to) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if libc::close_range((WAKE_FD + 1) as u32, u32::MAX, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            OwnedFd::from_raw_fd(CLIENT_FD),
            OwnedFd::from_raw_fd(CTL_FD),
            OwnedFd::from_raw_fd(WAKE_FD),
        ))
    }
}

/// The child's epoll instance: control messages level-triggered; the client
/// socket and the wake-up eventfd edge-triggered. Nobody reads the eventfd:
/// each write by the master is an edge that wakes every child at once.
fn child_epoll(client: &OwnedFd, ctl: &OwnedFd, wake: &OwnedFd) -> nix::Result<Epoll> {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    ep.add(ctl, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CTL))?;
    let io = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP;
    ep.add(
        client,
        EpollEvent::new(io | EpollFlags::EPOLLET, TOKEN_CLIENT),
    )?;
    let wake_ev = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
    ep.add(wake, EpollEvent::new(wake_ev, TOKEN_WAKE))?;
    Ok(ep)
}

/// Closes every fd not in `keep`.
fn close_all_but(keep: &[RawFd]) -> std::io::Result<()> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut from = 0u32;
    for &fd in &keep {
        let fd = fd as u32;
        if fd > from {
            close_range(from, fd - 1)?;
        }
        from = from.max(fd + 1);
    }
    close_range(from, u32::MAX)
}

fn close_range(first: u32, last: u32) -> std::io::Result<()> {
    // SAFETY: closes fds of this process only; the caller owns none of them
    // through a Rust wrapper (they are the master's, inherited by fork).
    if unsafe { libc::close_range(first, last, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn dup_above(fd: RawFd, min: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
