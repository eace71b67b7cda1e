//! Per-client flood control: a token bucket.
//!
//! Each non-empty line costs one token; the bucket holds `burst` tokens and
//! refills at `rate` per second. An empty bucket delays the client (its
//! input is left in the kernel, so TCP pushes back); nothing is dropped.

use std::time::{Duration, Instant};

pub struct TokenBucket {
    burst: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate == 0` disables the bucket.
    pub fn new(burst: u32, rate: f64) -> TokenBucket {
        TokenBucket {
            burst: burst as f64,
            rate,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// The tokens the bucket holds at `now`: those left at the last
    /// [`TokenBucket::take`] plus what has refilled since.
    fn tokens_at(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + dt * self.rate).min(self.burst)
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = self.tokens_at(now);
        self.last = now;
    }

    /// Takes a token if one is available.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Returns a token taken for a line that turned out to cost nothing.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Time from now until the next token, counting what has refilled
    /// since the last [`TokenBucket::take`]. Reads the clock only when the
    /// bucket held less than a token then.
    pub fn wait(&self) -> Duration {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let have = self.tokens_at(Instant::now());
        if have >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - have) / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 2.0);
        b.last = t0;
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.wait() > Duration::from_millis(400));
        assert!(b.take(t0 + Duration::from_millis(501)));
        assert!(!b.take(t0 + Duration::from_millis(502)));
    }

    #[test]
    fn wait_counts_the_time_since_the_last_take() {
        let mut b = TokenBucket::new(1, 2.0);
        let t0 = Instant::now() - Duration::from_millis(600);
        b.last = t0;
        assert!(b.take(t0) && !b.take(t0), "empty at t0");
        // A token takes 500 ms at 2/s; 600 ms have passed since.
        assert_eq!(b.wait(), Duration::ZERO);
        b.last = Instant::now();
        let w = b.wait();
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
    }

    #[test]
    fn zero_rate_disables() {
        let mut b = TokenBucket::new(1, 0.0);
        let t = Instant::now();
        assert!((0..1000).all(|_| b.take(t)));
    }
}
