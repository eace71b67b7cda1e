//! Fan-out and churn: N clients, K of them sending M messages of S bytes,
//! closed loop (at most W messages per sender not yet received by everyone)
//! or open loop (R messages/s per sender); optionally C churners that leave
//! and rejoin all along and send one message per visit.
//!
//! One thread, one epoll set over every client. Each reception is checked
//! against a bitset per (receiver, sender), so loss, duplicates, corruption
//! and self-echo are exact. Loss counts only at the clients present for the
//! whole run (churners cannot be expected to see what was said while they
//! were away); self-echo and corruption are checked at every client.
//!
//! Latency runs from the sender's `write` to the line's arrival in the
//! receiver's socket, the kernel's receive timestamp (`SO_TIMESTAMPNS`),
//! not to the moment this thread gets round to reading it: it shares the
//! CPUs with the server. The read time is reported too.

use crate::marker::{self, Found};
use crate::server::Server;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, IoSliceMut, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed { window: u32 },
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub clients: usize,
    pub senders: usize,
    pub messages: u32,
    pub size: usize,
    pub mode: Mode,
    pub churners: usize,
    /// Senders stop after this long (the seed is slow).
    pub max_secs: f64,
    /// Speak IRC: register, join `#chatd`, send PRIVMSGs, answer PINGs.
    pub irc: bool,
}

/// The channel IRC scenarios use (chatd's default `irc_channel`).
const CHANNEL: &str = "#chatd";

/// After the senders stop, a run ends when everything has arrived, or
/// when nothing has arrived for this long (a lossy server), or after 10 s.
/// What has not arrived by then counts as lost. With 1 s, a soak round
/// run while the same 2 CPUs also built chatd and held 1000 clients ended
/// early with 2052 lines counted lost (and no loss in any other round or
/// run).
const DRAIN_QUIET: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub self_echo: u64,
    pub secs: f64,
    pub server_cpu: f64,
    pub bench_cpu: f64,
    /// p50, p90, p99 and max of send to arrival at the receiving socket.
    pub lat_us: [f64; 4],
    /// The same, up to the moment the bench read it (adds the bench's own
    /// scheduling: it shares the CPUs with the server).
    pub read_lat_us: [f64; 4],
    /// Receptions the kernel gave no timestamp: their read time counts.
    pub unstamped: u64,
    pub rejoins: u64,
    /// Churner visits whose connect timed out.
    pub failed_rejoins: u64,
    /// Connections the server closed during the run.
    pub closed: u64,
    pub window_timeouts: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }
    pub fn per_cpu(&self) -> f64 {
        self.delivered as f64 / self.server_cpu.max(1e-9)
    }
    pub fn loss_pct(&self) -> f64 {
        100.0 * self.lost as f64 / (self.expected.max(1)) as f64
    }
}

const PROBE: u32 = u32::MAX - 1;
const CHURN_BASE: u32 = 1 << 30;
/// A message not received by everyone after this long leaves the window
/// (it is lost, or late); keeps a closed loop going against a lossy server.
const RETIRE: Duration = Duration::from_millis(200);

struct Conn {
    stream: TcpStream,
    id: u32,
    /// Index among the clients present all along, if one of them.
    stable: Option<usize>,
    partial: Vec<u8>,
    out: Vec<u8>,
    /// With `--tls`: the connection's TLS state, and its plaintext.
    tls: Option<Box<crate::tls::Tls>>,
    plain: Vec<u8>,
}

struct Sender {
    conn: usize,
    next: u32,
    sent_at: Vec<u32>,
    count: Vec<u32>,
    pending: VecDeque<u32>,
    retired: Vec<bool>,
    inflight: u32,
    offset_us: u64,
}

struct Churner {
    conn: Option<usize>,
    next_change: Instant,
}

struct Run<'a> {
    spec: &'a Spec,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    senders: Vec<Sender>,
    stable: usize,
    words: usize,
    seen: Vec<u64>,
    churn_seen: HashSet<(u32, u32)>,
    churn_sent: u64,
    /// Messages of the steady senders that every steady client has.
    complete: u64,
    start: Instant,
    /// Send to arrival in the receiver's socket (the kernel's receive
    /// timestamp, `SO_TIMESTAMPNS`), in µs.
    lat: Vec<u32>,
    /// Send to the moment this thread read it, in µs.
    read_lat: Vec<u32>,
    out: Outcome,
    last_rx: Instant,
    probe_seen: Vec<bool>,
    /// PINGs to answer: (client id, token).
    pongs: Vec<(u32, Vec<u8>)>,
}

fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

