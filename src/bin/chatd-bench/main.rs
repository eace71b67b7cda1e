//! chatd-bench: a load generator for line-based chat servers.
//!
//! `chatd-bench` (the suite) starts chatd and the seed in turn, each fresh
//! for every scenario, runs the same scenarios against both in one
//! invocation and prints a table with same-run ratios and one JSON line.
//! The subcommands run one scenario against one server, started here or
//! already listening (`--addr`, with `--pid` for CPU and memory figures);
//! the suite runs each scenario as a subcommand in a process of its own.
//! README.md, "Performance", shows how to read it.
//!
//! - `marker`: what a message carries, and how a receiver finds it;
//! - `floor`: the minimal broadcast server every fan-out is also run on;
//! - `fanout`: fan-out and churn (throughput, latency, loss, duplicates,
//!   corruption, self-echo);
//! - `storm`: connect storm, idle memory;
//! - `soak`: a long run of mixed load with churn, and its curve;
//! - `stalls`: how often the machine takes a CPU away (printed by the suite);
//! - `wakes`: what waking N sleeping processes costs this machine, the
//!   floor of any fork-per-client round (printed by the suite);
//! - `server`: starting the servers, and what /proc says about them.

mod crowd;
mod fanout;
mod floor;
mod marker;
mod server;
mod soak;
mod stalls;
mod storm;
mod tls;
mod wakes;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fanout::{Mode, Outcome, Spec};
use serde_json::{json, Map, Value};
use server::{Kind, Server};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use storm::StormOutcome;

/// `println!` that returns an error instead of panicking when stdout is
/// gone (`chatd-bench | head -1`), so that the servers are still stopped
/// by their `Drop` on the way out.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).context("writing to stdout")
    };
}

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for chatd and other line-based chat servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    target: Target,
    /// Suite: leave the seed out.
    #[arg(long)]
    no_seed: bool,
    /// Suite: leave the floor (a minimal one-process broadcast server) out.
    #[arg(long)]
    no_floor: bool,
    /// Suite: also the crowd scenario (`chatd-bench crowd`) at 4000 and
    /// 10000 clients.
    #[arg(long)]
    crowd: bool,
    /// Suite: seconds each sending phase may last.
    #[arg(long, default_value_t = 4.0)]
    max_secs: f64,
    /// Suite: another chatd binary (the previous release) to run the
    /// line-protocol fan-out scenarios on too, for a same-run comparison.
    #[arg(long, value_name = "PATH")]
    previous: Option<PathBuf>,
    /// Suite: leave out the IRC scenarios (chatd's IRC port against Debian's
    /// ngircd, which must be installed: apt-get install ngircd).
    #[arg(long)]
    no_irc: bool,
    /// Suite: leave out the TLS scenarios (chatd's TLS ports against its
    /// plain ones).
    #[arg(long)]
    no_tls: bool,
}

#[derive(Args, Clone)]
struct Target {
    /// The chatd binary (default: the one next to chatd-bench).
    #[arg(long, global = true)]
    chatd: Option<PathBuf>,
    /// The seed's directory (built there with make).
    #[arg(long, global = true, default_value = "../shared/seed")]
    seed_dir: PathBuf,
    /// Subcommands: which server to start.
    #[arg(long, global = true, default_value = "chatd", value_parser = ["chatd", "seed", "floor", "ngircd"])]
    server: String,
    /// Subcommands: use a server already listening here instead.
    #[arg(long, global = true)]
    addr: Option<SocketAddr>,
    /// With --addr: the server's master pid, for CPU and memory figures.
    #[arg(long, global = true)]
    pid: Option<i32>,
    /// Subcommands: speak TLS to chatd's TLS port for the protocol (a test
    /// certificate the bench brings; chatd only).
    #[arg(long, global = true)]
    tls: bool,
}

