//! The wake-up floor: what it costs this machine to wake N sleeping
//! processes and run each of them once.
//!
//! Fork-per-client means a line reaches N clients only after N processes
//! have been woken and each has run: chatd's children sleep in
//! `epoll_wait` on one eventfd, and the master's `write` to it wakes them
//! all. This module forks N processes that sleep exactly that way and, when
//! woken, do nothing but note the time: no socket, no copy. Rounds are
//! started at a fixed rate, as lines come in an open-loop run. A wake-up's
//! latency runs from the `write` to the moment its sleeper ran, and a
//! round's from the `write` until the last sleeper ran. A delivery by a
//! fork-per-client server comes after its child's wake-up, so these
//! percentiles are a lower bound for such a server's latency on this
//! machine at that rate, measured in the same invocation as chatd; the
//! floor server's figures are the bound for a server that is one process.

use crate::fanout::rusage_cpu;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use nix::sys::resource::UsageWho;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{fork, ForkResult, Pid};
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Release};
use std::time::{Duration, Instant};

/// How long one round may take before the measurement gives up: a lost
/// wake-up would otherwise hang it.
const ROUND_LIMIT: Duration = Duration::from_secs(2);

/// What the sleepers share with the parent (`MAP_SHARED`); each sleeper's
/// wake-up time follows it, one `AtomicU64` (CLOCK_MONOTONIC, ns) each.
#[repr(C)]
struct Board {
    /// Sleepers that have set up and are about to sleep.
    ready: AtomicU64,
    /// Wake-ups so far, over all sleepers: `n` per round.
    woken: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct Wakes {
    pub sleepers: usize,
    pub rate: f64,
    /// Every wake-up's latency, µs.
    pub wakes_us: Vec<u32>,
    /// Every round's time (until its last sleeper ran), µs.
    pub rounds_us: Vec<u32>,
    /// The sleepers' CPU time (user + system) per wake-up, µs.
    pub cpu_per_wake_us: f64,
}

/// Forks `n` sleepers and wakes them all `rounds` times, `rate` rounds a
/// second (a round that runs late starts the next one at once). Every
/// sleeper is killed and reaped before it returns, on error too.
pub fn measure(n: usize, rounds: usize, rate: f64) -> Result<Wakes> {
    measure_with(n, rounds, rate, ROUND_LIMIT, |_, _| {})
}

/// [`measure`], with the time a round may take and a hook that runs before
/// each round with the round's number and the sleepers' pids.
fn measure_with(
    n: usize,
    rounds: usize,
    rate: f64,
    limit: Duration,
    mut before_round: impl FnMut(usize, &[Pid]),
) -> Result<Wakes> {
    if n == 0 || rate <= 0.0 {
        bail!("wakes: need at least one sleeper and a rate above 0");
    }
    let board = SharedBoard::new(n)?;
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).context("wakes: eventfd")?;
    let done = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).context("wakes: eventfd")?;
    let cpu_before = rusage_cpu(UsageWho::RUSAGE_CHILDREN);
    let mut sleepers = Sleepers(Vec::with_capacity(n));
    for i in 0..n {
        // SAFETY: the child runs only `sleep_loop`, which makes raw
        // syscalls (epoll, eventfd write, clock_gettime, prctl) and touches
        // atomics in the shared page: it never allocates or takes a lock
        // another thread of the parent could have held at fork, and it ends
        // with `_exit`.
        match unsafe { fork() }.context("wakes: fork")? {
            ForkResult::Child => {
                sleep_loop(&wake, &done, board.get(), &board.stamps()[i], n as u64)
            }
            ForkResult::Parent { child } => sleepers.0.push(child),
        }
    }
    let b = board.get();
    // The last sleeper to count itself ready says so on `done`, just
    // before its first epoll_wait; an edge written before it gets there
    // still reaches it (edge-triggered on an eventfd that is never read),
    // so the first round is sound.
    if !wait_done(&done, limit)? {
        bail!(
            "wakes: only {} of {n} sleepers started",
            b.ready.load(Acquire)
        );
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rounds_us = Vec::with_capacity(rounds);
    let mut wakes_us = Vec::with_capacity(rounds * n);
    let t0 = Instant::now();
    for r in 0..rounds {
        let due = t0 + period * r as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        before_round(r, &sleepers.0);
        let sent = now_ns();
        wake.write(1).context("wakes: eventfd write")?;
        if !wait_done(&done, limit)? {
            let woke = b.woken.load(Acquire) - (r * n) as u64;
            bail!("wakes: round {r}: only {woke} of {n} sleepers ran within {limit:?}");
        }
        let us = |t: u64| (t.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32;
        // The round ends with its latest wake-up: the largest stamp (the
        // sleeper that counted itself last may have read the clock before
        // another one, if it was preempted in between).
        let round: Vec<u32> = board.stamps().iter().map(|t| us(t.load(Acquire))).collect();
        rounds_us.push(round.iter().copied().max().unwrap_or(0));
        wakes_us.extend(round);
    }
    drop(sleepers); // kills and reaps them, so their CPU time is counted
    let cpu = rusage_cpu(UsageWho::RUSAGE_CHILDREN) - cpu_before;
    Ok(Wakes {
        sleepers: n,
        rate,
        cpu_per_wake_us: cpu * 1e6 / (n * rounds.max(1)) as f64,
        rounds_us,
        wakes_us,
    })
}

/// Whether `done` was written within `limit` (and takes the write).
fn wait_done(done: &EventFd, limit: Duration) -> Result<bool> {
    let ready = poll(
        &mut [PollFd::new(done.as_fd(), PollFlags::POLLIN)],
        PollTimeout::try_from(limit).unwrap(),
    )
    .context("wakes: poll")?;
    if ready == 0 {
        return Ok(false);
    }
    done.read().context("wakes: eventfd read")?;
    Ok(true)
}

/// One of `n` sleepers: counts itself ready (the last one tells the parent
/// on `done`), then sleeps in `epoll_wait` on `wake` (edge-triggered, never
/// read, as chatd's children do) and, each time it is woken, writes the
/// time to `stamp` and counts the wake-up; the last to count itself in a
/// round tells the parent. Never returns.
fn sleep_loop(wake: &EventFd, done: &EventFd, b: &Board, stamp: &AtomicU64, n: u64) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let Ok(ep) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else {
        exit(1)
    };
    let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0);
    if ep.add(wake.as_fd(), ev).is_err() {
        exit(1);
    }
    if b.ready.fetch_add(1, AcqRel) + 1 == n && done.write(1).is_err() {
        exit(1);
    }
    let mut events = [EpollEvent::empty()];
    loop {
        match ep.wait(&mut events, EpollTimeout::NONE) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => exit(1),
        }
        stamp.store(now_ns(), Release);
        if (b.woken.fetch_add(1, AcqRel) + 1) % n == 0 && done.write(1).is_err() {
            exit(1);
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; it runs none of the state
    // inherited from the parent (no destructors, no atexit handlers).
    unsafe { libc::_exit(code) }
}

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The sleepers' pids; dropping it kills and reaps them all.
struct Sleepers(Vec<Pid>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for &pid in &self.0 {
            let _ = waitpid(pid, None);
        }
    }
}