impl<'a> Run<'a> {
    fn add(&mut self, stream: TcpStream, id: u32, stable: Option<usize>) -> Result<usize> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        socket::setsockopt(&stream, sockopt::ReceiveTimestampns, &true)?;
        // Indices are never reused: a churner's index stays its own.
        let idx = self.conns.len();
        self.conns.push(None);
        self.epoll
            .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, idx as u64))?;
        self.conns[idx] = Some(Conn {
            stream,
            id,
            stable,
            partial: Vec::new(),
            out: Vec::new(),
            tls: crate::tls::enabled().then(|| Box::new(crate::tls::Tls::new())),
            plain: Vec::new(),
        });
        // TLS: the ClientHello goes out now.
        self.flush(idx);
        Ok(idx)
    }

    fn remove(&mut self, idx: usize) {
        if let Some(c) = self.conns[idx].take() {
            let _ = self.epoll.delete(&c.stream);
        }
    }

    fn queue(&mut self, idx: usize, sender: u32, seq: u32, t: u64) {
        let size = self.spec.size;
        let c = self.conns[idx].as_mut().unwrap();
        let had = !c.out.is_empty();
        if self.spec.irc {
            c.out
                .extend_from_slice(format!("PRIVMSG {CHANNEL} :").as_bytes());
        }
        marker::encode(&mut c.out, sender, seq, t, size);
        if !had {
            self.flush(idx);
        }
    }

    /// Queues raw bytes (IRC registration, PONG).
    fn queue_raw(&mut self, idx: usize, bytes: &[u8]) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let had = !c.out.is_empty();
        c.out.extend_from_slice(bytes);
        if !had {
            self.flush(idx);
        }
    }

    fn flush(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let waiting = match &mut c.tls {
            None => {
                write_queued(&mut c.stream, &mut c.out);
                !c.out.is_empty()
            }
            Some(t) => {
                t.send(&c.out);
                c.out.clear();
                t.flush(&mut c.stream).unwrap_or(false)
            }
        };
        let flags = if !waiting {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        };
        let _ = self
            .epoll
            .modify(&c.stream, &mut EpollEvent::new(flags, idx as u64));
    }

    fn read(&mut self, idx: usize, buf: &mut [u8]) {
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        for _ in 0..4 {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            let got = recv_stamped(c.stream.as_raw_fd(), buf, &mut cmsg);
            let (n, arrival) = match got {
                Ok((0, _)) => {
                    self.out.closed += 1;
                    self.remove(idx);
                    return;
                }
                Ok(got) => got,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.out.closed += 1;
                    self.remove(idx);
                    return;
                }
            };
            // The stamp is wall-clock time; place it on this run's monotonic
            // clock by the two clocks' offset now, so that no slewing or
            // step of the wall clock since the start counts.
            let arrival_us = arrival.map(|ns| {
                let now_mono = self.start.elapsed().as_nanos() as i128;
                ((now_mono - (wall_ns() - ns)).max(0) / 1000) as u64
            });
            if let Some(t) = c.tls.as_mut() {
                // Over TLS the kernel's stamp is the ciphertext's arrival.
                let mut plain = std::mem::take(&mut c.plain);
                plain.clear();
                if t.feed(&buf[..n], &mut plain).is_err() {
                    self.out.closed += 1;
                    self.remove(idx);
                    return;
                }
                self.consume(idx, &plain, arrival_us);
                self.flush(idx);
                if let Some(c) = self.conns[idx].as_mut() {
                    c.plain = plain;
                }
                if n < buf.len() {
                    return;
                }
                continue;
            }
            self.consume(idx, &buf[..n], arrival_us);
            if n < buf.len() {
                return;
            }
        }
    }

    fn consume(&mut self, idx: usize, data: &[u8], arrival_us: Option<u64>) {
        let mut c = self.conns[idx].take().unwrap();
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            if c.partial.is_empty() {
                self.line(&c, line, arrival_us);
            } else {
                let mut whole = std::mem::take(&mut c.partial);
                whole.extend_from_slice(line);
                self.line(&c, &whole, arrival_us);
            }
        }
        c.partial.extend_from_slice(rest);
        self.conns[idx] = Some(c);
    }

    fn line(&mut self, c: &Conn, raw: &[u8], arrival_us: Option<u64>) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.spec.irc {
            if let Some(token) = raw.strip_prefix(b"PING ") {
                self.pongs.push((c.id, token.to_vec()));
                return;
            }
        }
        // chatd's history of the room for a newcomer (earlier rounds'
        // lines, marked with their time): `[12:01] <c3> ...`, or in IRC
        // `:c3!... PRIVMSG #chatd :[12:01] ...`; not this run's deliveries.
        if raw.starts_with(b"[") || raw.starts_with(b"@time=") || contains(raw, b" :[") {
            return;
        }
        // The seed pads every message with NULs to 1024 bytes; drop them.
        let cleaned;
        let line = if raw.contains(&0) {
            cleaned = raw.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>();
            &cleaned[..]
        } else {
            raw
        };
        let (sender, seq, t) = match marker::decode(line, self.spec.size) {
            Found::None => return,
            Found::Corrupt => {
                self.out.corrupt += 1;
                return;
            }
            Found::Marker {
                sender,
                seq,
                time_us,
            } => (sender, seq, time_us),
        };
        if sender == PROBE {
            if let Some(s) = c.stable {
                self.probe_seen[s] = true;
            }
            return;
        }
        if sender == c.id {
            self.out.self_echo += 1;
            return;
        }
        self.last_rx = Instant::now();
        let Some(r) = c.stable else {
            self.out.delivered += 1;
            return;
        };
        if sender >= CHURN_BASE {
            if self.churn_seen.insert((r as u32, sender)) {
                self.out.delivered += 1;
            } else {
                self.out.duplicates += 1;
            }
            return;
        }
        let s = sender as usize;
        if s >= self.senders.len() || seq >= self.spec.messages {
            self.out.corrupt += 1;
            return;
        }
        let bit = ((r * self.senders.len() + s) * self.words) * 64 + seq as usize;
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        if self.seen[w] & m != 0 {
            self.out.duplicates += 1;
            return;
        }
        self.seen[w] |= m;
        self.out.delivered += 1;
        let now = now_us(self.start);
        let us = |at: u64| at.saturating_sub(t).min(u32::MAX as u64) as u32;
        self.read_lat.push(us(now));
        if arrival_us.is_none() {
            self.out.unstamped += 1;
        }
        self.lat.push(us(arrival_us.unwrap_or(now).min(now)));
        let need = self.stable as u32 - 1;
        let snd = &mut self.senders[s];
        snd.count[seq as usize] += 1;
        if snd.count[seq as usize] == need {
            self.complete += 1;
            if !snd.retired[seq as usize] {
                snd.retired[seq as usize] = true;
                snd.inflight -= 1;
            }
        }
    }

    fn pump_senders(&mut self, sending: bool) {
        if !sending {
            return;
        }
        let now = now_us(self.start);
        for s in 0..self.senders.len() {
            loop {
                let snd = &mut self.senders[s];
                // Retire the oldest messages that everyone has, or that are too old.
                while let Some(&q) = snd.pending.front() {
                    if snd.retired[q as usize] {
                        snd.pending.pop_front();
                    } else if now.saturating_sub(snd.sent_at[q as usize] as u64)
                        > RETIRE.as_micros() as u64
                    {
                        snd.retired[q as usize] = true;
                        snd.inflight -= 1;
                        snd.pending.pop_front();
                        self.out.window_timeouts += 1;
                    } else {
                        break;
                    }
                }
                if snd.next >= self.spec.messages {
                    break;
                }
                let go = match self.spec.mode {
                    Mode::Closed { window } => snd.inflight < window,
                    Mode::Open { rate } => {
                        now >= snd.offset_us + (snd.next as f64 * 1e6 / rate) as u64
                    }
                };
                if !go {
                    break;
                }
                let q = snd.next;
                snd.next += 1;
                snd.sent_at[q as usize] = now as u32;
                snd.pending.push_back(q);
                snd.inflight += 1;
                let conn = snd.conn;
                self.out.sent += 1;
                self.queue(conn, s as u32, q, now);
            }
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub fn run(server: &Server, spec: &Spec) -> Result<Outcome> {
    let stable = spec.clients - spec.churners;
    let words = (spec.messages as usize).div_ceil(64);
    let mut run = Run {
        spec,
        epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        conns: Vec::new(),
        senders: Vec::new(),
        stable,
        words,
        seen: vec![0; stable * spec.senders * words],
        churn_seen: HashSet::new(),
        churn_sent: 0,
        complete: 0,
        start: Instant::now(),
        lat: Vec::new(),
        read_lat: Vec::new(),
        out: Outcome::default(),
        last_rx: Instant::now(),
        probe_seen: vec![false; stable],
        pongs: Vec::new(),
    };
    let mut lag = 0;
    for i in 0..stable {
        let s = TcpStream::connect(server.addr).context("connect")?;
        server.pace(i, &mut lag);
        let idx = run.add(s, i as u32, Some(i))?;
        if spec.irc {
            // chatd joins a registered client itself (and answers this
            // early JOIN with 451); ngircd needs the JOIN.
            let hello = format!("NICK b{i}\r\nUSER b{i} 0 * :bench\r\nJOIN {CHANNEL}\r\n");
            run.queue_raw(idx, hello.as_bytes());
        }
        if i < spec.senders {
            run.senders.push(Sender {
                conn: idx,
                next: 0,
                sent_at: vec![0; spec.messages as usize],
                count: vec![0; spec.messages as usize],
                pending: VecDeque::new(),
                retired: vec![false; spec.messages as usize],
                inflight: 0,
                offset_us: 0,
            });
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![EpollEvent::empty(); 1024];
    // Everyone present hears a probe before the clock starts.
    let probe_end = Instant::now() + Duration::from_secs(10);
    let mut probe_at = Instant::now() - Duration::from_secs(1);
    let mut probe_seq = 0;
    while Instant::now() < probe_end && run.probe_seen.iter().skip(1).any(|s| !s) {
        if probe_at.elapsed() > Duration::from_millis(200) {
            run.queue(0, PROBE, probe_seq, 0);
            probe_seq += 1;
            probe_at = Instant::now();
        }
        poll_once(&mut run, &mut events, &mut buf, 10)?;
    }
    let unsynced = run.probe_seen.iter().skip(1).filter(|s| !**s).count();
    if unsynced > 0 {
        eprintln!("  note: {unsynced} clients never heard the start probe");
    }

    let mut rng = Rng(0x2545F4914F6CDD1D);
    let mut churners: Vec<Churner> = (0..spec.churners)
        .map(|i| Churner {
            conn: None,
            next_change: Instant::now() + Duration::from_millis(i as u64 * 3),
        })
        .collect();
    let mut next_churn_id = CHURN_BASE;
    if let Mode::Open { rate } = spec.mode {
        let period = 1e6 / rate;
        for (i, s) in run.senders.iter_mut().enumerate() {
            s.offset_us = (period * i as f64 / spec.senders as f64) as u64;
        }
    }
    let cpu0 = server.cpu_seconds();
    let bench0 = rusage_cpu(UsageWho::RUSAGE_SELF);
    run.start = Instant::now();
    run.last_rx = run.start;
    let max = Duration::from_secs_f64(spec.max_secs);
    let mut sending = true;
    let mut drain_since: Option<Instant> = None;
    loop {
        let elapsed = run.start.elapsed();
        if sending && (elapsed > max || run.senders.iter().all(|s| s.next >= spec.messages)) {
            sending = false;
            drain_since = Some(Instant::now());
        }
        run.pump_senders(sending);
        // Churners: leave and come back; each visit says one line.
        if sending {
            for ch in churners.iter_mut() {
                if Instant::now() < ch.next_change {
                    continue;
                }
                match ch.conn.take() {
                    Some(idx) => {
                        run.remove(idx);
                        ch.next_change = Instant::now() + Duration::from_millis(5 + rng.next(15));
                    }
                    None => {
                        // A server that drops SYNs (the seed's backlog of 5)
                        // must not stall the whole run: such a visit is skipped.
                        let Ok(s) =
                            TcpStream::connect_timeout(&server.addr, Duration::from_millis(50))
                        else {
                            ch.next_change = Instant::now() + Duration::from_millis(20);
                            run.out.failed_rejoins += 1;
                            continue;
                        };
                        let id = next_churn_id;
                        next_churn_id += 1;
                        let idx = run.add(s, id, None)?;
                        let t = now_us(run.start);
                        run.queue(idx, id, 0, t);
                        run.churn_sent += 1;
                        run.out.rejoins += 1;
                        ch.conn = Some(idx);
                        ch.next_change = Instant::now() + Duration::from_millis(20 + rng.next(60));
                    }
                }
            }
        }
        if let Some(d) = drain_since {
            let sent: u64 = run.senders.iter().map(|s| s.next as u64).sum();
            if (run.complete == sent
                && run.churn_seen.len() as u64 >= run.churn_sent * stable as u64)
                || run.last_rx.elapsed() > DRAIN_QUIET
                || d.elapsed() > Duration::from_secs(10)
            {
                break;
            }
        }
        let timeout = if matches!(spec.mode, Mode::Open { .. }) {
            1
        } else {
            5
        };
        poll_once(&mut run, &mut events, &mut buf, timeout)?;
    }
    let end = run.last_rx.max(run.start + Duration::from_millis(1));
    run.out.secs = (end - run.start).as_secs_f64();
    run.out.server_cpu = server.cpu_seconds() - cpu0;
    run.out.bench_cpu = rusage_cpu(UsageWho::RUSAGE_SELF) - bench0;
    let stable_msgs: u64 = run.senders.iter().map(|s| s.next as u64).sum();
    run.out.expected = stable_msgs * (stable as u64 - 1) + run.churn_sent * stable as u64;
    let stable_got: u64 = run
        .senders
        .iter()
        .map(|s| {
            s.count[..s.next as usize]
                .iter()
                .map(|&c| c as u64)
                .sum::<u64>()
        })
        .sum::<u64>()
        + run.churn_seen.len() as u64;
    run.out.lost = run.out.expected.saturating_sub(stable_got);
    run.out.lat_us = percentiles(&mut run.lat);
    run.out.read_lat_us = percentiles(&mut run.read_lat);
    if run.out.unstamped > 0 {
        eprintln!(
            "  note: {} receptions had no kernel timestamp; their read time counts",
            run.out.unstamped
        );
    }
    Ok(run.out)
}

/// Writes what `stream` takes of `out` now; on an error drops it all (the
/// connection is gone).
pub fn write_queued(stream: &mut TcpStream, out: &mut Vec<u8>) {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                out.clear();
                break;
            }
        }
    }
}

/// p50, p90, p99 and max.
pub(crate) fn percentiles(v: &mut [u32]) -> [f64; 4] {
    v.sort_unstable();
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize] as f64
    };
    [pct(0.5), pct(0.9), pct(0.99), pct(1.0)]
}

