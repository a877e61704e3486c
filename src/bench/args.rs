//! `strata-bench` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "strata-bench",
    version,
    about = "Load generator for Kafka-compatible brokers (librdkafka) and machine ceilings"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce `--records` records and measure throughput and ack latency.
    Produce(WorkloadArgs),
    /// Consume `--records` records from the start of the topic (written earlier).
    Consume(WorkloadArgs),
    /// Producers and consumers together: end-to-end latency from the send time in each payload.
    E2e(WorkloadArgs),
    /// Machine ceilings: sequential disk write, loopback TCP, memcpy, CRC32C.
    Ceilings(CeilingArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }

    pub fn produces(self) -> bool {
        matches!(self, Mode::Produce | Mode::E2e)
    }

    pub fn consumes(self) -> bool {
        matches!(self, Mode::Consume | Mode::E2e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl Acks {
    /// The value of the producer setting `acks`.
    pub fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The value of the producer setting `compression.type`.
    pub fn as_config(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Broker to connect to.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic; created with `--partitions` if it does not exist (produce, e2e).
    #[arg(long, default_value = "strata-bench")]
    pub topic: String,
    /// Size of each record value (no key); at least 8 (the embedded send time).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..=(64 << 20)))]
    pub record_bytes: u64,
    /// Records to produce (produce, e2e) or consume (consume).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    #[arg(long, value_enum, default_value = "1")]
    pub acks: Acks,
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Compression,
    /// Total produce rate limit in MB/s (10^6 bytes of record values); 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Producer instances (one thread and one librdkafka client each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub producers: u32,
    /// Consumer instances; the partitions are split among them (assign, no group).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub consumers: u32,
    /// Producer `linger.ms`.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u32,
    /// Producer `batch.size` in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes: u32,
    /// Producer `queue.buffering.max.kbytes`: records waiting in the client. Kept at Kafka's
    /// `buffer.memory` default (32 MiB) so ack latency under saturation reflects a bounded queue.
    #[arg(long, default_value_t = 32 * 1024)]
    pub buffer_kib: u32,
    /// Broker process to sample for CPU seconds and peak RSS (Linux /proc).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Stop after this many seconds even if not all records were sent or received.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Directory for the disk test (the broker's data filesystem).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Bytes written by the disk test.
    #[arg(long, default_value_t = 1 << 30)]
    pub disk_bytes: u64,
    /// Seconds for each of the loopback, memcpy and CRC32C tests.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Print the ceilings as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_workload_line() {
        let cli = Cli::try_parse_from([
            "strata-bench",
            "e2e",
            "--bootstrap",
            "h:1",
            "--topic",
            "t",
            "--record-bytes",
            "100",
            "--records",
            "5",
            "--partitions",
            "3",
            "--acks",
            "all",
            "--compression",
            "zstd",
            "--rate",
            "50",
            "--producers",
            "2",
            "--consumers",
            "3",
            "--broker-pid",
            "42",
            "--json",
        ])
        .unwrap();
        let Command::E2e(a) = cli.command else {
            panic!("not e2e")
        };
        assert_eq!(a.bootstrap, "h:1");
        assert_eq!(a.record_bytes, 100);
        assert_eq!(a.acks, Acks::All);
        assert_eq!(a.compression.as_config(), "zstd");
        assert_eq!(a.rate, 50.0);
        assert_eq!((a.producers, a.consumers, a.partitions), (2, 3, 3));
        assert_eq!(a.broker_pid, Some(42));
        assert!(a.json);
    }

    #[test]
    fn acks_values_are_kafkas() {
        for (s, v) in [("0", "0"), ("1", "1"), ("all", "all")] {
            let cli = Cli::try_parse_from(["strata-bench", "produce", "--acks", s]).unwrap();
            let Command::Produce(a) = cli.command else {
                panic!()
            };
            assert_eq!(a.acks.as_config(), v);
        }
        assert!(Cli::try_parse_from(["strata-bench", "produce", "--acks", "2"]).is_err());
    }

    #[test]
    fn record_bytes_must_hold_the_send_time() {
        assert!(Cli::try_parse_from(["strata-bench", "produce", "--record-bytes", "7"]).is_err());
    }
}
