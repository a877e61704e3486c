//! The wire-level view of object-store traffic: every request the backend is asked to make
//! (each multipart part, each coalesced ranged GET, each LIST page stream) is counted with its
//! bytes, per operation and per topic (taken from the `topic=` segment of the object's path).
//! These are the figures that object-store bills and request-per-GiB budgets are about; the
//! facade's own `strata_object_store_requests_total` counts calls and their retries.
//!
//! Metrics: `strata_object_store_ops_total{op,topic}` and
//! `strata_object_store_op_bytes_total{op,topic}`, op one of put, put_part,
//! multipart_create, multipart_complete, multipart_abort, get, head, list, delete, copy.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn ObjectStore>,
}

impl Metered {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Metered {
        Metered { inner }
    }
}

/// The topic an object belongs to: the value of its `topic=` path segment, or "-".
fn topic_of(path: Option<&Path>) -> String {
    path.and_then(|p| {
        p.as_ref()
            .split('/')
            .find_map(|part| part.strip_prefix("topic="))
            .map(str::to_string)
    })
    .unwrap_or_else(|| "-".to_string())
}

fn count(op: &'static str, path: Option<&Path>, bytes: u64) {
    let topic = topic_of(path);
    metrics::counter!("strata_object_store_ops_total", "op" => op, "topic" => topic.clone())
        .increment(1);
    if bytes > 0 {
        metrics::counter!("strata_object_store_op_bytes_total", "op" => op, "topic" => topic)
            .increment(bytes);
    }
}

impl fmt::Display for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Metered {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        count("put", Some(location), payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        count("multipart_create", Some(location), 0);
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        // The guard sits outside the meter, so its aborts are counted as multipart_abort.
        Ok(Box::new(super::abort_on_drop::AbortOnDrop::new(
            Box::new(MeteredUpload {
                inner: upload,
                location: location.clone(),
            }),
            location.to_string(),
        )))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let result = self.inner.get_opts(location, options).await;
        let bytes = match (&result, op) {
            (Ok(r), "get") => r.range.end.saturating_sub(r.range.start),
            _ => 0,
        };
        count(op, Some(location), bytes);
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counted = locations
            .inspect(|l| {
                if let Ok(path) = l {
                    count("delete", Some(path), 0);
                }
            })
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        count("list", prefix, 0);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        count("list", prefix, 0);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        count("copy", Some(to), 0);
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        count(
            "put_part",
            Some(&self.location),
            data.content_length() as u64,
        );
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        count("multipart_complete", Some(&self.location), 0);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        count("multipart_abort", Some(&self.location), 0);
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_comes_from_the_hive_segment() {
        assert_eq!(
            topic_of(Some(&Path::from("p/topic=orders/partition=3/x.parquet"))),
            "orders"
        );
        assert_eq!(
            topic_of(Some(&Path::from(
                "_strata/manifests/topic=a.b/partition=0/00000000000000000001.json"
            ))),
            "a.b"
        );
        assert_eq!(topic_of(Some(&Path::from("other/key"))), "-");
        assert_eq!(topic_of(None), "-");
    }
}
