//! A room under steady load across restarts: `n` clients (line and IRC in
//! turn) each send numbered lines at a fixed rate; every client records what
//! it receives and when. [`Chatter::finish`] stops the senders, waits for
//! every line to arrive everywhere, and checks exactly once, in order, the
//! same global order at every client, and the restart notices; it reports
//! the longest gap in deliveries and the lines in flight during it.

use super::*;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

/// What one client received.
#[derive(Default)]
struct Received {
    /// (sender, number, when).
    lines: Vec<(usize, u64, Instant)>,
    notices: usize,
    closed: bool,
    /// The last line that was not a load line.
    last: String,
}

pub struct Chatter {
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<Vec<Instant>>>,
    readers: Vec<JoinHandle<Received>>,
    /// Lines each sender sent, known once the senders stop.
    expected: Arc<Mutex<Option<Vec<u64>>>>,
    pub n: usize,
    started: Instant,
}

/// What [`Chatter::finish`] measured.
#[derive(Debug)]
pub struct Report {
    pub lines: u64,
    pub deliveries: usize,
    /// The longest time any client went without a line, and the lines sent
    /// (by everyone) during that time.
    pub longest_gap: Duration,
    pub in_flight: usize,
    /// When the longest gap began, from the start of the load.
    pub gap_at: Duration,
}

fn nick(i: usize) -> String {
    format!("load{i}")
}

/// (sender, number) from a line of either protocol.
fn parse(line: &str) -> Option<(usize, u64)> {
    let (who, text) = if let Some(rest) = line.strip_prefix("<load") {
        rest.split_once("> ")?
    } else {
        let rest = line.strip_prefix(":load")?;
        let (who, rest) = rest.split_once('!')?;
        (who, rest.split_once(" PRIVMSG #chatd :")?.1)
    };
    Some((who.parse().ok()?, text.trim_end().parse().ok()?))
}

