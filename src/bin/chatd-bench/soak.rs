//! Soak: a long, bounded run of mixed load with churn against one chatd.
//!
//! Rounds of fan-out follow one another until the time is up, rotating
//! through three shapes (closed loop with churners, open loop with
//! churners, larger lines from more clients). Each round connects its own
//! clients and ends when they have all left, so between rounds the server
//! is idle: that is where the master's PSS and fd count are sampled and
//! where no child may be left. The verdict: no loss, duplicate,
//! corruption or self-echo in any round; no child left after a round; the
//! same fd count at every idle point; the master's own memory flat (its
//! anonymous pages in the last quarter of the samples no more than
//! max(256 KiB, 5%) above the first quarter; its PSS also counts the
//! shared region's pages it has touched, bounded by the region's size).
//! The curve is printed as a table, then one JSON line.

use crate::fanout::{self, Mode, Outcome, Spec};
use crate::server::{wait_until, Server};
use anyhow::Result;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One idle point.
pub struct Sample {
    pub secs: f64,
    pub rounds: u64,
    pub deliveries: u64,
    pub pss: u64,
    pub anon: u64,
    pub fds: usize,
    pub children_left: usize,
}

pub struct Report {
    pub samples: Vec<Sample>,
    pub total: Outcome,
    pub failures: Vec<String>,
}

/// The round shapes, in turn.
fn shapes(max_secs: f64) -> [Spec; 3] {
    [
        Spec {
            clients: 60,
            senders: 6,
            messages: 1500,
            size: 64,
            mode: Mode::Closed { window: 8 },
            churners: 6,
            max_secs,
            irc: false,
        },
        Spec {
            clients: 60,
            senders: 6,
            messages: 300,
            size: 64,
            mode: Mode::Open { rate: 100.0 },
            churners: 6,
            max_secs,
            irc: false,
        },
        Spec {
            clients: 100,
            senders: 10,
            messages: 300,
            size: 400,
            mode: Mode::Closed { window: 4 },
            churners: 0,
            max_secs,
            irc: false,
        },
    ]
}

fn add(total: &mut Outcome, o: &Outcome) {
    total.sent += o.sent;
    total.expected += o.expected;
    total.delivered += o.delivered;
    total.lost += o.lost;
    total.duplicates += o.duplicates;
    total.corrupt += o.corrupt;
    total.self_echo += o.self_echo;
    total.rejoins += o.rejoins;
    total.secs += o.secs;
    total.server_cpu += o.server_cpu;
}

/// The idle master's fd count once it has settled. The listener answers
/// the start-up probe while the master may still be setting up, and the
/// probe's own child comes and goes: a baseline read at once was once
/// below the settled count, and every idle point then waited out its 10 s
/// limit (a tenth of the rounds). Waits until there is no child and the
/// count has held for 200 ms.
fn settled_fds(server: &Server) -> usize {
    let mut last = server.master_footprint().2;
    let mut since = Instant::now();
    wait_until(Duration::from_secs(10), || {
        let now = server.master_footprint().2;
        if now != last || !server.children().is_empty() {
            last = now;
            since = Instant::now();
        }
        since.elapsed() >= Duration::from_millis(200)
    });
    last
}

