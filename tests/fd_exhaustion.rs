//! Auto-create with the open-file limit exhausted (issue 17): KAFKA_STORAGE_ERROR, no directory
//! left behind (before, each failed attempt left an empty `*-stray` directory), and auto-create
//! works again once descriptors free up; meanwhile failed accepts back off and are logged at
//! most once a second. The broker runs as a child process whose open-file limit (soft and hard)
//! is lowered with setrlimit, so the test process keeps its own.

#![allow(clippy::disallowed_methods)]

use crate::support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, MetadataRequest,
    MetadataResponse,
};
use kafka_protocol::protocol::StrBytes;
use support::{topic_name, KafkaConn};
use tokio::net::TcpStream;

const OPEN_FILES: u64 = 200;
const KAFKA_STORAGE_ERROR: i16 = 56;

struct Child9(Child);

impl Drop for Child9 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the broker with its open-file limit at [`OPEN_FILES`], logging warnings to `log`.
fn start(dir: &Path, port: u16, log: &Path) -> Child9 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .args(["serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--set", "max.connections=100000"])
        .args(["--set", "offsets.topic.num.partitions=1"])
        .args(["--set", "remote.log.storage.system.enable=false"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: OPEN_FILES,
                rlim_max: OPEN_FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Child9(command.spawn().expect("spawn strata"));
    support::ready_line(&mut child.0);
    child
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Opens or closes idle connections until the broker has exactly `free` descriptors left.
async fn leave_free(pid: u32, addr: &str, fillers: &mut Vec<TcpStream>, free: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "could not leave {free} descriptors free"
        );
        let open = open_fds(pid);
        if open + free == OPEN_FILES {
            // Settled: nothing transient in flight.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if open_fds(pid) == open {
                return;
            }
            continue;
        }
        if open + free < OPEN_FILES {
            fillers.push(TcpStream::connect(addr).await.unwrap());
        } else {
            fillers.pop();
        }
        let moved = Instant::now();
        while open_fds(pid) == open && moved.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn auto_create(conn: &mut KafkaConn, topic: &str) -> i16 {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        .with_allow_auto_topic_creation(true);
    let r: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request).await;
    r.topics[0].error_code
}

async fn set_retention(conn: &mut KafkaConn, topic: &str, ms: u64) -> i16 {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from(topic.to_string()))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from(ms.to_string())))]),
    ]);
    let r: IncrementalAlterConfigsResponse = conn
        .call(ApiKey::IncrementalAlterConfigs, 1, &request)
        .await;
    r.responses[0].error_code
}

/// Directories in topics/ that belong to `topic` or are left-overs of any failed creation.
fn left_behind(dir: &Path, topic: &str) -> Vec<String> {
    std::fs::read_dir(dir.join("topics"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{topic}-")) || n.ends_with("-stray"))
                .collect()
        })
        .unwrap_or_default()
}

/// The broker's "accept failed" log lines: for each, the number of failed accepts it stands
/// for.
fn accept_failures_logged(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .map(|l| {
            l.split_once(" errors=")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                .unwrap_or(1)
        })
        .collect()
}

/// With no descriptor free, connections wait in the listen backlog and every accept fails
/// (EMFILE): the broker backs off instead of spinning and logs it at most once a second
/// (before: ~20 lines a second).
async fn accept_errors_back_off(pid: u32, addr: &str, fillers: &mut Vec<TcpStream>, log: &Path) {
    leave_free(pid, addr, fillers, 0).await;
    let before = accept_failures_logged(log).len();
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logged = accept_failures_logged(log).split_off(before);
    let window = started.elapsed().as_secs() + 1;
    let failures: u64 = logged.iter().sum();
    eprintln!(
        "{} accept-failure lines for {failures} failures in {:?}",
        logged.len(),
        started.elapsed()
    );
    assert!(!logged.is_empty(), "accepts failed and were logged");
    assert!(
        logged.len() as u64 <= window,
        "at most one line a second: {logged:?}"
    );
    // Backing off from 10 ms, doubling to 1 s: about ten failures in three seconds.
    assert!(failures <= 30, "backed off, not spinning: {logged:?}");
    // Their turn comes once descriptors are free (they are accepted and end at once).
    drop(waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_with_descriptors_exhausted_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = support::reusable_port();
    let log = tmp.path().join("broker.log");
    let broker = start(&dir, port, &log);
    let pid = broker.0.id();
    let addr = format!("127.0.0.1:{port}");
    let mut client = KafkaConn::connect(&addr).await;
    assert_eq!(auto_create(&mut client, "warm").await, 0);

    // From no descriptor free to a few: each creation fails somewhere else (the catalogue, the
    // directory, the segment files) or succeeds.
    let mut fillers = Vec::new();
    // The metadata quorum writes its log, vote and commit mark through descriptors it opened
    // at start: with none free it still commits (before, the commit mark's write failed and
    // openraft stopped for good).
    leave_free(pid, &addr, &mut fillers, 0).await;
    for ms in 1..=5 {
        assert_eq!(
            set_retention(&mut client, "warm", 3_600_000 * ms).await,
            0,
            "config change {ms} with no descriptor free"
        );
    }
    let mut codes = Vec::new();
    for free in 0..6 {
        leave_free(pid, &addr, &mut fillers, free).await;
        let topic = format!("auto{free}");
        let code = auto_create(&mut client, &topic).await;
        if code != 0 {
            assert_eq!(
                code, KAFKA_STORAGE_ERROR,
                "{topic} with {free} descriptors free"
            );
            support::eventually(&format!("nothing of {topic} left"), || async {
                left_behind(&dir, &topic).is_empty()
            })
            .await;
        }
        codes.push((topic, code));
    }
    eprintln!("auto-create with 0..6 descriptors free: {codes:?}");
    assert!(codes.iter().any(|(_, c)| *c == KAFKA_STORAGE_ERROR));

    accept_errors_back_off(pid, &addr, &mut fillers, &log).await;

    drop(fillers);
    for (topic, _) in &codes {
        support::eventually(
            &format!("{topic} is created once descriptors are back"),
            || async { auto_create(&mut KafkaConn::connect(&addr).await, topic).await == 0 },
        )
        .await;
    }
    let strays: Vec<_> = left_behind(&dir, "-")
        .into_iter()
        .chain(
            std::fs::read_dir(dir.join("topics"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("-delete")),
        )
        .collect();
    assert!(strays.is_empty(), "left behind: {strays:?}");
    drop(broker);
}
