//! `strata cluster init-ca` and `strata cluster issue`: the certificates of the peer endpoint's
//! mutual TLS (formats in `cluster::certs`); `strata cluster describe-quorum`, `remove-voter`
//! and `add-voter`: the metadata quorum's voters over the Kafka protocol (DescribeQuorum,
//! RemoveRaftVoter, AddRaftVoter: KIP-853), as Kafka's `kafka-metadata-quorum` does.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::client::Client;
use crate::cluster::certs;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// A broker's Kafka address (the quorum commands; any broker forwards to the leader).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:9092",
        env = "STRATA_BOOTSTRAP"
    )]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make the cluster's certificate authority once: DIR/ca.pem and DIR/ca.key (keep the key
    /// safe: whoever has it can join the cluster).
    InitCa {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a certificate naming node N: NODEDIR/ca.pem, node.pem and node.key, for
    /// `strata serve --node-id N --peer-tls-dir NODEDIR`.
    Issue {
        /// The directory `init-ca` wrote.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long, value_name = "N")]
        node_id: i32,
        #[arg(long, value_name = "NODEDIR")]
        out: PathBuf,
    },
    /// Show the metadata quorum (DescribeQuorum): the leader, its epoch, the committed offset,
    /// each voter and learner with its directory id, how far the leader knows it has the log,
    /// and how long ago it last fetched and was last caught up.
    DescribeQuorum,
    /// Remove node N from the metadata quorum's voters (RemoveRaftVoter, KIP-853), e.g. a
    /// voter whose disk is lost. Its replacement, started with the same --seeds on a fresh
    /// disk, follows as a learner until `add-voter N`. Refused for the last voter and for a
    /// node that is not a voter.
    RemoveVoter {
        /// The node id.
        #[arg(value_name = "N")]
        node_id: i32,
        /// Remove it only if the membership records this metadata directory id (as
        /// `describe-quorum` shows it).
        #[arg(long, value_name = "UUID")]
        directory_id: Option<Uuid>,
    },
    /// Make learner N a voter of the metadata quorum (AddRaftVoter, KIP-853) once it has caught
    /// up with the log. N must be running with --seeds (it then follows the log as a learner).
    AddVoter {
        /// The node id.
        #[arg(value_name = "N")]
        node_id: i32,
        /// Add it only if it runs with this metadata directory id.
        #[arg(long, value_name = "UUID")]
        directory_id: Option<Uuid>,
        /// How long the leader waits for it to catch up.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: i32,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::InitCa { out } => {
            certs::init_ca(&out)?;
            println!(
                "cluster CA written to {}: {} and {} (keep the key private)",
                out.display(),
                certs::CA_CERT,
                certs::CA_KEY
            );
        }
        ClusterCommand::Issue { ca, node_id, out } => {
            certs::issue(&ca, node_id, &out)?;
            println!(
                "certificate of node {node_id} written to {}: start it with --node-id {node_id} --peer-tls-dir {}",
                out.display(),
                out.display()
            );
        }
        ClusterCommand::DescribeQuorum => {
            print_quorum(&describe_quorum(&args.bootstrap).await?);
        }
        ClusterCommand::RemoveVoter {
            node_id,
            directory_id,
        } => {
            remove_voter(&args.bootstrap, node_id, directory_id).await?;
            println!("node {node_id} is no longer a voter of the metadata quorum");
        }
        ClusterCommand::AddVoter {
            node_id,
            directory_id,
            timeout_ms,
        } => {
            add_voter(&args.bootstrap, node_id, directory_id, timeout_ms).await?;
            println!("node {node_id} is a voter of the metadata quorum");
        }
    }
    Ok(())
}

fn check(code: i16, message: Option<&StrBytes>, what: &str) -> anyhow::Result<()> {
    match (code.err(), message) {
        (None, _) => Ok(()),
        (Some(e), Some(m)) => anyhow::bail!("{what}: {e:?}: {}", m.as_str()),
        (Some(e), None) => anyhow::bail!("{what}: {e:?}"),
    }
}

/// DescribeQuorum of `__cluster_metadata` partition 0, through the broker at `bootstrap`.
pub async fn describe_quorum(bootstrap: &str) -> anyhow::Result<DescribeQuorumResponse> {
    let mut client = Client::connect(bootstrap).await?;
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let ResponseKind::DescribeQuorum(r) = client
        .send(ApiKey::DescribeQuorum, RequestKind::DescribeQuorum(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    check(
        r.error_code,
        r.error_message.as_ref(),
        "describing the quorum",
    )?;
    for p in r.topics.iter().flat_map(|t| &t.partitions) {
        check(
            p.error_code,
            p.error_message.as_ref(),
            "describing the quorum",
        )?;
    }
    Ok(r)
}

fn print_quorum(r: &DescribeQuorumResponse) {
    let now_ms = crate::clock::Clock::System.now_ms();
    let ago = |t: i64| match t {
        t if t < 0 => "unknown".to_string(),
        t => format!("{} ms ago", (now_ms - t).max(0)),
    };
    for p in r.topics.iter().flat_map(|t| &t.partitions) {
        println!(
            "leader {}  epoch {}  high watermark {}",
            p.leader_id.0, p.leader_epoch, p.high_watermark
        );
        for (role, replicas) in [("voter", &p.current_voters), ("learner", &p.observers)] {
            for r in replicas {
                println!(
                    "{role:<8} {:>4}  directory {}  log end {}  last fetch {}  last caught up {}",
                    r.replica_id.0,
                    r.replica_directory_id,
                    r.log_end_offset,
                    ago(r.last_fetch_timestamp),
                    ago(r.last_caught_up_timestamp)
                );
            }
        }
    }
}

/// RemoveRaftVoter of node `id` (any directory unless `directory` is given).
pub async fn remove_voter(bootstrap: &str, id: i32, directory: Option<Uuid>) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    let request = RemoveRaftVoterRequest::default()
        .with_voter_id(id)
        .with_voter_directory_id(directory.unwrap_or_default());
    let ResponseKind::RemoveRaftVoter(r) = client
        .send(
            ApiKey::RemoveRaftVoter,
            RequestKind::RemoveRaftVoter(request),
        )
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    check(
        r.error_code,
        r.error_message.as_ref(),
        &format!("removing voter {id}"),
    )
}

/// AddRaftVoter of learner `id` (any directory unless `directory` is given).
pub async fn add_voter(
    bootstrap: &str,
    id: i32,
    directory: Option<Uuid>,
    timeout_ms: i32,
) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    let request = AddRaftVoterRequest::default()
        .with_voter_id(id)
        .with_voter_directory_id(directory.unwrap_or_default())
        .with_timeout_ms(timeout_ms);
    let ResponseKind::AddRaftVoter(r) = client
        .send(ApiKey::AddRaftVoter, RequestKind::AddRaftVoter(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    check(
        r.error_code,
        r.error_message.as_ref(),
        &format!("adding voter {id}"),
    )
}
