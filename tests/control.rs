//! chatctl against a real chatd: who, kick, mute, say, topic, reload,
//! status and metrics, seen from line and IRC clients and the journal
//! lines; bad requests; a uid that is not an admin (as root).

mod common;
use common::irc::{line_client, Irc};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn start() -> Server {
    let mut cfg = base_config();
    cfg.insert("control_socket".into(), CONTROL_HERE.into());
    Server::start_text(&render(&cfg), &[])
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = server.chatctl(args);
    assert_eq!(code, 0, "chatctl {args:?}: {out}{err}");
    out
}

#[test]
fn who_lists_line_and_irc_clients() {
    let server = start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    alice.send("one\n");
    alice.send("two\n");
    bob.expect("PRIVMSG #chatd :two");
    let who = ok(&server, &["who"]);
    let row = |nick: &str| {
        who.lines()
            .find(|l| l.starts_with(&format!("{nick} ")))
            .unwrap_or_else(|| panic!("no {nick} in:\n{who}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (a, b) = (row("alice"), row("bob"));
    assert_eq!(&a[1..3], ["line", "no"], "{who}");
    assert_eq!(&b[1..3], ["irc", "no"], "{who}");
    assert!(a[3].starts_with("127.0.0.1:"), "{who}");
    let kids = server.children();
    assert!(kids.contains(&a.last().unwrap().parse().unwrap()), "{who}");
    // JSON: the same, for scripts.
    let json = ok(&server, &["--json", "who"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let clients = v["clients"].as_array().unwrap();
    let alice_j = clients.iter().find(|c| c["nick"] == "alice").unwrap();
    assert_eq!(alice_j["protocol"], "line");
    assert_eq!(alice_j["tls"], false);
    assert_eq!(alice_j["lines_in"], 2);
    let bob_j = clients.iter().find(|c| c["nick"] == "bob").unwrap();
    assert_eq!(bob_j["lines_out"], 2);
    assert!(bob_j["connected_since"].as_u64().unwrap() > 1_700_000_000);
    let status = ok(&server, &["status"]);
    assert!(
        status.contains("2 clients: 1 line, 1 IRC, 0 over TLS"),
        "{status}"
    );
}

#[test]
fn kick_and_mute_show_in_both_protocols_and_the_log() {
    let server = start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    let mut carol = line_client(&server, "carol");
    bob.expect("JOIN");
    // An IRC client hears its own mute as a NOTICE to itself.
    ok(&server, &["mute", "bob"]);
    bob.expect("NOTICE bob :an operator muted you: your lines are not relayed");
    ok(&server, &["unmute", "bob"]);
    bob.expect("NOTICE bob :an operator unmuted you");

    ok(&server, &["mute", "carol", "--for", "10m"]);
    carol.expect("an operator muted you for 10m");
    alice.expect("* carol was muted by an operator for 10m");
    carol.send("can anyone hear me\n");
    carol.expect("you are muted");
    ok(&server, &["unmute", "carol"]);
    carol.expect("an operator unmuted you");
    carol.send("back\n");
    alice.expect("<carol> back");
    let seen = bob.until("PRIVMSG #chatd :back");
    assert!(
        !seen.iter().any(|l| l.contains("can anyone hear me")),
        "{seen:?}"
    );

    ok(&server, &["kick", "alice", "spamming", "the", "room"]);
    let rest = alice.read_to_eof();
    assert!(
        rest.iter()
            .any(|l| l == "! kicked by an operator: spamming the room"),
        "{rest:?}"
    );
    bob.expect("KICK #chatd alice :spamming the room");
    carol.expect("* alice was kicked (spamming the room)");
    let log = server.wait_log("event=\"kick\"");
    assert!(log.contains("admin_uid="), "{log}");
    assert!(log.contains("nick=alice"), "{log}");
    // Gone from the list; a second kick names the problem.
    assert!(!ok(&server, &["who"]).contains("alice "));
    let (code, out, _) = server.chatctl(&["kick", "alice"]);
    assert_eq!((code, out.trim()), (1, "error: no client called alice"));
}

#[test]
fn say_topic_and_reload_reach_everyone() {
    let server = start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    ok(&server, &["say", "maintenance at 18:00"]);
    alice.expect("* maintenance at 18:00");
    bob.expect("NOTICE #chatd :maintenance at 18:00");
    ok(&server, &["topic", "welcome to the new room"]);
    alice.expect("* topic: welcome to the new room");
    bob.expect("TOPIC #chatd :welcome to the new room");
    let mut late = Irc::connect(&server);
    late.send("NICK late");
    late.send("USER late 0 * :late");
    late.expect("332 late #chatd :welcome to the new room");
    // A reload for something else keeps the topic set here.
    std::fs::write(
        &server.config_path,
        std::fs::read_to_string(&server.config_path).unwrap() + "motd = \"new motd\"\n",
    )
    .unwrap();
    assert!(ok(&server, &["reload"]).contains("reloaded"));
    let mut newer = Irc::connect(&server);
    newer.send("NICK newer");
    newer.send("USER newer 0 * :newer");
    newer.expect("332 newer #chatd :welcome to the new room");
    // A broken file: the error comes back, exit status 1.
    std::fs::write(&server.config_path, "max_clients = \"many\"\n").unwrap();
    let (code, out, _) = server.chatctl(&["reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("max_clients"), "{out}");
}

#[test]
fn bad_requests_get_an_error_and_break_nothing() {
    let server = start();
    let mut alice = line_client(&server, "alice");
    let (code, out, _) = server.chatctl(&["frobnicate"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("error: unknown command"), "{out}");
    let (code, out, _) = server.chatctl(&["--json", "kick"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["error"].as_str().unwrap().contains("which nick"), "{out}");
    // 10 MB without a newline: one error, the rest not read.
    let mut s = UnixStream::connect(server.control_path()).unwrap();
    let big = vec![b'x'; 10 << 20];
    let _ = s.write_all(&big);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("longer than 4096"), "{reply:?}");
    // Invalid UTF-8 and escapes.
    let mut s = UnixStream::connect(server.control_path()).unwrap();
    s.write_all(b"say \xff\xfe\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("not UTF-8"), "{reply}");
    let (code, out, _) = server.chatctl(&["say", "\x1b[2Jgotcha"]);
    assert_eq!(code, 1, "{out}");
    // Connections that never send hold nothing up.
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(server.control_path()).unwrap())
        .collect();
    drop(idle);
    ok(&server, &["status"]);
    alice.send("/who\n");
    alice.expect("1 online: alice");
}

#[test]
fn metrics_follow_the_room() {
    let server = start();
    let mut alice = line_client(&server, "alice");
    let mut bob = Irc::register(&server, "bob");
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let before = ok(&server, &["metrics"]);
    for i in 0..5 {
        alice.send(&format!("line {i}\n"));
    }
    bob.expect("PRIVMSG #chatd :line 4");
    let after = ok(&server, &["metrics"]);
    let relayed = "chatd_lines_relayed_total";
    assert_eq!(value(&after, relayed) - value(&before, relayed), 5.0);
    assert_eq!(
        value(&after, "chatd_clients{protocol=\"irc\",tls=\"false\"}"),
        1.0
    );
    assert_eq!(value(&after, "chatd_processes"), 3.0);
    // bob's child wrote the five lines (and more) to bob.
    let out = "chatd_bytes_out_total";
    assert!(value(&after, out) - value(&before, out) >= 5.0 * "line 4".len() as f64);
    // Both children reported their set-up time once.
    let setup = "chatd_child_setup_seconds";
    assert_eq!(value(&after, &format!("{setup}_count")), 2.0);
    assert_eq!(
        value(&after, &format!("{setup}_bucket{{le=\"+Inf\"}}")),
        2.0
    );
    // Both forked through a hand-off slot (chatd's fast fork).
    assert_eq!(value(&after, "chatd_forks_total{fd_table=\"shared\"}"), 2.0);
    let sum = value(&after, &format!("{setup}_sum"));
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
    assert!(value(&after, "chatd_wakeups_total") > value(&before, "chatd_wakeups_total"));
    // A Prometheus parser reads it (python3-prometheus-client, installed
    // by tests/all.sh).
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
             n = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(after.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    let samples: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(samples >= 10, "{samples} samples");
}

#[test]
fn a_uid_that_is_not_an_admin_is_refused() {
    if !have_root("a_uid_that_is_not_an_admin_is_refused") {
        return;
    }
    let server = start();
    // Past the file mode (the package's socket unit gives 0660 to the
    // admin group), chatd checks the peer itself.
    let path = server.control_path();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        server.dir.0.as_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = TempDir::new();
    let chatctl = bin_dir.0.join("chatctl");
    std::fs::copy(env!("CARGO_BIN_EXE_chatctl"), &chatctl).unwrap();
    for p in [&chatctl, &bin_dir.0] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&chatctl)
        .arg("--socket")
        .arg(&path)
        .arg("who")
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("error: permission denied: uid 65534"),
        "{text}"
    );
    let log = server.wait_log("event=\"control_refused\"");
    assert!(log.contains("uid=65534"), "{log}");
    // Root still may.
    ok(&server, &["status"]);
}

fn connect_from(server: &Server, from: &str) -> Client {
    Client::connect_from(server.addr, from)
}

/// The test defaults with a control socket and `state` as the state
/// directory (what chatd keeps across restarts).
fn kept_in(state: &TempDir) -> std::collections::BTreeMap<String, String> {
    let mut cfg = base_config();
    cfg.insert("control_socket".into(), CONTROL_HERE.into());
    cfg.insert("state_dir".into(), format!("\"{}\"", state.0.display()));
    cfg
}

#[test]
fn bans_refuse_at_connect_lapse_and_survive_a_restart() {
    let state = TempDir::new();
    let config = render(&kept_in(&state));
    let mut server = Server::start_text(&config, &[]);
    let mut alice = line_client(&server, "alice");
    let mut mallory = connect_from(&server, "127.0.0.2");
    let m_nick = mallory.greeting();
    alice.expect(&format!("{m_nick} joined"));

    // An address: the client there is removed, the next one refused
    // before a process is started for it.
    let out = ok(&server, &["ban", "127.0.0.2", "spam", "wave"]);
    assert!(out.contains("1 connected client(s) removed"), "{out}");
    let rest = mallory.read_to_eof();
    assert!(
        rest.iter()
            .any(|l| l == "! banned by an operator: spam wave"),
        "{rest:?}"
    );
    alice.expect(&format!("* {m_nick} was kicked (spam wave)"));
    let kids = server.children().len();
    let mut again = connect_from(&server, "127.0.0.2");
    assert_eq!(again.read_to_eof(), ["! you are banned: spam wave"]);
    assert_eq!(
        server.children().len(),
        kids,
        "a process was started for a banned address"
    );
    server.wait_log("reason=\"banned\"");
    // A range, with a time limit; a nick mask.
    ok(&server, &["ban", "127.0.0.4/30", "--for", "2s"]);
    ok(&server, &["ban", "spam*", "no", "bots"]);
    alice.send("/nick SpamBot\n");
    alice.expect("! nick SpamBot is banned");
    let bans = ok(&server, &["bans"]);
    for t in ["127.0.0.2 ", "127.0.0.4/30", "spam*"] {
        assert!(bans.contains(t), "{bans}");
    }
    assert_eq!(
        connect_from(&server, "127.0.0.6").read_to_eof(),
        ["! you are banned"]
    );
    let m = ok(&server, &["metrics"]);
    for line in [
        "chatd_bans 3",
        "chatd_kicks_total{reason=\"ban\"} 1",
        "chatd_kicks_total{reason=\"operator\"} 0",
        "chatd_refusals_total{reason=\"banned\"} 2",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in:\n{m}");
    }
    // It lapses by itself.
    let back = wait_for(TIMEOUT, || {
        let mut c = connect_from(&server, "127.0.0.6");
        c.read_line().filter(|l| l.contains("Welcome"))
    });
    assert!(back.is_some(), "the 2 s ban did not lapse");

    // Kept across a restart.
    server.signal(libc::SIGTERM);
    server.wait_exit(TIMEOUT).unwrap();
    let server = Server::start_text(&config, &[]);
    let bans = ok(&server, &["--json", "bans"]);
    let v: serde_json::Value = serde_json::from_str(&bans).unwrap();
    let targets: Vec<&str> = v["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["127.0.0.2", "spam*"]);
    assert_eq!(
        connect_from(&server, "127.0.0.2").read_to_eof(),
        ["! you are banned: spam wave"]
    );
    ok(&server, &["unban", "127.0.0.2"]);
    let mut c = connect_from(&server, "127.0.0.2");
    assert!(c.greeting().starts_with("guest-"));
    let (code, out, _) = server.chatctl(&["unban", "127.0.0.2"]);
    assert_eq!((code, out.trim()), (1, "error: no ban on 127.0.0.2"));
    let (code, out, _) = server.chatctl(&["ban", "*"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn a_topic_set_by_an_operator_survives_a_restart_until_the_file_changes_it() {
    let state = TempDir::new();
    let mut cfg = kept_in(&state);
    cfg.insert("topic".into(), "\"from the file\"".into());
    let config = render(&cfg);
    let mut server = Server::start_text(&config, &[]);
    let mut alice = server.connect();
    alice.greeting();
    alice.expect("* topic: from the file");
    ok(&server, &["topic", "set", "by", "an", "operator"]);
    alice.expect("* topic: set by an operator");
    // Kept across a restart: newcomers of both protocols are shown it.
    server.signal(libc::SIGTERM);
    server.wait_exit(TIMEOUT).unwrap();
    let mut server = Server::start_text(&config, &[]);
    let mut bob = server.connect();
    bob.greeting();
    bob.expect("* topic: set by an operator");
    let mut carol = Irc::connect(&server);
    carol.send("NICK carol");
    carol.send("USER carol 0 * :carol");
    carol.expect(" 332 carol #chatd :set by an operator");
    // An edited configuration wins, as on a reload.
    server.signal(libc::SIGTERM);
    server.wait_exit(TIMEOUT).unwrap();
    let edited = config.replace("from the file", "edited since");
    let server = Server::start_text(&edited, &[]);
    let mut dave = server.connect();
    dave.greeting();
    dave.expect("* topic: edited since");
    // A kept file that is not chatd's is ignored.
    drop(server);
    std::fs::write(state.0.join("topic"), "edited since\n\x1b[2J\n").unwrap();
    let server = Server::start_text(&edited, &[]);
    let mut erin = server.connect();
    erin.greeting();
    erin.expect("* topic: edited since");
}
