//! Control messages on each child's socketpair (SOCK_SEQPACKET).
//!
//! The socketpair carries only signals and small replies; chat data goes
//! through shared memory. A message is one datagram: a tag byte, then for
//! `TEXT` and `CLOSE` the bytes to send to the client.
//!
//! | direction      | tag     | meaning                                          |
//! |----------------|---------|--------------------------------------------------|
//! | master → child | `WAKE`  | the relay log advanced (sent only to sleepers)   |
//! | master → child | `TEXT`  | send these bytes to your client (command reply)  |
//! | master → child | `CLOSE` | send these bytes, flush, and exit (kick, stop)   |
//! | child → master | `NOTIFY`| my input ring has entries you have not seen      |

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use std::os::fd::{AsRawFd, BorrowedFd};

pub const WAKE: u8 = b'W';
pub const TEXT: u8 = b'T';
pub const CLOSE: u8 = b'C';
pub const NOTIFY: u8 = b'N';

/// Largest control datagram (a `/who` reply for thousands of users fits).
pub const MAX_MSG: usize = 128 * 1024;

/// Sends one message without blocking. `Ok(false)` if the socket is full.
pub fn send_msg(fd: BorrowedFd<'_>, tag: u8, body: &[u8]) -> nix::Result<bool> {
    let mut buf = Vec::with_capacity(1 + body.len());
    buf.push(tag);
    buf.extend_from_slice(body);
    send_raw(fd, &buf)
}

/// Sends an already framed message without blocking.
pub fn send_raw(fd: BorrowedFd<'_>, msg: &[u8]) -> nix::Result<bool> {
    match send(
        fd.as_raw_fd(),
        msg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    ) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Receives one message. `Ok(None)` if none is waiting; `Ok(Some(0))` at EOF.
pub fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<Option<usize>> {
    match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Ok(Some(n)),
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}
