//! The servers under test: chatd (started with a benchmark config), the
//! seed (`chat_shm_quiet_2000`, built with `make` in its directory), the
//! floor (`floor.rs`) and Debian's ngircd (an IRC anchor, started in the
//! foreground with its flood limits off), each on a free loopback port, or
//! any server already listening (`--addr`). chatd is benchmarked on its
//! line-protocol port or, for IRC scenarios, on its IRC port.
//! Also what /proc says about a server's process tree: CPU time, PSS and
//! page tables of the master and every child.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Kind {
    Chatd(PathBuf),
    /// Another chatd binary (the previous release), compared side by side.
    Previous(PathBuf),
    Seed(PathBuf),
    Floor,
    Ngircd(PathBuf),
    External(SocketAddr, Option<i32>),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Chatd(_) => "chatd",
            Kind::Previous(_) => "previous",
            Kind::Seed(_) => "seed",
            Kind::Floor => "floor",
            Kind::Ngircd(_) => "ngircd",
            Kind::External(..) => "server",
        }
    }
}

/// A running server; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: Option<i32>,
    /// Whether it forks a process per client (chatd, the seed).
    forks: bool,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this chatd binary has IRC (`--irc-listen`): a binary from before
/// it rejects the `irc_listen` key, and the bench also compares releases.
fn chatd_speaks_irc(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--irc-listen"))
}

/// ngircd's configuration for a benchmark: loopback, no DNS or ident
/// lookups, no per-client penalties (flood limits), long ping timeouts.
fn ngircd_config(port: u16, dir: &Path) -> String {
    format!(
        "[Global]\nName = bench.ngircd\nInfo = chatd-bench anchor\nListen = 127.0.0.1\n\
         Ports = {port}\nPidFile = {}\n\
         [Limits]\nMaxConnections = 0\nMaxConnectionsIP = 0\nMaxJoins = 0\n\
         MaxNickLength = 24\nMaxPenaltyTime = 0\nPingTimeout = 3600\nPongTimeout = 3600\n\
         [Options]\nDNS = no\nIdent = no\nPAM = no\n",
        dir.join("ngircd.pid").display()
    )
}

