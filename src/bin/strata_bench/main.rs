//! `strata-bench`: load generator for Kafka-compatible brokers (librdkafka) and machine ceilings
//! (issue 6). Built only with `--features bench`, so the `strata` server never links librdkafka:
//!
//! ```text
//! cargo build --release --features bench --bin strata-bench
//! strata-bench produce --bootstrap 127.0.0.1:9092 --topic t --records 1000000 --json
//! strata-bench ceilings --dir /var/lib/strata --json
//! ```
//!
//! The table goes to stdout, progress to stderr; with `--json` the last stdout line is one JSON
//! object (`strata::bench::report::Report` or `strata::bench::ceilings::Ceilings`).

mod driver;

use clap::Parser;
use strata::bench::args::{Cli, Command, Mode};
use strata::bench::ceilings;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, mode) = match cli.command {
        Command::Ceilings(c) => {
            let measured = ceilings::measure(&c.dir, c.disk_bytes, c.seconds)?;
            print!("{}", measured.table());
            if c.json {
                println!("{}", serde_json::to_string(&measured)?);
            }
            return Ok(());
        }
        Command::Produce(a) => (a, Mode::Produce),
        Command::Consume(a) => (a, Mode::Consume),
        Command::E2e(a) => (a, Mode::E2e),
    };
    let report = driver::run(&args, mode)?;
    print!("{}", report.table());
    if args.json {
        println!("{}", report.to_json());
    }
    if report.records_failed > 0 || report.timed_out {
        std::process::exit(2);
    }
    Ok(())
}
