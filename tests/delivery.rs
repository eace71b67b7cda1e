//! Delivery guarantees over real sockets: exactly once, no self-echo, one
//! global order, per-sender order, under many concurrent clients and churn.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::thread;

/// Parses `<nick> m SENDER SEQ` chat lines.
fn parse_msg(line: &str) -> Option<(String, u32, u32)> {
    let rest = line.strip_prefix('<')?;
    let (nick, text) = rest.split_once("> ")?;
    let mut w = text.split_whitespace();
    (w.next()? == "m").then_some(())?;
    Some((
        nick.to_string(),
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
    ))
}

#[test]
fn hundred_clients_ten_senders_exactly_once_in_one_order() {
    const N: usize = 100;
    const SENDERS: usize = 10;
    const PER: u32 = 200;
    let server = Server::start(&[]);
    let mut clients: Vec<(Client, String)> = (0..N).map(|_| server.join()).collect();
    // Everyone has seen everyone join once the last join notice reached client 0.
    let last_nick = clients[N - 1].1.clone();
    clients[0].0.expect(&format!("{last_nick} joined"));
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, nick))| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                if i < SENDERS {
                    let mut batch = String::new();
                    for seq in 0..PER {
                        batch.push_str(&format!("m {i} {seq}\n"));
                    }
                    c.send(&batch);
                }
                let expected = if i < SENDERS {
                    (SENDERS - 1) * PER as usize
                } else {
                    SENDERS * PER as usize
                };
                let mut got = Vec::with_capacity(expected);
                while got.len() < expected {
                    let line = c.read_line().expect("connection closed early");
                    if let Some(m) = parse_msg(&line) {
                        got.push(m);
                    } else {
                        assert!(!line.starts_with('<'), "malformed chat line {line:?}");
                    }
                }
                (i, nick, got)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let nick_of: HashMap<usize, String> = results.iter().map(|(i, n, _)| (*i, n.clone())).collect();
    let mut reference: Option<Vec<(u32, u32)>> = None;
    for (i, _nick, got) in &results {
        let mut seen = HashSet::new();
        let mut next_seq = [0u32; SENDERS];
        for (from_nick, sender, seq) in got {
            assert_ne!(*sender as usize, *i, "client {i} received its own message");
            assert_eq!(
                from_nick,
                &nick_of[&(*sender as usize)],
                "wrong nick prefix"
            );
            assert!(
                seen.insert((*sender, *seq)),
                "duplicate {sender}/{seq} at client {i}"
            );
            assert_eq!(
                *seq, next_seq[*sender as usize],
                "sender order broken at client {i}"
            );
            next_seq[*sender as usize] += 1;
        }
        // One global order: a non-sender sees everything; every client's
        // sequence must be that order with its own messages left out.
        let order: Vec<(u32, u32)> = got.iter().map(|(_, s, q)| (*s, *q)).collect();
        if *i >= SENDERS {
            match &reference {
                None => reference = Some(order),
                Some(r) => assert_eq!(&order, r, "client {i} saw a different order"),
            }
        }
    }
    let reference = reference.unwrap();
    for (i, _, got) in results.iter().filter(|(i, _, _)| *i < SENDERS) {
        let order: Vec<(u32, u32)> = got.iter().map(|(_, s, q)| (*s, *q)).collect();
        let filtered: Vec<(u32, u32)> = reference
            .iter()
            .copied()
            .filter(|(s, _)| *s as usize != *i)
            .collect();
        assert_eq!(order, filtered, "sender {i} saw a different order");
    }
}

#[test]
fn churn_causes_no_crosstalk_loss_or_leak() {
    let server = Server::start(&[]);
    let (mut watcher, _) = server.join();
    let (mut talker, talker_nick) = server.join();
    watcher.expect(&format!("{talker_nick} joined"));
    let fds_before = server.fd_count();
    let addr = server.addr;
    // Churners: join, say one line, check they never see their own line, leave.
    let churn: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for k in 0..40 {
                    let mut c = Client::connect(addr);
                    let nick = c.greeting();
                    let mine = format!("c {t} {k} from {nick}");
                    c.send(&format!("{mine}\n/who\n"));
                    // The /who reply comes after our line was relayed.
                    loop {
                        let l = c.read_line().expect("churner lost its connection");
                        assert!(!l.contains(&mine), "self-echo after churn: {l}");
                        if l.contains(" online:") {
                            break;
                        }
                    }
                    drop(c);
                }
            })
        })
        .collect();
    // Meanwhile the talker talks; the watcher must get every line once.
    for seq in 0..300 {
        talker.send(&format!("m 1 {seq}\n"));
    }
    for h in churn {
        h.join().unwrap();
    }
    let mut next = 0;
    let mut churn_lines = HashSet::new();
    while next < 300 {
        let l = watcher.read_line().expect("watcher disconnected");
        if let Some((nick, 1, seq)) = parse_msg(&l) {
            assert_eq!(nick, talker_nick);
            assert_eq!(seq, next, "loss or reordering during churn");
            next += 1;
        } else if let Some(rest) = l.strip_prefix('<') {
            assert!(
                churn_lines.insert(rest.to_string()),
                "duplicate churn line {l}"
            );
        }
    }
    // No leaked processes, slots or fds: only the two clients remain.
    let left = wait_for(TIMEOUT, || (server.children().len() == 2).then_some(()));
    assert!(left.is_some(), "children left: {:?}", server.children());
    talker.send("/who\n");
    let who = talker.expect(" online:");
    assert!(who.starts_with("* 2 online:"), "{who}");
    let fds = wait_for(TIMEOUT, || (server.fd_count() == fds_before).then_some(()));
    assert!(
        fds.is_some(),
        "fd leak: {} before, {} after",
        fds_before,
        server.fd_count()
    );
    // The log reaches the test through a pipe: wait for the 160th line,
    // then make sure there is no 161st.
    server.wait_log_n("event=\"disconnect\"", 160);
    assert_eq!(server.count_log("event=\"disconnect\""), 160);
}

