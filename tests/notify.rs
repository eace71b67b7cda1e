//! sd_notify, as systemd sees it: a unix datagram socket in NOTIFY_SOCKET
//! receives READY, STATUS updates, WATCHDOG pings, RELOADING then READY
//! around SIGHUP, and STOPPING.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Collects notify datagrams until one satisfies `pred`; returns them all.
fn until(sock: &UnixDatagram, what: &str, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
    let end = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = pred(&msg);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no notify message {what}; got {got:?}");
}

#[test]
fn ready_status_watchdog_reloading_stopping() {
    let dir = TempDir::new();
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let path = dir.0.join("chatd.toml");
    std::fs::write(&path, render(&base_config())).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    let server = Server::spawn(cmd, dir, path.clone());

    let first = until(&sock, "READY=1", |m| m.contains("READY=1"));
    let ready = first.last().unwrap();
    assert!(
        ready.contains("STATUS=0 clients, 0 messages relayed, 0 kicked"),
        "{ready}"
    );
    // Pings at half of WATCHDOG_USEC: several within a second.
    let start = Instant::now();
    let mut pings = 0;
    until(&sock, "5 watchdog pings", |m| {
        pings += usize::from(m.contains("WATCHDOG=1"));
        pings >= 5
    });
    let took = start.elapsed();
    // At the default 1 s tick, 5 pings would take 5 s.
    assert!(took < Duration::from_secs(2), "5 pings took {took:?}");

    // STATUS follows the clients.
    let (mut a, _) = server.join();
    let (_b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    a.send("one\n");
    until(&sock, "STATUS with 2 clients", |m| {
        m.contains("STATUS=2 clients, 1 messages relayed, 0 kicked")
    });

    // Reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    server.signal(libc::SIGHUP);
    let msgs = until(&sock, "RELOADING=1", |m| m.contains("RELOADING=1"));
    let reloading = msgs.last().unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    until(&sock, "READY=1 after reload", |m| m.contains("READY=1"));
    server.wait_log("event=\"reload\"");

    server.signal(libc::SIGTERM);
    until(&sock, "STOPPING=1", |m| m.contains("STOPPING=1"));
}