/// Memory shared with the sleepers (`MAP_SHARED | MAP_ANONYMOUS`, made
/// before they fork): a [`Board`], then one stamp per sleeper.
struct SharedBoard {
    board: NonNull<Board>,
    n: usize,
    len: usize,
}

impl SharedBoard {
    fn new(n: usize) -> Result<SharedBoard> {
        let len = size_of::<Board>() + n * size_of::<AtomicU64>();
        // SAFETY: a fresh anonymous mapping aliases nothing; it is
        // zero-filled, which is a valid Board and valid stamps (all zero
        // atomics), and page-aligned, which suits their alignment.
        let p = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .context("wakes: mmap")?;
        Ok(SharedBoard {
            board: p.cast(),
            n,
            len,
        })
    }

    fn get(&self) -> &Board {
        // SAFETY: the mapping lives until `self` drops and starts with a
        // Board; it is only ever accessed through atomics.
        unsafe { self.board.as_ref() }
    }

    fn stamps(&self) -> &[AtomicU64] {
        // SAFETY: `new` mapped room for `n` stamps right after the Board
        // (whose size is a multiple of 8, so they are aligned); they live
        // as long as `self` and are only accessed through atomics.
        unsafe { std::slice::from_raw_parts(self.board.as_ptr().add(1).cast(), self.n) }
    }
}

