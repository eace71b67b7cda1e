//! Commands, bad input, limits and configuration errors, over real sockets.

mod common;
use common::*;
use std::process::Command;

#[test]
fn commands_work_and_unknown_ones_are_not_broadcast() {
    let server = Server::start(&[]);
    let (mut a, a_nick) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    a.send("/nick alice\n");
    a.expect("* you are now alice");
    b.expect(&format!("* {a_nick} is now alice"));
    b.send("/nick ALICE\n");
    b.expect("! nick ALICE is taken");
    b.send("/nick 9lives\n");
    b.expect("! cannot use nick 9lives");
    b.send("/nick guest-99\n");
    b.expect("reserved");
    b.send("/nick bob\n/who\n");
    b.expect("* you are now bob");
    b.expect("* 2 online: alice bob");
    a.send("/me waves\n/frobnicate now\n/nick\n");
    b.expect("* alice waves");
    a.expect("! unknown command /frobnicate");
    a.expect("! usage: /nick NAME");
    a.send("/help\n");
    a.expect("/quit [REASON]");
    a.send("//slash line\n");
    b.expect("<alice> /slash line");
    a.send("/quit gotta go\n");
    assert_eq!(a.read_to_eof().last().map(String::as_str), Some("* Bye!"));
    // Nothing of the unknown command reached b before the quit notice.
    loop {
        let l = b.read_line().unwrap();
        assert!(
            !l.contains("frobnicate"),
            "unknown command was broadcast: {l}"
        );
        if l.contains("alice left (gotta go)") {
            break;
        }
    }
}

/// The nicks a `* 250 online: ...` line lists, sorted.
fn listed(who: &str) -> Vec<String> {
    let mut nicks: Vec<String> = who
        .trim_start_matches("* 250 online:")
        .split_whitespace()
        .map(String::from)
        .collect();
    nicks.sort_unstable();
    nicks
}

/// A `/who` reply longer than one control message (4 KiB) arrives whole,
/// as one line listing every nick.
#[test]
fn who_with_hundreds_of_long_nicks_is_one_whole_line() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = Vec::new();
    let mut nicks = Vec::new();
    for i in 0..250 {
        let (mut c, _) = server.join();
        let nick = format!("user{i:03}-padding-to-24");
        c.send(&format!("/nick {nick}\n"));
        c.expect("you are now");
        clients.push(c);
        nicks.push(nick);
    }
    let c = &mut clients[0];
    c.send("/who\n");
    let who = c.expect("250 online:");
    assert!(who.len() > 4096 + 1000, "{} bytes", who.len());
    assert_eq!(listed(&who), nicks);
    c.send("/who\n");
    assert!(c.expect("online:").starts_with("* 250 online: "));
    // While another client floods the room, every reply is still one whole
    // line: the reply's pieces reach the send queue together, never with
    // relayed lines between them.
    for round in 0..10 {
        let mut burst = String::new();
        for i in 0..200 {
            burst.push_str(&format!("chatter {round} {i}\n"));
        }
        clients[1].send(&burst);
        let c = &mut clients[0];
        c.send("/who\n");
        let who = c.expect("250 online:");
        assert_eq!(listed(&who), nicks);
    }
}

