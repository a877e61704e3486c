//! The admin HTTP server has limits (issue 17): a connection cap, a header-read timeout, an idle
//! timeout and body limits per route.

#![allow(clippy::disallowed_methods)]

use crate::support;
use std::time::{Duration, Instant};

use support::{http_get, metric, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn closed_within(mut stream: TcpStream, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// One GET on an open connection; the status code.
async fn get_on(stream: &mut TcpStream, path: &str, extra: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_is_closed_at_once_and_healthz_still_answers() {
    let broker = TestBroker::start(&[]).await;
    let admin = broker.admin();
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(TcpStream::connect(&admin).await.unwrap());
    }
    support::eventually("256 admin connections open", || async {
        metric(
            &broker.running,
            "strata_connections_open",
            "listener=\"admin\"",
        ) == 256.0
    })
    .await;
    for i in 256..300 {
        let over = TcpStream::connect(&admin).await.unwrap();
        assert!(
            closed_within(over, Duration::from_secs(2)).await.is_some(),
            "connection {} closed at once",
            i + 1
        );
    }
    assert_eq!(
        metric(
            &broker.running,
            "strata_connections_refused_total",
            "listener=\"admin\""
        ),
        44.0
    );
    // The admitted ones are served.
    assert_eq!(get_on(&mut held[0], "/healthz", "").await, 200);
    drop(held);
    support::eventually("the idle ones are gone", || async {
        metric(
            &broker.running,
            "strata_connections_open",
            "listener=\"admin\"",
        ) == 0.0
    })
    .await;
    assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    let broker = TestBroker::start(&[
        ("strata.admin.header.read.timeout.ms", "1000"),
        ("strata.admin.idle.timeout.ms", "1500"),
    ])
    .await;
    let admin = broker.admin();
    let mut slow = TcpStream::connect(&admin).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = closed_within(slow, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(800)),
        "headers that never finish: closed after {closed:?}"
    );
    let idle = TcpStream::connect(&admin).await.unwrap();
    assert!(closed_within(idle, Duration::from_secs(10)).await.is_some());
    // A connection that made a request and then idles is closed too.
    let mut used = TcpStream::connect(&admin).await.unwrap();
    assert_eq!(get_on(&mut used, "/healthz", "").await, 200);
    assert!(closed_within(used, Duration::from_secs(10)).await.is_some());
    assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_limited_per_route() {
    let broker = TestBroker::start(&[]).await;
    let mut conn = TcpStream::connect(broker.admin()).await.unwrap();
    let code = get_on(&mut conn, "/metrics", "Content-Length: 100000000\r\n").await;
    assert_eq!(code, 413, "a GET route takes no body");
    assert_eq!(http_get(&broker.admin(), "/metrics").await.0, 200);
    broker.running.shutdown().await;
}
