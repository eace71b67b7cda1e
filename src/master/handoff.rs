//! Forking a child without copying the master's file descriptor table.
//!
//! The master holds one fd per client (its end of the child's control
//! socket). A plain fork copies all of them into the new child, which then
//! closes them: with 10 000 clients that was half of all the CPU a crowd's
//! arrival cost (`filp_flush`, `close_range` in the kernel), O(N) per
//! connect.
//!
//! Instead the master keeps a few pairs of low fd numbers ("hand-off
//! slots", each holding a placeholder), all below [`Handoff::cut`]. To start
//! a child it `dup3`s the client socket and the child's control socket
//! into a free pair and forks with `CLONE_FILES`: the child *shares* the
//! master's table for a moment, touches no fd, and first of all calls
//! `close_range(cut, ~0, CLOSE_RANGE_UNSHARE)` (`child::setup::own_fd_table`),
//! which gives it a private table holding only the fds below `cut` (about
//! 140, not thousands); it then
//! says so in its slot header (`own_fds`) and goes on with its usual fd
//! step, which closes all but its own three. The master puts the
//! placeholders back into the pair once the child has its own table (or is
//! gone), so that it holds no reference to the client's socket.
//!
//! While every pair holds a child that has not run yet, the master stops
//! accepting until one is free (`spawn`): forking faster than children
//! start only piles up work. Without hand-off slots (they could not be
//! made), every fork copies the table: slower, never wrong.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Pairs of hand-off slots: more than children start at once.
pub const PAIRS: usize = 64;

/// One pair: where a starting child finds its client and control sockets.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub client: RawFd,
    pub ctl: RawFd,
}

/// The master's hand-off slots.
pub struct Handoff {
    placeholder: OwnedFd,
    pairs: Vec<(Pair, Option<usize>)>,
    cut: RawFd,
}

impl Handoff {
    /// Reserves the slots; call once everything the master keeps open is
    /// open, so that `cut` lies above it (it need not: the child closes
    /// whatever it finds below `cut` but its own fds).
    pub fn new() -> std::io::Result<Handoff> {
        // A sixteenth of the fd limit at most (a master started with few
        // fds keeps them for clients), and at least one pair.
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
        let n = PAIRS.min((soft / 16).max(1) as usize);
        let placeholder = OwnedFd::from(nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?);
        let mut h = Handoff {
            cut: placeholder.as_raw_fd() + 1,
            placeholder,
            pairs: Vec::with_capacity(n),
        };
        for _ in 0..n {
            // On error, `h` is dropped and closes the pairs made so far.
            let client = dup_cloexec(h.placeholder.as_raw_fd())?;
            let ctl = match dup_cloexec(h.placeholder.as_raw_fd()) {
                Ok(fd) => fd,
                Err(e) => {
                    close(client);
                    return Err(e);
                }
            };
            h.cut = h.cut.max(client + 1).max(ctl + 1);
            h.pairs.push((Pair { client, ctl }, None));
        }
        Ok(h)
    }

    /// A starting child's private fd table holds the fds below this.
    pub fn cut(&self) -> RawFd {
        self.cut
    }

    /// Places `client` and `ctl` in a free pair for the child in `slot`;
    /// None if every pair is taken (or a dup fails).
    pub fn place(&mut self, slot: usize, client: BorrowedFd, ctl: BorrowedFd) -> Option<Pair> {
        let (pair, owner) = self.pairs.iter_mut().find(|(_, o)| o.is_none())?;
        if dup3(client.as_raw_fd(), pair.client).is_err()
            || dup3(ctl.as_raw_fd(), pair.ctl).is_err()
        {
            let _ = dup3(self.placeholder.as_raw_fd(), pair.client);
            let _ = dup3(self.placeholder.as_raw_fd(), pair.ctl);
            return None;
        }
        *owner = Some(slot);
        Some(*pair)
    }

    /// Frees the pairs whose child no longer needs them (`done(slot)`):
    /// the placeholders go back in, and the master's references to that
    /// child's sockets with them.
    pub fn release(&mut self, mut done: impl FnMut(usize) -> bool) {
        for (pair, owner) in &mut self.pairs {
            if owner.is_some_and(&mut done) {
                let _ = dup3(self.placeholder.as_raw_fd(), pair.client);
                let _ = dup3(self.placeholder.as_raw_fd(), pair.ctl);
                *owner = None;
            }
        }
    }

    /// Whether a pair is free.
    pub fn free(&self) -> bool {
        self.pairs.iter().any(|(_, o)| o.is_none())
    }

    /// Whether any pair is taken.
    pub fn busy(&self) -> bool {
        self.pairs.iter().any(|(_, o)| o.is_some())
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        for (p, _) in &self.pairs {
            close(p.client);
            close(p.ctl);
        }
    }
}

fn close(fd: RawFd) {
    // SAFETY: one of this module's slots, owned by no Rust wrapper.
    unsafe { libc::close(fd) };
}

fn dup_cloexec(fd: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd or -1.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Puts a duplicate of `from` at `to` (closing what was there), close-on-exec.
fn dup3(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: `to` is one of this module's slots, never owned by a Rust
    // wrapper elsewhere; replacing it atomically is dup3's contract.
    if unsafe { libc::dup3(from, to, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pairs_are_low_taken_and_given_back() {
        let mut h = Handoff::new().unwrap();
        assert!(h
            .pairs
            .iter()
            .all(|(p, _)| p.client < h.cut() && p.ctl < h.cut()));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = h.place(7, a.as_fd(), b.as_fd()).unwrap();
        assert!(h.busy());
        // The pair holds the sockets: what is written to one end arrives.
        use std::io::{Read, Write};
        let mut via = std::os::unix::net::UnixStream::from(
            // SAFETY: a fresh duplicate of the pair's fd, owned here.
            unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup_cloexec(p.client).unwrap())
            },
        );
        via.write_all(b"x").unwrap();
        let mut got = [0u8];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        drop(via);
        for _ in 1..h.pairs.len() {
            assert!(h.place(1, a.as_fd(), b.as_fd()).is_some());
        }
        assert!(h.place(2, a.as_fd(), b.as_fd()).is_none(), "all taken");
        h.release(|slot| slot == 7);
        assert!(h.place(3, a.as_fd(), b.as_fd()).is_some());
        h.release(|_| true);
        assert!(!h.busy());
    }
}
