//! Kafka's replication throttles (KIP-73): `leader.replication.throttled.rate` bounds the
//! bytes a leader serves to the replicas its topics list in
//! `leader.replication.throttled.replicas`, `follower.replication.throttled.rate` the bytes a
//! follower fetches for those listed in `follower.replication.throttled.replicas`; in-sync
//! replicas are never throttled (as in Kafka, a throttle slows catch-up and reassignment, not
//! the high watermark). One bucket per broker and side, shared by its throttled partitions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bench::token_bucket::TokenBucket;

/// A token bucket in bytes that fills at the rate up to a tenth of a second's worth; a
/// transfer may take it below zero (a fetch is never split) and whoever paid into debt waits
/// until it is repaid, so over any window the bytes stay within the rate plus one fetch and a
/// tenth of a second.
pub struct Throttle {
    bucket: Mutex<TokenBucket>,
}

impl Throttle {
    /// `None` for Kafka's "unlimited" (Long.MAX_VALUE, the default).
    pub fn new(rate: i64) -> Option<Throttle> {
        (rate > 0 && rate < i64::MAX).then(|| Throttle {
            bucket: Mutex::new(TokenBucket::new(
                rate as f64,
                rate as f64 / 10.0,
                Instant::now(),
            )),
        })
    }

    /// Takes `bytes` out of the bucket; how long the caller must wait before going on.
    fn charge_at(&self, bytes: usize, now: Instant) -> Duration {
        let mut bucket = self.bucket.lock().expect("throttle lock");
        bucket.acquire(bytes as u64, now)
    }

    /// Takes `bytes` out of the bucket and waits out any debt (counted in
    /// `strata_replica_throttled_ms_total` by side).
    pub async fn pay(&self, bytes: usize, side: &'static str) {
        let wait = self.charge_at(bytes, Instant::now());
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
    fn fetches_of_64_kib_average_the_rate_over_10_s() {
        let t = Throttle::new(1_000_000).unwrap();
        let start = Instant::now();
        let (mut now, mut sent) = (start, 0usize);
        while now.duration_since(start) < Duration::from_secs(10) {
            now += t.charge_at(65_536, now);
            sent += 65_536;
        }
        let rate = sent as f64 / now.duration_since(start).as_secs_f64();
        assert!((950_000.0..=1_020_000.0).contains(&rate), "{rate}");
    }
}
