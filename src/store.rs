//! Object storage through the object_store crate, behind one facade that adds a deadline per
//! request, retries with jittered exponential backoff for transient failures (5xx, 503 SlowDown,
//! timeouts — object_store reports them as `Generic`), and Prometheus metrics of requests and
//! bytes per operation.
//!
//! URLs: `file:///abs/path` (the embedded default is `{data-dir}/objects`), `memory://` (tests),
//! `s3://bucket/prefix` (AWS S3 and MinIO, configured by the standard `AWS_*` variables:
//! AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, AWS_REGION, credentials, or explicit options by
//! object_store's key names, which win over the environment).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::Rng;

mod abort_on_drop;
mod metered;

/// Deadline of one attempt of a small request (manifests, ranged reads, lists, deletes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Part size of multipart uploads: object stores want >= 5 MiB; larger parts mean fewer PUTs.
pub const MULTIPART_PART_BYTES: usize = 16 << 20;
/// Objects per bulk delete: S3's DeleteObjects takes at most 1000 keys.
const DELETE_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store URL {0:?}: {1}")]
    Url(String, String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The objects asked for may not be used yet (the remote data of a deleted topic of the same
    /// name is still being deleted); retriable.
    #[error("{0}")]
    Unavailable(String),
    #[error("object store {op} failed after {attempts} attempts: {source}")]
    Failed {
        op: &'static str,
        attempts: u32,
        source: object_store::Error,
    },
    /// The failure of a request that several readers waited on together.
    #[error("{0}")]
    Shared(Arc<StoreError>),
}

#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

/// Whether an error may go away on retry.
fn transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

impl Store {
    /// Opens the store named by `url`; `file://` directories are created.
    pub fn from_url(url: &str) -> Result<Store, StoreError> {
        Store::from_url_with_options(url, &BTreeMap::new())
    }

    /// Like [`Store::from_url`], with settings of an s3:// store (`endpoint`, `region`,
    /// `allow_http`, credentials, ... as object_store's `AmazonS3ConfigKey` names them) applied
    /// over the `AWS_*` environment. Other schemes take no options.
    pub fn from_url_with_options(
        url: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Store, StoreError> {
        let bad = |m: String| StoreError::Url(url.to_string(), m);
        let (inner, prefix): (Arc<dyn ObjectStore>, Path) =
            if url == "memory://" || url == "memory:///" {
                (
                    Arc::new(object_store::memory::InMemory::new()),
                    Path::default(),
                )
            } else if let Some(dir) = url.strip_prefix("file://") {
                if !dir.starts_with('/') {
                    return Err(bad(
                        "file:// needs an absolute path (file:///abs/path)".into()
                    ));
                }
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(fs), Path::default())
            } else if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket".into()));
                }
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in options {
                    let key: object_store::aws::AmazonS3ConfigKey = key
                        .parse()
                        .map_err(|e| bad(format!("object store option {key:?}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(s3), Path::from(prefix.trim_matches('/')))
            } else {
                return Err(bad(
                    "expected file:///abs/path, s3://bucket/prefix or memory://".into(),
                ));
            };
        if !options.is_empty() && !url.starts_with("s3://") {
            return Err(bad("object store options apply to s3:// stores only".into()));
        }
        Ok(Store {
            inner: Arc::new(metered::Metered::new(inner)),
            prefix,
            url: url.to_string(),
        })
    }

    /// Wraps an existing store (tests inject failing or slow stores this way).
    pub fn from_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store {
            inner: Arc::new(metered::Metered::new(inner)),
            prefix: Path::default(),
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// `rel` below the store's prefix.
    pub fn path(&self, rel: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{}", self.prefix, rel))
        }
    }

    /// The inverse of [`Store::path`]: `path` relative to the store's prefix (the form the
    /// manifests and the cold-read cache name files by), or `None` when it is outside it.
    pub fn relative(&self, path: &Path) -> Option<String> {
        if self.prefix.as_ref().is_empty() {
            return Some(path.to_string());
        }
        path.prefix_match(&self.prefix).map(|parts| {
            parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    /// Runs `attempt` with a deadline each time, retrying transient failures with jittered
    /// exponential backoff.
    async fn retry<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(object_store::Error::Generic {
                    store: "strata",
                    source: format!("{op} timed out after {REQUEST_TIMEOUT:?}").into(),
                }),
            };
            match outcome {
                Ok(v) => {
                    metrics::counter!("strata_object_store_requests_total", "op" => op, "outcome" => "ok").increment(1);
                    return Ok(v);
                }
                Err(object_store::Error::NotFound { path, .. }) => {
                    metrics::counter!("strata_object_store_requests_total", "op" => op, "outcome" => "not_found").increment(1);
                    return Err(StoreError::NotFound(path));
                }
                Err(object_store::Error::AlreadyExists { path, .. })
                | Err(object_store::Error::Precondition { path, .. }) => {
                    metrics::counter!("strata_object_store_requests_total", "op" => op, "outcome" => "exists").increment(1);
                    return Err(StoreError::AlreadyExists(path));
                }
                Err(e) if transient(&e) && tries < MAX_ATTEMPTS => {
                    metrics::counter!("strata_object_store_requests_total", "op" => op, "outcome" => "retry").increment(1);
                    let backoff = BACKOFF_BASE.saturating_mul(1 << tries).min(BACKOFF_MAX);
                    let jitter = rand::rng().random_range(0.5..1.0);
                    tracing::debug!(op, tries, error = %e, "object store request failed; retrying");
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                }
                Err(e) => {
                    metrics::counter!("strata_object_store_requests_total", "op" => op, "outcome" => "error").increment(1);
                    return Err(StoreError::Failed {
                        op,
                        attempts: tries,
                        source: e,
                    });
                }
            }
        }
    }

    /// Writes `body` only if nothing exists at `path` (the commit of numbered manifests).
    pub async fn put_if_absent(&self, path: &Path, body: Bytes) -> Result<(), StoreError> {
        let len = body.len() as u64;
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.retry("put", || {
            self.inner
                .put_opts(path, PutPayload::from_bytes(body.clone()), opts())
        })
        .await?;
        metrics::counter!("strata_object_store_bytes_total", "op" => "put").increment(len);
        Ok(())
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, StoreError> {
        let bytes = self
            .retry("get", || async {
                self.inner.get(path).await?.bytes().await
            })
            .await?;
        metrics::counter!("strata_object_store_bytes_total", "op" => "get")
            .increment(bytes.len() as u64);
        Ok(bytes)
    }

    pub async fn get_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, StoreError> {
        let parts = self
            .retry("get", || self.inner.get_ranges(path, ranges))
            .await?;
        let n: usize = parts.iter().map(Bytes::len).sum();
        metrics::counter!("strata_object_store_bytes_total", "op" => "get").increment(n as u64);
        Ok(parts)
    }

    pub async fn head(&self, path: &Path) -> Result<ObjectMeta, StoreError> {
        self.retry("head", || self.inner.head(path)).await
    }

    /// Every object below `rel_prefix`.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = self.path(rel_prefix);
        self.retry("list", || {
            self.inner.list(Some(&prefix)).try_collect::<Vec<_>>()
        })
        .await
    }

    /// Deletes `paths`; missing objects are not an error. S3 deletes up to 1000 in one request
    /// (DeleteObjects); other stores delete one by one. Each thousand is retried as a whole.
    pub async fn delete_all(&self, paths: &[Path]) -> Result<(), StoreError> {
        for batch in paths.chunks(DELETE_BATCH) {
            self.retry("delete", || {
                let locations = futures::stream::iter(Vec::from(batch).into_iter().map(Ok));
                self.inner
                    .delete_stream(futures::StreamExt::boxed(locations))
                    .map_ok(drop)
                    .or_else(|e| match e {
                        object_store::Error::NotFound { .. } => futures::future::ready(Ok(())),
                        e => futures::future::ready(Err(e)),
                    })
                    .try_collect::<()>()
            })
            .await?;
        }
        Ok(())
    }

    /// A streaming writer that uploads large objects in multipart parts. Callers `abort` it on
    /// failure; an upload dropped unfinished is aborted anyway (`abort_on_drop`). object_store's
    /// own client retries each part.
    pub fn writer(&self, path: Path) -> BufWriter {
        BufWriter::with_capacity(self.inner.clone(), path, MULTIPART_PART_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_if_absent_and_listing_on_memory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file_url = format!("file://{}", dir.path().join("objects").display());
        for url in ["memory://", file_url.as_str()] {
            let store = Store::from_url(url).unwrap();
            let p = store.path("_strata/manifests/x/00000000000000000001.json");
            store
                .put_if_absent(&p, Bytes::from_static(b"one"))
                .await
                .unwrap();
            let again = store.put_if_absent(&p, Bytes::from_static(b"two")).await;
            assert!(
                matches!(again, Err(StoreError::AlreadyExists(_))),
                "{url}: {again:?}"
            );
            assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"one"));
            assert_eq!(store.list("_strata/manifests/x").await.unwrap().len(), 1);
            store.delete_all(&[p.clone(), p.clone()]).await.unwrap();
            store.delete_all(std::slice::from_ref(&p)).await.unwrap();
            assert!(matches!(store.get(&p).await, Err(StoreError::NotFound(_))));
            // More than one bulk request's worth, with missing objects among them.
            let mut many = Vec::new();
            for i in 0..1003 {
                let p = store.path(&format!("bulk/{i:04}"));
                if i % 100 != 7 {
                    store.put_if_absent(&p, Bytes::new()).await.unwrap();
                }
                many.push(p);
            }
            let kept = store.path("bulkx/0");
            store.put_if_absent(&kept, Bytes::new()).await.unwrap();
            assert_eq!(store.list("bulk").await.unwrap().len(), 993);
            store.delete_all(&many).await.unwrap();
            assert!(store.list("bulk").await.unwrap().is_empty());
            assert_eq!(store.list("bulkx").await.unwrap().len(), 1);
        }
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for url in ["ftp://x", "file://relative", "s3://", "nonsense"] {
            assert!(Store::from_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn s3_options_are_checked() {
        let opts = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let good = opts("endpoint", "http://127.0.0.1:9000");
        assert!(Store::from_url_with_options("s3://bucket/prefix", &good).is_ok());
        assert!(Store::from_url_with_options("memory://", &good).is_err());
        let unknown = opts("no_such_option", "1");
        let err = Store::from_url_with_options("s3://bucket", &unknown).unwrap_err();
        assert!(err.to_string().contains("no_such_option"), "{err}");
    }
}
