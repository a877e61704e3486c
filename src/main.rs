//! The `strata` binary: `strata serve` runs a broker; `strata topic ...` administers topics,
//! `strata group ...` consumer groups, `strata cluster ...` the peer endpoint's certificates,
//! `strata sql "<query>"` SQL over topics.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata::cli::cluster::ClusterArgs;
use strata::cli::group::GroupArgs;
use strata::cli::topic::TopicArgs;
use strata::config::ServeArgs;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Kafka-compatible streaming broker with Parquet tiering"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (no flags needed: 127.0.0.1:9092, admin on 127.0.0.1:9094, ./strata-data).
    Serve(Box<ServeArgs>),
    /// Create, list, describe, delete topics and alter their configs.
    Topic(TopicArgs),
    /// List and describe consumer groups, reset their committed offsets.
    Group(GroupArgs),
    /// Make the cluster CA and node certificates for the peer endpoint's mutual TLS; describe
    /// the metadata quorum, remove and add its voters.
    Cluster(ClusterArgs),
    /// Run SQL over topics: on a broker (--admin) or on a bucket without one (--object-store).
    #[cfg(feature = "sql")]
    Sql(strata::cli::sql::SqlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command-line tool ends quietly when its reader goes (`strata topic describe |
        // head`), as Unix tools do, instead of panicking on EPIPE. The broker keeps Rust's
        // ignored SIGPIPE: a client closing its socket is an error on that socket only.
        // SAFETY: restores a signal's default disposition before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    strata::telemetry::init_tracing();
    // The one TLS provider (PITFALLS: rustls panics on first use when two are compiled in and
    // none is installed); the peer endpoint also names it explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Topic(args) => strata::cli::topic::run(args).await,
            Command::Group(args) => strata::cli::group::run(args).await,
            Command::Cluster(args) => strata::cli::cluster::run(args).await,
            #[cfg(feature = "sql")]
            Command::Sql(args) => strata::cli::sql::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let running = strata::server::start(config).await?;
    // One line on stdout that scripts and tests can wait for; logs go to stderr.
    println!(
        "strata ready kafka={} admin={}",
        running.kafka_addr(),
        running.admin_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let broker = running.broker.clone();
    let failed = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: shutting down"); None }
        reason = broker.metadata().failed() => {
            tracing::error!(%reason, "the metadata quorum stopped; shutting down");
            Some(reason)
        }
    };
    running.shutdown().await;
    match failed {
        Some(reason) => anyhow::bail!("the metadata quorum stopped: {reason}"),
        None => Ok(()),
    }
}
