//! Hostile clients: the others must notice nothing but notices, and nothing
//! may leak (processes, fds, slots).
mod common;

use common::{wait_for, Server, TIMEOUT};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// 1000 clients that connect and close at once, half of them with a reset:
/// every child is reaped, the master's fds return to where they were, each
/// leaves a disconnect event, and chat still works.
#[test]
fn connect_and_close_by_the_thousand_leaks_nothing() {
    let srv = Server::start(&[("max_clients", "1100")]);
    let (mut a, a_nick) = srv.join();
    // The baseline once the master is done with a's fork: the greeting can
    // arrive before the master has closed its copies of the accepted
    // socket and of the child's end of the control pair (2 more fds; seen
    // once in 3 runs under load). The connect event comes after that.
    pid_of(&srv, &a_nick);
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
    // b keeps every line it reads: the flooder's last line may arrive
    // between a's lines (the flood can end first on a loaded machine).
    let mut at_b = Vec::new();
    for i in 0..200 {
        a.send(&format!("a says {i}\n"));
        b.read_until(&format!("a says {i}"), &mut at_b);
    }
    writer.join().unwrap();
    let err = f.expect("line too long");
    assert!(err.starts_with('!'), "{err}");
    let flood_line = format!("<{f_nick}> after the flood");
    if !at_b.contains(&flood_line) {
        b.read_until(&flood_line, &mut at_b);
    }
    assert!(
        at_b.iter().all(|l| !l.contains('\0')),
        "a NUL was forwarded"
    );
    let from_a = at_b.iter().filter(|l| l.contains("> a says ")).count();
    assert_eq!(from_a, 200, "b got every line of a once");
    // The flooder's one error, and nothing of the flood, reached anyone.
    a.send("done\n");
    let mut seen = Vec::new();
    f.read_until("done", &mut seen);
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

/// Slowloris: one byte per second, forever, no end of line. With
/// `line_timeout = 2` the trickler gets `! line timeout` and is closed
/// (a disconnect event with reason "line timeout") while two others chat
/// without loss; a slow typist whose every line takes less than the limit
/// stays, even when its lines add up to more and one line's end comes in
/// the same read as the next one's start.
#[test]
fn slowloris_is_cut_off_by_the_line_timeout() {
    let srv = Server::start(&[("line_timeout", "2.0")]);
    let (mut a, _) = srv.join();
    let (mut b, _) = srv.join();
    let (mut slow, slow_nick) = srv.join();
    let (mut typist, typist_nick) = srv.join();
    for _ in 0..3 {
        a.expect("joined");
    }
    let mut trickle = slow.stream.try_clone().unwrap();
    let loris = std::thread::spawn(move || {
        // One byte per second until the server closes the connection.
        let t0 = std::time::Instant::now();
        while trickle.write_all(b"x").is_ok() && t0.elapsed() < TIMEOUT {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        t0.elapsed()
    });
    let mut typed = typist.stream.try_clone().unwrap();
    let typing = std::thread::spawn(move || {
        // Two lines of 1.2 s each: 2.4 s in all, each under the limit. The
        // first line's newline goes out with the second line's first byte,
        // in one write: the server must restart the clock mid-read.
        let pause = |word: &str| std::time::Duration::from_millis(1200 / word.len() as u64);
        typed.write_all(b"s").unwrap();
        for byte in "low".bytes() {
            std::thread::sleep(pause("slow"));
            typed.write_all(&[byte]).unwrap();
        }
        std::thread::sleep(pause("slow"));
        typed.write_all(b"\nt").unwrap();
        for byte in "ypist".bytes() {
            std::thread::sleep(pause("typist"));
            typed.write_all(&[byte]).unwrap();
        }
        std::thread::sleep(pause("typist"));
        typed.write_all(b"\n").unwrap();
    });
    // Chat paced at 50 lines/s, so that the two non-reading clients stay
    // far below max_sendq.
    let mut i = 0;
    let mut seen = Vec::new();
    while !loris.is_finished() {
        a.send(&format!("a says {i}\n"));
        b.read_until(&format!("a says {i}"), &mut seen);
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lasted = loris.join().unwrap();
    typing.join().unwrap();
    assert!(lasted < TIMEOUT, "the trickler was never cut off");
    let bye = slow.read_to_eof();
    assert!(
        bye.iter().any(|l| l.starts_with("! line timeout")),
        "{bye:?}"
    );
    let ev = srv.wait_log("reason=line timeout");
    assert!(ev.contains("event=\"disconnect\""), "{ev}");
    typist.send("still here\n");
    b.read_until("still here", &mut seen);
    let chat_of = |who: &str| -> Vec<&String> {
        seen.iter()
            .filter(|l| l.starts_with(&format!("<{who}>")))
            .collect()
    };
    assert!(chat_of(&slow_nick).is_empty(), "the trickle was forwarded");
    let left: Vec<_> = seen.iter().filter(|l| l.contains(" left ")).collect();
    assert_eq!(left, [&format!("* {slow_nick} left (line timeout)")]);
    let want = ["slow", "typist", "still here"].map(|t| format!("<{typist_nick}> {t}"));
    assert_eq!(chat_of(&typist_nick), want.iter().collect::<Vec<_>>());
    let a_lines = seen.iter().filter(|l| l.starts_with("<guest-")).count();
    assert_eq!(a_lines, i + 3, "every line of a and the typist, once");
    wait_for(TIMEOUT, || (srv.children().len() == 3).then_some(())).expect("slot freed");
}

/// A throwaway network namespace joined to the host by a veth pair: a peer
/// on the far side can vanish without FIN or RST.
struct FarSide {
    ns: String,
    host_if: String,
    far_if: String,
    host_ip: String,
}

impl FarSide {
    fn new() -> FarSide {
        let id = std::process::id() % 100_000;
        let net = id % 250;
        let f = FarSide {
            ns: format!("chatd-ho-{id}"),
            host_if: format!("cho{id}a"),
            far_if: format!("cho{id}b"),
            host_ip: format!("10.213.{net}.1"),
        };
        let far_ip = format!("10.213.{net}.2/30");
        let host_cidr = format!("{}/30", f.host_ip);
        for args in [
            vec!["netns", "add", &f.ns],
            vec![
                "link", "add", &f.host_if, "type", "veth", "peer", "name", &f.far_if,
            ],
            vec!["link", "set", &f.far_if, "netns", &f.ns],
            vec!["addr", "add", &host_cidr, "dev", &f.host_if],
            vec!["link", "set", &f.host_if, "up"],
            vec!["-n", &f.ns, "addr", "add", &far_ip, "dev", &f.far_if],
            vec!["-n", &f.ns, "link", "set", &f.far_if, "up"],
            vec!["-n", &f.ns, "link", "set", "lo", "up"],
        ] {
            f.ip(&args);
        }
        f
    }

    fn ip(&self, args: &[&str]) {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?} failed");
    }

    /// Connects from inside the namespace (setns in a thread of its own).
    fn connect(&self, addr: std::net::SocketAddr) -> TcpStream {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).expect("netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpStream::connect(addr).expect("connect from the namespace")
        })
        .join()
        .unwrap()
    }

    /// The far side goes silent: nothing it sends reaches the host any more
    /// (a blackhole route), as when a host dies or a cable is pulled; what
    /// the host sends still arrives and is never answered.
    fn vanish(&self) {
        self.ip(&["-n", &self.ns, "route", "add", "blackhole", &self.host_ip]);
    }

    fn reappear(&self) {
        self.ip(&["-n", &self.ns, "route", "del", "blackhole", &self.host_ip]);
    }
}