impl Chatter {
    /// Connects `n` clients to `line` and `irc` (even: line, odd: IRC),
    /// waits until all are in the room, and starts `rate` lines/s each.
    pub fn start(line: SocketAddr, irc: SocketAddr, n: usize, rate: u32) -> Chatter {
        let mut streams = Vec::new();
        for i in 0..n {
            let s = if i % 2 == 0 {
                let mut c = Client::connect(line);
                c.greeting();
                c.send(&format!("/nick {}\n", nick(i)));
                c.expect("you are now");
                c.stream
            } else {
                let mut c = Client::connect(irc);
                let nk = nick(i);
                c.send(&format!("NICK {nk}\r\nUSER {nk} 0 * :{nk}\r\n"));
                c.expect(" 366 ");
                c.stream
            };
            streams.push(s);
        }
        // Everyone in the room before the first line.
        let mut first = Client::from_stream(streams[0].try_clone().unwrap());
        wait_for(TIMEOUT, || {
            first.send("/who\n");
            let l = first.expect(" online:");
            l.contains(&format!("{n} online")).then_some(())
        })
        .expect("every load client in the room");
        let stop = Arc::new(AtomicBool::new(false));
        let expected: Arc<Mutex<Option<Vec<u64>>>> = Arc::default();
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for (i, s) in streams.into_iter().enumerate() {
            let mut w = s.try_clone().unwrap();
            let st = stop.clone();
            let irc = i % 2 == 1;
            senders.push(std::thread::spawn(move || {
                let every = Duration::from_secs(1) / rate;
                let t0 = Instant::now();
                let mut sent = Vec::new();
                while !st.load(Ordering::Relaxed) {
                    let k = sent.len() as u64;
                    let l = match irc {
                        true => format!("PRIVMSG #chatd :{k}\r\n"),
                        false => format!("{k}\n"),
                    };
                    if w.write_all(l.as_bytes()).is_err() {
                        break;
                    }
                    sent.push(Instant::now());
                    // Paced against the start, so a stall is caught up.
                    let next = t0 + every * sent.len() as u32;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                sent
            }));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut pong = s;
            let (st, ex) = (stop.clone(), expected.clone());
            readers.push(std::thread::spawn(move || {
                r.get_ref()
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut got = Received::default();
                let mut counts = vec![0u64; n];
                let mut line = String::new();
                let mut deadline: Option<Instant> = None;
                loop {
                    if st.load(Ordering::Relaxed) {
                        let d = *deadline.get_or_insert(Instant::now() + TIMEOUT);
                        let done = ex
                            .lock()
                            .unwrap()
                            .as_ref()
                            .is_some_and(|e| (0..n).all(|j| j == i || counts[j] >= e[j]));
                        if done || Instant::now() > d {
                            return got;
                        }
                    }
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) => {
                            got.closed = true;
                            return got;
                        }
                        Ok(_) => {}
                        Err(_) => continue,
                    }
                    if let Some((j, k)) = parse(&line) {
                        if j < n {
                            counts[j] += 1;
                        }
                        got.lines.push((j, k, Instant::now()));
                    } else if line.contains("The server restarted") {
                        got.notices += 1;
                    } else if let Some(p) = line.strip_prefix("PING ") {
                        let _ = pong.write_all(format!("PONG {p}").as_bytes());
                    } else {
                        got.last = line.trim_end().to_string();
                    }
                }
            }));
        }
        Chatter {
            stop,
            senders,
            readers,
            expected,
            n,
            started: Instant::now(),
        }
    }

    /// For a load that the server ends: waits until every client is
    /// disconnected, and checks that each last heard `last_words` and
    /// received every other client's lines exactly once and in order up
    /// to then.
    pub fn finish_closed(self, last_words: &str) {
        let n = self.n;
        // Readers end at EOF (or TIMEOUT after this, with nothing expected).
        self.stop.store(true, Ordering::Relaxed);
        for h in self.senders {
            h.join().unwrap();
        }
        let got: Vec<Received> = self
            .readers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for (i, g) in got.iter().enumerate() {
            assert!(g.closed, "{} was not disconnected", nick(i));
            assert!(
                g.last.contains(last_words),
                "{} last heard {:?}",
                nick(i),
                g.last
            );
            for j in (0..n).filter(|&j| j != i) {
                let seq: Vec<u64> = g.lines.iter().filter(|l| l.0 == j).map(|l| l.1).collect();
                let in_order = seq.iter().enumerate().all(|(k, &x)| x == k as u64);
                assert!(in_order, "{} from {}: {seq:?}", nick(i), nick(j));
            }
        }
    }

    /// Stops sending, waits for every line, checks them (see the module
    /// docs); `restarts` is the number of restart notices each client must
    /// have had.
    pub fn finish(self, restarts: usize) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let sent: Vec<Vec<Instant>> = self
            .senders
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        *self.expected.lock().unwrap() = Some(sent.iter().map(|s| s.len() as u64).collect());
        let got: Vec<Received> = self
            .readers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let n = self.n;
        let mut longest = (Duration::ZERO, Instant::now(), Instant::now());
        for (i, g) in got.iter().enumerate() {
            assert!(!g.closed, "{} was disconnected", nick(i));
            assert_eq!(
                g.notices,
                restarts,
                "{} restart notices at {}",
                g.notices,
                nick(i)
            );
            for j in (0..n).filter(|&j| j != i) {
                let seq: Vec<u64> = g.lines.iter().filter(|l| l.0 == j).map(|l| l.1).collect();
                let want: Vec<u64> = (0..sent[j].len() as u64).collect();
                if seq != want {
                    let dup = seq.len() as i64 - want.len() as i64;
                    panic!(
                        "{} got {} lines of {} from {} ({dup:+}), not 0..{} in order",
                        nick(i),
                        seq.len(),
                        want.len(),
                        nick(j),
                        want.len()
                    );
                }
            }
            assert!(
                g.lines.iter().all(|l| l.0 != i),
                "{} got its own line",
                nick(i)
            );
            for w in g.lines.windows(2) {
                let gap = w[1].2 - w[0].2;
                if gap > longest.0 {
                    longest = (gap, w[0].2, w[1].2);
                }
            }
        }
        // One global order: any two clients saw the others' lines in the
        // same order.
        let order = |g: &Received, a: usize, b: usize| -> Vec<(usize, u64)> {
            g.lines
                .iter()
                .filter(|l| l.0 != a && l.0 != b)
                .map(|l| (l.0, l.1))
                .collect()
        };
        for a in 0..n {
            let b = (a + 1) % n;
            assert!(
                order(&got[a], a, b) == order(&got[b], a, b),
                "{} and {} disagree on the order",
                nick(a),
                nick(b)
            );
        }
        let in_flight = sent
            .iter()
            .flatten()
            .filter(|&&t| t >= longest.1 && t <= longest.2)
            .count();
        Report {
            lines: sent.iter().map(|s| s.len() as u64).sum(),
            deliveries: got.iter().map(|g| g.lines.len()).sum(),
            longest_gap: longest.0,
            in_flight,
            gap_at: longest.1 - self.started,
        }
    }
}
