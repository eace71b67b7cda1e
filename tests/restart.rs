//! Restarts that keep every client, against a stand-in for systemd's fd
//! store (tests/common/store.rs): a crashed master (SIGKILL), a handover
//! (SIGUSR2, what the unit's ExecStop sends on restart), a corrupt stored
//! state, and a stop that leaves nothing in the store. The same on the real
//! systemd, with the package, is in tests/e2e.rs.

mod common;
use common::irc::{line_client, Irc};
use common::store::FdStore;
use common::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Waits until the store holds the region, the state and `n` clients.
fn wait_stored(store: &FdStore, n: usize) {
    wait_for(TIMEOUT, || {
        let names = store.names();
        let clients = names.iter().filter(|n| n.starts_with("kept-c")).count();
        (names.contains(&"kept-shm".to_string())
            && names.contains(&"kept-state".to_string())
            && clients == n)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("store: {:?}", store.names()));
}

fn wait_gone(pids: &[i32]) {
    wait_for(TIMEOUT, || {
        pids.iter().all(|&p| !pid_alive(p)).then_some(())
    })
    .expect("the old children handed over and exited");
}

/// Kills the master (SIGKILL) and waits until its children handed over.
fn crash(server: &mut Server) {
    let kids = server.children();
    server.signal(libc::SIGKILL);
    server.wait_exit(TIMEOUT).expect("master killed");
    wait_gone(&kids);
}

/// Overwrites part of the stored state file.
fn corrupt_state(store: &FdStore, offset: u64, bytes: &[u8]) {
    let stored = store.stored.lock().unwrap();
    let (_, fd) = stored.iter().find(|(n, _)| n == "kept-state").unwrap();
    let f = std::fs::File::from(fd.try_clone().unwrap());
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn crash_and_handover_keep_every_client_and_line() {
    let store = FdStore::new(&render(&base_config()));
    let mut server = store.start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    let mut carol = line_client(&server, "carol");
    alice.send("one\n");
    bob.expect("PRIVMSG #chatd :one");
    carol.expect("<alice> one");
    wait_stored(&store, 3);

    // A crash: the children finish their writes and exit; the clients stay.
    crash(&mut server);
    alice.send("said while no master ran\n");
    let server = store.start();
    server.wait_log("event=\"takeover\"");
    assert!(
        server.find_log("resumed=3").is_some(),
        "{:?}",
        server.find_log("takeover")
    );
    alice.expect("* The server restarted; you are still connected.");
    alice.expect("* you are alice");
    carol.expect("* The server restarted; you are still connected.");
    let seen = carol.lines_until("<alice> said while no master ran");
    assert!(
        !seen.iter().any(|l| l.contains("<alice> one")),
        "sent twice: {seen:?}"
    );
    let b = bob.until("PRIVMSG #chatd :said while no master ran");
    assert!(
        b.iter()
            .any(|l| l.contains("NOTICE bob :The server restarted")),
        "{b:?}"
    );
    bob.send("PRIVMSG #chatd :bob after the crash");
    alice.expect("<bob> bob after the crash");
    carol.expect("<bob> bob after the crash");
    carol.send("/who\n");
    carol.expect("3 online: alice bob carol");
    // Private messages reach resumed nicks.
    bob.send("PRIVMSG carol :psst");
    carol.expect("[private] <bob> psst");

    // A handover (SIGUSR2): the master exits 0, the next one resumes all.
    let mut server2 = server;
    let kids = server2.children();
    server2.signal(libc::SIGUSR2);
    let status = server2.wait_exit(TIMEOUT).expect("master hands over");
    assert!(status.success(), "{status:?}");
    wait_gone(&kids);
    carol.send("during the handover\n");
    let mut server3 = store.start();
    alice.expect("* The server restarted; you are still connected.");
    alice.expect("<carol> during the handover");
    bob.expect("PRIVMSG #chatd :during the handover");
    bob.send("NICK robert");
    alice.expect("* bob is now robert");
    wait_stored(&store, 3);
    // History survives with the log: a newcomer reads the lines said
    // before both restarts (and the resumed clients were not shown any).
    let (mut dave, _) = server3.join();
    alice.send("after\n");
    let seen = dave.lines_until("<alice> after");
    let said: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix('[')?.split_once("] ").map(|(_, t)| t))
        .collect();
    assert_eq!(
        said,
        [
            "<alice> one",
            "<alice> said while no master ran",
            "<bob> bob after the crash",
            "<carol> during the handover"
        ],
        "{seen:?}"
    );
    drop(dave);
    wait_stored(&store, 3);

    // A stop ends every connection with the shutdown line and removes
    // every client from the store.
    server3.signal(libc::SIGTERM);
    for c in [&mut alice, &mut carol] {
        let rest = c.read_to_eof();
        assert_eq!(
            rest.last().map(String::as_str),
            Some("* server shutting down"),
            "{rest:?}"
        );
    }
    assert!(server3.wait_exit(TIMEOUT).unwrap().success());
    wait_stored(&store, 0);
}

#[test]
fn ten_clients_under_load_lose_nothing_across_a_crash_and_a_handover() {
    let mut cfg = base_config();
    cfg.insert("flood_rate".into(), "0".into());
    let store = FdStore::new(&render(&cfg));
    let mut server = store.start();
    let irc = server.irc_addr.unwrap();
    let load = common::chatter::Chatter::start(server.addr, irc, 10, 50);
    std::thread::sleep(Duration::from_millis(500));
    crash(&mut server);
    let mut server = store.start();
    std::thread::sleep(Duration::from_millis(500));
    let kids = server.children();
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit(TIMEOUT).unwrap().success());
    wait_gone(&kids);
    let _server = store.start();
    std::thread::sleep(Duration::from_millis(500));
    let r = load.finish(2);
    eprintln!("{r:?}");
    assert!(r.lines > 0 && r.deliveries as u64 == r.lines * 9, "{r:?}");
    // The target for a restart; here the masters start at once.
    assert!(r.longest_gap < Duration::from_secs(1), "{r:?}");
}

