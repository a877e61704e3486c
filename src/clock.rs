//! Injected wall clock: code that decides by time (retention, rolling, flush.ms, producer
//! expiry) asks a `Clock`, so tests can move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// A manual clock starting at `ms`, and the handle that moves it.
    pub fn manual(ms: i64) -> (Clock, Arc<AtomicI64>) {
        let t = Arc::new(AtomicI64::new(ms));
        (Clock::Manual(t.clone()), t)
    }
}