/// Finds Debian's ngircd.
pub fn find_ngircd() -> Result<PathBuf> {
    for p in ["/usr/sbin/ngircd", "/usr/bin/ngircd"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!(
        "ngircd is not installed (apt-get install ngircd; the bench never uses the system service)"
    )
}

impl Server {
    /// Starts a fresh server of `kind` able to hold `clients` clients, for
    /// the line protocol.
    pub fn start(kind: &Kind, clients: usize) -> Result<Server> {
        Server::start_proto(kind, clients, false)
    }

    /// Starts a fresh server; with `irc`, its address is the IRC port.
    pub fn start_proto(kind: &Kind, clients: usize, irc: bool) -> Result<Server> {
        // The floor relays any line as it is, IRC commands too: a ceiling
        // for IRC-sized lines as well.
        if irc && matches!(kind, Kind::Seed(_)) {
            bail!("{} does not speak IRC", kind.name());
        }
        let tls = crate::tls::enabled();
        if tls
            && !matches!(
                kind,
                Kind::Chatd(_) | Kind::Previous(_) | Kind::External(..)
            )
        {
            bail!("{} is not run with TLS here", kind.name());
        }
        let (mut cmd, dir) = match kind {
            Kind::External(addr, pid) => {
                return Ok(Server {
                    addr: *addr,
                    pid: *pid,
                    forks: true,
                    child: None,
                    dir: None,
                })
            }
            Kind::Chatd(bin) | Kind::Previous(bin) => {
                let dir = std::env::temp_dir().join(format!("chatd-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let (line_port, irc_port) = (free_port()?, free_port()?);
                let config = dir.join("chatd.toml");
                let irc_listen = if irc {
                    format!("irc_listen = [\"127.0.0.1:{irc_port}\"]\n")
                } else if chatd_speaks_irc(bin) {
                    "irc_listen = []\n".to_string()
                } else {
                    String::new()
                };
                // Flood control off, room for everyone, from one address.
                std::fs::write(
                    &config,
                    format!(
                        "listen = [\"127.0.0.1:{line_port}\"]\n{irc_listen}max_clients = {}\n\
                         max_per_ip = {}\nflood_rate = 0\nuser = \"nobody\"\n\
                         empty_dir = \"{}\"\n",
                        clients + 16,
                        clients + 16,
                        dir.join("empty").display()
                    ),
                )?;
                let mut port = if irc { irc_port } else { line_port };
                if tls {
                    // The same scenario over TLS: the TLS port of the
                    // protocol instead of the plain one.
                    let (cert, key) = crate::tls::write_server_files(&dir)?;
                    port = free_port()?;
                    let key_name = if irc { "ircs_listen" } else { "tls_listen" };
                    let mut f = std::fs::OpenOptions::new().append(true).open(&config)?;
                    use std::io::Write as _;
                    writeln!(
                        f,
                        "{key_name} = [\"127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                        cert.display(),
                        key.display()
                    )?;
                }
                let mut c = Command::new(bin);
                c.arg("--config").arg(&config);
                (c, Some((dir, port)))
            }
            Kind::Seed(bin) => {
                let _ = std::fs::remove_file("/dev/shm/my_shm");
                let port = free_port()?;
                let mut c = Command::new(bin);
                c.args(["127.0.0.1", &port.to_string()]);
                (c, Some((std::env::temp_dir(), port)))
            }
            Kind::Ngircd(bin) => {
                let dir =
                    std::env::temp_dir().join(format!("chatd-bench-ngircd-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let port = free_port()?;
                let config = dir.join("ngircd.conf");
                std::fs::write(&config, ngircd_config(port, &dir))?;
                let mut c = Command::new(bin);
                c.arg("--nodaemon").arg("--config").arg(&config);
                (c, Some((dir, port)))
            }
            Kind::Floor => {
                let port = free_port()?;
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["floor", "--port", &port.to_string()]);
                (c, Some((std::env::temp_dir(), port)))
            }
        };
        let (dir, port) = dir.unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id() as i32;
        let own_dir =
            matches!(kind, Kind::Chatd(_) | Kind::Previous(_) | Kind::Ngircd(_)).then_some(dir);
        let mut server = Server {
            addr,
            pid: Some(pid),
            forks: !matches!(kind, Kind::Floor | Kind::Ngircd(_)),
            child: Some(child),
            dir: own_dir,
        };
        // Ready when it listens; a probe connection is accepted and closed.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            if let Some(st) = server.child.as_mut().unwrap().try_wait()? {
                bail!("{} exited at start: {st}", kind.name());
            }
            if Instant::now() > end {
                bail!("{} does not listen on {addr}", kind.name());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Wait for the probe's child to go, so that counts start at zero.
        wait_until(Duration::from_secs(5), || server.children().is_empty());
        Ok(server)
    }

    /// After connecting client number `i` (from 0): waits until the server
    /// has forked a child for it. A server that accepts one connection per
    /// event (the seed) may stay `lag` behind; a wait that times out adds
    /// one to the lag instead of waiting again for the same client.
    pub fn pace(&self, i: usize, lag: &mut usize) {
        if self.pid.is_none() || !self.forks {
            return;
        }
        let want = (i + 1).saturating_sub(*lag);
        if !wait_until(Duration::from_millis(200), || self.children().len() >= want) {
            *lag += 1;
        }
    }

    /// Live child pids of the master.
    pub fn children(&self) -> Vec<i32> {
        self.pid.map(children_of).unwrap_or_default()
    }

    /// CPU seconds used so far by the whole tree: the master's and live
    /// children's run time from the scheduler (`/proc/PID/task/*/schedstat`,
    /// nanoseconds), plus reaped children (the master's cutime + cstime).
    ///
    /// Not utime + stime of the live processes: on the 6.18 kernel of the
    /// CI machines those lagged far behind for children that run in short
    /// bursts (500 children: 1.4 s by /proc/PID/stat where schedstat said
    /// 4.9 s), which made N=500's per-CPU figure swing 3x between runs.
    pub fn cpu_seconds(&self) -> f64 {
        self.pid.map_or(0.0, tree_cpu_seconds)
    }

    /// (PSS bytes, page-table bytes, processes) of the tree.
    pub fn memory(&self) -> (u64, u64, usize) {
        let Some(pid) = self.pid else {
            return (0, 0, 0);
        };
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        let (mut pss, mut pte) = (0, 0);
        for p in &pids {
            pss += kib_field(&format!("/proc/{p}/smaps_rollup"), "Pss:") * 1024;
            pte += kib_field(&format!("/proc/{p}/status"), "VmPTE:") * 1024;
        }
        (pss, pte, pids.len())
    }
}

impl Server {
    /// Of the master alone, the memory it holds itself: PSS less the
    /// program's mapped files (code and libraries, shared page cache that a
    /// code path run once keeps mapped) plus its page tables, in bytes.
    pub fn master_own_memory(&self) -> u64 {
        let Some(pid) = self.pid else {
            return 0;
        };
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let pss = kib_field(&rollup, "Pss:");
        let file = kib_field(&rollup, "Pss_File:");
        let pte = kib_field(&format!("/proc/{pid}/status"), "VmPTE:");
        (pss.saturating_sub(file) + pte) * 1024
    }

    /// Of the master alone: PSS bytes, anonymous bytes (its heap and
    /// stacks: PSS less the shared region and the mapped binary), open fds.
    pub fn master_footprint(&self) -> (u64, u64, usize) {
        let Some(pid) = self.pid else {
            return (0, 0, 0);
        };
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let pss = kib_field(&rollup, "Pss:") * 1024;
        let anon = kib_field(&rollup, "Anonymous:") * 1024;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        (pss, anon, fds)
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let kids = children_of(pid);
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
            for k in kids {
                // The seed's children may outlive their master.
                let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
            }
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !f() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    v
}

/// CPU seconds of `pid`, its live children and its reaped children.
fn tree_cpu_seconds(pid: i32) -> f64 {
    let mut secs = stat_ticks(pid).1 as f64 / clock_ticks();
    for p in std::iter::once(pid).chain(children_of(pid)) {
        secs += run_seconds(p).unwrap_or_else(|| stat_ticks(p).0 as f64 / clock_ticks());
    }
    secs
}

/// Time on CPU of all threads of `pid` in seconds, from their schedstat
/// (first field: nanoseconds run); None where the kernel has no schedstat.
fn run_seconds(pid: i32) -> Option<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// (utime + stime, cutime + cstime) in clock ticks, from one read of
/// /proc/PID/stat: the process's own time and its reaped children's.
fn stat_ticks(pid: i32) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return (0, 0);
    };
    // Fields after the command: state is field 3, utime 14 ... cstime 17.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    match f[..] {
        [u, s, cu, cs] => (u + s, cu + cs),
        _ => (0, 0),
    }
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Builds the seed with make in `dir` and returns its quiet 2000-client binary.
pub fn build_seed(dir: &Path) -> Result<PathBuf> {
    let st = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(dir)
        .arg("chat_shm_quiet_2000")
        .stdout(Stdio::null())
        .status()
        .context("running make for the seed")?;
    if !st.success() {
        bail!("make in {} failed", dir.display());
    }
    Ok(dir.join("chat_shm_quiet_2000").canonicalize()?)
}

/// Raises this process's open-file limit to its hard limit (servers we
/// start inherit it).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(_) => getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two children of a shell spin for a second: the tree's CPU time
    /// counts them (live, through the parent's children list), and not
    /// more than the wall time allows.
    #[test]
    fn tree_cpu_counts_live_children() {
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg("(while :; do :; done) & (while :; do :; done) & wait")
            .spawn()
            .unwrap();
        let pid = sh.id() as i32;
        assert!(wait_until(Duration::from_secs(5), || children_of(pid)
            .len()
            == 2));
        let t0 = Instant::now();
        let c0 = tree_cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs(1));
        let used = tree_cpu_seconds(pid) - c0;
        let wall = t0.elapsed().as_secs_f64();
        for k in children_of(pid) {
            let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
        }
        let _ = sh.kill();
        let _ = sh.wait();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            used > 0.2,
            "two spinning children used {used:.3} s in {wall:.3} s"
        );
        assert!(
            used <= wall * cpus.min(2.0) + 0.05,
            "{used:.3} s in {wall:.3} s"
        );
    }
}