#[test]
fn bad_input_is_refused_and_the_client_stays() {
    let server = Server::start(&[("max_line", "64")]);
    let (mut a, a_nick) = server.join();
    let (mut b, _) = server.join();
    a.expect("joined");
    // Over-long line: refused, rest discarded up to the newline, still connected.
    a.send(&format!("{}\nok after long\n", "y".repeat(100)));
    a.expect("! line too long (max 64 bytes)");
    b.expect(&format!("<{a_nick}> ok after long"));
    // 10 MB without a newline, then a good line.
    let big = vec![b'z'; 10 * 1024 * 1024];
    a.send_bytes(&big);
    a.send("\nok after 10MB\n");
    a.expect("! line too long");
    b.expect(&format!("<{a_nick}> ok after 10MB"));
    // Invalid UTF-8.
    a.send_bytes(b"caf\xe9\n");
    a.expect("! line refused: not valid UTF-8");
    // Terminal escapes, NULs, DEL, C1: refused, never forwarded.
    a.send_bytes(b"\x1b[2J\x1b]0;pwned\x07\n");
    a.expect("! line refused: control characters");
    a.send_bytes(&[0u8; 5000]);
    a.send("\n");
    a.expect("! line");
    a.send_bytes("x\u{9b}31m\n".as_bytes());
    a.expect("! line refused: control characters");
    // Tabs and ordinary Unicode pass; empty lines are ignored.
    a.send("\n\r\n   \ntab\there ✓\nend\n");
    let got = b.expect(&format!("<{a_nick}> tab"));
    assert_eq!(got, format!("<{a_nick}> tab\there ✓"));
    assert_eq!(b.read_line().unwrap(), format!("<{a_nick}> end"));
    // Nothing b received contains a control character.
    b.send("/who\n");
    let who = b.expect(" online:");
    assert!(!who.chars().any(|c| c.is_control() && c != '\t'));
}

#[test]
fn flood_control_delays_without_loss() {
    let server = Server::start(&[("flood_burst", "3"), ("flood_rate", "20")]);
    let (mut a, a_nick) = server.join();
    let (mut b, _) = server.join();
    a.expect("joined");
    let mut batch = String::new();
    for i in 0..30 {
        batch.push_str(&format!("f {i}\n"));
    }
    let t0 = std::time::Instant::now();
    a.send(&batch);
    for i in 0..30 {
        assert_eq!(b.read_line().unwrap(), format!("<{a_nick}> f {i}"));
    }
    // 27 lines beyond the burst at 20/s take at least ~1.3 s.
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    a.expect("! flood control");
}

#[test]
fn max_clients_and_max_per_ip_refuse_with_a_line() {
    let server = Server::start(&[("max_clients", "3")]);
    let _held: Vec<_> = (0..3).map(|_| server.join()).collect();
    let mut extra = server.connect();
    assert_eq!(
        extra.read_to_eof(),
        vec!["! server full, try again later".to_string()]
    );
    server.wait_log("reason=\"server full\"");

    let server = Server::start(&[("max_per_ip", "2")]);
    let _a = server.join();
    let _b = server.join();
    let mut c = server.connect();
    assert_eq!(
        c.read_to_eof(),
        vec!["! too many connections from your address".to_string()]
    );
    // Another loopback address is another source.
    let mut d = Client::connect_from(server.addr, "127.0.0.2");
    d.greeting();
}

/// Runs chatd with these arguments; returns the exit code and stderr.
fn run_chatd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_is_one_clear_error_and_exit_2() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    let cfg = |extra: &'static str| -> Vec<&std::ffi::OsStr> {
        let mut v = vec!["--config".as_ref(), path.as_os_str()];
        if !extra.is_empty() {
            v.push(extra.as_ref());
        }
        v
    };
    std::fs::write(&path, "server_name = \"x\"\n\nmax_line = 5\n").unwrap();
    let (code, err) = run_chatd(&cfg(""));
    assert_eq!(code, Some(2));
    assert!(err.contains(":3") && err.contains("max_line"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(run_chatd(&cfg("--check-config")).0, Some(2));

    std::fs::write(&path, "max_clients = 10\n").unwrap();
    assert_eq!(run_chatd(&cfg("--check-config")).0, Some(0));

    let missing = dir.0.join("missing.toml");
    let (code, err) = run_chatd(&["--config".as_ref(), missing.as_os_str()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read"), "{err}");

    let (code, _) = run_chatd(&["--no-config".as_ref(), "--listen".as_ref(), "nope".as_ref()]);
    assert_eq!(code, Some(2));
}
