//! Process lifecycle over real processes: shutdown, master and child deaths,
//! reload, socket activation.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn sigterm_sends_final_line_and_exits_zero_without_children() {
    let mut server = Server::start(&[("shutdown_timeout", "5")]);
    let mut clients: Vec<Client> = (0..3).map(|_| server.join().0).collect();
    let kids = wait_for(TIMEOUT, || {
        let k = server.children();
        (k.len() == 3).then_some(k)
    })
    .expect("three children");
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    for c in &mut clients {
        let rest = c.read_to_eof();
        assert_eq!(
            rest.last().map(String::as_str),
            Some("* server shutting down"),
            "{rest:?}"
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(6))
        .expect("master exits");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        kids.iter().all(|&p| !pid_alive(p)),
        "children survived the master"
    );
}

#[test]
fn sigint_from_terminal_process_group_is_orderly() {
    // Ctrl-C reaches the whole process group: children ignore SIGINT and
    // still deliver the shutdown line.
    let mut cmd = Command::new(BIN);
    let dir = TempDir::new();
    let path = dir.0.join("chatd.toml");
    std::fs::write(&path, render(&base_config())).unwrap();
    cmd.arg("--config").arg(&path);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut server = Server::spawn(cmd, dir, path);
    let (mut a, _) = server.join();
    wait_for(TIMEOUT, || (server.children().len() == 1).then_some(())).unwrap();
    // SAFETY: signals our own test-created process group.
    unsafe { libc::kill(-server.pid(), libc::SIGINT) };
    assert_eq!(
        a.read_to_eof().last().map(String::as_str),
        Some("* server shutting down")
    );
    assert!(server.wait_exit(TIMEOUT).unwrap().success());
}

#[test]
fn shutdown_timeout_kills_stragglers() {
    let mut server = Server::start(&[("shutdown_timeout", "0.5")]);
    let (_a, _) = server.join();
    let kid = wait_for(TIMEOUT, || server.children().first().copied()).unwrap();
    // A stopped child cannot answer the shutdown request.
    // SAFETY: signals a child of our own test server.
    unsafe { libc::kill(kid, libc::SIGSTOP) };
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("master exits after the timeout");
    assert!(status.success());
    assert!(wait_for(TIMEOUT, || (!pid_alive(kid)).then_some(())).is_some());
    // The log comes through a pipe: wait for the line, do not just look.
    server.wait_log("event=\"shutdown_timeout\"");
}

#[test]
fn sigkill_of_master_leaves_no_orphans() {
    let mut server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..5).map(|_| server.join().0).collect();
    let kids =
        wait_for(TIMEOUT, || Some(server.children()).filter(|k| k.len() == 5)).expect("children");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(
        wait_for(TIMEOUT, || kids
            .iter()
            .all(|&p| !pid_alive(p))
            .then_some(()))
        .is_some(),
        "orphans: {:?}",
        kids.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );
    for c in &mut clients {
        c.read_to_eof();
    }
}

#[test]
fn killed_child_is_reaped_and_others_keep_chatting() {
    let server = Server::start(&[]);
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    let (_victim, victim_nick) = server.join();
    a.expect(&format!("{victim_nick} joined"));
    b.expect(&format!("{victim_nick} joined"));
    let line = server.wait_log(&format!("nick={victim_nick}"));
    let pid: i32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: kills a child of our own test server.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    a.expect(&format!("{victim_nick} left (killed by SIGKILL)"));
    server.wait_log("event=\"child_died\"");
    b.send("still alive\n");
    a.expect(&format!("<{b_nick}> still alive"));
    assert!(wait_for(TIMEOUT, || (server.children().len() == 2).then_some(())).is_some());
}

