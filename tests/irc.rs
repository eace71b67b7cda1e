//! IRC next to the line protocol, over real sockets: registration, the
//! room as a channel, both protocols seeing each other, private messages,
//! and hostile input in IRC terms.

mod common;
use common::irc::{line_client, Irc};
use common::*;

#[test]
fn registration_follows_what_clients_expect() {
    let server = Server::start(&[("motd", "\"hello\\nsecond line\"")]);
    let mut c = Irc::connect(&server);
    c.send("CAP LS 302");
    c.expect("CAP * LS :");
    // irssi sends JOIN right after CAP LS and waits for an answer.
    c.send("JOIN :");
    c.expect(" 451 * :You have not registered");
    c.send("CAP REQ :sasl");
    c.expect("CAP * NAK :sasl");
    c.send("NICK alice");
    c.send("USER alice 0 * :Alice");
    // Registration waits for CAP END.
    c.send("PING :before");
    c.expect("PONG chatd :before");
    c.send("CAP END");
    let lines = c.until(" 366 ");
    let first = |code: &str| {
        lines
            .iter()
            .find(|l| l.split(' ').nth(1) == Some(code))
            .unwrap_or_else(|| panic!("no {code} in {lines:#?}"))
            .clone()
    };
    assert!(first("001").starts_with(":chatd 001 alice :Welcome"));
    for code in ["002", "003", "004", "375", "376"] {
        first(code);
    }
    let isupport = first("005");
    for token in [
        "CHANTYPES=#",
        "PREFIX=",
        "NICKLEN=24",
        "CASEMAPPING=ascii",
        "NETWORK=chatd",
        "CHANMODES=",
    ] {
        assert!(isupport.contains(token), "{token} missing: {isupport}");
    }
    assert!(lines
        .iter()
        .any(|l| l.ends_with(" 372 alice :- second line")));
    assert!(lines.contains(&":alice!alice@chatd JOIN :#chatd".to_string()));
    assert!(first("353").ends_with(" = #chatd :alice"));
    // Joining again: the same answers, no second notice for the others.
    let (mut watcher, _) = server.join();
    c.send("JOIN #chatd");
    c.expect(" 366 alice #chatd");
    c.send("JOIN #elsewhere");
    c.expect(" 403 alice #elsewhere");
    c.send("FROB x");
    c.expect(" 421 alice FROB :Unknown command");
    c.send("PRIVMSG");
    c.expect(" 411 alice");
    c.send("USER again 0 * :x");
    c.expect(" 462 alice");
    c.send("MODE #chatd");
    c.expect(" 324 alice #chatd");
    c.send("MODE #chatd +o alice");
    c.expect(" 482 alice #chatd");
    c.send("MODE alice");
    c.expect(" 221 alice");
    c.send("TOPIC #chatd");
    c.expect(" 331 alice #chatd");
    c.send("TOPIC #chatd :new topic");
    c.expect(" 482 alice #chatd");
    c.send("AWAY :lunch");
    c.expect(" 306 alice");
    c.send("LUSERS");
    c.expect(" 251 alice :There are 2 users");
    c.send("WHO #chatd");
    c.expect(" 352 alice #chatd alice chatd chatd alice H :0 alice");
    c.expect(" 315 alice #chatd");
    c.send("WHOIS alice");
    c.expect(" 311 alice alice alice chatd * :alice");
    c.expect(" 318 alice alice");
    c.send("WHOIS nobody");
    c.expect(" 401 alice nobody");
    c.send("QUIT :done here");
    c.expect("ERROR :Closing Link: alice (Quit: done here)");
    assert!(c.0.is_closed());
    // The watcher saw one join (when it came, alice was in already) and the quit.
    watcher.send("/who\n");
    let seen = watcher.lines_until("alice left (done here)");
    assert!(!seen.iter().any(|l| l.contains("alice joined")), "{seen:?}");
}

