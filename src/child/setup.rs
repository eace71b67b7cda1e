//! The child's set-up right after fork, before it reads a single byte.
//!
//! Steps, in order (each failure is fatal: the child exits at once):
//! 1. a panic hook that writes one line to stderr and `_exit`s;
//! 2. signals: unblock everything the master blocked for its signalfd;
//!    ignore SIGINT and SIGHUP (a terminal's Ctrl-C or hangup reaches the
//!    whole process group; the master turns it into an orderly shutdown) and
//!    SIGPIPE;
//! 3. PR_SET_PDEATHSIG(SIGKILL), then check that the parent is still the
//!    master, so a master killed by SIGKILL leaves no orphan;
//! 4. close every fd but stdio, the client socket and the control socket.
//!
//! The hardening steps (Landlock, rlimits, read-only shared memory, seccomp)
//! are added to this sequence by the hardening work; see ARCHITECTURE.md.

use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{getppid, Pid};
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// Where the client socket and the control socket end up in the child.
pub const CLIENT_FD: RawFd = 3;
pub const CTL_FD: RawFd = 4;

/// Ends the process without running destructors or atexit handlers (which
/// belong to the master's state inherited through fork).
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Runs steps 1–4. Returns the client and control fds at their fixed numbers.
pub fn prepare(master: Pid, client: OwnedFd, ctl: OwnedFd) -> (OwnedFd, OwnedFd) {
    std::panic::set_hook(Box::new(|info| {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "chatd child {}: panic: {info}", std::process::id());
        exit(101)
    }));
    step("signals", reset_signals());
    step(
        "parent-death signal",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    );
    if getppid() != master {
        exit(0); // the master died between fork and prctl
    }
    let (client, ctl) = step("fd cleanup", arrange_fds(client, ctl));
    (client, ctl)
}

fn step<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> T {
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
        signal(Signal::SIGTERM, SigHandler::SigDfl)?;
        signal(Signal::SIGCHLD, SigHandler::SigDfl)?;
    }
    Ok(())
}

/// Moves the two fds to 3 and 4 and closes everything above.
fn arrange_fds(client: OwnedFd, ctl: OwnedFd) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (c, k) = (client.into_raw_fd(), ctl.into_raw_fd());
    // Park both above any fd we are about to overwrite, then place them.
    let c2 = dup_above(c, 16)?;
    let k2 = dup_above(k, 16)?;
    // SAFETY: plain fd syscalls on fds this process owns; the Rust wrappers
    // for the originals were consumed above, so nothing else refers to them.
    unsafe {
        libc::close(c);
        libc::close(k);
        if libc::dup2(c2, CLIENT_FD) < 0 || libc::dup2(k2, CTL_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::close_range((CTL_FD + 1) as u32, u32::MAX, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            OwnedFd::from_raw_fd(CLIENT_FD),
            OwnedFd::from_raw_fd(CTL_FD),
        ))
    }
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
