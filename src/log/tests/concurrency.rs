//! The log under a `RwLock`: readers through `&Log` while a writer appends, and flushing
//! outside the lock.

use std::sync::{Arc, RwLock};

use super::{batch, small_config};
use crate::log::Log;
use crate::record::batch::split_batches;

#[test]
fn log_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
    check::<super::FlushHandle>();
}

#[test]
fn concurrent_readers_see_whole_continuing_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(RwLock::new(
        Log::open(dir.path(), small_config(), 0).expect("open"),
    ));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                let mut b = batch(1 + i % 4, 10 + (i * 13) % 200, i as i64, i as i64);
                log.write()
                    .expect("lock")
                    .append(&mut b, 0, 0)
                    .expect("append");
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reads = 0;
                let mut offset = 0i64;
                while reads < 2000 {
                    let guard = log.read().expect("lock");
                    let end = guard.log_end_offset();
                    let res = guard.read(offset, 700, end, true).expect("read");
                    drop(guard);
                    let (batches, whole) = split_batches(&res.bytes);
                    assert_eq!(whole, res.bytes.len());
                    let mut expected = None;
                    for (h, _) in &batches {
                        assert!(h.last_offset() < end);
                        if let Some(e) = expected {
                            assert_eq!(h.base_offset, e);
                        } else {
                            assert!(h.base_offset <= offset && offset <= h.last_offset());
                        }
                        expected = Some(h.last_offset() + 1);
                    }
                    offset = match expected {
                        Some(next) => next,
                        None => (offset + 7 * (r + 1)) % (end + 1),
                    };
                    if offset >= end {
                        offset = 0;
                    }
                    reads += 1;
                }
            })
        })
        .collect();
    writer.join().expect("writer");
    for r in readers {
        r.join().expect("reader");
    }
}

#[test]
fn flush_outside_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = RwLock::new(Log::open(dir.path(), small_config(), 0).expect("open"));
    for i in 0..50 {
        let mut b = batch(2, 100, i, i);
        log.write()
            .expect("lock")
            .append(&mut b, 0, 0)
            .expect("append");
    }
    let handle = log.read().expect("lock").flush_handle();
    assert_eq!(handle.target(), 100);
    // Appends continue while the fsync runs.
    for i in 0..50 {
        let mut b = batch(2, 100, i, i);
        log.write()
            .expect("lock")
            .append(&mut b, 0, 0)
            .expect("append");
    }
    let synced = handle.sync().expect("sync");
    let mut guard = log.write().expect("lock");
    guard.mark_flushed(synced).write().expect("mark");
    assert_eq!(guard.recovery_point(), 100);
    guard.mark_flushed(50).write().expect("never backwards");
    assert_eq!(guard.recovery_point(), 100);
}