#[test]
fn line_and_irc_users_see_each_other() {
    let server = Server::start(&[]);
    let mut bob = line_client(&server, "bob");
    let mut alice = Irc::register(&server, "alice");
    bob.expect("* alice joined");
    let mut carol = Irc::register(&server, "carol");
    alice.expect(":carol!carol@chatd JOIN :#chatd");
    bob.send("hi all\n");
    alice.expect(":bob!bob@chatd PRIVMSG #chatd :hi all");
    carol.expect(":bob!bob@chatd PRIVMSG #chatd :hi all");
    alice.send("PRIVMSG #chatd :hello \x02bold\x02");
    bob.expect("<alice> hello bold");
    carol.expect(":alice!alice@chatd PRIVMSG #chatd :hello \x02bold\x02");
    alice.send("PRIVMSG #chatd :\x01ACTION waves\x01");
    bob.expect("* alice waves");
    carol.expect(":alice!alice@chatd PRIVMSG #chatd :\x01ACTION waves\x01");
    bob.send("/me dances\n");
    alice.expect(":bob!bob@chatd PRIVMSG #chatd :\x01ACTION dances\x01");
    // CTCP other than ACTION never reaches the room.
    alice.send("PRIVMSG #chatd :\x01DCC SEND x 2130706433 1234 5\x01");
    alice.send("PRIVMSG #chatd :after the dcc");
    let seen = bob.lines_until("after the dcc");
    assert!(!seen.iter().any(|l| l.contains("DCC")), "{seen:?}");
    // Nick changes: echoed to the IRC sender, shown to everyone else.
    alice.send("NICK Alicia");
    alice.expect(":alice!alice@chatd NICK :Alicia");
    carol.expect(":alice!alice@chatd NICK :Alicia");
    bob.expect("* alice is now Alicia");
    bob.send("/nick BOBBY\n");
    carol.expect(":bob!bob@chatd NICK :BOBBY");
    // One namespace, case-insensitive.
    carol.send("NICK alicia");
    carol.expect(" 433 carol alicia :Nickname is already in use");
    // Private messages: from and to both protocols, never to the room.
    carol.send("PRIVMSG alicia :psst");
    alice.expect(":carol!carol@chatd PRIVMSG Alicia :psst");
    carol.send("PRIVMSG bobby :hey bob");
    bob.expect("[private] <carol> hey bob");
    bob.send("/msg ALICIA over here\n");
    alice.expect(":BOBBY!BOBBY@chatd PRIVMSG Alicia :over here");
    bob.send("/msg nobody hello?\n");
    bob.expect("! no such nick: nobody");
    carol.send("PRIVMSG nobody :x");
    carol.expect(" 401 carol nobody");
    // A line client that never chose a nick is addressable by its guest nick.
    let (mut guest, guest_nick) = server.join();
    carol.send(&format!("PRIVMSG {guest_nick} :welcome"));
    guest.expect("[private] <carol> welcome");
    guest.send("/msg carol thanks\n");
    carol.expect(&format!(
        ":{guest_nick}!{guest_nick}@chatd PRIVMSG carol :thanks"
    ));
    carol.send("PRIVMSG #chatd :public");
    bob.expect("<carol> public");
    alice.expect("PRIVMSG #chatd :public");
    // Quit with a reason, seen by both kinds.
    alice.send("QUIT :bye now");
    bob.expect("* Alicia left (bye now)");
    carol.expect(":Alicia!Alicia@chatd QUIT :bye now");
}

#[test]
fn part_leaves_the_room_until_join() {
    let server = Server::start(&[]);
    let mut bob = line_client(&server, "bob");
    let mut alice = Irc::register(&server, "alice");
    alice.send("PART #chatd :brb");
    alice.expect(":alice!alice@chatd PART #chatd :brb");
    bob.expect("* alice left the room (brb)");
    bob.send("while you were out\n");
    bob.send("/msg alice private still arrives\n");
    alice.expect("private still arrives");
    alice.send("PRIVMSG #chatd :cannot");
    alice.expect(" 404 alice #chatd");
    alice.send("PART #chatd");
    alice.expect(" 442 alice #chatd");
    alice.send("JOIN #chatd");
    let lines = alice.until(" 366 ");
    assert!(
        !lines.iter().any(|l| l.contains("while you were out")),
        "{lines:?}"
    );
    bob.expect("* alice joined");
    bob.send("back again\n");
    alice.expect(":bob!bob@chatd PRIVMSG #chatd :back again");
    alice.send("JOIN 0");
    alice.expect(":alice!alice@chatd PART #chatd");
}

