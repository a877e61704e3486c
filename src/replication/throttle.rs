//! Kafka's replication throttles (KIP-73): `leader.replication.throttled.rate` bounds the
//! bytes a leader serves to the replicas its topics list in
//! `leader.replication.throttled.replicas`, `follower.replication.throttled.rate` the bytes a
//! follower fetches for those listed in `follower.replication.throttled.replicas`; in-sync
//! replicas are never throttled (as in Kafka, a throttle slows catch-up and reassignment, not
//! the high watermark). One bucket per broker and side, shared by its throttled partitions.

use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

/// A token bucket in bytes: it fills at `rate` per second up to a tenth of a second's worth,
/// and a transfer may take it below zero (a fetch is never split); whoever paid into debt
/// waits until it is repaid, so over any window the bytes stay within the rate plus one fetch
/// and a tenth of a second.
pub struct Throttle {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// `None` for Kafka's "unlimited" (Long.MAX_VALUE, the default).
    pub fn new(rate: i64) -> Option<Throttle> {
        (rate > 0 && rate < i64::MAX).then(|| Throttle {
            rate: rate as f64,
            state: Mutex::new((rate as f64 / 10.0, Instant::now())),
        })
    }

    fn burst(&self) -> f64 {
        self.rate / 10.0
    }

    /// Takes `bytes` out of the bucket; how long the caller must wait before going on.
    pub fn charge(&self, bytes: usize) -> Duration {
        self.charge_at(bytes, Instant::now())
    }

    fn charge_at(&self, bytes: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().expect("throttle lock");
        let (tokens, since) = *state;
        let tokens = (tokens + now.saturating_duration_since(since).as_secs_f64() * self.rate)
            .min(self.burst())
            - bytes as f64;
        *state = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// [`Throttle::charge`], then the wait (counted in `strata_replica_throttled_ms_total` by
    /// side).
    pub async fn pay(&self, bytes: usize, side: &'static str) {
        let wait = self.charge(bytes);
        if !wait.is_zero() {
            metrics::counter!("strata_replica_throttled_ms_total", "side" => side)
                .increment(wait.as_millis() as u64);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_is_no_throttle() {
        assert!(Throttle::new(i64::MAX).is_none());
        assert!(Throttle::new(0).is_none());
        assert!(Throttle::new(1 << 20).is_some());
    }

    #[test]
    fn a_steady_transfer_averages_the_rate() {
        let t = Throttle::new(1_000_000).unwrap();
        let start = t.state.lock().unwrap().1;
        let (mut now, mut sent) = (start, 0usize);
        // 64 KiB fetches, each waiting for its debt: 10 s of them.
        while now.duration_since(start) < Duration::from_secs(10) {
            now += t.charge_at(65_536, now);
            sent += 65_536;
        }
        let rate = sent as f64 / now.duration_since(start).as_secs_f64();
        assert!((950_000.0..=1_020_000.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_fetch_larger_than_the_burst_goes_at_once_and_the_next_waits() {
        let t = Throttle::new(100_000).unwrap();
        let now = t.state.lock().unwrap().1;
        assert_eq!(t.charge_at(10_000, now), Duration::ZERO);
        assert_eq!(t.charge_at(50_000, now), Duration::from_millis(500));
        // Idle time refills the bucket, but only up to a tenth of a second's worth.
        let later = now + Duration::from_secs(60);
        assert_eq!(t.charge_at(10_000, later), Duration::ZERO);
        assert_eq!(t.charge_at(10_000, later), Duration::from_millis(100));
    }
}
