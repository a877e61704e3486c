//! Token bucket for `--rate` and for the replication throttles (`replication/throttle.rs`): bytes
//! per second with a small burst. Time is passed in, so the tests move it by hand.

use std::time::{Duration, Instant};

/// Tokens are bytes. The bucket may go into debt by one request: `acquire` always grants and
/// returns how long the caller must wait before sending, so a record larger than the burst still
/// goes through at the configured average rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_s: f64,
    burst_bytes: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `bytes_per_s` > 0; the bucket starts full with `burst_bytes`.
    pub fn new(bytes_per_s: f64, burst_bytes: f64, now: Instant) -> TokenBucket {
        assert!(bytes_per_s > 0.0, "rate must be positive");
        TokenBucket {
            bytes_per_s,
            burst_bytes,
            tokens: burst_bytes,
            last: now,
        }
    }

    /// Takes `bytes` tokens; returns how long to wait before sending them (zero if in budget).
    pub fn acquire(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.bytes_per_s).min(self.burst_bytes);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_free_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 100.0, t0);
        assert_eq!(b.acquire(100, t0), Duration::ZERO);
        // 100 bytes more at 1000 B/s: 100 ms of debt.
        let wait = b.acquire(100, t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After waiting, the debt is paid and the next 100 bytes wait another 100 ms.
        let t1 = t0 + wait;
        let wait = b.acquire(100, t1);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn average_rate_over_many_sends_matches() {
        let mut now = Instant::now();
        let start = now;
        let mut b = TokenBucket::new(50e6, 64e3, now);
        let mut sent = 0u64;
        for _ in 0..100_000 {
            now += b.acquire(1024, now);
            sent += 1024;
        }
        let rate = sent as f64 / (now - start).as_secs_f64();
        assert!((rate / 50e6 - 1.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn idle_time_does_not_bank_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 100.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.acquire(100, later), Duration::ZERO);
        assert!(b.acquire(1, later) > Duration::ZERO);
    }
}
