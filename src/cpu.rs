//! The broker's bounded pool for CPU-heavy request work: decompressing and validating produced
//! batches (`strata.request.cpu.threads`, default the number of cores).
//!
//! Connections are served by the runtime's few worker threads; a produce request whose batches
//! decompress to tens of MiB held one for seconds, and with a few such connections Metadata,
//! Fetch and heartbeats from everyone else waited (issue 17). Heavy work runs here instead, one
//! batch per job (a job is bounded by `strata.batch.max.decompressed.bytes`), at most `threads`
//! jobs at once, queued first come first served. A connection still awaits its own job before
//! its next request, so its responses stay in order.
//!
//! The pool belongs to the broker's scope ([`crate::telemetry::Telemetry`]), like its metrics:
//! code deep in a partition reaches it with [`run`] without a handle threaded through every
//! layer; outside any scope (unit tests) the work runs inline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::telemetry::Telemetry;

#[derive(Clone)]
pub struct CpuPool {
    slots: Arc<Semaphore>,
    threads: usize,
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl CpuPool {
    /// A pool of `threads` (0: the number of cores).
    pub fn new(threads: usize) -> CpuPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        CpuPool {
            slots: Arc::new(Semaphore::new(threads)),
            threads,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a blocking thread of `scope` once one of the pool's slots is free. A panic in
    /// `f` resumes in the caller, as if `f` had run there.
    pub async fn run<F, R>(&self, scope: &Telemetry, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let queued = Queued::new(&self.queued);
        // Never closed: acquiring cannot fail.
        let slot = self.slots.clone().acquire_owned().await;
        drop(queued);
        let job = scope.spawn_blocking(move || {
            let started = Instant::now();
            let out = f();
            metrics::histogram!("strata_request_cpu_job_seconds")
                .record(started.elapsed().as_secs_f64());
            drop(slot);
            out
        });
        match job.await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down, which drops the waiting task too.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Counts a job waiting for a slot, also when its caller gives up (a dropped connection).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(count: &'a AtomicUsize) -> Queued<'a> {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("strata_request_cpu_queued").set(n as f64);
        Queued(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("strata_request_cpu_queued").set(n as f64);
    }
}

/// Runs `f` on the CPU pool of the broker whose scope this is; inline outside every scope.
pub async fn run<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match crate::telemetry::current() {
        Some(scope) => {
            let pool = scope.cpu().clone();
            pool.run(&scope, f).await
        }
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_jobs_at_once() {
        let scope = Telemetry::with_cpu_threads(1, 2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (running, most, scope) = (running.clone(), most.clone(), scope.clone());
                scope.clone().spawn(async move {
                    run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert!(scope.render().contains("strata_request_cpu_job_seconds"));
    }

    #[tokio::test]
    async fn panics_resume_in_the_caller() {
        let scope = Telemetry::with_cpu_threads(1, 1);
        let job = scope.spawn(async { run(|| panic!("boom")).await });
        assert!(job.await.unwrap_err().is_panic());
        // The slot came back.
        let again = scope.spawn(async { run(|| 7).await });
        assert_eq!(again.await.unwrap(), 7);
    }
}