/// `chatd-bench fanout`'s options: one fan-out scenario.
#[derive(Args)]
struct FanoutArgs {
    #[arg(short = 'n', long, default_value_t = 100)]
    clients: usize,
    #[arg(short = 'k', long, default_value_t = 10)]
    senders: usize,
    #[arg(short = 'm', long, default_value_t = 2000)]
    messages: u32,
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Closed loop: messages in flight per sender.
    #[arg(short = 'w', long, default_value_t = 8)]
    window: u32,
    /// Open loop: messages per second per sender (overrides --window).
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Clients that leave and rejoin during the run (part of N).
    #[arg(short = 'c', long, default_value_t = 0)]
    churn: usize,
    #[arg(long, default_value_t = 10.0)]
    max_secs: f64,
    /// Speak IRC (register, join, PRIVMSG) to chatd's IRC port or ngircd.
    #[arg(long)]
    irc: bool,
}

impl FanoutArgs {
    /// The scenario these options ask for.
    fn spec(&self) -> Spec {
        Spec {
            clients: self.clients,
            senders: self.senders,
            messages: self.messages,
            size: self.size.max(marker::MIN_SIZE),
            mode: self.rate.map_or(
                Mode::Closed {
                    window: self.window,
                },
                |rate| Mode::Open { rate },
            ),
            churners: self.churn,
            max_secs: self.max_secs,
            irc: self.irc,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// N clients, K senders, M messages of S bytes; closed (-w) or open (-r) loop.
    Fanout(FanoutArgs),
    /// N connections opened as fast as possible.
    Storm {
        #[arg(short = 'n', long, default_value_t = 1000)]
        clients: usize,
    },
    /// PSS and page tables of the server tree at N idle clients.
    Memory {
        #[arg(short = 'n', long, default_value_t = 1000)]
        clients: usize,
    },
    /// N clients connecting C at a time, their memory at rest, 100 more
    /// chatting among them, then all N leaving at once; first for
    /// --baseline clients (the same run's reference), then for N.
    Crowd {
        #[arg(short = 'n', long, default_value_t = 10_000)]
        clients: usize,
        #[arg(short = 'c', long, default_value_t = 300)]
        concurrency: usize,
        /// A smaller crowd run first, for same-run ratios (0: none).
        #[arg(long, default_value_t = 4000)]
        baseline: usize,
        #[arg(long, default_value_t = 4.0)]
        max_secs: f64,
    },
    /// Rounds of mixed load with churn for SECS seconds against one chatd;
    /// fails unless nothing is lost and the master's PSS and fds stay flat.
    Soak {
        #[arg(long, default_value_t = 600.0)]
        secs: f64,
        /// Seconds between two samples of the curve.
        #[arg(long, default_value_t = 30.0)]
        every: f64,
    },
    /// How often this machine takes a CPU away: one spinning thread per CPU.
    Stalls {
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// What waking N sleeping processes and running each once costs this
    /// machine: a lower bound for a fork-per-client server's latency.
    Wakes {
        #[arg(short = 'n', long, default_value_t = 100)]
        sleepers: usize,
        #[arg(long, default_value_t = 3000)]
        rounds: usize,
        /// Rounds per second.
        #[arg(short = 'r', long, default_value_t = 1000.0)]
        rate: f64,
    },
    /// Runs the floor server (how the suite starts it).
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        port: u16,
    },
}

fn chatd_path(t: &Target) -> Result<PathBuf> {
    if let Some(p) = &t.chatd {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("chatd");
    if !p.exists() {
        bail!("no chatd next to {}; pass --chatd", me.display());
    }
    Ok(p)
}

fn kind(t: &Target) -> Result<Kind> {
    if let Some(a) = t.addr {
        return Ok(Kind::External(a, t.pid));
    }
    Ok(match t.server.as_str() {
        "seed" => Kind::Seed(server::build_seed(&t.seed_dir)?),
        "floor" => Kind::Floor,
        "ngircd" => Kind::Ngircd(server::find_ngircd()?),
        _ => Kind::Chatd(chatd_path(t)?),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.target.tls {
        tls::enable();
    }
    let nofile = server::raise_nofile();
    match cli.cmd {
        None => suite(&cli, nofile),
        Some(Cmd::Fanout(ref args)) => {
            let spec = args.spec();
            let k = kind(&cli.target)?;
            if spec.irc && spec.churners > 0 {
                bail!("--irc has no churn scenario");
            }
            let s = Server::start_proto(&k, spec.clients, spec.irc)?;
            let o = fanout::run(&s, &spec)?;
            out!("{}", fanout_json(&o))?;
            Ok(())
        }
        Some(Cmd::Storm { clients }) => {
            let k = kind(&cli.target)?;
            let s = Server::start(&k, clients + 1)?;
            let o = storm::storm(&s, clients)?;
            out!("{}", storm_json(&o))?;
            Ok(())
        }
        Some(Cmd::Soak { secs, every }) => {
            let k = kind(&cli.target)?;
            let mut s = Server::start(&k, 100)?;
            let r = soak::run(&mut s, secs, every)?;
            drop(s); // stops the server before a failing exit
            out!("{}", soak::table(&r).trim_end())?;
            out!("{}", soak::json(&r))?;
            if !r.failures.is_empty() {
                for f in &r.failures {
                    eprintln!("soak FAILED: {f}");
                }
                std::process::exit(1);
            }
            eprintln!("soak passed: nothing lost, master PSS and fds flat");
            Ok(())
        }
        Some(Cmd::Floor { port }) => floor::serve(port),
        Some(Cmd::Stalls { secs }) => {
            let s = stalls::measure(secs);
            out!("{}", s.summary())?;
            out!("{}", stalls_json(&s))?;
            Ok(())
        }
        Some(Cmd::Wakes {
            sleepers,
            rounds,
            rate,
        }) => {
            let w = wakes::measure(sleepers, rounds, rate)?;
            out!("{}", w.summary())?;
            out!("{}", wakes_json(&w))?;
            Ok(())
        }
        Some(Cmd::Crowd {
            clients,
            concurrency,
            baseline,
            max_secs,
        }) => {
            let k = kind(&cli.target)?;
            let sizes: Vec<usize> = [baseline, clients].into_iter().filter(|&n| n > 0).collect();
            let mut runs = Vec::new();
            for n in sizes {
                eprintln!("crowd {n}: connecting {concurrency} at a time");
                let s = Server::start(&k, n + 100)?;
                let o = crowd::run(&s, n, concurrency, max_secs)?;
                eprintln!("  {}", crowd_json(&o));
                runs.push(o);
            }
            out!("{}", crowd_table(&runs).trim_end())?;
            let all: Vec<Value> = runs.iter().map(crowd_json).collect();
            out!("{}", json!(all))?;
            Ok(())
        }
        Some(Cmd::Memory { clients }) => {
            let k = kind(&cli.target)?;
            let s = Server::start(&k, clients)?;
            out!("{}", memory_json(&s, clients)?)?;
            Ok(())
        }
    }
}

fn crowd_json(o: &crowd::CrowdOutcome) -> Value {
    let chat = o.chat.as_ref();
    let rate = chat.map_or(0.0, |c| c.rate().round());
    // Every line reaches the whole room, not only the 100 who chat.
    let room = (o.usable + 100) as f64;
    json!({
        "clients": o.clients, "concurrency": o.concurrency, "usable": o.usable,
        "refused": o.refused, "closed": o.closed, "all_usable_ms": o.all_usable_ms.round(),
        "per_client_kib": (o.kib_per_client() * 10.0).round() / 10.0,
        "pss_mib": o.pss >> 20, "pte_mib": o.pte >> 20, "processes": o.processes,
        "idle_master_kib": (o.idle_pss + o.idle_pte) >> 10,
        "system_kib_per_client": (o.available_before.saturating_sub(o.available_with) as f64
            / 1024.0 / o.clients.max(1) as f64).round(),
        "deliveries_per_s": rate, "room_deliveries_per_s": (rate / 100.0 * room).round(),
        "loss_pct": chat.map_or(100.0, |c| (c.loss_pct() * 100.0).round() / 100.0),
        "duplicates": chat.map_or(0, |c| c.duplicates),
        "closed_while_chatting": o.closed_while_chatting,
        "leave_ms": o.leave_ms.map(f64::round), "idle_fds": o.idle_fds, "fds_after": o.fds_after,
        "memory_back_ms": o.memory_ms.map(f64::round),
        "master_own_kib_idle": o.own_idle >> 10, "master_own_kib_after": o.own_after >> 10,
        "master_kib_after": (o.pss_after + o.pte_after) >> 10, "zombies": o.zombies,
    })
}

fn crowd_table(runs: &[crowd::CrowdOutcome]) -> String {
    let mut t = format!(
        "{:<10} {:>9} {:>10} {:>9} {:>12} {:>14} {:>7} {:>9} {:>10} {:>7}\n",
        "clients",
        "usable",
        "all in ms",
        "KiB/cl",
        "deliv/s",
        "room deliv/s",
        "loss %",
        "leave ms",
        "memory ms",
        "zombies"
    );
    for o in runs {
        let j = crowd_json(o);
        t.push_str(&format!(
            "{:<10} {:>9} {:>10} {:>9} {:>12} {:>14} {:>7} {:>9} {:>10} {:>7}\n",
            o.clients,
            o.usable,
            j["all_usable_ms"],
            j["per_client_kib"],
            j["deliveries_per_s"],
            j["room_deliveries_per_s"],
            j["loss_pct"],
            j["leave_ms"],
            j["memory_back_ms"],
            o.zombies
        ));
    }
    t
}

fn fanout_json(o: &Outcome) -> Value {
    json!({
        "deliveries_per_s": o.rate().round(),
        "deliveries_per_server_cpu_s": o.per_cpu().round(),
        "delivered": o.delivered, "expected": o.expected, "sent": o.sent,
        "lost": o.lost, "loss_pct": (o.loss_pct() * 100.0).round() / 100.0,
        "duplicates": o.duplicates, "corrupt": o.corrupt, "self_echo": o.self_echo,
        "p50_ms": o.lat_us[0] / 1e3, "p90_ms": o.lat_us[1] / 1e3,
        "p99_ms": o.lat_us[2] / 1e3, "max_ms": o.lat_us[3] / 1e3,
        "read_p50_ms": o.read_lat_us[0] / 1e3, "read_p99_ms": o.read_lat_us[2] / 1e3,
        "read_max_ms": o.read_lat_us[3] / 1e3, "unstamped": o.unstamped,
        "secs": o.secs, "server_cpu_s": o.server_cpu, "bench_cpu_s": o.bench_cpu,
        "rejoins": o.rejoins, "failed_rejoins": o.failed_rejoins, "closed_by_server": o.closed,
        "window_timeouts": o.window_timeouts,
    })
}

fn stalls_json(s: &stalls::Stalls) -> Value {
    json!({
        "cpus": s.cpus, "secs": s.secs, "lost_pct": (s.lost_pct * 100.0).round() / 100.0,
        "gaps_over_1ms": s.over_1ms, "gaps_over_5ms": s.over_5ms, "longest_ms": s.longest_ms,
    })
}

fn wakes_json(w: &wakes::Wakes) -> Value {
    let [p50, p90, p99, max] = w.wake_ms();
    let [r50, _, r99, rmax] = w.round_ms();
    json!({
        "sleepers": w.sleepers, "rate": w.rate, "rounds": w.rounds_us.len(),
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max,
        "round_p50_ms": r50, "round_p99_ms": r99, "round_max_ms": rmax,
        "cpu_per_wake_us": (w.cpu_per_wake_us * 100.0).round() / 100.0,
    })
}

fn storm_json(o: &StormOutcome) -> Value {
    json!({
        "attempted": o.attempted, "usable_in_0_5s": o.usable_fast, "usable": o.usable,
        "refused": o.refused, "closed": o.closed, "last_usable_ms": o.last_usable_ms,
    })
}

fn memory_json(s: &Server, n: usize) -> Result<Value> {
    let (pss0, pte0, _) = s.memory();
    let ((pss, pte, procs), _clients) = storm::idle_memory(s, n)?;
    Ok(json!({
        "clients": n, "processes": procs,
        "pss_kib": pss / 1024, "pte_kib": pte / 1024,
        "idle_master_kib": (pss0 + pte0) / 1024,
        "per_client_kib": ((pss + pte) as f64 / n as f64 / 1024.0 * 10.0).round() / 10.0,
        "pss_per_client_kib": (pss as f64 / n as f64 / 1024.0 * 10.0).round() / 10.0,
        "pte_per_client_kib": (pte as f64 / n as f64 / 1024.0 * 10.0).round() / 10.0,
    }))
}

/// The standard scenarios: the issue's targets, on chatd and on the seed.
fn scenarios(max_secs: f64) -> Vec<(&'static str, Spec)> {
    let base = Spec {
        clients: 100,
        senders: 10,
        messages: 3000,
        size: 64,
        mode: Mode::Closed { window: 8 },
        churners: 0,
        max_secs,
        irc: false,
    };
    vec![
        ("closed N=100 K=10 S=64 W=8", base.clone()),
        (
            "open N=100 K=10 R=100/s",
            Spec {
                messages: (100.0 * max_secs.min(3.0)) as u32,
                mode: Mode::Open { rate: 100.0 },
                ..base.clone()
            },
        ),
        (
            "closed N=500 K=5 S=64 W=8",
            Spec {
                clients: 500,
                senders: 5,
                messages: 1500,
                ..base.clone()
            },
        ),
        (
            "churn N=100 K=10 W=8 C=10",
            Spec {
                messages: 1500,
                churners: 10,
                ..base
            },
        ),
    ]
}

/// The IRC scenarios: chatd's IRC port against ngircd.
fn irc_scenarios(max_secs: f64) -> Vec<(&'static str, Spec)> {
    let names = [
        "irc closed N=100 K=10 S=64 W=8",
        "irc open N=100 K=10 R=100/s",
    ];
    scenarios(max_secs)
        .into_iter()
        .take(2)
        .zip(names)
        .map(|((_, spec), name)| (name, Spec { irc: true, ..spec }))
        .collect()
}

fn suite(cli: &Cli, nofile: u64) -> Result<()> {
    let mut kinds = vec![Kind::Chatd(chatd_path(&cli.target)?)];
    if let Some(p) = &cli.previous {
        kinds.push(Kind::Previous(p.clone()));
    }
    if !cli.no_seed {
        kinds.push(Kind::Seed(server::build_seed(&cli.target.seed_dir)?));
    }
    if !cli.no_floor {
        kinds.push(Kind::Floor);
    }
    let mut results: Vec<Map<String, Value>> = vec![Map::new(); kinds.len()];
    eprintln!("machine noise");
    let (noise_summary, noise_json) = summary_and_json(&["stalls", "--secs", "3"])?;
    eprintln!("  {noise_summary}");
    eprintln!("wake-up floor");
    let (wake_summary, wake_json) =
        summary_and_json(&["wakes", "-n", "100", "--rounds", "3000", "-r", "1000"])?;
    eprintln!("  {wake_summary}");
    for (name, spec) in scenarios(cli.max_secs) {
        for (i, k) in kinds.iter().enumerate() {
            // The previous release is compared on fan-out without churn.
            if matches!(k, Kind::Previous(_)) && spec.churners > 0 {
                continue;
            }
            eprintln!("{name}: {}", k.name());
            let v = in_own_process(k, &cli.target, &fanout_args(&spec))?;
            eprintln!("  {v}");
            results[i].insert(name.into(), v);
        }
    }
    // IRC: chatd's IRC port and ngircd, in a table of their own.
    let mut irc_kinds = vec![kinds[0].clone()];
    if !cli.no_irc {
        irc_kinds.push(Kind::Ngircd(server::find_ngircd()?));
        if !cli.no_floor {
            irc_kinds.push(Kind::Floor);
        }
    }
    let mut irc_results: Vec<Map<String, Value>> = vec![Map::new(); irc_kinds.len()];
    if !cli.no_irc {
        for (name, spec) in irc_scenarios(cli.max_secs) {
            for (i, k) in irc_kinds.iter().enumerate() {
                eprintln!("{name}: {}", k.name());
                let v = in_own_process(k, &cli.target, &fanout_args(&spec))?;
                eprintln!("  {v}");
                irc_results[i].insert(name.into(), v);
            }
        }
    }
    // The floor is a yardstick for fan-out only.
    for (i, k) in kinds.iter().enumerate() {
        if matches!(k, Kind::Floor | Kind::Previous(_)) {
            continue;
        }
        eprintln!("storm 1000: {}", k.name());
        let v = in_own_process(k, &cli.target, &["storm", "-n", "1000"].map(String::from))?;
        eprintln!("  {v}");
        results[i].insert("storm 1000".into(), v);
        eprintln!("memory N=1000: {}", k.name());
        let v = in_own_process(k, &cli.target, &["memory", "-n", "1000"].map(String::from))?;
        eprintln!("  {v}");
        results[i].insert("memory N=1000".into(), v);
    }
    // TLS: chatd's TLS ports beside its plain ones (the same run's figures).
    let mut tls_results: Vec<Map<String, Value>> = vec![Map::new(); 2];
    if !cli.no_tls {
        let (name, spec) = scenarios(cli.max_secs).remove(0);
        let fan = fanout_args(&spec);
        let storm = ["storm", "-n", "1000"].map(String::from).to_vec();
        let memory = ["memory", "-n", "1000"].map(String::from).to_vec();
        for (name, args) in [
            (name, fan),
            ("storm 1000", storm),
            ("memory N=1000", memory),
        ] {
            eprintln!("{name}: chatd over TLS");
            let mut args = args;
            args.push("--tls".into());
            let v = in_own_process(&kinds[0], &cli.target, &args)?;
            eprintln!("  {v}");
            tls_results[0].insert(name.into(), v);
            if let Some(plain) = results[0].get(name) {
                tls_results[1].insert(name.into(), plain.clone());
            }
        }
    }
    if cli.crowd {
        for n in [4000, 10_000] {
            eprintln!("crowd {n}: chatd");
            let s = Server::start(&kinds[0], n + 100)?;
            let o = crowd::run(&s, n, 300, cli.max_secs)?;
            let v = crowd_json(&o);
            eprintln!("  {v}");
            results[0].insert(format!("crowd {n} C=300"), v);
        }
    }
    print_table(&kinds, &results)?;
    if !cli.no_irc {
        out!("")?;
        print_table(&irc_kinds, &irc_results)?;
    }
    if !cli.no_tls {
        out!("")?;
        print_columns("chatd TLS", &[("plain".into(), true)], &tls_results)?;
    }
    out!("before the runs, {noise_summary}")?;
    out!("and {wake_summary}")?;
    let mut all = Map::new();
    all.insert("machine".into(), json!(machine(nofile)));
    all.insert("stalls".into(), noise_json);
    all.insert("wakes".into(), wake_json);
    for (i, k) in kinds.iter().enumerate() {
        all.insert(k.name().into(), Value::Object(results[i].clone()));
    }
    for (i, k) in irc_kinds.iter().enumerate() {
        let entry = all.entry(k.name()).or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.extend(irc_results[i].clone());
        }
    }
    out!("{}", Value::Object(all))?;
    Ok(())
}

/// Runs `chatd-bench ARGS` in a process of its own and returns what it
/// printed. The suite runs every measurement so, each from a fresh
/// process, as the subcommands run alone: a process's history shows in
/// what it measures next. Waking 100 tasks 3000 times (the wake-up floor)
/// left the suite's process in a state that cost chatd 10-40% of its
/// deliveries per CPU-second in the closed-loop scenario run next from it
/// (six pairs, 2026-11-22); run as a process of its own it left no trace
/// (five pairs from the shell, three whole suites with and without it).
fn own_process(args: &[String]) -> Result<String> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("chatd-bench {}: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// One scenario (`chatd-bench fanout|storm|memory ...`) against a fresh
/// server of kind `k`, in a process of its own; its JSON line.
fn in_own_process(k: &Kind, t: &Target, scenario: &[String]) -> Result<Value> {
    let mut args = scenario.to_vec();
    let server = match k {
        Kind::Chatd(p) | Kind::Previous(p) => {
            vec!["chatd".into(), "--chatd".into(), p.display().to_string()]
        }
        Kind::Seed(_) => vec![
            "seed".into(),
            "--seed-dir".into(),
            t.seed_dir.display().to_string(),
        ],
        Kind::Floor => vec!["floor".into()],
        Kind::Ngircd(_) => vec!["ngircd".into()],
        Kind::External(..) => bail!("the suite starts its own servers"),
    };
    args.push("--server".into());
    args.extend(server);
    let text = own_process(&args)?;
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    last.and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("chatd-bench {} printed {text:?}", args.join(" ")))
}

/// The `chatd-bench fanout` arguments that run `spec`.
fn fanout_args(spec: &Spec) -> Vec<String> {
    let mode = match spec.mode {
        Mode::Closed { window } => ["-w".to_string(), window.to_string()],
        Mode::Open { rate } => ["-r".to_string(), rate.to_string()],
    };
    let mut a: Vec<String> = ["fanout", "-n", &spec.clients.to_string()]
        .into_iter()
        .map(String::from)
        .collect();
    for (flag, v) in [
        ("-k", spec.senders.to_string()),
        ("-m", spec.messages.to_string()),
        ("-s", spec.size.to_string()),
        ("-c", spec.churners.to_string()),
        ("--max-secs", spec.max_secs.to_string()),
    ] {
        a.push(flag.into());
        a.push(v);
    }
    a.extend(mode);
    if spec.irc {
        a.push("--irc".into());
    }
    a
}

/// A machine measurement (`chatd-bench stalls|wakes ...`, in a process of
/// its own): its summary line and its JSON.
fn summary_and_json(args: &[&str]) -> Result<(String, Value)> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let text = own_process(&args)?;
    let mut lines = text.lines();
    let (Some(summary), Some(json)) = (lines.next(), lines.next()) else {
        bail!("chatd-bench {} printed {text:?}", args.join(" "));
    };
    Ok((summary.to_string(), serde_json::from_str(json)?))
}

fn machine(nofile: u64) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} x {cpu}, Linux {}, RLIMIT_NOFILE {nofile}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

/// A figure of a scenario's results: (label, JSON key, decimals).
type Figure = (&'static str, &'static str, usize);

const CLOSED_100: &[Figure] = &[
    ("deliveries/s", "deliveries_per_s", 0),
    ("deliveries/server CPU-s", "deliveries_per_server_cpu_s", 0),
    ("p99 latency ms", "p99_ms", 2),
    ("loss %", "loss_pct", 2),
    ("duplicates", "duplicates", 0),
    ("corrupt", "corrupt", 0),
];
const OPEN_100: &[Figure] = &[
    ("p50 latency ms", "p50_ms", 3),
    ("p99 latency ms", "p99_ms", 3),
    ("max latency ms", "max_ms", 3),
    ("p50 read by bench ms", "read_p50_ms", 3),
    ("p99 read by bench ms", "read_p99_ms", 3),
    ("loss %", "loss_pct", 2),
];
const CLOSED_500: &[Figure] = &[
    ("deliveries/s", "deliveries_per_s", 0),
    ("deliveries/server CPU-s", "deliveries_per_server_cpu_s", 0),
    ("loss %", "loss_pct", 2),
];
const CHURN: &[Figure] = &[
    ("deliveries/s", "deliveries_per_s", 0),
    ("rejoins", "rejoins", 0),
    ("loss %", "loss_pct", 2),
    ("duplicates", "duplicates", 0),
    ("self-echo", "self_echo", 0),
];
const STORM: &[Figure] = &[
    ("usable in 0.5 s", "usable_in_0_5s", 0),
    ("usable in 3 s", "usable", 0),
    ("refused or closed", "refused", 0),
    ("last usable ms", "last_usable_ms", 0),
];
const MEMORY: &[Figure] = &[
    ("KiB/client PSS+PTE", "per_client_kib", 1),
    ("KiB/client PSS", "pss_per_client_kib", 1),
    ("KiB/client PTE", "pte_per_client_kib", 1),
];
const CROWD: &[Figure] = &[
    ("all usable ms", "all_usable_ms", 0),
    ("KiB/client PSS+PTE", "per_client_kib", 1),
    ("room deliveries/s", "room_deliveries_per_s", 0),
    ("loss %", "loss_pct", 2),
    ("all gone ms", "leave_ms", 0),
    ("memory back ms", "memory_back_ms", 0),
];
const IRC_CLOSED: &[Figure] = &[
    ("deliveries/s", "deliveries_per_s", 0),
    ("deliveries/server CPU-s", "deliveries_per_server_cpu_s", 0),
    ("p99 latency ms", "p99_ms", 2),
    ("loss %", "loss_pct", 2),
    ("self-echo", "self_echo", 0),
];
const IRC_OPEN: &[Figure] = &[
    ("p50 latency ms", "p50_ms", 3),
    ("p99 latency ms", "p99_ms", 3),
    ("max latency ms", "max_ms", 3),
    ("loss %", "loss_pct", 2),
];

/// The table's rows: each scenario (as `suite` names it) and its figures.
const ROWS: &[(&str, &[Figure])] = &[
    ("closed N=100 K=10 S=64 W=8", CLOSED_100),
    ("open N=100 K=10 R=100/s", OPEN_100),
    ("closed N=500 K=5 S=64 W=8", CLOSED_500),
    ("churn N=100 K=10 W=8 C=10", CHURN),
    ("storm 1000", STORM),
    ("memory N=1000", MEMORY),
    ("crowd 4000 C=300", CROWD),
    ("crowd 10000 C=300", CROWD),
    ("irc closed N=100 K=10 S=64 W=8", IRC_CLOSED),
    ("irc open N=100 K=10 R=100/s", IRC_OPEN),
];

/// Columns: chatd, the seed and chatd/seed (when the seed ran), then the
/// floor (when it ran; fan-out rows only).
/// One table: chatd's figures, then each other server's, with the ratio
/// chatd/X beside the anchors (the previous release, the seed, ngircd; not
/// the floor, which is a ceiling, not a rival).
fn print_table(kinds: &[Kind], results: &[Map<String, Value>]) -> Result<()> {
    let others: Vec<(String, bool)> = kinds[1..]
        .iter()
        .map(|k| (k.name().to_string(), !matches!(k, Kind::Floor)))
        .collect();
    print_columns("chatd", &others, results)
}

/// A table: the first column `first`, then each other (name, with a ratio
/// first/name beside it or not).
fn print_columns(
    first: &str,
    others: &[(String, bool)],
    results: &[Map<String, Value>],
) -> Result<()> {
    let mut header = format!("{:<30} {:<26} {:>12}", "scenario", "figure", first);
    for (name, ratio) in others {
        header.push_str(&format!(" {name:>12}"));
        if *ratio {
            header.push_str(&format!(" {:>14}", format!("{first}/{name}")));
        }
    }
    out!("{header}")?;
    out!("{}", "-".repeat(header.len()))?;
    let mut last = "";
    let rows = ROWS
        .iter()
        .flat_map(|&(scenario, figures)| figures.iter().map(move |&f| (scenario, f)));
    for (scenario, (label, key, dec)) in rows {
        let vals: Vec<Option<f64>> = results
            .iter()
            .map(|r| {
                let mut v = r.get(scenario)?.get(key)?.as_f64()?;
                if key == "refused" {
                    v += r.get(scenario)?.get("closed")?.as_f64()?;
                }
                Some(v)
            })
            .collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let name = if scenario == last { "" } else { scenario };
        last = scenario;
        let cell = |v: Option<f64>| match v {
            Some(v) => format!(" {:>12.*}", dec, v),
            None => format!(" {:>12}", "-"),
        };
        let mut row = format!("{name:<30} {label:<26}{}", cell(vals[0]));
        for ((_, ratio), v) in others.iter().zip(&vals[1..]) {
            row.push_str(&cell(*v));
            if *ratio {
                match (vals[0], *v) {
                    (Some(a), Some(b)) if b != 0.0 => row.push_str(&format!(" {:>14.2}", a / b)),
                    _ => row.push_str(&format!(" {:>14}", "-")),
                }
            }
        }
        out!("{}", row.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite runs each scenario as a subcommand: the subcommand must
    /// get exactly the scenario the suite means.
    #[test]
    fn every_scenario_survives_the_trip_through_the_command_line() {
        for (name, spec) in scenarios(4.0).into_iter().chain(irc_scenarios(4.0)) {
            let mut argv = vec!["chatd-bench".to_string()];
            argv.extend(fanout_args(&spec));
            let cli = Cli::try_parse_from(&argv).unwrap();
            let back = match &cli.cmd {
                Some(Cmd::Fanout(args)) => Some(args.spec()),
                _ => None,
            };
            assert_eq!(format!("{back:?}"), format!("{:?}", Some(spec)), "{name}");
        }
    }
}
