//! Machine noise: how often this machine takes a CPU away for a while.
//!
//! One thread per CPU spins on the monotonic clock for a few seconds with
//! nothing else running and records every gap in its own progress longer
//! than [`GAP`]: time in which it did not run (an interrupt storm, another
//! task, or on a VM the host not running the vCPU, which the guest's steal
//! time does not always show). Every line in flight during such a gap is
//! late by it, so the suite measures this first and prints it under the
//! table: a latency percentile means little without it.

use std::time::{Duration, Instant};

/// Shorter gaps (a timer tick, a short interrupt) are not counted.
pub const GAP: Duration = Duration::from_micros(100);

#[derive(Debug, Default, Clone)]
pub struct Stalls {
    pub cpus: usize,
    pub secs: f64,
    /// Gaps over 1 ms and over 5 ms, over all CPUs.
    pub over_1ms: u64,
    pub over_5ms: u64,
    pub longest_ms: f64,
    /// Time lost in gaps over [`GAP`], as a share of the CPUs' time.
    pub lost_pct: f64,
}

/// Spins one thread per CPU for `secs` seconds.
pub fn measure(secs: f64) -> Stalls {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..cpus)
        .map(|_| std::thread::spawn(move || spin(run, |_| {})))
        .collect();
    let mut all = Stalls {
        cpus,
        secs,
        ..Stalls::default()
    };
    let mut lost = Duration::ZERO;
    for t in threads {
        let gaps = t.join().unwrap_or_default();
        for g in gaps {
            lost += g;
            all.over_1ms += u64::from(g > Duration::from_millis(1));
            all.over_5ms += u64::from(g > Duration::from_millis(5));
            all.longest_ms = all.longest_ms.max(g.as_secs_f64() * 1e3);
        }
    }
    all.lost_pct = 100.0 * lost.as_secs_f64() / (secs * cpus as f64);
    all
}

/// The gaps over [`GAP`] one spinning thread saw in `run`; `each` runs
/// once per turn with the time spun so far (the test stalls in it).
fn spin(run: Duration, mut each: impl FnMut(Duration)) -> Vec<Duration> {
    let start = Instant::now();
    let mut last = start;
    let mut gaps = Vec::new();
    loop {
        each(last - start);
        let now = Instant::now();
        let gap = now - last;
        if gap > GAP {
            gaps.push(gap);
        }
        last = now;
        if now - start >= run {
            return gaps;
        }
    }
}

impl Stalls {
    pub fn summary(&self) -> String {
        format!(
            "machine noise ({} CPUs spinning {:.0} s): {:.2}% of CPU time lost \
             in gaps over {} µs; {} gaps over 1 ms, {} over 5 ms, longest {:.1} ms",
            self.cpus,
            self.secs,
            self.lost_pct,
            GAP.as_micros(),
            self.over_1ms,
            self.over_5ms,
            self.longest_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_counted_and_short_gaps_are_not() {
        // One 3 ms stall, made on purpose 5 ms into a 20 ms spin.
        let mut stalled = false;
        let gaps = spin(Duration::from_millis(20), |spun| {
            if !stalled && spun > Duration::from_millis(5) {
                stalled = true;
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        assert!(
            gaps.iter().any(|g| *g >= Duration::from_millis(3)),
            "{gaps:?}"
        );
        assert!(gaps.iter().all(|g| *g > GAP), "{gaps:?}");
        let s = measure(0.05);
        assert!(s.cpus >= 1 && (0.0..100.0).contains(&s.lost_pct), "{s:?}");
    }
}
