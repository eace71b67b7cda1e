//! Hostile clients: the others must notice nothing but notices, and nothing
//! may leak (processes, fds, slots).
mod common;

use common::{wait_for, Server, TIMEOUT};
use std::io::Write;
use std::net::TcpStream;

/// 1000 clients that connect and close at once, half of them with a reset:
/// every child is reaped, the master's fds return to where they were, each
/// leaves a disconnect event, and chat still works.
#[test]
fn connect_and_close_by_the_thousand_leaks_nothing() {
    let srv = Server::start(&[("max_clients", "1100")]);
    let (mut a, _) = srv.join();
    let fds = srv.fd_count();
    for i in 0..1000 {
        let s = TcpStream::connect(srv.addr).expect("connect");
        if i % 2 == 0 {
            // SO_LINGER 0: close sends RST instead of FIN.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &l).unwrap();
        }
        drop(s);
    }
    srv.wait_log_n("disconnected", 1000);
    wait_for(TIMEOUT, || (srv.children().len() == 1).then_some(()))
        .expect("only the chatting client's child is left");
    wait_for(TIMEOUT, || (srv.fd_count() == fds).then_some(()))
        .unwrap_or_else(|| panic!("master fds {} != {fds} before", srv.fd_count()));
    let (mut b, _) = srv.join();
    a.expect("joined");
    b.send("still fine\n");
    a.expect("still fine");
}

/// 10 MB without a newline, NULs among them, while two others chat: the
/// flooder gets one error line and stays; the others lose nothing and see
/// no NUL; after its newline the flooder chats normally.
#[test]
fn ten_megabytes_without_newline_and_nul_floods() {
    let srv = Server::start(&[]);
    let (mut a, _) = srv.join();
    let (mut b, _) = srv.join();
    let (mut f, f_nick) = srv.join();
    a.expect("joined");
    a.expect("joined");
    b.expect("joined");
    let mut flood = f.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..64 * 1024)
            .map(|i| if i % 3 == 0 { 0 } else { b'x' })
            .collect();
        for _ in 0..160 {
            flood.write_all(&chunk).unwrap();
        }
        flood.write_all(b"\nafter the flood\n").unwrap();
    });
    for i in 0..200 {
        a.send(&format!("a says {i}\n"));
        let l = b.expect(&format!("a says {i}"));
        assert!(!l.contains('\0'));
    }
    writer.join().unwrap();
    let err = f.expect("line too long");
    assert!(err.starts_with('!'), "{err}");
    b.expect(&format!("<{f_nick}> after the flood"));
    // The flooder's one error, and nothing of the flood, reached anyone.
    a.send("done\n");
    let mut seen = Vec::new();
    loop {
        let l = f.read_line().expect("flooder still connected");
        if l.contains("done") {
            break;
        }
        seen.push(l);
    }
    assert!(
        seen.iter().all(|l| !l.contains("line too long")),
        "one error only: {seen:?}"
    );
    assert_eq!(srv.children().len(), 3);
}

/// A child stopped (SIGSTOP) while the others exchange 500 lines: the
/// others keep receiving meanwhile; after SIGCONT its client gets every
/// line, in order, and it is still connected.
#[test]
fn a_stopped_child_delays_only_its_own_client() {
    let srv = Server::start(&[]);
    let (mut stopped, _) = srv.join();
    let (mut a, _) = srv.join();
    let (mut b, _) = srv.join();
    stopped.expect("joined");
    stopped.expect("joined");
    a.expect("joined");
    let victim = *srv.children().iter().min().expect("children");
    let victim = nix::unistd::Pid::from_raw(victim);
    nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..500 {
        a.send(&format!("line {i}\n"));
        b.expect(&format!("line {i}"));
    }
    let others_took = t0.elapsed();
    nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGCONT).unwrap();
    for i in 0..500 {
        stopped.expect(&format!("line {i}"));
    }
    assert!(
        others_took < std::time::Duration::from_secs(10),
        "the others were held up: {others_took:?}"
    );
    assert_eq!(srv.children().len(), 3);
}
