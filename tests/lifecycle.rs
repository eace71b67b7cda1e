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