/// Reads what `fd` holds into `buf`, with the kernel's receive timestamp
/// (wall clock, ns; `SO_TIMESTAMPNS` must be on) of the last segment the
/// read took: an upper bound on the arrival of every byte read.
fn recv_stamped(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> nix::Result<(usize, Option<i128>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let m = socket::recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::empty())?;
    let arrival = m.cmsgs()?.find_map(|cm| match cm {
        ControlMessageOwned::ScmTimestampns(ts) => {
            Some(ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128)
        }
        _ => None,
    });
    Ok((m.bytes, arrival))
}

/// The wall clock in ns, the clock of `SO_TIMESTAMPNS`.
fn wall_ns() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos() as i128
}

fn poll_once(run: &mut Run, events: &mut [EpollEvent], buf: &mut [u8], ms: u16) -> Result<()> {
    let n = match run.epoll.wait(events, EpollTimeout::from(ms)) {
        Ok(n) => n,
        Err(nix::errno::Errno::EINTR) => 0,
        Err(e) => return Err(e.into()),
    };
    for ev in &events[..n] {
        let idx = ev.data() as usize;
        if ev.events().contains(EpollFlags::EPOLLOUT) {
            run.flush(idx);
        }
        if ev
            .events()
            .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
        {
            run.read(idx, buf);
        }
    }
    // Servers ping idle IRC clients; a run outlasting the ping timeout
    // must answer (rare: one scan of the connections per PING).
    for (id, token) in std::mem::take(&mut run.pongs) {
        let idx = run
            .conns
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id == id));
        if let Some(idx) = idx {
            let mut pong = b"PONG ".to_vec();
            pong.extend_from_slice(&token);
            pong.extend_from_slice(b"\r\n");
            run.queue_raw(idx, &pong);
        }
    }
    Ok(())
}