impl Drop for FarSide {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// Half-open connections: two peers vanish without FIN or RST, one idle,
/// one while output to it is flowing. keepalive = 1 s: both are dropped as
/// "connection timed out" within seconds (keepalive probes; unacknowledged
/// data), with disconnect events; the others lose nothing; no child or fd
/// is left behind.
#[test]
fn half_open_peers_are_dropped() {
    if !common::have_root("half_open_peers_are_dropped") {
        return;
    }
    let far = FarSide::new();
    let listen = format!("[\"{}:0\"]", far.host_ip);
    let srv = Server::start(&[("listen", &listen), ("keepalive", "1")]);
    let (mut a, _) = srv.join();
    let (mut b, _) = srv.join();
    a.expect("joined");
    let fds = srv.fd_count();
    let mut gone = common::Client::from_stream(far.connect(srv.addr));
    gone.greeting();
    let gone_nick = a
        .expect("joined")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    b.expect(&format!("{gone_nick} joined"));
    a.send("before\n");
    gone.expect("before");
    far.vanish();
    let t0 = std::time::Instant::now();
    // Output flows to the vanished peer while a and b chat.
    for i in 0..300 {
        a.send(&format!("line {i}\n"));
        b.expect(&format!("line {i}"));
    }
    let left = b.expect(&format!("{gone_nick} left"));
    assert!(left.ends_with("(connection timed out)"), "{left}");
    let took = t0.elapsed();
    let ev = srv.wait_log(&format!("nick={gone_nick} reason=connection timed out"));
    assert!(ev.contains("event=\"disconnect\""), "{ev}");
    wait_for(TIMEOUT, || (srv.children().len() == 2).then_some(())).expect("child gone");
    wait_for(TIMEOUT, || (srv.fd_count() == fds).then_some(()))
        .unwrap_or_else(|| panic!("master fds {} != {fds} before", srv.fd_count()));
    // An idle one: nothing is sent to it after it vanishes.
    far.reappear();
    drop(gone);
    let far2 = far.connect(srv.addr);
    let mut idle = common::Client::from_stream(far2);
    idle.greeting();
    let idle_nick = a
        .expect("joined")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    b.expect(&format!("{idle_nick} joined"));
    far.vanish();
    let left = b.expect(&format!("{idle_nick} left"));
    assert!(left.ends_with("(connection timed out)"), "{left}");
    a.send("after\n");
    b.expect("after");
    wait_for(TIMEOUT, || (srv.children().len() == 2).then_some(())).expect("child gone");
    eprintln!("vanished peer with output flowing dropped after {took:?}");
}

/// Connects `n` clients one after another; each must get an answer: the
/// greeting (kept) or `! server busy, try again later` and a close
/// (counted).
fn connect_until_busy(srv: &Server, n: usize) -> (Vec<common::Client>, usize) {
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let mut c = srv.connect();
        let first = c.read_line().expect("an answer, not silence");
        if first.contains("Welcome") {
            admitted.push(c);
        } else {
            assert_eq!(first, "! server busy, try again later");
            assert!(c.is_closed());
            refused += 1;
        }
    }
    (admitted, refused)
}

