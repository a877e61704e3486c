//! Real S3 servers for the tiering tests, on loopback only: s3s-fs in this process (it outlives
//! broker restarts and child brokers killed with SIGKILL), and moto's `moto_server` as a child
//! process. The broker is pointed at them by explicit object-store options, never by process-wide
//! `AWS_*` variables, because tests run in parallel threads.

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "strata-test";
const SECRET_KEY: &str = "strata-test-secret";
const REGION: &str = "us-east-1";

/// Options that point an s3:// store at `endpoint` (path-style, plain HTTP).
fn options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("endpoint", endpoint),
        ("allow_http", "true"),
        ("region", REGION),
        ("access_key_id", ACCESS_KEY),
        ("secret_access_key", SECRET_KEY),
        ("virtual_hosted_style_request", "false"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `--object-store-option` flags for a child `strata serve`.
pub fn option_args(options: &BTreeMap<String, String>) -> Vec<String> {
    options
        .iter()
        .flat_map(|(k, v)| ["--object-store-option".to_string(), format!("{k}={v}")])
        .collect()
}

/// Knobs and counters of the in-process server, shared with the test.
#[derive(Debug, Default)]
pub struct Hooks {
    /// PUTs of `.parquet` objects stored so far.
    pub parquet_puts: AtomicU64,
    /// How long the response of a `.parquet` PUT is held back after the object is stored, so
    /// that a test can kill the broker between an upload and its manifest commit.
    pub parquet_put_reply_delay_ms: AtomicU64,
}

/// An s3s-fs server on 127.0.0.1, serving a temp directory from its own thread and runtime.
pub struct S3sFs {
    addr: SocketAddr,
    root: tempfile::TempDir,
    hooks: Arc<Hooks>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3sFs {
    /// Starts the server with `bucket` created (s3s-fs keeps a bucket as a directory).
    pub fn start(bucket: &str) -> S3sFs {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let root = tempfile::tempdir().expect("s3s-fs root");
        std::fs::create_dir(root.path().join(bucket)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind s3s-fs");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("s3s-fs addr");
        let hooks = Arc::new(Hooks::default());
        let server_hooks = hooks.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3s-fs".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("s3s-fs runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let (service, hooks) = (service.clone(), server_hooks.clone());
                        let hooked = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                let (service, hooks) = (service.clone(), hooks.clone());
                                async move {
                                    let parquet = req.method() == http::Method::PUT
                                        && req.uri().path().ends_with(".parquet");
                                    let response =
                                        hyper::service::Service::call(&service, req).await;
                                    if parquet
                                        && response.as_ref().is_ok_and(|r| r.status().is_success())
                                    {
                                        hooks.parquet_puts.fetch_add(1, Ordering::SeqCst);
                                        let ms =
                                            hooks.parquet_put_reply_delay_ms.load(Ordering::SeqCst);
                                        tokio::time::sleep(Duration::from_millis(ms)).await;
                                    }
                                    response
                                }
                            },
                        );
                        let conn = http
                            .serve_connection(TokioIo::new(socket), hooked)
                            .into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
                // Dropping the runtime ends the connection tasks.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("s3s-fs thread");
        S3sFs {
            addr,
            root,
            hooks,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn options(&self) -> BTreeMap<String, String> {
        options(&self.endpoint())
    }

    pub fn hooks(&self) -> Arc<Hooks> {
        self.hooks.clone()
    }

    /// The directory holding the buckets.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `moto_server` as a child process on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    port: u16,
}

/// One plain HTTP/1.1 request without a body; the status code, if the server answered.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Serves moto's S3 app one request at a time (HTTP/1.0, no threads).
const SERIAL_MOTO: &str = "import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)
";

impl Moto {
    /// Starts `moto_server` with `bucket` created, or `None` (with the reason printed) when moto
    /// is not installed — unless `STRATA_REQUIRE_EXTERNAL=1`, then it panics.
    pub fn start(test: &str, bucket: &str) -> Option<Moto> {
        Moto::start_with(test, bucket, |port| {
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            cmd
        })
    }

    /// Like [`Moto::start`], but moto handles one request at a time. moto_server (5.2.1) checks
    /// `If-None-Match: *` and then stores the object without a lock while serving requests on
    /// threads, so two racing create-if-absent PUTs can both succeed; served serially, the check
    /// and the write are atomic, as on S3.
    pub fn start_serial(test: &str, bucket: &str) -> Option<Moto> {
        Moto::start_with(test, bucket, |port| {
            let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut cmd = Command::new(python);
            cmd.args(["-c", SERIAL_MOTO, "127.0.0.1", &port.to_string()]);
            cmd
        })
    }

    fn start_with(test: &str, bucket: &str, command: impl FnOnce(u16) -> Command) -> Option<Moto> {
        let installed = Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("STRATA_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!(
                    "{test}: moto_server is not installed and STRATA_REQUIRE_EXTERNAL=1; \
                     `pip install -r tests/clients/requirements.txt` installs it"
                );
            }
            println!("SKIP {test}: moto_server not installed (pip install \"moto[server]\")");
            return None;
        }
        let port = crate::support::reusable_port();
        let child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto");
        let moto = Moto { child, port };
        // Ready when it answers; then create the bucket (moto accepts unsigned requests).
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(port, "GET", "/").is_none() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = http_status(port, "PUT", &format!("/{bucket}"));
        assert_eq!(status, Some(200), "creating bucket {bucket} on moto");
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> BTreeMap<String, String> {
        options(&self.endpoint())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
