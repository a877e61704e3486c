//! The broker's bounded pool for CPU-heavy request work: decompressing, validating and (for
//! LogAppendTime topics) re-stamping produced batches (`strata.request.cpu.threads`, default
//! the number of cores).
//!
//! Connections are served by the runtime's few worker threads; a produce request whose batches
//! decompress to tens of MiB held one for seconds, and with a few such connections Metadata,
//! Fetch and heartbeats from everyone else waited (issue 17). Heavy work runs here instead
//! ([`prepare_batch`]: every compressed batch; uncompressed ones only above a size), one
//! batch per job (a job is bounded by `strata.batch.max.decompressed.bytes`), at most `threads`
//! jobs at once, queued first come first served. A connection still awaits its own job before
//! its next request, so its responses stay in order, and the queue holds at most one job per
//! connection (`max.connections` bounds it).
//!
//! The threads are the pool's own, at a lower priority than the runtime's (nice 10), so a
//! core taken by decompression is given back to a connection the moment it has work.
//!
//! The pool belongs to the broker's scope ([`crate::telemetry::Telemetry`]), like its metrics:
//! code deep in a partition reaches it with [`run`] without a handle threaded through every
//! layer; outside any scope (unit tests) the work runs inline.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::telemetry::Telemetry;

/// The pool's threads run at this nice level (Linux, per thread): when the cores are all busy,
/// the threads serving connections come first, and the pool still has every idle cycle.
const POOL_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs first come, first served. Cheap to clone; the threads
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct CpuPool {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    stopped: AtomicBool,
    threads: usize,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.ready.notify_all();
    }
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.shared.threads)
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
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            stopped: AtomicBool::new(false),
            threads,
        });
        for i in 0..threads {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("strata-cpu-{i}"))
                .spawn(move || work(&shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a CPU pool thread");
            }
        }
        CpuPool {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        }
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` on one of the pool's threads, in `scope`, after the jobs queued before it. A
    /// panic in `f` resumes in the caller, as if `f` had run there.
    pub async fn run<F, R>(&self, scope: &Telemetry, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scope = scope.clone();
        let shared = self.shared.clone();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                // Its caller is gone (a closed connection): nobody waits for the result.
                return;
            }
            scope.in_scope(|| {
                metrics::gauge!("strata_request_cpu_queued").set(shared.queued() as f64);
                let started = Instant::now();
                let out = std::panic::catch_unwind(AssertUnwindSafe(f));
                metrics::histogram!("strata_request_cpu_job_seconds")
                    .record(started.elapsed().as_secs_f64());
                let _ = tx.send(out);
            });
        });
        let queued = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back(job);
            queue.len()
        };
        self.shared.ready.notify_one();
        metrics::gauge!("strata_request_cpu_queued").set(queued as f64);
        match rx.await {
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // Only when the pool stops, with the broker: its tasks are being dropped too.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Shared {
    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn work(shared: &Shared) {
    lower_priority();
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(job) = queue.pop_front() {
                    break job;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        job();
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority on this thread only; no memory is touched.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, POOL_NICE) != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the CPU pool's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// An uncompressed batch up to this size is prepared where it is (a CRC, a walk over the
/// records and a copy, well under a millisecond): handing it to the pool cost more than the
/// work, about a quarter more broker CPU per produced GiB of 1 KiB records. Compressed batches,
/// whose cost the compressed size does not bound, always go to the pool.
pub const INLINE_VALIDATION_MAX_BYTES: usize = 1 << 20;

/// A produced batch made ready for the log: validated, and copied into the buffer the log
/// stores from.
pub struct PreparedBatch {
    pub validated: crate::record::validate::ValidatedBatch,
    /// The batch as it will be stored, but for the base offset and leader epoch the log sets.
    pub bytes: bytes::BytesMut,
    /// The LogAppendTime stamped into it, if any.
    pub log_append_time_ms: Option<i64>,
}

/// Validates one produced batch (`crate::record::validate`) and makes the copy the log
/// stores, stamped with `log_append_time_ms` for LogAppendTime topics (timestamp type, max
/// timestamp and the CRC over them rewritten: the batch's only re-encoding). On the pool
/// unless the batch is small and uncompressed.
pub async fn prepare_batch(
    records: bytes::Bytes,
    limits: crate::record::validate::ValidationLimits,
    log_append_time_ms: Option<i64>,
) -> Result<PreparedBatch, crate::record::batch::BatchError> {
    use crate::record::batch::{BatchHeader, Codec};
    let uncompressed = BatchHeader::parse(&records)
        .ok()
        .and_then(|h| h.codec().ok())
        == Some(Codec::None);
    let inline = uncompressed && records.len() <= INLINE_VALIDATION_MAX_BYTES;
    let prepare = move || {
        let validated = crate::record::validate::validate_batch(&records, &limits)?;
        let mut bytes = bytes::BytesMut::from(&records[..]);
        if let Some(now_ms) = log_append_time_ms {
            crate::record::batch::set_log_append_time(&mut bytes, now_ms);
        }
        Ok(PreparedBatch {
            validated,
            bytes,
            log_append_time_ms,
        })
    };
    if inline {
        return prepare();
    }
    run(prepare).await
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
        use std::sync::atomic::AtomicUsize;
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

    /// A compressed batch is prepared on the pool: the copy the log stores is the producer's
    /// bytes, or, stamped with LogAppendTime, those bytes with the timestamp type, max timestamp
    /// and CRC rewritten.
    #[tokio::test]
    async fn prepared_batches_are_the_producers_bytes_or_stamped() {
        use crate::record::batch::{check_crc, BatchHeader, Codec};
        use crate::record::builder::BatchBuilder;
        use crate::record::validate::ValidationLimits;
        let scope = Telemetry::with_cpu_threads(1, 1);
        let mut b = BatchBuilder::new(Codec::Gzip);
        for i in 0..100u32 {
            b.record(1_000 + i as i64, None, Some(&i.to_be_bytes()), &[]);
        }
        let batch = bytes::Bytes::from(b.build());
        let limits = ValidationLimits {
            max_batch_bytes: 1 << 20,
            max_decompressed_bytes: 1 << 20,
        };
        let (plain, stamped) = {
            let batch = batch.clone();
            scope
                .clone()
                .spawn(async move {
                    let plain = prepare_batch(batch.clone(), limits, None).await;
                    let stamped = prepare_batch(batch, limits, Some(7_000)).await;
                    (plain, stamped)
                })
                .await
                .unwrap()
        };
        let plain = plain.unwrap();
        assert_eq!(&plain.bytes[..], &batch[..]);
        assert_eq!(plain.validated.record_count, 100);
        assert_eq!(plain.log_append_time_ms, None);
        let stamped = stamped.unwrap();
        assert_eq!(stamped.log_append_time_ms, Some(7_000));
        let header = BatchHeader::parse(&stamped.bytes).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 7_000);
        check_crc(&header, &stamped.bytes).expect("CRC rewritten");
        assert!(
            scope.render().contains("strata_request_cpu_job_seconds"),
            "ran on the pool"
        );
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
