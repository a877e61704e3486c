//! Interoperability with real Kafka clients, each against its own `strata serve` process:
//! kcat (Debian's, librdkafka 2.0.2), confluent-kafka (librdkafka 2.x wheel), kafka-python,
//! aiokafka and kafkajs. The client scripts live in `tests/clients/`; each produces a record
//! set with keys, null values, headers (including empty and null header values) and a
//! compression codec, reads it back without a consumer group and exits 1 with a diff when
//! anything differs. `group_consumer.py` checks the Python clients' group consumers (subscribe,
//! commit, a second member resuming at the commits); kafkajs consumes through a group too.
//!
//! A missing client skips its test (`SKIP <test>: <tool> not installed`) unless
//! `STRATA_REQUIRE_EXTERNAL=1`, which `.ci/run` sets after installing every client; then a
//! missing client fails the test. `STRATA_BIN=/path/to/strata` runs them against another build.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers: tool probing, the broker process, running a client with a timeout.
// ---------------------------------------------------------------------------------------------

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The broker binary: this crate's `strata`, or `STRATA_BIN` to test another build.
fn strata_bin() -> PathBuf {
    std::env::var_os("STRATA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata")))
}

fn python() -> String {
    std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `cmd` runs and exits 0; used to find out whether a client is installed.
fn probe(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Returns whether the test can run. A missing tool skips the test, or fails it when
/// `STRATA_REQUIRE_EXTERNAL=1` (as in CI, where `.ci/run` installs every client).
fn tool_available(test: &str, tool: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("STRATA_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!(
            "{test}: {tool} is not installed and STRATA_REQUIRE_EXTERNAL=1; \
             `.ci/run` shows how to install it"
        );
    }
    println!("SKIP {test}: {tool} not installed");
    false
}

fn kcat_installed() -> bool {
    probe(Command::new("kcat").arg("-V"))
}

fn python_module_installed(module: &str) -> bool {
    probe(Command::new(python()).args(["-c", &format!("import {module}")]))
}

/// A `strata serve` child process on ephemeral ports with its own data directory. Dropping it
/// kills the broker, so a failing test never leaks one.
struct BrokerProcess {
    child: Child,
    /// `host:port` of the Kafka listener, from the ready line.
    kafka: String,
    /// `host:port` of the admin HTTP listener, from the ready line.
    #[allow(dead_code)]
    admin: String,
    stderr_path: PathBuf,
    dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Starts a broker with default settings and waits for its ready line:
    /// `strata ready kafka=HOST:PORT admin=HOST:PORT`.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let stderr_path = dir.path().join("broker.stderr");
        let stderr = File::create(&stderr_path).expect("create broker stderr file");
        let mut cmd = Command::new(strata_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            // Group consumers join at once instead of after Kafka's 3 s initial delay.
            "--set",
            "group.initial.rebalance.delay.ms=0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn the strata binary");
        let stdout = child.stdout.take().expect("broker stdout is piped");

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Keep draining after the ready line so the broker never blocks on (or dies of) a
            // full or closed stdout.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut broker = BrokerProcess {
            child,
            kafka: String::new(),
            admin: String::new(),
            stderr_path,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut other_lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((kafka, admin)) = parse_ready_line(&line) {
                        broker.kafka = kafka;
                        broker.admin = admin;
                        return broker;
                    }
                    other_lines.push(line);
                }
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            format!("no ready line within {READY_TIMEOUT:?}")
                        }
                        mpsc::RecvTimeoutError::Disconnected => format!(
                            "stdout closed before the ready line (exit: {:?})",
                            broker.child.wait().ok()
                        ),
                    };
                    panic!(
                        "strata serve did not start: {why}\nstdout:\n{}\n{}",
                        other_lines.join("\n"),
                        broker.stderr_tail()
                    );
                }
            }
        }
    }

    /// The last lines the broker wrote to stderr, for failure messages.
    fn stderr_tail(&self) -> String {
        let text = strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        format!(
            "--- broker stderr (last {} of {} lines) ---\n{}",
            lines.len() - from,
            lines.len(),
            lines[from..].join("\n")
        )
    }

    /// SIGTERM, then wait for the process; asserts a clean (exit 0) shutdown in time.
    fn shutdown(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet (only `shutdown`
        // and `Drop` wait for it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for broker") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "broker still running {SHUTDOWN_TIMEOUT:?} after SIGTERM\n{}",
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "broker did not shut down cleanly on SIGTERM: {status}\n{}",
            self.stderr_tail()
        );
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Drops terminal colour sequences (`ESC [ ... m`) from log text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_ready_line(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("strata ready ")?;
    let (mut kafka, mut admin) = (None, None);
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("kafka", addr)) => kafka = Some(addr.to_string()),
            Some(("admin", addr)) => admin = Some(addr.to_string()),
            _ => {}
        }
    }
    Some((kafka?, admin?))
}