/// The master reaches RLIMIT_NOFILE: every connection past it gets
/// `! server busy, try again later` and is closed (event "refused", reason
/// "out of file descriptors"), nobody hangs in the backlog, the admitted
/// clients keep chatting, and once fds are free again clients get in.
#[test]
fn master_out_of_fds_refuses_with_a_line() {
    // Room for a few clients: each keeps one fd in the master and needs
    // three (stream, socket pair) while it is forked.
    let srv = Server::start_limited("--nofile=28:28", &[]);
    let (mut a, _) = srv.join();
    let (mut admitted, refused) = connect_until_busy(&srv, 30);
    assert!(
        !admitted.is_empty() && refused > 0,
        "{} admitted",
        admitted.len()
    );
    eprintln!("{} admitted, {refused} refused", admitted.len());
    let ev = srv.wait_log("reason=\"out of file descriptors\"");
    assert!(ev.contains("event=\"refused\""), "{ev}");
    a.send("still chatting\n");
    for c in &mut admitted {
        c.expect("still chatting");
    }
    // Free the fds: the admitted clients leave; a new one gets in.
    let n = admitted.len();
    drop(admitted);
    srv.wait_log_n("event=\"disconnect\"", n);
    let (mut b, b_nick) = srv.join();
    a.expect(&format!("{b_nick} joined"));
    b.send("back\n");
    a.expect("back");
    assert!(common::pid_alive(srv.pid()), "the master survived");
}