#[test]
fn last_line_before_close_is_delivered() {
    let server = Server::start(&[]);
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    b.send("parting words\nand no newline");
    b.stream.shutdown(std::net::Shutdown::Write).unwrap();
    a.expect(&format!("<{b_nick}> parting words"));
    a.expect(&format!("<{b_nick}> and no newline"));
    a.expect(&format!("{b_nick} left (connection closed)"));
}

#[test]
fn slow_reader_is_disconnected_without_blocking_others() {
    let server = Server::start(&[("max_sendq", "65536")]);
    // A client with a small receive window that never reads. Not below
    // the loopback MSS (64 KiB): a smaller buffer makes its kernel drop
    // segments, and the server's queue then drains through 200 ms
    // retransmits, slower than the child's 2 s final flush allows.
    let slow = {
        use nix::sys::socket::{setsockopt, sockopt};
        let s = std::net::TcpStream::connect(server.addr).unwrap();
        setsockopt(&s, sockopt::RcvBuf, &65536).unwrap();
        s
    };
    let mut slow = Client::from_stream(slow);
    let slow_nick = slow.greeting();
    let (mut reader, _) = server.join();
    let (mut sender, sender_nick) = server.join();
    reader.expect(&format!("{sender_nick} joined"));
    // The sender waits for the reader after each chunk: the reader keeps
    // up, the silent client falls behind by more than max_sendq.
    let payload = "x".repeat(200);
    let mut next = 0;
    let mut saw_leave = false;
    while server.find_log("event=\"kick\"").is_none() {
        assert!(next < 100_000, "the silent client was never kicked");
        let mut b = String::new();
        for _ in 0..100 {
            b.push_str(&format!("m 0 {next} {payload}\n"));
            next += 1;
        }
        sender.send(&b);
        let want = next;
        let mut got = want - 100;
        while got < want {
            let l = reader.read_line().expect("reader disconnected");
            if l.contains(&format!("{slow_nick} left (SendQ exceeded)")) {
                saw_leave = true;
            } else if let Some((_, _, seq)) = parse_msg(&l) {
                assert_eq!(seq, got, "the reader lost a line");
                got += 1;
            }
        }
    }
    let kicked = server.wait_log("event=\"kick\"");
    assert!(
        kicked.contains(&slow_nick) && kicked.contains("SendQ exceeded"),
        "{kicked}"
    );
    // Read now, while the kicked child still tries to deliver its last line.
    let lines = slow.read_to_eof();
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.starts_with("! SendQ exceeded"), "last line: {last:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("* ") || l.starts_with("<") || l.starts_with("! ")),
        "a line was cut"
    );
    if !saw_leave {
        reader.expect(&format!("{slow_nick} left (SendQ exceeded)"));
    }
    // The others keep chatting.
    sender.send("still here\n");
    reader.expect(&format!("<{sender_nick}> still here"));
}

#[test]
fn a_large_room_sums_up_joins_and_leaves() {
    // A room of more than two: joins and leaves are counted, not announced.
    let server = Server::start(&[("join_notices_up_to", "2")]);
    let mut alice = common::irc::line_client(&server, "alice");
    let mut bob = common::irc::Irc::register(&server, "bob");
    alice.expect("* bob joined");
    let (mut carol, _) = server.join();
    let (mut dave, _) = server.join();
    carol.send("/nick carol\n");
    carol.expect("you are now carol");
    dave.send("/quit\n");
    dave.read_to_eof();
    // Nick changes and lines are shown whatever the size.
    alice.expect("is now carol");
    carol.send("hello from the crowd\n");
    alice.expect("<carol> hello from the crowd");
    // Back to two: what was counted is summed up before carol's leave.
    carol.send("/quit\n");
    carol.read_to_eof();
    let seen = alice.lines_until("* carol left");
    assert_eq!(
        seen[seen.len() - 2..],
        [
            "* 2 joined and 1 left in the last 30 s; 2 in the room",
            "* carol left (quit)"
        ],
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains(" joined") && !l.contains("in the last")),
        "{seen:?}"
    );
    let irc = bob.until(":2 joined and 1 left in the last 30 s; 2 in the room");
    assert!(
        irc.last().unwrap().contains(" NOTICE #chatd :2 joined"),
        "{irc:?}"
    );
    assert!(!irc.iter().any(|l| l.contains(" JOIN ")), "{irc:?}");
    bob.expect(" QUIT :quit");
}