#[test]
fn sighup_reloads_config_and_keeps_clients() {
    let server = Server::start(&[("server_name", "\"before\"")]);
    let (mut a, _) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    let mut cfg = base_config();
    cfg.insert("server_name".into(), "\"after\"".into());
    cfg.insert("motd".into(), "\"fresh motd\"".into());
    std::fs::write(&server.config_path, render(&cfg)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("event=\"reload\"");
    let (mut c, _) = {
        let mut c = server.connect();
        let g = c.expect("Welcome");
        assert!(g.contains("Welcome to after!"), "{g}");
        c.expect("fresh motd");
        (c, ())
    };
    b.send("after reload\n");
    a.expect(&format!("<{b_nick}> after reload"));
    c.expect(&format!("<{b_nick}> after reload"));

    // A bad file is reported and the running config kept.
    std::fs::write(&server.config_path, "max_clients = \"lots\"\n").unwrap();
    server.signal(libc::SIGHUP);
    let err = server.wait_log("event=\"reload_failed\"");
    assert!(err.contains("max_clients"), "{err}");
    let mut d = server.connect();
    assert!(d.expect("Welcome").contains("Welcome to after!"));

    // A listen change cannot apply at runtime.
    cfg.insert("listen".into(), "[\"127.0.0.1:1\"]".into());
    std::fs::write(&server.config_path, render(&cfg)).unwrap();
    server.signal(libc::SIGHUP);
    let ign = server.wait_log("event=\"reload_ignored\"");
    assert!(ign.contains("listen"), "{ign}");
    b.send("still here\n");
    a.expect(&format!("<{b_nick}> still here"));
}

#[test]
fn socket_activation_with_systemd_socket_activate() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = TempDir::new();
    let path = dir.0.join("chatd.toml");
    // The config's listen address must be ignored in favour of the socket.
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:1\"]\nflood_rate = 0\nuser = \"nobody\"\n",
    )
    .unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-E")
        .arg("CHATD_LOG")
        .arg(BIN)
        .arg("--config")
        .arg(&path);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (server, first) = Server::spawn_activated(cmd, dir, path, Some(addr));
    assert_eq!(server.addr.port(), port);
    assert!(server.find_log("source=Systemd").is_some());
    let mut a = first.unwrap();
    a.greeting();
    let (mut b, b_nick) = server.join();
    a.expect(&format!("{b_nick} joined"));
    b.send("activated\n");
    a.expect(&format!("<{b_nick}> activated"));
}

#[test]
fn listens_on_ipv4_and_ipv6_with_keepalive_armed() {
    let server = Server::start(&[("listen", "[\"127.0.0.1:0\", \"[::1]:0\"]")]);
    let v6: std::net::SocketAddr = server
        .log_lines()
        .iter()
        .filter(|l| l.contains("event=\"listen\""))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .filter(|a| a.starts_with('['))
                .map(|a| a.parse().unwrap())
        })
        .expect("an IPv6 listener");
    let (mut a, _) = server.join();
    let mut b = Client::connect(v6);
    let b_nick = b.greeting();
    b.send("over v6\n");
    a.expect(&format!("<{b_nick}> over v6"));
    // The server side of each connection has a keepalive timer (ss -o).
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{}", v6.port()),
        ])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keepalive"), "no keepalive timer: {text}");
}

/// The master's private memory and its part of the shared region, in KiB:
/// `Anonymous` and `Pss_Shmem` of /proc/PID/smaps_rollup (readable by
/// root only: the master is not dumpable).
fn master_memory(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("Anonymous:")?, field("Pss_Shmem:")?))
}

#[test]
fn a_crowd_that_left_gives_its_memory_back() {
    if !have_root("a_crowd_that_left_gives_its_memory_back") {
        return;
    }
    let server = Server::start(&[("max_clients", "400")]);
    let pid = server.pid();
    // The idle figure: after one client came and went, as the master
    // finishes setting up once it serves one.
    drop(server.join());
    wait_for(TIMEOUT, || server.children().is_empty().then_some(())).expect("child gone");
    let (anon0, shm0) = master_memory(pid).expect("smaps_rollup");
    let mut crowd: Vec<Client> = (0..300).map(|_| server.join().0).collect();
    let line = format!("{}\n", "x".repeat(200));
    for c in &mut crowd {
        c.send(&line);
    }
    // The last line relayed: everyone's is in the log.
    crowd[0].expect(&format!("> {}", "x".repeat(200)));
    let n = server.children().len();
    assert_eq!(n, 300, "every client has its child");
    let (anon1, shm1) = master_memory(pid).unwrap();
    // What the test can see go back: 300 client records and tables in
    // the master's heap; slots, control words and log in the region.
    assert!(anon1 >= anon0 + 100, "anonymous {anon0} -> {anon1} KiB");
    assert!(shm1 >= shm0 + 400, "shared {shm0} -> {shm1} KiB");
    drop(crowd);
    let back = wait_for(Duration::from_secs(10), || {
        let (anon, shm) = master_memory(pid)?;
        (server.children().is_empty() && anon <= anon0 + 32 && shm <= shm0 + 48).then_some(())
    });
    let (anon2, shm2) = master_memory(pid).unwrap();
    assert!(
        back.is_some(),
        "idle: {anon0} + {shm0} KiB, with 300 clients: {anon1} + {shm1}, \
         after they left: {anon2} + {shm2}"
    );
    // The master carries on: a newcomer is served and sees the room's
    // recent lines (kept in the log).
    let (mut c, _) = server.join();
    c.expect(&format!("> {}", "x".repeat(200)));
    c.send("/who\n");
    c.expect("* 1 online:");
}
