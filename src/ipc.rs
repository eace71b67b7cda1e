//! Control messages on each child's socketpair (SOCK_SEQPACKET).
//!
//! The socketpair carries only small replies and notifications; chat data
//! goes through shared memory, and the master wakes children through one
//! shared eventfd (see `master::relay`). A message is one datagram: a tag
//! byte, then a body: an encoded `protocol::event::Event` that the child
//! renders for its protocol.
//!
//! | direction      | tag     | meaning                                              |
//! |----------------|---------|------------------------------------------------------|
//! | master → child | `MORE`  | the first pieces of a long body; hold them           |
//! | master → child | `EVENT` | render this event for your client (reply, private)   |
//! | master → child | `CLOSE` | render this event (why), flush, and exit (kick, stop)|
//! | child → master | `NOTIFY`| my input ring has entries you have not seen          |
//! | master → child | `OFFER` | TLS: the certificate chain and key schemes (first)   |
//! | child → master | `SIGN`  | TLS: sign this handshake message (once per child)    |
//! | master → child | `SIGNED`| TLS: the signature (empty: refused)                  |

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use std::os::fd::{AsRawFd, BorrowedFd};

pub const MORE: u8 = b'M';
pub const CLOSE: u8 = b'C';
pub const EVENT: u8 = b'E';
pub const NOTIFY: u8 = b'N';
pub const OFFER: u8 = b'T';
pub const SIGN: u8 = b'S';
pub const SIGNED: u8 = b'G';

/// Largest control datagram: one page, the child's receive buffer. Longer
/// texts (a `/who` reply for thousands of users) go as several messages
/// ([`frames`]): `MORE` pieces, which the child holds, then the last piece,
/// which releases the whole text to the send queue at once.
pub const MAX_MSG: usize = 4096;

/// Frames `body` under `tag` as datagrams of at most [`MAX_MSG`] bytes: all
/// but the last piece as `MORE`, the last under `tag` (so a `CLOSE` comes
/// after all of its text).
pub fn frames(tag: u8, body: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = body
        .chunks(MAX_MSG - 1)
        .map(|c| {
            let mut m = Vec::with_capacity(1 + c.len());
            m.push(MORE);
            m.extend_from_slice(c);
            m
        })
        .collect();
    match out.last_mut() {
        Some(last) => last[0] = tag,
        None => out.push(vec![tag]),
    }
    out
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

/// What [`recv_append`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// No message is waiting.
    Empty,
    /// The other end closed.
    Eof,
    /// A message with this tag: a `MORE` body was appended to `held`; after
    /// an `EVENT` or `CLOSE`, `held` holds the whole body for the caller to
    /// take.
    Msg(u8),
}

/// Receives one message into `held`: the pieces of a long body (`MORE`)
/// wait there until its last piece (`EVENT` or `CLOSE`), so the caller
/// renders the body whole. A message with an unknown tag is dropped.
///
/// The datagram is received straight into `held`'s spare room, its length
/// asked first (`MSG_PEEK | MSG_TRUNC`): no 4 KiB buffer on the stack (a
/// page every child would keep) and `held` grows only by what it keeps.
pub fn recv_append(fd: BorrowedFd<'_>, held: &mut Vec<u8>) -> nix::Result<Recv> {
    let mut tag = [0u8; 1];
    let n = match recv(
        fd.as_raw_fd(),
        &mut tag,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    ) {
        Ok(0) => return Ok(Recv::Eof),
        Ok(n) => n.min(MAX_MSG),
        Err(Errno::EAGAIN) => return Ok(Recv::Empty),
        Err(e) => return Err(e),
    };
    let keep = held.len();
    held.resize(keep + n, 0);
    let got = match recv(fd.as_raw_fd(), &mut held[keep..], MsgFlags::MSG_DONTWAIT) {
        Ok(got) => got,
        Err(e) => {
            held.truncate(keep);
            return Err(e);
        }
    };
    held.truncate(keep + got);
    if got == 0 {
        return Ok(Recv::Eof);
    }
    // The tag is the datagram's first byte; the body follows it.
    held.remove(keep);
    if !matches!(tag[0], MORE | EVENT | CLOSE | OFFER) {
        held.truncate(keep);
    }
    Ok(Recv::Msg(tag[0]))
}

/// What [`recv_append`] does with a datagram received earlier (one the
/// TLS signer kept while it waited for its answer).
pub fn append_datagram(msg: &[u8], held: &mut Vec<u8>) -> Recv {
    match msg.split_first() {
        None => Recv::Eof,
        Some((&tag, body)) => {
            if matches!(tag, MORE | EVENT | CLOSE | OFFER) {
                held.extend_from_slice(body);
            }
            Recv::Msg(tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_split_and_the_tag_comes_last() {
        assert_eq!(frames(CLOSE, b""), vec![vec![CLOSE]]);
        assert_eq!(frames(EVENT, b"hi"), vec![b"Ehi".to_vec()]);
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let f = frames(CLOSE, &body);
        assert_eq!(f.len(), 3);
        assert!(f.iter().all(|m| m.len() <= MAX_MSG));
        assert_eq!(f[0][0], MORE);
        assert_eq!(f[1][0], MORE);
        assert_eq!(f[2][0], CLOSE);
        let joined: Vec<u8> = f.iter().flat_map(|m| m[1..].to_vec()).collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn received_bodies_are_held_whole_without_their_tag() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsFd;
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let mut held = Vec::new();
        assert_eq!(recv_append(b.as_fd(), &mut held), Ok(Recv::Empty));
        // A body in pieces: held until its last piece, without the tags;
        // a message of an unknown tag in between leaves nothing behind.
        for m in [&b"Mlong "[..], b"Nignored", b"Mbody, ", b"Ethe end"] {
            assert!(send_raw(a.as_fd(), m).unwrap());
        }
        for tag in [MORE, NOTIFY, MORE] {
            assert_eq!(recv_append(b.as_fd(), &mut held), Ok(Recv::Msg(tag)));
        }
        assert_eq!(held, b"long body, ");
        assert_eq!(recv_append(b.as_fd(), &mut held), Ok(Recv::Msg(EVENT)));
        assert_eq!(held, b"long body, the end");
        held.clear();
        assert!(send_raw(a.as_fd(), b"Cbye").unwrap());
        assert_eq!(recv_append(b.as_fd(), &mut held), Ok(Recv::Msg(CLOSE)));
        assert_eq!(held, b"bye");
        drop(a);
        assert_eq!(recv_append(b.as_fd(), &mut held), Ok(Recv::Eof));
    }
}
