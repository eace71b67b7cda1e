//! Metrics: the master's counters in the Prometheus text exposition
//! format, for `chatctl metrics` (and the packaged timer that writes them
//! for node_exporter's textfile collector).
//!
//! Most numbers are the master's own. Two come from the children through
//! their slot headers in shared memory, which only the child writes: the
//! bytes each has written to its client, and how long it took to be ready
//! (from the master's accept to the child's first turn, confinement done).
//! The master folds those in when it frees a slot, and looks at the live
//! ones when asked.

use super::control::unix_now;
use super::Master;
use crate::protocol::Proto;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

/// Upper bounds of the child set-up time histogram's buckets, in seconds.
pub const SETUP_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A histogram of child set-up times.
#[derive(Debug, Default, Clone, Copy)]
pub struct Histogram {
    /// Observations at most each bound (not cumulative).
    pub buckets: [u64; SETUP_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        if let Some(i) = SETUP_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Prometheus rows: cumulative buckets, +Inf, sum and count.
    fn rows(&self, name: &str) -> Vec<(String, f64)> {
        let mut rows = Vec::new();
        let mut acc = 0;
        for (b, n) in SETUP_BUCKETS.iter().zip(self.buckets) {
            acc += n;
            rows.push((format!("{name}_bucket{{le=\"{b}\"}}"), acc as f64));
        }
        rows.push((format!("{name}_bucket{{le=\"+Inf\"}}"), self.count as f64));
        rows.push((format!("{name}_sum"), self.sum));
        rows.push((format!("{name}_count"), self.count as f64));
        rows
    }
}

impl Master {
    /// Takes in what a child reported in its slot header: its set-up time
    /// (once), and, when its slot is freed (`gone`), its bytes written.
    pub(super) fn account_child(&mut self, slot: usize, gone: bool) {
        let hdr = self.region.slot_header(slot);
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        if !c.setup_seen {
            let ns = hdr.ready_ns.load(Relaxed);
            if ns != 0 {
                c.setup_seen = true;
                self.stats.setup.observe(ns as f64 / 1e9);
            }
        }
        if gone {
            self.stats.bytes_out_gone += hdr.sent.load(Relaxed);
        }
    }

    /// Bytes written to clients: those gone and those connected.
    fn bytes_out(&self) -> u64 {
        let live: u64 = self
            .clients
            .iter()
            .map(|c| self.region.slot_header(c.slot).sent.load(Relaxed))
            .sum();
        self.stats.bytes_out_gone + live
    }

    /// The Prometheus text exposition of the master's counters.
    pub(super) fn metrics_text(&mut self) -> String {
        for slot in self.clients.live_slots() {
            self.account_child(slot, false);
        }
        let mut by: HashMap<(&str, bool), usize> = HashMap::new();
        for c in self.clients.iter().filter(|c| c.leaving.is_none()) {
            let p = match c.proto {
                Proto::Line => "line",
                Proto::Irc => "irc",
            };
            *by.entry((p, c.tls)).or_default() += 1;
        }
        let mut m = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, f64)]| {
            m.push_str(&format!(
                "# HELP chatd_{name} {help}\n# TYPE chatd_{name} {kind}\n"
            ));
            for (labels, v) in rows {
                m.push_str(&format!("chatd_{name}{labels} {v}\n"));
            }
        };
        let mut clients = Vec::new();
        for p in ["line", "irc"] {
            for tls in [false, true] {
                let n = by.get(&(p, tls)).copied().unwrap_or(0);
                clients.push((format!("{{protocol=\"{p}\",tls=\"{tls}\"}}"), n as f64));
            }
        }
        metric("clients", "gauge", "Connected clients.", &clients);
        let one = |v: u64| vec![(String::new(), v as f64)];
        metric(
            "connects_total",
            "counter",
            "Connections accepted.",
            &one(self.stats.connects),
        );
        metric(
            "lines_relayed_total",
            "counter",
            "Lines relayed to the room.",
            &one(self.stats.relayed),
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes written to clients (before TLS), by the children.",
            &one(self.bytes_out()),
        );
        let by_reason = |names: &[&str], counts: &[u64]| -> Vec<(String, f64)> {
            names
                .iter()
                .zip(counts)
                .map(|(n, &c)| (format!("{{reason=\"{n}\"}}"), c as f64))
                .collect()
        };
        let kicks = by_reason(&super::KICK_REASONS, &self.stats.kicks_by);
        metric(
            "kicks_total",
            "counter",
            "Clients kicked, by reason.",
            &kicks,
        );
        let refusals = by_reason(&super::REFUSAL_REASONS, &self.stats.refusals_by);
        metric(
            "refusals_total",
            "counter",
            "Connections refused, by reason.",
            &refusals,
        );
        let bans = self.bans.active(unix_now()).count() as u64;
        metric("bans", "gauge", "Bans in force.", &one(bans));
        metric(
            "wakeups_total",
            "counter",
            "Wake-ups of the children.",
            &one(self.relay.wakeups()),
        );
        let (used, size) = self.relay.log_fill();
        metric(
            "relay_log_bytes_used",
            "gauge",
            "Bytes of the relay log readers still need.",
            &one(used),
        );
        metric(
            "relay_log_bytes",
            "gauge",
            "Size of the relay log.",
            &one(size),
        );
        let children = self.clients.iter().filter(|c| !c.reaped).count() as u64;
        let forks = vec![
            (
                "{fd_table=\"shared\"}".to_string(),
                self.stats.forks_shared as f64,
            ),
            (
                "{fd_table=\"copied\"}".to_string(),
                self.stats.forks_copied as f64,
            ),
        ];
        metric(
            "forks_total",
            "counter",
            "Children forked: sharing the master's fd table until they take their own, or copying it.",
            &forks,
        );
        let setup = self.stats.setup.rows("");
        metric(
            "child_setup_seconds",
            "histogram",
            "Time from accept until a client's child is confined and serving.",
            &setup,
        );
        metric(
            "processes",
            "gauge",
            "chatd processes: the master and one per client.",
            &one(children + 1),
        );
        m
    }
}