impl Drop for SharedBoard {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this length, and no
        // reference from `get` outlives `self`.
        let _ = unsafe { munmap(self.board.cast(), self.len) };
    }
}

impl Wakes {
    /// p50, p90, p99 and max of the wake-ups' latency, ms.
    pub fn wake_ms(&self) -> [f64; 4] {
        crate::fanout::percentiles(&mut self.wakes_us.clone()).map(|us| us / 1e3)
    }

    /// p50, p90, p99 and max of the rounds' time, ms.
    pub fn round_ms(&self) -> [f64; 4] {
        crate::fanout::percentiles(&mut self.rounds_us.clone()).map(|us| us / 1e3)
    }

    pub fn summary(&self) -> String {
        let [p50, p90, p99, max] = self.wake_ms();
        let [r50, _, r99, _] = self.round_ms();
        format!(
            "waking {} sleeping processes {:.0} times a second, nothing else running: \
             wake-up p50 {p50:.3} ms, p90 {p90:.3}, p99 {p99:.3}, max {max:.2}; \
             all {} awake p50 {r50:.3} ms, p99 {r99:.3}; {:.1} µs of CPU per wake-up",
            self.sleepers, self.rate, self.sleepers, self.cpu_per_wake_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every one of `pids` is gone (killed and reaped: a zombie
    /// would still answer signal 0).
    fn all_gone(pids: &[Pid]) -> bool {
        !pids.is_empty() && pids.iter().all(|&p| kill(p, None) == Err(Errno::ESRCH))
    }

    #[test]
    fn every_round_wakes_every_sleeper_and_none_is_left() {
        let mut pids = Vec::new();
        let w = measure_with(5, 40, 2000.0, ROUND_LIMIT, |_, p| pids = p.to_vec()).unwrap();
        assert_eq!(w.rounds_us.len(), 40);
        assert_eq!(w.wakes_us.len(), 40 * 5);
        // Every sleeper ran within the limit (or it was an error), and a
        // round ends with its latest wake-up.
        assert!(w.rounds_us.iter().all(|&us| us < 2_000_000), "{w:?}");
        for (r, round) in w.wakes_us.chunks(5).enumerate() {
            assert_eq!(round.iter().max(), Some(&w.rounds_us[r]), "{w:?}");
        }
        assert!(w.cpu_per_wake_us > 0.0, "{w:?}");
        let [p50, _, p99, max] = w.wake_ms();
        assert!(p50 <= p99 && p99 <= max && max <= w.round_ms()[3], "{w:?}");
        assert!(all_gone(&pids), "{pids:?}");
    }

    #[test]
    fn a_sleeper_that_does_not_run_fails_the_round() {
        // A stopped sleeper never counts its wake-up: the round must end
        // in an error that says so, not hang, and nobody is left behind.
        let mut pids = Vec::new();
        let err = measure_with(4, 10, 1000.0, Duration::from_millis(200), |r, p| {
            pids = p.to_vec();
            if r == 3 {
                kill(p[1], Signal::SIGSTOP).unwrap();
            }
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("round 3: only 3 of 4 sleepers ran"), "{msg}");
        assert!(all_gone(&pids), "{pids:?}");
    }
}