/// CPU seconds (user + system) used by this process (`RUSAGE_SELF`) or by
/// its reaped children (`RUSAGE_CHILDREN`).
pub fn rusage_cpu(who: UsageWho) -> f64 {
    let r = getrusage(who);
    r.map(|r| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(r.user_time()) + t(r.system_time())
    })
    .unwrap_or(0.0)
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn arrival_is_stamped_between_send_and_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        socket::setsockopt(&rx, sockopt::ReceiveTimestampns, &true).unwrap();
        // The kernel turns receive timestamps on in a work item, so the
        // first segments after the first SO_TIMESTAMPNS may come unstamped.
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        for _ in 0..10_000 {
            let sent = wall_ns();
            tx.write_all(b"hello\n").unwrap();
            let (n, arrival) = recv_stamped(rx.as_raw_fd(), &mut buf, &mut cmsg).unwrap();
            let read = wall_ns();
            assert_eq!(&buf[..n], b"hello\n");
            if let Some(arrival) = arrival {
                assert!(
                    sent <= arrival && arrival <= read,
                    "{sent} {arrival} {read}"
                );
                return;
            }
            std::thread::yield_now();
        }
        panic!("no receive timestamp in 10000 tries");
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut v), [51.0, 90.0, 99.0, 100.0]);
        assert_eq!(percentiles(&mut []), [0.0; 4]);
    }
}
