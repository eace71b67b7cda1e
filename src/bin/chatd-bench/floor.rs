//! The floor: a minimal single-process epoll broadcast server, the third
//! server of the suite. It does the least a line chat server can do: one
//! process, one epoll set; the complete lines of one wake-up are written to
//! every other client in one write per client (no names, no checks, no
//! limits). What it reaches on
//! the same machine in the same invocation is what the machine and the
//! load generator allow: a ceiling for deliveries/s, a floor for latency.
//! chatd-bench runs it as a child process of its own (`chatd-bench floor
//! --port P`, hidden), so that its CPU is measured like the others'.

use crate::fanout::write_queued;
use anyhow::Result;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

const LISTENER: u64 = u64::MAX;
const GREETING: &[u8] = b"floor: every line to every other client\n";

struct Conn {
    stream: TcpStream,
    /// A line not complete yet.
    partial: Vec<u8>,
    /// What the client has not taken yet (written when it is writable).
    out: Vec<u8>,
    /// Whether EPOLLOUT is being watched (while `out` is not empty).
    watching: bool,
}

/// Serves on 127.0.0.1:`port` until killed.
pub fn serve(port: u16) -> Result<()> {
    serve_on(TcpListener::bind(("127.0.0.1", port))?)
}

fn serve_on(listener: TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 64 * 1024];
    // The complete lines of this wake-up: (origin, range in `text`).
    let mut lines: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut text = Vec::new();
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let key = ev.data();
            if key == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    // A greeting, so a client knows it is in the room.
                    let _ = stream.write(GREETING);
                    // Never reused: a line read this wake-up keeps its origin.
                    let idx = conns.len();
                    conns.push(None);
                    epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, idx as u64))?;
                    conns[idx] = Some(Conn {
                        stream,
                        partial: Vec::new(),
                        out: Vec::new(),
                        watching: false,
                    });
                }
                continue;
            }
            let idx = key as usize;
            if ev.events().contains(EpollFlags::EPOLLOUT) {
                flush(&epoll, &mut conns, idx);
            }
            if !ev
                .events()
                .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            {
                continue;
            }
            let Some(c) = conns[idx].as_mut() else {
                continue;
            };
            let got = match c.stream.read(&mut buf) {
                Ok(0) => None,
                Ok(got) => Some(got),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => None,
            };
            let Some(got) = got else {
                let c = conns[idx].take().unwrap();
                let _ = epoll.delete(&c.stream);
                continue;
            };
            let mut rest = &buf[..got];
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let c = conns[idx].as_mut().unwrap();
                let start = text.len();
                text.append(&mut c.partial);
                text.extend_from_slice(&rest[..=nl]);
                lines.push((idx, start..text.len()));
                rest = &rest[nl + 1..];
            }
            if let Some(c) = conns[idx].as_mut() {
                c.partial.extend_from_slice(rest);
            }
        }
        if lines.is_empty() {
            continue;
        }
        // Each client gets the others' lines of this wake-up in one write.
        for idx in 0..conns.len() {
            let Some(c) = conns[idx].as_mut() else {
                continue;
            };
            let had = !c.out.is_empty();
            for (origin, range) in &lines {
                if *origin != idx {
                    c.out.extend_from_slice(&text[range.clone()]);
                }
            }
            if !had {
                flush(&epoll, &mut conns, idx);
            }
        }
        lines.clear();
        text.clear();
    }
}

/// Writes client `idx`'s queue; watches for writability while some is left.
fn flush(epoll: &Epoll, conns: &mut [Option<Conn>], idx: usize) {
    let Some(c) = conns[idx].as_mut() else {
        return;
    };
    write_queued(&mut c.stream, &mut c.out);
    let watch = !c.out.is_empty();
    if watch != c.watching {
        c.watching = watch;
        let flags = if watch {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        let _ = epoll.modify(&c.stream, &mut EpollEvent::new(flags, idx as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    #[test]
    fn every_line_goes_to_every_other_client_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // The server thread ends with the test process.
        std::thread::spawn(move || serve_on(l));
        let mut c: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut readers: Vec<_> = c
            .iter()
            .map(|s| {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                BufReader::new(s.try_clone().unwrap())
            })
            .collect();
        let mut line = |i: usize| {
            let mut l = String::new();
            readers[i].read_line(&mut l).unwrap();
            l
        };
        // Everyone is in once greeted.
        for i in 0..3 {
            assert_eq!(line(i).as_bytes(), GREETING);
        }
        // Lines in two pieces, from two senders.
        c[0].write_all(b"one from ").unwrap();
        c[0].write_all(b"0\ntwo from 0\n").unwrap();
        c[1].write_all(b"from 1\n").unwrap();
        let mut at2 = vec![line(2), line(2), line(2)];
        at2.sort();
        assert_eq!(at2, ["from 1\n", "one from 0\n", "two from 0\n"]);
        assert_eq!([line(1), line(1)], ["one from 0\n", "two from 0\n"]);
        // No echo to the sender: its own lines were handled before the
        // others received them, so an echo would reach it before this.
        c[1].write_all(b"sentinel\n").unwrap();
        assert_eq!([line(0), line(0)], ["from 1\n", "sentinel\n"]);
    }
}
