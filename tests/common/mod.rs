//! Test harness: starts the real `chatd` binary and talks TCP to it.
//!
//! [`Server`] writes a config file into a private temp dir, starts chatd on
//! 127.0.0.1:0, learns the port from its `listen` log event, collects its
//! stderr, and on drop kills it (children die with it through their
//! parent-death signal) and removes the temp dir. [`Client`] is a line
//! client with timeouts. Every wait polls a condition with a deadline.
#![allow(dead_code)]

pub mod chatter;
pub mod irc;
pub mod store;
pub mod tls;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chatd");
pub const TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "chatd-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Log = Arc<(Mutex<Vec<String>>, Condvar)>;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The IRC listener, if any.
    pub irc_addr: Option<SocketAddr>,
    pub log: Log,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

/// Test defaults: an ephemeral port, no per-IP or flood limits.
pub fn base_config() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("listen".into(), "[\"127.0.0.1:0\"]".into());
    m.insert("irc_listen".into(), "[\"127.0.0.1:0\"]".into());
    m.insert("max_per_ip".into(), "100000".into());
    m.insert("flood_rate".into(), "0".into());
    // Tests run as root on CI, where no `chatd` user exists.
    m.insert("user".into(), "\"nobody\"".into());
    // No control socket unless a test asks for one (CONTROL_HERE): tests
    // run at once must not share /run/chatd/control.
    m.insert("control_socket".into(), "\"\"".into());
    // Nothing kept in /var/lib/chatd: a test that needs a state directory
    // gives its own, so that no test sees what another kept (a topic, bans).
    m.insert("state_dir".into(), "\"\"".into());
    m
}

/// A `control_socket` value that [`Server::command`] replaces with a path
/// in the server's own temp dir ([`Server::control_path`]).
pub const CONTROL_HERE: &str = "\"CONTROL_HERE\"";

/// A config for a test: IRC on an ephemeral port unless it says otherwise
/// (the built-in default, 6667, would collide between tests run at once).
pub fn with_irc_port(config: &str) -> String {
    let mut c = config.to_string();
    if !c.contains("irc_listen") {
        c.push_str("\nirc_listen = [\"127.0.0.1:0\"]\n");
    }
    if !c.contains("control_socket") {
        c.push_str("\ncontrol_socket = \"\"\n");
    }
    if !c.contains("state_dir") {
        c.push_str("\nstate_dir = \"\"\n");
    }
    c
}