/// The pid of the child serving `nick`, from its connect event. Waits for
/// it: the client can have its greeting before the master's log line has
/// come through the pipe.
fn pid_of(srv: &Server, nick: &str) -> i32 {
    let ev = wait_for(TIMEOUT, || {
        srv.log_lines()
            .into_iter()
            .find(|l| l.contains("event=\"connect\"") && l.ends_with(&format!("nick={nick}")))
    })
    .expect("connect event");
    ev.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads a client's lines on a thread until every sender in `senders`
/// (other than `me`) has said `done`; returns the lines.
fn collect_until_done(
    mut c: common::Client,
    me: String,
    senders: Vec<String>,
) -> std::thread::JoinHandle<(common::Client, Vec<String>)> {
    std::thread::spawn(move || {
        let mut waiting: std::collections::HashSet<String> =
            senders.into_iter().filter(|s| *s != me).collect();
        let mut lines = Vec::new();
        while !waiting.is_empty() {
            let l = c
                .read_line()
                .unwrap_or_else(|| panic!("{me} was disconnected"));
            if let Some(who) = l.strip_suffix("> done").and_then(|l| l.strip_prefix('<')) {
                waiting.remove(who);
            }
            lines.push(l);
        }
        (c, lines)
    })
}

/// Chaos under load: 100 clients, 10 of them sending 200 lines each over
/// about 2 s while 20 others have their children killed with SIGKILL one
/// after another, and one more child is stopped (SIGSTOP) for about 1.5 s.
/// Every survivor, the stopped one included, gets every line of every
/// other sender exactly once and in order, and one "left (killed by
/// SIGKILL)" per victim; afterwards no zombie, no leaked fd, and every slot
/// is reusable (max_clients = 100: 20 newcomers all get in).
#[test]
fn kill_children_at_random_under_load() {
    let srv = Server::start(&[("max_clients", "100")]);
    let base_fds = srv.fd_count();
    let mut joined: Vec<(common::Client, String)> = (0..100).map(|_| srv.join()).collect();
    // Victims are every fifth client, spread through the slots.
    let mut victims = Vec::new();
    let mut survivors = Vec::new();
    for (i, (c, nick)) in joined.drain(..).enumerate() {
        if i % 5 == 2 {
            victims.push((c, nick));
        } else {
            survivors.push((c, nick));
        }
    }
    let victim_pids: Vec<i32> = victims.iter().map(|(_, nick)| pid_of(&srv, nick)).collect();
    let senders: Vec<String> = survivors.iter().take(10).map(|(_, n)| n.clone()).collect();
    let stopped_nick = survivors.last().unwrap().1.clone();
    let stopped = nix::unistd::Pid::from_raw(pid_of(&srv, &stopped_nick));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (c, nick) in survivors {
        if senders.contains(&nick) {
            writers.push((c.stream.try_clone().unwrap(), nick.clone()));
        }
        readers.push((nick.clone(), collect_until_done(c, nick, senders.clone())));
    }
    let mut kills = victim_pids.iter();
    use nix::sys::signal::{kill, Signal};
    for i in 0..200 {
        for (w, _) in &mut writers {
            w.write_all(format!("m {i}\n").as_bytes()).unwrap();
        }
        if i % 10 == 5 {
            let pid = nix::unistd::Pid::from_raw(*kills.next().unwrap());
            kill(pid, Signal::SIGKILL).unwrap();
        }
        match i {
            20 => kill(stopped, Signal::SIGSTOP).unwrap(),
            170 => kill(stopped, Signal::SIGCONT).unwrap(),
            _ => {}
        }
        // Paced: the run lasts about 2 s, the stop about 1.5 s.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for (w, _) in &mut writers {
        w.write_all(b"done\n").unwrap();
    }
    let mut survivors = Vec::new();
    for (me, r) in readers {
        let (c, lines) = r.join().unwrap();
        for s in senders.iter().filter(|s| **s != me) {
            let prefix = format!("<{s}> m ");
            let got: Vec<u32> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                .collect();
            assert_eq!(got, (0..200).collect::<Vec<_>>(), "{me} from {s}");
        }
        survivors.push(c);
    }
    srv.wait_log_n("reason=killed by SIGKILL duration_s", 20);
    let c = &mut survivors[0];
    wait_for(TIMEOUT, || {
        c.send("/who\n");
        c.expect("online:")
            .starts_with("* 80 online:")
            .then_some(())
    })
    .expect("80 users online");
    for (c, _) in &mut victims {
        assert!(c.is_closed());
    }
    wait_for(TIMEOUT, || (srv.children().len() == 80).then_some(())).expect("victims reaped");
    for pid in srv.children() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next());
        assert_ne!(state, Some(Some('Z')), "zombie child {pid}");
    }
    assert_eq!(
        srv.fd_count(),
        base_fds + 80,
        "one control fd per live client"
    );
    // Every freed slot is usable: 20 newcomers fill the server exactly.
    let newcomers: Vec<_> = (0..20).map(|_| srv.join()).collect();
    let mut extra = srv.connect();
    assert_eq!(extra.read_line().unwrap(), "! server full, try again later");
    drop(newcomers);
}

