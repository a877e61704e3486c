//! Noticing that this node did not run for a while (SIGSTOP, a paused VM, a starved runtime).
//!
//! A QUIC connection learns its round-trip time from acknowledgements. After a pause, the
//! acknowledgements that arrived meanwhile are read at once, each a round trip as long as the
//! pause, and the connection's estimate (and with it its probe timeout) balloons: a pause of
//! 14 s left a connection that took 47 s to notice its peer was gone, since QUIC stretches the
//! idle timeout to three probe timeouts. The peers' side of each connection learns the same
//! from our late acknowledgements. So after a pause longer than [`threshold`], the endpoint
//! closes every connection it has; the next call makes a fresh one.

use std::time::{Duration, Instant};

/// How often the endpoint looks at the clock.
pub const TICK: Duration = Duration::from_millis(100);

/// The longest gap between ticks that leaves the connections alone: a pause of `g` stretches
/// the idle timeout to about 3.4 `g`, so half the idle timeout keeps a dead peer noticed
/// within about 1.7 idle timeouts (still well inside the session), and 500 ms keeps a busy
/// runtime's hiccup from closing anything.
pub fn threshold(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).max(Duration::from_millis(500))
}

/// The time between ticks, watched.
#[derive(Debug)]
pub struct PauseWatch {
    last: Instant,
    threshold: Duration,
}

impl PauseWatch {
    pub fn new(now: Instant, threshold: Duration) -> PauseWatch {
        PauseWatch {
            last: now,
            threshold,
        }
    }

    /// A tick at `now`: the gap since the last one if it was a pause.
    pub fn observe(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        (gap > self.threshold).then_some(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gap_past_the_threshold_is_a_pause() {
        let start = Instant::now();
        let threshold = threshold(Duration::from_secs(4));
        assert_eq!(threshold, Duration::from_secs(2));
        assert_eq!(
            super::threshold(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        let mut watch = PauseWatch::new(start, threshold);
        let mut now = start;
        for _ in 0..10 {
            now += TICK;
            assert_eq!(watch.observe(now), None);
        }
        now += Duration::from_secs(2);
        assert_eq!(
            watch.observe(now),
            None,
            "exactly the threshold is no pause"
        );
        now += Duration::from_secs(14);
        assert_eq!(watch.observe(now), Some(Duration::from_secs(14)));
        now += TICK;
        assert_eq!(watch.observe(now), None, "measured from the last tick");
        // A clock read out of order (two threads) is no pause.
        assert_eq!(watch.observe(now - TICK), None);
    }
}