/// Runs rounds for `secs` seconds, sampling at most every `every` seconds.
pub fn run(server: &mut Server, secs: f64, every: f64) -> Result<Report> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let shapes = shapes(20.0);
    let mut total = Outcome::default();
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures = Vec::new();
    let mut rounds = 0u64;
    let mut last_sample: Option<Instant> = None;
    // The idle master's fds (listeners, epoll, signalfd, timer, ...).
    let fds_idle = settled_fds(server);
    eprint!("soak: {HEADER}");
    while Instant::now() < deadline {
        let spec = &shapes[rounds as usize % shapes.len()];
        let o = fanout::run(server, spec)?;
        rounds += 1;
        if o.lost + o.duplicates + o.corrupt + o.self_echo > 0 {
            failures.push(format!(
                "round {rounds}: lost {} duplicates {} corrupt {} self-echo {}",
                o.lost, o.duplicates, o.corrupt, o.self_echo
            ));
        }
        add(&mut total, &o);
        if !server.alive() {
            failures.push(format!("round {rounds}: the server exited"));
            break;
        }
        // Idle point: every client of the round has left, and the master
        // has closed their control sockets (it does once it has reaped the
        // child and relayed what it left; a leaked fd never goes).
        let idle = wait_until(Duration::from_secs(10), || server.children().is_empty());
        wait_until(Duration::from_secs(10), || {
            server.master_footprint().2 <= fds_idle
        });
        let now = Instant::now();
        let due = last_sample.is_none_or(|t| now - t >= Duration::from_secs_f64(every));
        if due || !idle || now >= deadline {
            last_sample = Some(now);
            let (pss, anon, fds) = server.master_footprint();
            let s = Sample {
                secs: (now - start).as_secs_f64(),
                rounds,
                deliveries: total.delivered,
                pss,
                anon,
                fds,
                children_left: server.children().len(),
            };
            eprint!("soak: {}", row(&s));
            samples.push(s);
        }
        if !idle {
            failures.push(format!("round {rounds}: children left after the round"));
        }
    }
    failures.extend(verdict(&samples));
    Ok(Report {
        samples,
        total,
        failures,
    })
}

/// Flatness of the idle samples.
fn verdict(samples: &[Sample]) -> Vec<String> {
    let mut f = Vec::new();
    if samples.len() < 2 {
        f.push(format!("only {} samples; run longer", samples.len()));
        return f;
    }
    let fds: Vec<usize> = samples.iter().map(|s| s.fds).collect();
    if fds.iter().any(|&n| n != fds[0]) {
        f.push(format!("master fd count not flat: {fds:?}"));
    }
    // The master's own memory is its anonymous pages (heap, stacks); its
    // PSS also counts the pages of the shared region it has touched, which
    // grows towards the region's size as more slots are used, and is
    // bounded by it.
    let q = samples.len().div_ceil(4);
    let first = samples[..q].iter().map(|s| s.anon).max().unwrap();
    let last = samples[samples.len() - q..]
        .iter()
        .map(|s| s.anon)
        .max()
        .unwrap();
    let allowed = first + (first / 20).max(256 * 1024);
    if last > allowed {
        f.push(format!(
            "master heap grew: {} KiB in the first quarter, {} KiB in the last",
            first / 1024,
            last / 1024
        ));
    }
    f
}

const HEADER: &str =
    "  t (s)  rounds   deliveries  master PSS KiB  master heap KiB  master fds  children left\n";

/// One line of the curve.
fn row(s: &Sample) -> String {
    format!(
        "{:7.0} {:7} {:12} {:15} {:16} {:11} {:14}\n",
        s.secs,
        s.rounds,
        s.deliveries,
        s.pss / 1024,
        s.anon / 1024,
        s.fds,
        s.children_left
    )
}

/// The curve as a table.
pub fn table(r: &Report) -> String {
    let mut t = String::from(HEADER);
    for s in &r.samples {
        t += &row(s);
    }
    t += &format!(
        "total: {} deliveries, lost {}, duplicates {}, corrupt {}, self-echo {}, {} rejoins\n",
        r.total.delivered,
        r.total.lost,
        r.total.duplicates,
        r.total.corrupt,
        r.total.self_echo,
        r.total.rejoins
    );
    t
}

pub fn json(r: &Report) -> Value {
    json!({
        "samples": r.samples.iter().map(|s| json!({
            "t_s": s.secs.round(), "rounds": s.rounds, "deliveries": s.deliveries,
            "master_pss_kib": s.pss / 1024, "master_heap_kib": s.anon / 1024, "master_fds": s.fds, "children_left": s.children_left,
        })).collect::<Vec<_>>(),
        "delivered": r.total.delivered, "lost": r.total.lost,
        "duplicates": r.total.duplicates, "corrupt": r.total.corrupt,
        "self_echo": r.total.self_echo, "rejoins": r.total.rejoins,
        "failures": r.failures,
    })
}