/// Connects to `to` from the local address `from` (any 127.x.y.z works on
/// loopback), so that one test can be several client hosts.
fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )
    .unwrap();
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// A connect storm past max_per_ip and max_clients: 5 hosts open 30
/// connections each at once against max_clients = 40, max_per_ip = 10.
/// Every connection gets exactly one answer: the greeting, or one of the
/// two refusal lines and a close; no host gets more than 10 places, the
/// server fills exactly; each refusal is logged; the admitted all chat.
#[test]
fn connect_storm_past_max_clients_and_max_per_ip() {
    let srv = Server::start(&[("max_clients", "40"), ("max_per_ip", "10")]);
    let addr = srv.addr;
    let hosts: Vec<_> = (2..7)
        .map(|h| {
            std::thread::spawn(move || {
                let ip = std::net::Ipv4Addr::new(127, 0, 0, h);
                let streams: Vec<_> = (0..30).map(|_| connect_from(ip, addr)).collect();
                streams
                    .into_iter()
                    .map(|s| {
                        let mut c = common::Client::from_stream(s);
                        let first = c.read_line().expect("an answer");
                        (first, c)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let (mut full, mut per_ip) = (0, 0);
    for h in hosts {
        let mut mine = 0;
        for (first, mut c) in h.join().unwrap() {
            match first.as_str() {
                "! server full, try again later" => full += 1,
                "! too many connections from your address" => per_ip += 1,
                l if l.contains("Welcome") => {
                    mine += 1;
                    admitted.push(c);
                    continue;
                }
                other => panic!("unexpected answer {other:?}"),
            }
            assert!(c.is_closed(), "a refused connection stays open");
        }
        assert!(mine <= 10, "one host got {mine} places");
    }
    assert_eq!(admitted.len(), 40, "{full} full, {per_ip} per-ip");
    assert!(full > 0 && per_ip > 0, "{full} full, {per_ip} per-ip");
    assert_eq!(full + per_ip, 110);
    srv.wait_log_n("event=\"refused\"", 110);
    let (first, rest) = admitted.split_first_mut().unwrap();
    first.send("storm over\n");
    for c in rest {
        c.expect("storm over");
    }
}

/// Fork failing for want of processes (RLIMIT_NPROC, as under a tight
/// TasksMax). With room for three children, the fourth and later clients get
/// `! server busy, try again later` and are closed (events "fork_failed"
/// and "refused", reason "cannot start a child"); the admitted ones keep
/// chatting; when one leaves, a new client gets its place.
#[test]
fn fork_failure_refuses_with_a_line() {
    // RLIMIT_NPROC counts every process of the user, so chatd runs as a
    // uid of its own, which only root can switch to: the master and three
    // children make four.
    if !common::have_root("fork_failure_refuses_with_a_line") {
        return;
    }
    let uid = 61_000 + std::process::id() % 1000;
    let dir = common::TempDir::new();
    let bin = common::copy_bin(common::BIN, &dir);
    let config_path = dir.0.join("chatd.toml");
    std::fs::write(&config_path, common::render(&common::base_config())).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--", "prlimit", "--nproc=4:4", "--"])
        .arg(&bin)
        .arg("--config")
        .arg(&config_path);
    let srv = Server::spawn(cmd, dir, config_path);
    let (mut admitted, refused) = connect_until_busy(&srv, 6);
    assert_eq!((admitted.len(), refused), (3, 3));
    let failed = srv.wait_log("event=\"fork_failed\"");
    assert!(
        failed.contains("Resource temporarily unavailable") || failed.contains("EAGAIN"),
        "{failed}"
    );
    let ev = srv.wait_log("reason=\"cannot start a child\"");
    assert!(ev.contains("event=\"refused\""), "{ev}");
    admitted[0].send("still chatting\n");
    admitted[1].expect("still chatting");
    admitted[2].expect("still chatting");
    // One leaves; once its child is reaped a newcomer gets in.
    drop(admitted.remove(0));
    srv.wait_log("event=\"disconnect\"");
    let (_newcomer, nick) = common::wait_for(common::TIMEOUT, || {
        let mut c = srv.connect();
        let first = c.read_line()?;
        first.contains("Welcome").then(|| {
            let nick = first
                .split("You are ")
                .nth(1)
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string();
            (c, nick)
        })
    })
    .expect("a place freed by a leaving client");
    admitted[0].expect(&format!("{nick} joined"));
    assert!(common::pid_alive(srv.pid()));
}

/// A client that stops reading makes its child queue what it cannot send;
/// once the client has read it all and stays idle, the child gives those
/// pages back (a crowd joining or a burst must not cost every idle child
/// its peak memory for good).
#[test]
fn an_idle_child_gives_back_its_send_queue() {
    let srv = Server::start(&[("max_sendq", "2097152")]);
    // Small windows, as in delivery.rs: most of the burst must wait in the
    // child's queue, not in socket buffers.
    let stream = TcpStream::connect(srv.addr).unwrap();
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &65536).unwrap();
    let mut slow = common::Client::from_stream(stream);
    let slow_nick = slow.greeting();
    let pid = pid_of(&srv, &slow_nick);
    let (mut sender, _) = srv.join();
    let (mut witness, _) = srv.join();
    slow.expect("joined");
    slow.expect("joined");
    let rss = || -> u64 {
        let s = common::proc_status(pid);
        s["RssAnon"].trim_end_matches("kB").trim().parse().unwrap()
    };
    let idle = rss();
    // 1.2 MB while `slow` reads nothing; the witness proves it was relayed.
    let line = "y".repeat(400);
    for chunk in 0..30 {
        let mut b = String::new();
        for i in 0..100 {
            b.push_str(&format!("burst {chunk} {i} {line}\n"));
        }
        sender.send(&b);
    }
    witness.expect("burst 29 99 ");
    let full = wait_for(TIMEOUT, || {
        let r = rss();
        (r >= idle + 512).then_some(r)
    })
    .unwrap_or_else(|| panic!("the child never queued the burst: {} KiB", rss()));
    slow.expect("burst 29 99 ");
    // Nothing more arrives: within a few seconds the queue's pages go back.
    let back = wait_for(Duration::from_secs(10), || {
        let r = rss();
        (r + 512 <= full).then_some(r)
    });
    assert!(
        back.is_some(),
        "RssAnon idle {idle} KiB, full {full} KiB, after idling {} KiB",
        rss()
    );
    slow.send("still here\n");
    witness.expect("still here");
}