#[test]
fn corrupt_state_still_keeps_the_clients_with_fresh_nicks() {
    let store = FdStore::new(&render(&base_config()));
    let mut server = store.start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    wait_stored(&store, 2);
    crash(&mut server);
    // Garbage over the state file's records (the header stays valid).
    corrupt_state(&store, 64, &[0xa5; 4096]);
    let server = store.start();
    server.wait_log("event=\"takeover\"");
    let l = alice.expect("lines may have been missed");
    assert!(l.starts_with("* The server restarted"), "{l}");
    let me = alice.expect("* you are guest-");
    assert!(server.find_log("fresh=2").is_some());
    bob.expect("lines may have been missed");
    bob.send("PRIVMSG #chatd :still here");
    alice.expect("still here");
    // The fresh nick is the client's own: it can take a new one.
    assert!(me.starts_with("* you are guest-"), "{me}");
    alice.send("/nick alice\n");
    alice.expect("you are now alice");
    let n = bob.expect(" NICK ");
    assert!(n.ends_with("alice"), "{n}");
}

#[test]
fn a_rejected_state_file_is_replaced_in_the_store() {
    let store = FdStore::new(&render(&base_config()));
    let mut server = store.start();
    let mut alice = line_client(&server, "alice");
    wait_stored(&store, 1);
    crash(&mut server);
    corrupt_state(&store, 0, b"not chatd");
    let server = store.start();
    server.wait_log("the previous master's state is unusable (not a chatd state file)");
    alice.expect("lines may have been missed");
    // One state file in the store again, a valid one.
    wait_for(TIMEOUT, || {
        (store.names().iter().filter(|n| *n == "kept-state").count() == 1).then_some(())
    })
    .unwrap();
    alice.send("/who\n");
    alice.expect("1 online: guest-");
}

#[test]
fn a_mute_outlasts_a_crash() {
    let dir = TempDir::new();
    let ctl = dir.0.join("control");
    let chatctl = |args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .arg("--socket")
            .arg(&ctl)
            .args(args)
            .output()
            .expect("chatctl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let mut cfg = base_config();
    cfg.insert("control_socket".into(), format!("\"{}\"", ctl.display()));
    let store = FdStore::new(&render(&cfg));
    let mut server = store.start();
    let mut alice = line_client(&server, "alice");
    let mut bob = line_client(&server, "bob");
    assert_eq!(chatctl(&["mute", "bob", "--for", "1h"]), "muted bob\n");
    alice.expect("* bob was muted by an operator for 1h");
    wait_stored(&store, 2);
    crash(&mut server);
    let _server = store.start();
    bob.expect("The server restarted");
    alice.expect("The server restarted");
    bob.send("am I still muted?\n");
    bob.expect("you are muted: your line was not relayed");
    // `who` shows the mute, and unmuting finds one to lift.
    assert!(chatctl(&["who"])
        .lines()
        .any(|l| l.starts_with("bob") && l.contains("(muted, ")));
    assert_eq!(chatctl(&["unmute", "bob"]), "unmuted bob\n");
    bob.send("and now?\n");
    let seen = alice.lines_until("<bob> and now?");
    assert!(
        !seen.iter().any(|l| l.contains("am I still muted")),
        "{seen:?}"
    );
}
