//! History: a newcomer is shown the room's last `history_lines` lines,
//! with the time they were said, in both protocols; never a private
//! message, never anything but what people said; IRC's `server-time`.

mod common;
use common::irc::{line_client, Irc};
use common::*;
use std::time::{SystemTime, UNIX_EPOCH};

fn start(history: u32) -> Server {
    Server::start(&[("history_lines", &history.to_string())])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether `mark` (`12:01`, or `2026-12-05 23:59` across midnight) is a
/// UTC time of the last two minutes.
fn recent(mark: &str) -> bool {
    let hm = mark.rsplit(' ').next().unwrap();
    let now = now_ms();
    [0, 60_000, 120_000].iter().any(|back| {
        let c = chatd::protocol::clock::civil(now - back);
        hm == format!("{:02}:{:02}", c.hour, c.minute)
    })
}

/// Splits `[mark] rest` into (mark, rest), checking the mark is recent.
fn timed(line: &str) -> &str {
    let (mark, rest) = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .unwrap_or_else(|| panic!("no time mark in {line:?}"));
    assert!(recent(mark), "{mark:?} is not the time now (UTC)");
    rest
}

/// alice (line) and bob (IRC) talk, act and whisper; returns them once
/// every line has been relayed (bob saw alice's last, alice bob's).
fn conversation(server: &Server) -> (common::Client, Irc) {
    let mut alice = line_client(server, "alice");
    let mut bob = Irc::register(server, "bob");
    for i in 0..8 {
        alice.send(&format!("a{i}\n"));
    }
    alice.send("/me waves\n");
    alice.send("/msg bob secret from alice\n");
    bob.expect("PRIVMSG bob :secret from alice");
    bob.send("PRIVMSG alice :secret from bob");
    bob.send("PRIVMSG #chatd :\u{1}ACTION nods\u{1}");
    bob.send("PRIVMSG #chatd :b0");
    alice.expect("<bob> b0");
    (alice, bob)
}

#[test]
fn a_line_newcomer_reads_the_last_lines_with_their_time() {
    let server = start(5);
    let (mut alice, _bob) = conversation(&server);
    let (mut carol, _) = server.join();
    alice.send("live\n");
    let seen = carol.lines_until("<alice> live");
    let (history, live) = seen.split_at(seen.len() - 1);
    let texts: Vec<&str> = history.iter().map(|l| timed(l)).collect();
    assert_eq!(
        texts,
        [
            "<alice> a6",
            "<alice> a7",
            "* alice waves",
            "* bob nods",
            "<bob> b0"
        ],
        "{seen:?}"
    );
    assert_eq!(live, ["<alice> live"], "a live line has no time mark");
    assert!(!seen.iter().any(|l| l.contains("secret")));
}

#[test]
fn an_irc_newcomer_reads_history_after_the_names_list() {
    let server = start(3);
    let (mut alice, _bob) = conversation(&server);
    // With server-time: the lines as they were, each with a `time` tag.
    let mut dave = Irc::connect(&server);
    dave.send("CAP LS 302");
    dave.expect("CAP * LS :server-time");
    dave.send("CAP REQ :server-time sasl");
    dave.expect("CAP * NAK :server-time sasl");
    dave.send("CAP REQ :server-time");
    dave.expect("CAP * ACK :server-time");
    dave.send("CAP LIST");
    dave.expect("CAP * LIST :server-time");
    dave.send("NICK dave");
    dave.send("USER dave 0 * :dave");
    dave.send("CAP END");
    dave.expect(" 366 dave ");
    alice.send("live\n");
    let seen = dave.until("PRIVMSG #chatd :live");
    let (history, live) = seen.split_at(seen.len() - 1);
    let mut texts = Vec::new();
    for l in history {
        let (tag, msg) = l.split_once(' ').unwrap();
        let time = tag.strip_prefix("@time=").expect("a time tag");
        // 2026-12-06T23:22:55.676Z
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && &time[10..11] == "T", "{time}");
        assert!(recent(&time[11..16]), "{time}");
        texts.push(msg.to_string());
    }
    assert_eq!(
        texts,
        [
            ":alice!alice@chatd PRIVMSG #chatd :\u{1}ACTION waves\u{1}",
            ":bob!bob@chatd PRIVMSG #chatd :\u{1}ACTION nods\u{1}",
            ":bob!bob@chatd PRIVMSG #chatd :b0",
        ]
    );
    assert!(
        !live[0].starts_with('@'),
        "a live line has no tag: {live:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("secret")));

    // Without it: the time in the text.
    let mut erin = Irc::register(&server, "erin");
    alice.send("live again\n");
    let seen = erin.until("PRIVMSG #chatd :live again");
    let b0 = seen.iter().find(|l| l.contains("b0")).expect("history");
    let text = b0.split_once("PRIVMSG #chatd :").unwrap().1;
    assert_eq!(timed(text), "b0");
    assert_eq!(seen.iter().filter(|l| l.contains("PRIVMSG")).count(), 4);
}

#[test]
fn history_can_be_turned_off() {
    let server = start(0);
    let (mut alice, _bob) = conversation(&server);
    let (mut carol, _) = server.join();
    alice.send("live\n");
    assert_eq!(carol.lines_until("<alice> live"), ["<alice> live"]);
}

#[test]
fn a_newcomer_is_shown_the_newest_lines_that_fit_half_its_sendq() {
    // 300 lines of 4 KB: more than the relay log (1 MiB) holds, and 100 of
    // them more than half of max_sendq (256 KiB).
    let server = Server::start(&[("history_lines", "100"), ("max_line", "4096")]);
    let mut alice = line_client(&server, "alice");
    let (mut bob, _) = server.join();
    let filler = "x".repeat(4000);
    for i in 0..300 {
        alice.send(&format!("{i:03} {filler}\n"));
        if i % 50 == 49 {
            // Keep the log moving: bob reads what was said so far.
            bob.expect(&format!("<alice> {i:03} "));
        }
    }
    let (mut carol, _) = server.join();
    alice.send("live\n");
    let seen = carol.lines_until("<alice> live");
    let numbers: Vec<u32> = seen[..seen.len() - 1]
        .iter()
        .map(|l| timed(l)[8..11].parse().unwrap())
        .collect();
    // The newest, in order, none twice, and as many as fit in 128 KiB.
    assert_eq!(numbers.len(), 31, "{numbers:?}");
    assert_eq!(*numbers.last().unwrap(), 299);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
}
