//! Logging to the systemd journal. With `$JOURNAL_STREAM` naming stderr,
//! chatd sends native journal datagrams with CHATD_ fields; the test puts
//! its own socket at /run/systemd/journal/socket inside a private mount
//! namespace and parses what arrives. Started as root (it will chroot),
//! chatd instead writes `<N>`-prefixed lines to the stream.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Parses one native-protocol datagram into fields.
fn parse(mut d: &[u8]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').expect("field line");
        let line = &d[..nl];
        d = &d[nl + 1..];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            m.insert(
                String::from_utf8_lossy(&line[..eq]).into(),
                String::from_utf8_lossy(&line[eq + 1..]).into(),
            );
        } else {
            let len = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
            let value = &d[8..8 + len];
            m.insert(
                String::from_utf8_lossy(line).into(),
                String::from_utf8_lossy(value).into(),
            );
            d = &d[8 + len + 1..];
        }
    }
    m
}

/// Spawns `cmd` with its stderr on a fresh pipe that `$JOURNAL_STREAM`
/// names, as systemd does for a service. Returns the guard that kills it
/// and the pipe's read end.
fn spawn_on_journal_stream(cmd: &mut Command) -> (Killed, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    let st = nix::sys::stat::fstat(&w).unwrap();
    let child = cmd
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .env("CHATD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .spawn()
        .unwrap();
    (Killed(child), std::fs::File::from(r))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn native_journal_fields() {
    if !have_root("native_journal_fields") {
        return; // needs a mount namespace
    }
    let dir = TempDir::new();
    let jdir = dir.0.join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let sock = UnixDatagram::bind(jdir.join("socket")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(jdir.join("socket"), std::fs::Permissions::from_mode(0o666)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let bin = copy_bin(BIN, &dir);
    let cfg = dir.0.join("chatd.toml");
    std::fs::write(&cfg, render(&base_config())).unwrap();
    // Private /run with our socket at the journal's path; chatd runs
    // unprivileged there (the shipped unit's situation: no chroot).
    let script = r#"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal &&
        mount --bind "$1" /run/systemd/journal &&
        exec setpriv --reuid=65534 --regid=65534 --clear-groups "$2" --config "$3""#;
    let (guard, stderr_r) = spawn_on_journal_stream(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&jdir)
            .arg(&bin)
            .arg(&cfg),
    );

    let mut events: Vec<BTreeMap<String, String>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut wait = |events: &mut Vec<BTreeMap<String, String>>, ev: &str| {
        let end = Instant::now() + TIMEOUT;
        loop {
            if let Some(e) = events
                .iter()
                .find(|e| e.get("CHATD_EVENT").map(String::as_str) == Some(ev))
            {
                return e.clone();
            }
            assert!(Instant::now() < end, "no {ev} event; got {events:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                if n > 0 {
                    events.push(parse(&buf[..n]));
                }
            }
        }
    };
    let listen = wait(&mut events, "listen");
    let addr: std::net::SocketAddr = listen["CHATD_ADDRESS"].parse().unwrap();
    let ready = wait(&mut events, "ready");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "chatd");
    assert_eq!(ready["PRIORITY"], "6");
    assert_eq!(ready["MESSAGE"], "chatd ready");

    let mut a = Client::connect(addr);
    a.greeting();
    let mut b = Client::connect(addr);
    let b_nick = b.greeting();
    a.expect(&format!("{b_nick} joined"));
    b.send("/quit see you\n");
    b.expect("Bye");
    let d = wait(&mut events, "disconnect");
    assert_eq!(d["CHATD_NICK"], b_nick);
    assert_eq!(d["CHATD_REASON"], "see you");
    assert!(d["CHATD_PEER"].starts_with("127.0.0.1:"), "{d:?}");
    assert!(
        d.contains_key("CHATD_CLIENT") && d.contains_key("CHATD_PID"),
        "{d:?}"
    );
    assert!(d["MESSAGE"].contains("disconnected"), "{d:?}");
    let c = wait(&mut events, "connect");
    assert_eq!(c["PRIORITY"], "6");
    // Nothing went to the stream: every event was native.
    drop(guard);
    let text = std::io::read_to_string(stderr_r).unwrap();
    assert!(text.trim().is_empty(), "stderr: {text}");
}

#[test]
fn root_start_logs_priority_prefixed_lines_to_the_stream() {
    if !have_root("root_start_logs_priority_prefixed_lines_to_the_stream") {
        return;
    }
    let dir = TempDir::new();
    let cfg = dir.0.join("chatd.toml");
    std::fs::write(&cfg, render(&base_config())).unwrap();
    let (guard, stderr_r) =
        spawn_on_journal_stream(Command::new(BIN).arg("--config").arg(&cfg).args([
            "--user",
            "nobody",
            "--listen",
            "127.0.0.1:0",
            "--max-clients",
            "1",
        ]));
    let mut lines = BufReader::new(stderr_r).lines();
    let mut next = |needle: &str| loop {
        let l = lines.next().expect("a log line").unwrap();
        if l.contains(needle) {
            return l;
        }
    };
    let listen = next("event=\"listen\"");
    assert!(listen.starts_with("<6>"), "{listen}");
    let addr: std::net::SocketAddr = listen
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap()
        .parse()
        .unwrap();
    next("event=\"ready\"");
    let mut a = Client::connect(addr);
    a.greeting();
    let mut b = Client::connect(addr); // over max_clients: refused, a warning
    b.expect("server full");
    let refused = next("event=\"refused\"");
    assert!(refused.starts_with("<4>"), "{refused}");
    drop(guard);
}