#[test]
fn long_lines_split_for_irc_and_too_long_irc_lines_are_refused() {
    let server = Server::start(&[]);
    let mut bob = line_client(&server, "bob");
    let mut alice = Irc::register(&server, "alice");
    let text: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    bob.send(&format!("{text}\n"));
    let mut got = String::new();
    while got.len() < text.len() {
        let l = alice.expect("PRIVMSG #chatd :");
        assert!(l.len() + 2 <= 512, "an IRC line of {} bytes", l.len() + 2);
        got.push_str(l.split_once("PRIVMSG #chatd :").unwrap().1);
    }
    assert_eq!(got, text);
    // 512 bytes and more: 417, discarded, the client stays.
    alice.send(&format!("PRIVMSG #chatd :{}", "x".repeat(600)));
    alice.expect(" 417 alice :Input line was too long");
    // Ten thousand parameters and a thousand targets.
    alice.send(&format!("PRIVMSG {} :x", "a,".repeat(1000)));
    alice.expect(" 417 alice");
    alice.send("PRIVMSG bob,bob,bob,bob,bob :many");
    alice.expect(" 407 alice");
    // As many targets as fit in one line: one 407, nothing sent.
    alice.send(&format!("PRIVMSG {}bob :many", "a,".repeat(240)));
    alice.expect(" 407 alice");
    alice.send(&format!("WHO {}", "x ".repeat(200)));
    alice.expect(" 315 alice");
    // Control characters: refused, never forwarded.
    alice.send("PRIVMSG #chatd :\x1b[2Jclear");
    alice.expect("NOTICE alice :line refused: control characters");
    alice.send("PRIVMSG #chatd :still here");
    let seen = bob.lines_until("still here");
    assert!(!seen.iter().any(|l| l.contains("clear")), "{seen:?}");
}

#[test]
fn silent_clients_are_pinged_and_unregistered_ones_dropped() {
    let server = Server::start(&[("keepalive", "1"), ("registration_timeout", "1.0")]);
    let mut lazy = Irc::connect(&server);
    lazy.send("NICK lazy");
    lazy.expect("ERROR :Closing Link: lazy (Registration timeout)");
    assert!(lazy.0.is_closed());
    let mut bob = line_client(&server, "bob");
    let mut quiet = Irc::register(&server, "quiet");
    bob.expect("quiet joined");
    quiet.expect("PING :chatd");
    quiet.send("PONG :chatd");
    quiet.expect("PING :chatd");
    // No answer this time.
    quiet.expect("ERROR :Closing Link: quiet (Ping timeout");
    bob.expect("* quiet left (Ping timeout)");
}

#[test]
fn irc_clients_in_use_nick_retry_before_registration() {
    let server = Server::start(&[]);
    let _a = Irc::register(&server, "taken");
    let mut c = Irc::connect(&server);
    // Not registered yet: nobody can write to its guest nick.
    let mut bob = line_client(&server, "bob");
    let guest = server.wait_log("protocol=Irc tls=false nick=guest-2");
    assert!(guest.contains("guest-2"), "{guest}");
    bob.send("/msg guest-2 hello?\n");
    bob.expect("! no such nick: guest-2");
    c.send("NICK TAKEN");
    c.send("USER x 0 * :x");
    c.expect(" 433 * TAKEN :Nickname is already in use");
    c.send("NICK taken_");
    c.expect(" 001 taken_ :Welcome");
    c.send("NICK bad!nick");
    c.expect(" 432 taken_ bad!nick");
}

#[test]
fn irc_floods_are_delayed_not_dropped() {
    let server = Server::start(&[("flood_burst", "5"), ("flood_rate", "20.0")]);
    let mut bob = line_client(&server, "bob");
    let mut watcher = Irc::register(&server, "watcher");
    let mut flooder = Irc::register(&server, "flooder");
    // 40 PINGs and 20 PART/JOIN pairs at once: flood control holds the
    // lines back (told once), and every one is answered in order.
    let mut burst = String::new();
    for i in 0..40 {
        burst.push_str(&format!("PING :p{i}\r\n"));
    }
    for _ in 0..20 {
        burst.push_str("PART #chatd\r\nJOIN #chatd\r\n");
    }
    flooder.0.send(&burst);
    // Meanwhile the room is not held up.
    bob.send("the room goes on\n");
    watcher.expect(":bob!bob@chatd PRIVMSG #chatd :the room goes on");
    let lines = flooder.until("PONG chatd :p39");
    let pongs: Vec<&String> = lines.iter().filter(|l| l.contains(" PONG ")).collect();
    assert_eq!(pongs.len(), 40, "{lines:#?}");
    for (i, l) in pongs.iter().enumerate() {
        assert!(l.ends_with(&format!(":p{i}")), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("NOTICE flooder :flood control")),
        "the flooder is told once: {lines:#?}"
    );
    for _ in 0..20 {
        watcher.expect(":flooder!flooder@chatd PART #chatd");
        watcher.expect(":flooder!flooder@chatd JOIN :#chatd");
    }
    flooder.expect(" 366 flooder #chatd");
}