/// The outcome of one client run.
struct Run {
    what: String,
    /// `None` when the run was killed at the timeout.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after the {CLIENT_TIMEOUT:?} timeout"),
        };
        format!(
            "`{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with `stdin` as its input, killing it after `CLIENT_TIMEOUT`.
fn run(cmd: &mut Command, stdin: &[u8]) -> Run {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let input = stdin.to_vec();
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let writer = thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
        // Dropping closes the pipe: the client sees EOF.
    });
    let out = reader(child.stdout.take().expect("stdout is piped"));
    let err = reader(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Run {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs a client and panics (with its output and the broker's stderr) unless it exits 0.
fn run_ok(broker: &BrokerProcess, cmd: &mut Command, stdin: &[u8]) -> Run {
    let r = run(cmd, stdin);
    assert!(r.success(), "{}\n{}", r.describe(), broker.stderr_tail());
    r
}

/// Line-by-line comparison with a readable report of the first differences.
fn assert_same_lines(what: &str, expected: &str, got: &str, broker: &BrokerProcess) {
    if expected == got {
        return;
    }
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let mut report = format!(
        "{what}: output differs (expected {} lines, got {})\n",
        e.len(),
        g.len()
    );
    let mut shown = 0;
    for i in 0..e.len().max(g.len()) {
        let (el, gl) = (e.get(i), g.get(i));
        if el != gl && shown < 20 {
            shown += 1;
            report += &format!(
                "  line {i}:\n    expected {}\n    got      {}\n",
                el.map_or("<none>".to_string(), |l| truncate(l, 200)),
                gl.map_or("<none>".to_string(), |l| truncate(l, 200)),
            );
        }
    }
    panic!("{report}{}", broker.stderr_tail());
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &s[..end], s.len())
}

// ---------------------------------------------------------------------------------------------
// kcat (librdkafka 2.0.2)
// ---------------------------------------------------------------------------------------------

const KCAT_FORMAT: &str = "%o|%K|%k|%S|%s|%h\\n";

/// One line of `kcat -C -Z -f KCAT_FORMAT` output: offset, key length (-1 = null), key ("NULL"
/// when null or empty, because of -Z), value length (-1 = null), value, headers as `n=v,...`
/// (`n=NULL` for a null header value).
fn kcat_line(offset: usize, key: Option<&str>, value: Option<&str>, headers: &str) -> String {
    let (klen, k) = key.map_or((-1, "NULL"), |k| (k.len() as i64, k));
    let (vlen, v) = value.map_or((-1, "NULL"), |v| (v.len() as i64, v));
    format!("{offset}|{klen}|{k}|{vlen}|{v}|{headers}\n")
}

#[test]
fn kcat() {
    if !tool_available("kcat", "kcat", kcat_installed()) {
        return;
    }
    let broker = BrokerProcess::start();
    let b = broker.kafka.as_str();
    let topic = "interop-kcat";
    let mut expected = String::new();
    let mut offset = 0;

    // 1. Keyed, snappy, with headers: a plain one, an empty value, a null value (`-H name`
    //    without `=`) and a repeated name.
    let mut input = String::new();
    let hdrs = "trace=abc,empty=,nullhdr=NULL,dup=1,dup=2";
    for i in 0..50 {
        let value = format!("v{i}-{}", "x".repeat(i * 7));
        input += &format!("k{i}:{value}\n");
        expected += &kcat_line(offset, Some(&format!("k{i}")), Some(&value), hdrs);
        offset += 1;
    }
    run_ok(
        &broker,
        Command::new("kcat").args([
            "-P",
            "-b",
            b,
            "-t",
            topic,
            "-p",
            "0",
            "-z",
            "snappy",
            "-X",
            "acks=all",
            "-K",
            ":",
            "-H",
            "trace=abc",
            "-H",
            "empty=",
            "-H",
            "nullhdr",
            "-H",
            "dup=1",
            "-H",
            "dup=2",
        ]),
        input.as_bytes(),
    );

    // 2. Keyed, gzip, -Z: an empty value is sent as null (a tombstone).
    let mut input = String::new();
    for i in 0..30 {
        if i % 3 == 0 {
            input += &format!("tomb{i}:\n");
            expected += &kcat_line(offset, Some(&format!("tomb{i}")), None, "");
        } else {
            input += &format!("g{i}:gv{i}\n");
            expected += &kcat_line(offset, Some(&format!("g{i}")), Some(&format!("gv{i}")), "");
        }
        offset += 1;
    }
    run_ok(
        &broker,
        Command::new("kcat").args([
            "-P", "-b", b, "-t", topic, "-p", "0", "-z", "gzip", "-X", "acks=all", "-Z", "-K", ":",
        ]),
        input.as_bytes(),
    );

    // 3. No keys, zstd (librdkafka's codec name; kcat's -z lists only the older ones), one
    //    value of 100 KB.
    let mut input = String::new();
    for i in 0..20 {
        let value = if i == 10 {
            "z".repeat(100_000)
        } else {
            format!("z{i}")
        };
        input += &format!("{value}\n");
        expected += &kcat_line(offset, None, Some(&value), "");
        offset += 1;
    }
    run_ok(
        &broker,
        Command::new("kcat").args([
            "-P",
            "-b",
            b,
            "-t",
            topic,
            "-p",
            "0",
            "-X",
            "compression.codec=zstd",
            "-X",
            "acks=all",
        ]),
        input.as_bytes(),
    );
    let total = offset;

    // Metadata: one broker, the topic with one partition led by that broker.
    let r = run_ok(
        &broker,
        Command::new("kcat").args(["-L", "-J", "-b", b]),
        b"",
    );
    let md: Value = serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("kcat -L -J output is not JSON ({e}): {}", r.describe()));
    let brokers = md["brokers"].as_array().cloned().unwrap_or_default();
    assert_eq!(brokers.len(), 1, "expected one broker in {md}");
    assert_eq!(brokers[0]["name"], json!(b), "advertised address in {md}");
    let t = md["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == json!(topic)))
        .unwrap_or_else(|| panic!("topic {topic} missing from kcat -L: {md}"));
    assert!(t.get("error").is_none(), "topic error in {t}");
    let parts = t["partitions"].as_array().expect("partitions array");
    assert_eq!(parts.len(), 1, "expected one partition: {t}");
    assert_eq!(parts[0]["partition"], json!(0));
    assert_eq!(
        parts[0]["leader"], brokers[0]["id"],
        "leader is the only broker: {t}"
    );
    let r = run_ok(&broker, Command::new("kcat").args(["-L", "-b", b]), b"");
    assert!(
        r.stdout()
            .contains(&format!("topic \"{topic}\" with 1 partitions")),
        "{}",
        r.describe()
    );

    // Everything back from the beginning, exactly.
    let consume = |extra: &[&str]| {
        let mut cmd = Command::new("kcat");
        cmd.args([
            "-C",
            "-b",
            b,
            "-t",
            topic,
            "-p",
            "0",
            "-Z",
            "-f",
            KCAT_FORMAT,
        ])
        .args(extra);
        run_ok(&broker, &mut cmd, b"").stdout()
    };
    let got = consume(&["-o", "beginning", "-e"]);
    assert_same_lines("kcat -C -o beginning", &expected, &got, &broker);

    // From an offset inside a compressed batch (the broker returns whole batches and the client
    // skips the records before the offset it asked for).
    let lines: Vec<String> = expected.lines().map(|l| format!("{l}\n")).collect();
    let got = consume(&["-o", "55", "-c", "3"]);
    assert_same_lines("kcat -C -o 55 -c 3", &lines[55..58].concat(), &got, &broker);

    // Relative to the end: ListOffsets(latest) - 5.
    let got = consume(&["-o", "-5", "-e"]);
    assert_same_lines("kcat -C -o -5", &lines[total - 5..].concat(), &got, &broker);

    broker.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Python clients: the scripts check everything themselves and print a diff on failure.
// ---------------------------------------------------------------------------------------------

fn python_client(test: &str, module: &str, script: &str, topic: &str) {
    let tool = format!("{} (Python module {module})", test.replace('_', "-"));
    if !tool_available(test, &tool, python_module_installed(module)) {
        return;
    }
    let broker = BrokerProcess::start();
    let r = run_ok(
        &broker,
        Command::new(python())
            .arg(clients_dir().join(script))
            .args([broker.kafka.as_str(), topic])
            .current_dir(clients_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        b"",
    );
    assert!(
        r.stdout().contains(&format!("OK {test}")),
        "{}",
        r.describe()
    );
    broker.shutdown();
}

#[test]
fn confluent_kafka() {
    python_client(
        "confluent_kafka",
        "confluent_kafka",
        "confluent_kafka_roundtrip.py",
        "interop-confluent-kafka",
    );
}

#[test]
fn kafka_python() {
    python_client(
        "kafka_python",
        "kafka",
        "kafka_python_roundtrip.py",
        "interop-kafka-python",
    );
}

#[test]
fn aiokafka() {
    python_client(
        "aiokafka",
        "aiokafka",
        "aiokafka_roundtrip.py",
        "interop-aiokafka",
    );
}

/// A group consumer of `client` (tests/clients/group_consumer.py): reads everything, commits,
/// and a second consumer of the same group resumes exactly at the commits.
fn python_group_consumer(test: &str, module: &str, client: &str) {
    let tool = format!("{} (Python module {module})", client.replace('_', "-"));
    if !tool_available(test, &tool, python_module_installed(module)) {
        return;
    }
    let broker = BrokerProcess::start();
    let r = run_ok(
        &broker,
        Command::new(python())
            .arg(clients_dir().join("group_consumer.py"))
            .args([client, broker.kafka.as_str(), &format!("group-{client}")])
            .current_dir(clients_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        b"",
    );
    assert!(
        r.stdout().contains(&format!("OK group-{client}")),
        "{}",
        r.describe()
    );
    broker.shutdown();
}

#[test]
fn confluent_kafka_group_consumer() {
    python_group_consumer(
        "confluent_kafka_group_consumer",
        "confluent_kafka",
        "confluent_kafka",
    );
}

#[test]
fn kafka_python_group_consumer() {
    python_group_consumer("kafka_python_group_consumer", "kafka", "kafka_python");
}

#[test]
fn aiokafka_group_consumer() {
    python_group_consumer("aiokafka_group_consumer", "aiokafka", "aiokafka");
}

// ---------------------------------------------------------------------------------------------
// kafkajs: produces, checks admin calls and consumes through a group; kcat reads the records back
// as well.
// ---------------------------------------------------------------------------------------------

/// Normalizes a kcat `-J` message to the shape kafkajs_roundtrip.js writes: headers as
/// `[[name, value], ...]` (kcat gives a flat `[name, value, ...]` list, absent when empty).
fn kcat_json_record(msg: &Value) -> Value {
    let flat = msg["headers"].as_array().cloned().unwrap_or_default();
    let headers: Vec<Value> = flat
        .chunks(2)
        .map(|pair| Value::Array(pair.to_vec()))
        .collect();
    let ts = if msg["tstype"] == json!("create") {
        msg["ts"].clone()
    } else {
        json!(format!("not CreateTime: {} {}", msg["tstype"], msg["ts"]))
    };
    json!({
        "offset": msg["offset"],
        "key": msg["key"],
        "payload": msg["payload"],
        "headers": headers,
        "ts": ts,
    })
}

/// Reads `topic` back with kcat and compares it with the JSON lines kafkajs_roundtrip.js wrote.
fn kafkajs_records_diff(broker: &BrokerProcess, topic: &str, expected_jsonl: &str) -> Vec<String> {
    let expected: Vec<Value> = expected_jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("expected record is JSON"))
        .collect();
    let mut diffs = Vec::new();
    if expected.len() != 1000 {
        diffs.push(format!(
            "kafkajs wrote {} expected records, not 1000",
            expected.len()
        ));
    }
    // `-o 0`, not `-o beginning`: the topic is new, so its log starts at 0, and this keeps the
    // record check independent of ListOffsets (which the script checks itself).
    let r = run(
        Command::new("kcat").args([
            "-C",
            "-b",
            &broker.kafka,
            "-t",
            topic,
            "-p",
            "0",
            "-o",
            "0",
            "-e",
            "-J",
        ]),
        b"",
    );
    if !r.success() {
        diffs.push(r.describe());
        return diffs;
    }
    let got: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(msg) => kcat_json_record(&msg),
            Err(e) => json!(format!("kcat -J line is not JSON ({e}): {l}")),
        })
        .collect();
    if got.len() != expected.len() {
        diffs.push(format!(
            "record count: expected {}, got {}",
            expected.len(),
            got.len()
        ));
    }
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        if e != g {
            diffs.push(format!(
                "record #{i}:\n    expected {}\n    got      {}",
                truncate(&e.to_string(), 300),
                truncate(&g.to_string(), 300)
            ));
        }
    }
    diffs
}

#[test]
fn kafkajs() {
    let node_ok = probe(
        Command::new("node")
            .args(["-e", "require('kafkajs')"])
            .current_dir(clients_dir()),
    );
    if !tool_available(
        "kafkajs",
        "kafkajs (node + npm ci in tests/clients)",
        node_ok,
    ) || !tool_available(
        "kafkajs",
        "kcat (reads kafkajs's records back)",
        kcat_installed(),
    ) {
        return;
    }
    let broker = BrokerProcess::start();
    let topic = "interop-kafkajs";
    let expected_path = broker.dir.path().join("kafkajs-expected.jsonl");
    let script = run(
        Command::new("node")
            .arg(clients_dir().join("kafkajs_roundtrip.js"))
            .args([broker.kafka.as_str(), topic])
            .arg(&expected_path)
            .current_dir(clients_dir())
            .env("KAFKAJS_NO_PARTITIONER_WARNING", "1"),
        b"",
    );
    // The script writes the records it produced even when a later check fails, so the
    // records are verified in either case and the failure shows both.
    let mut diffs = Vec::new();
    match std::fs::read_to_string(&expected_path) {
        Ok(text) => diffs = kafkajs_records_diff(&broker, topic, &text),
        Err(e) => diffs.push(format!("no records to verify ({e})")),
    }
    assert!(
        script.success() && script.stdout().contains("OK kafkajs") && diffs.is_empty(),
        "{}\n--- kafkajs records read back with kcat: {} difference(s) ---\n{}\n{}",
        script.describe(),
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        broker.stderr_tail()
    );
    broker.shutdown();
}