pub fn render(cfg: &BTreeMap<String, String>) -> String {
    cfg.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

impl Server {
    /// Starts chatd with the test defaults overridden by `overrides` (TOML values).
    pub fn start(overrides: &[(&str, &str)]) -> Server {
        let mut cfg = base_config();
        for (k, v) in overrides {
            cfg.insert(k.to_string(), v.to_string());
        }
        Server::start_text(&render(&cfg), &[])
    }

    /// Starts chatd with this config file text and extra arguments.
    pub fn start_text(config: &str, args: &[&str]) -> Server {
        let (mut cmd, dir, config_path) = Server::command(config);
        cmd.args(args);
        Server::spawn(cmd, dir, config_path)
    }

    /// The command [`Server::start_text`] runs, with its config file in a
    /// fresh temp dir, for a test to add to (environment, arguments)
    /// before [`Server::spawn`].
    pub fn command(config: &str) -> (Command, TempDir, PathBuf) {
        let dir = TempDir::new();
        let config_path = dir.0.join("chatd.toml");
        let control = format!("\"{}\"", dir.0.join("control").display());
        let text = with_irc_port(config).replace(CONTROL_HERE, &control);
        std::fs::write(&config_path, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config_path);
        (cmd, dir, config_path)
    }

    /// Spawns a prepared command whose stderr carries chatd's log.
    pub fn spawn(cmd: Command, dir: TempDir, config_path: PathBuf) -> Server {
        Server::spawn_activated(cmd, dir, config_path, None).0
    }

    /// Like [`Server::spawn`]; with `first`, connects a first client to that
    /// address before waiting for readiness (systemd-socket-activate starts
    /// the program on the first connection).
    pub fn spawn_activated(
        mut cmd: Command,
        dir: TempDir,
        config_path: PathBuf,
        first: Option<SocketAddr>,
    ) -> (Server, Option<Client>) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("CHATD_LOG", "debug");
        let mut child = cmd.spawn().expect("start chatd");
        let log: Log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*l2;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let mut s = Server {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            irc_addr: None,
            log,
            dir,
            config_path,
        };
        let first = first.map(|a| {
            let stream =
                wait_for(TIMEOUT, || TcpStream::connect(a).ok()).expect("activation socket");
            Client::from_stream(stream)
        });
        s.wait_log("event=\"ready\"");
        let address = |protocol: &str| {
            let listen = s.find_log(&format!("protocol={protocol}"))?;
            let a = listen
                .split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .expect("address field");
            Some(a.parse::<SocketAddr>().unwrap())
        };
        let (line, irc) = (address("Line"), address("Irc"));
        s.addr = line.expect("listen event");
        s.irc_addr = irc;
        (s, first)
    }

    /// The control socket, if the config said [`CONTROL_HERE`].
    pub fn control_path(&self) -> PathBuf {
        self.dir.0.join("control")
    }

    /// Runs chatctl against this server's control socket: (exit status,
    /// stdout, stderr).
    pub fn chatctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .arg("--socket")
            .arg(self.control_path())
            .args(args)
            .output()
            .expect("chatctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn find_log(&self, needle: &str) -> Option<String> {
        self.log_lines().into_iter().find(|l| l.contains(needle))
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle`; panics with the log if not.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_n(needle, 1)
    }

    /// Waits until `n` log lines contain `needle`; returns the n-th.
    pub fn wait_log_n(&self, needle: &str, n: usize) -> String {
        let (m, cv) = &*self.log;
        let end = Instant::now() + TIMEOUT;
        let mut g = m.lock().unwrap();
        loop {
            let hits: Vec<&String> = g.iter().filter(|l| l.contains(needle)).collect();
            if hits.len() >= n {
                return hits[n - 1].clone();
            }
            let now = Instant::now();
            if now >= end {
                let all = g.join("\n");
                drop(g);
                panic!("no {n}x log line with {needle:?}; log:\n{all}");
            }
            g = cv.wait_timeout(g, end - now).unwrap().0;
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects and reads the greeting; returns the client and its nick.
    pub fn join(&self) -> (Client, String) {
        let mut c = self.connect();
        let nick = c.greeting();
        (c, nick)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Pids whose parent is the master.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits for the master to exit; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().unwrap())
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.log_lines();
            let from = lines.len().saturating_sub(200);
            eprintln!("---- chatd log (last {} lines) ----", lines.len() - from);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of the live processes whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[1].parse::<i32>() == Ok(ppid) && f[0] != "Z" {
            v.push(pid);
        }
    }
    v
}

pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Connects to `addr` from the local IPv4 address `from` (another
    /// loopback address is another source: 127.0.0.2, ...).
    pub fn connect_from(addr: SocketAddr, from: &str) -> Client {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
        };
        use std::os::fd::AsRawFd;
        let sock = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        let local: SocketAddr = format!("{from}:0").parse().unwrap();
        bind(sock.as_raw_fd(), &SockaddrStorage::from(local)).unwrap();
        connect(sock.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap();
        Client::from_stream(TcpStream::from(sock))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).expect("send");
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("send");
    }

    /// The next line without its newline; None at EOF or reset.
    pub fn read_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Some(String::from_utf8(buf).expect("server sent invalid UTF-8"))
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("timed out waiting for a line")
            }
            Err(_) => None,
        }
    }

    /// Reads lines until one contains `needle`; returns it. Panics on EOF/timeout.
    pub fn expect(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.read_line() {
                Some(l) if l.contains(needle) => return l,
                Some(l) => seen.push(l),
                None => panic!("EOF before a line with {needle:?}; got {seen:?}"),
            }
        }
    }

    /// Reads lines into `seen` up to and including the first that contains
    /// `needle` (where `expect` drops the others). Panics on EOF/timeout.
    pub fn read_until(&mut self, needle: &str, seen: &mut Vec<String>) {
        loop {
            let l = self.read_line().expect("still connected");
            let found = l.contains(needle);
            seen.push(l);
            if found {
                return;
            }
        }
    }

    /// The lines up to and including the first that contains `needle`.
    pub fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        self.read_until(needle, &mut seen);
        seen
    }

    /// Reads the greeting; returns the assigned nick.
    pub fn greeting(&mut self) -> String {
        let l = self.expect("Welcome");
        let after = l.split("You are ").nth(1).expect("nick in greeting");
        after.split('.').next().unwrap().to_string()
    }

    /// Reads until EOF; returns the lines.
    pub fn read_to_eof(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(l) = self.read_line() {
            v.push(l);
        }
        v
    }

    /// True if the server closed the connection (reads to EOF, discarding).
    pub fn is_closed(&mut self) -> bool {
        let mut sink = Vec::new();
        self.reader.read_to_end(&mut sink).is_ok()
    }
}

/// Whether this test process runs as root. Root-only tests return early
/// with a note when it does not, unless `CHATD_TESTS_AS_ROOT=1` (set by
/// tests/all.sh when run as root, as CI does) says they must run.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CHATD_TESTS_AS_ROOT").is_none(),
        "{test} needs root"
    );
    eprintln!("note: {test} needs root; not run");
    false
}

/// /proc/PID/status as key → value.
pub fn proc_status(pid: i32) -> BTreeMap<String, String> {
    parse_status(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}")),
    )
}

/// The text of a /proc/PID/status file as key → value.
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Asserts what every confined chatd process shows in /proc/PID/status.
pub fn assert_confined(pid: i32, uid: u32) {
    assert_status_confined(&proc_status(pid), uid, &format!("pid {pid}"));
}

/// [`assert_confined`] on a parsed status (read elsewhere, e.g. inside a container).
pub fn assert_status_confined(s: &BTreeMap<String, String>, uid: u32, who: &str) {
    let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(s["Uid"], ids, "{who} Uid");
    for k in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(s[k], "0000000000000000", "{who} {k}");
    }
    assert_eq!(s["NoNewPrivs"], "1", "{who} NoNewPrivs");
    assert_eq!(s["Seccomp"], "2", "{who} Seccomp");
}

/// Copies the chatd binary into `dir` (mode 0755), so that an unprivileged
/// user can run it whatever the permissions of the build directory.
pub fn copy_bin(bin: &str, dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.0.join("chatd");
    std::fs::copy(bin, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// uid of `nobody`, the unprivileged user the tests run chatd as.
pub const NOBODY: u32 = 65534;

/// A command that runs `program` unprivileged: as root, through setpriv as
/// nobody with no groups, and with an ambient capability chatd must drop;
/// otherwise as the current user.
pub fn unprivileged(program: &std::path::Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Server {
    /// Starts a copy of `bin` unprivileged (see [`unprivileged`]) with the
    /// test config. With `fault_open_config`, the fault hook (where compiled
    /// in) makes each child try to open that config file before seccomp.
    /// Returns the server and the config file's path.
    pub fn start_unprivileged(bin: &str, fault_open_config: bool) -> (Server, PathBuf) {
        let dir = TempDir::new();
        let bin = copy_bin(bin, &dir);
        let path = dir.0.join("chatd.toml");
        std::fs::write(&path, render(&base_config())).unwrap();
        let mut cmd = unprivileged(&bin);
        cmd.arg("--config").arg(&path);
        if fault_open_config {
            cmd.env("CHATD_FAULT_OPEN", &path);
        }
        (Server::spawn(cmd, dir, path.clone()), path)
    }
}

impl Server {
    /// Starts chatd (test defaults plus `overrides`) under util-linux's
    /// prlimit, e.g. `limit = "--nofile=24:24"`: the limits it starts with.
    pub fn start_limited(limit: &str, overrides: &[(&str, &str)]) -> Server {
        let mut cfg = base_config();
        for (k, v) in overrides {
            cfg.insert(k.to_string(), v.to_string());
        }
        let dir = TempDir::new();
        let config_path = dir.0.join("chatd.toml");
        std::fs::write(&config_path, render(&cfg)).unwrap();
        let mut cmd = Command::new("prlimit");
        cmd.args([limit, "--", BIN, "--config"]).arg(&config_path);
        Server::spawn(cmd, dir, config_path)
    }
}

/// What /proc says of a process: its command line (what `ps` shows),
/// whether it maps the stack it was forked on (`[stack]`), its command name.
pub struct ProcImage {
    pub cmdline: String,
    pub has_stack: bool,
    pub comm: String,
}

pub fn proc_image(pid: i32) -> ProcImage {
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
    let text = |f: &str| String::from_utf8_lossy(&read(f)).into_owned();
    ProcImage {
        cmdline: text("cmdline"),
        has_stack: text("maps").contains("[stack]"),
        comm: text("comm").trim_end().to_string(),
    }
}

/// Asserts that the children of `master` are exactly one per client in
/// `clients`, each titled `chatd: client 127.0.0.1:PORT` for its client's
/// port (what `ps` shows), and each running on its own stack: the stack
/// it was forked on (`[stack]` in /proc/PID/maps) is unmapped.
pub fn assert_children_titled_on_own_stack(master: i32, clients: &[&Client]) {
    let mut want: Vec<String> = clients
        .iter()
        .map(|c| format!("chatd: client {}\0", c.stream.local_addr().unwrap()))
        .collect();
    let mut got = Vec::new();
    for child in children_of(master) {
        let image = proc_image(child);
        assert!(
            !image.has_stack,
            "child {child} still maps the stack it was forked on"
        );
        assert_eq!(image.comm, "chatd", "child {child} comm");
        got.push(image.cmdline);
    }
    want.sort();
    got.sort();
    assert_eq!(got, want, "children's titles");
}
