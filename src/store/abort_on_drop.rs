//! A multipart upload that is aborted when it is dropped unfinished.
//!
//! object_store's `BufWriter` aborts an upload only when asked (`BufWriter::abort`), and that is
//! impossible once its shutdown has begun: a part that fails is only noticed when the writer is
//! closed (`WriteMultipart::finish` waits for the parts), and that error drops the upload without
//! aborting it. S3 and GCS keep the parts of an upload that is neither completed nor aborted
//! (billed, invisible to LIST) until a lifecycle rule removes them. So every multipart upload
//! made through [`crate::store::Store`] is wrapped in this guard: dropped without a successful
//! `complete` or an `abort`, it aborts itself in a background task — whatever the failure path,
//! a cancelled offload included. (object_store's `LocalFileSystem` does the same for its staging
//! file.) A failed abort is logged; the bucket's lifecycle rule is the last resort.

use async_trait::async_trait;
use object_store::{MultipartUpload, PutPayload, PutResult, Result, UploadPart};

#[derive(Debug)]
pub struct AbortOnDrop {
    /// `None` only while dropping.
    inner: Option<Box<dyn MultipartUpload>>,
    location: String,
    /// Completed, or an abort was attempted: nothing to clean up on drop.
    settled: bool,
}

impl AbortOnDrop {
    pub fn new(inner: Box<dyn MultipartUpload>, location: String) -> AbortOnDrop {
        AbortOnDrop {
            inner: Some(inner),
            location,
            settled: false,
        }
    }

    fn inner(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.inner.as_mut().expect("upload present until dropped")
    }
}

#[async_trait]
impl MultipartUpload for AbortOnDrop {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner().put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner().complete().await;
        // A failed completion is aborted by the caller or, failing that, on drop.
        self.settled = result.is_ok();
        result
    }

    async fn abort(&mut self) -> Result<()> {
        self.settled = true;
        self.inner().abort().await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (Some(mut inner), location) = (self.inner.take(), std::mem::take(&mut self.location))
        else {
            return;
        };
        metrics::counter!("strata_object_store_multipart_abandoned_total").increment(1);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Through the runtime's handle, not `telemetry::spawn`: a drop outside a runtime
                // must not panic. The scope is carried over all the same.
                #[allow(clippy::disallowed_methods)]
                runtime.spawn(crate::telemetry::in_current_scope(async move {
                    match inner.abort().await {
                        Ok(()) => tracing::debug!(path = location, "unfinished multipart upload aborted"),
                        Err(e) => tracing::warn!(path = location, error = %e, "aborting an unfinished multipart upload failed; the bucket's lifecycle rule must remove its parts"),
                    }
                }));
            }
            Err(_) => tracing::warn!(
                path = location,
                "unfinished multipart upload dropped outside a runtime; the bucket's lifecycle rule must remove its parts"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts aborts; parts and completion succeed.
    #[derive(Debug)]
    struct Counting(Arc<AtomicU64>);

    #[async_trait]
    impl MultipartUpload for Counting {
        fn put_part(&mut self, _data: PutPayload) -> UploadPart {
            Box::pin(async { Ok(()) })
        }

        async fn complete(&mut self) -> Result<PutResult> {
            Ok(PutResult {
                e_tag: None,
                version: None,
            })
        }

        async fn abort(&mut self) -> Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn only_an_unfinished_upload_is_aborted_on_drop_and_only_once() {
        let aborts = Arc::new(AtomicU64::new(0));
        let guarded = || AbortOnDrop::new(Box::new(Counting(aborts.clone())), "p".into());

        let mut completed = guarded();
        completed
            .put_part(PutPayload::from_static(b"x"))
            .await
            .unwrap();
        completed.complete().await.unwrap();
        drop(completed);
        settle().await;
        assert_eq!(aborts.load(Ordering::SeqCst), 0);

        let mut aborted = guarded();
        aborted.abort().await.unwrap();
        drop(aborted);
        settle().await;
        assert_eq!(aborts.load(Ordering::SeqCst), 1);

        let mut abandoned = guarded();
        abandoned
            .put_part(PutPayload::from_static(b"x"))
            .await
            .unwrap();
        drop(abandoned);
        settle().await;
        assert_eq!(aborts.load(Ordering::SeqCst), 2);
    }
}
