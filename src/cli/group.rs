//! `strata group list|describe|reset-offsets`, over the Kafka protocol (as
//! kafka-consumer-groups.sh does it: ListGroups, DescribeGroups, OffsetFetch, ListOffsets,
//! OffsetCommit with generation -1).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::client::Client;

#[derive(Debug, Args)]
pub struct GroupArgs {
    /// A broker's Kafka address.
    #[arg(long, default_value = "127.0.0.1:9092", env = "STRATA_BOOTSTRAP")]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// Show a group's state, members and committed offsets with lag.
    Describe { group: String },
    /// Move a group's committed offsets on a topic (only while the group has no members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// To the log start offset.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end offset.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To the first offset with a timestamp >= this (ms since the epoch).
        #[arg(long, group = "to", value_name = "MS")]
        to_timestamp: Option<i64>,
        /// To this offset on every partition.
        #[arg(long, group = "to", value_name = "OFFSET")]
        to_offset: Option<i64>,
    },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn check(code: i16, what: &str) -> anyhow::Result<()> {
    match code.err() {
        None => Ok(()),
        Some(e) => anyhow::bail!("{what}: {e:?}"),
    }
}

async fn describe_group(client: &mut Client, group: &str) -> anyhow::Result<DescribedGroup> {
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
    let ResponseKind::DescribeGroups(r) = client
        .send(ApiKey::DescribeGroups, RequestKind::DescribeGroups(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    let g = r
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no answer for group {group}"))?;
    check(g.error_code, &format!("describing {group}"))?;
    Ok(g)
}

/// Offsets of every partition of `topic` at `timestamp` (-2 earliest, -1 latest).
async fn list_offsets(
    client: &mut Client,
    topic: &str,
    timestamp: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(s(topic)))),
    ]));
    let ResponseKind::Metadata(m) = client
        .send(ApiKey::Metadata, RequestKind::Metadata(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    let t = m
        .topics
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
    check(t.error_code, &format!("topic {topic}"))?;
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            ListOffsetsPartition::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(timestamp)
                .with_current_leader_epoch(-1)
        })
        .collect();
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(partitions)]);
    let ResponseKind::ListOffsets(r) = client
        .send(ApiKey::ListOffsets, RequestKind::ListOffsets(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    let mut out = BTreeMap::new();
    for t in &r.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("offsets of {topic}-{}", p.partition_index),
            )?;
            out.insert(p.partition_index, p.offset);
        }
    }
    Ok(out)
}

async fn committed(
    client: &mut Client,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    // strata serves OffsetFetch v8, where groups come as a batch (KIP-709).
    let request = OffsetFetchRequest::default().with_groups(vec![
        kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(None),
    ]);
    let ResponseKind::OffsetFetch(r) = client
        .send(ApiKey::OffsetFetch, RequestKind::OffsetFetch(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    let mut out = BTreeMap::new();
    if let Some(g) = r.groups.first() {
        check(g.error_code, &format!("offsets of {group}"))?;
        for t in &g.topics {
            for p in &t.partitions {
                out.insert((t.name.to_string(), p.partition_index), p.committed_offset);
            }
        }
    } else {
        check(r.error_code, &format!("offsets of {group}"))?;
        for t in &r.topics {
            for p in &t.partitions {
                out.insert((t.name.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

pub async fn run(args: GroupArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.bootstrap).await?;
    match args.command {
        GroupCommand::List => {
            let request = ListGroupsRequest::default();
            let ResponseKind::ListGroups(r) = client
                .send(ApiKey::ListGroups, RequestKind::ListGroups(request))
                .await?
            else {
                anyhow::bail!("unexpected response");
            };
            check(r.error_code, "listing groups")?;
            for g in &r.groups {
                println!("{}\t{}", g.group_id.as_str(), g.group_state.as_str());
            }
        }
        GroupCommand::Describe { group } => {
            let g = describe_group(&mut client, &group).await?;
            println!(
                "group {} state {} protocol {} members {}",
                group,
                g.group_state.as_str(),
                g.protocol_data.as_str(),
                g.members.len()
            );
            for m in &g.members {
                println!(
                    "  member {} client {} host {}{}",
                    m.member_id.as_str(),
                    m.client_id.as_str(),
                    m.client_host.as_str(),
                    m.group_instance_id
                        .as_ref()
                        .map(|i| format!(" instance {}", i.as_str()))
                        .unwrap_or_default()
                );
            }
            let offsets = committed(&mut client, &group).await?;
            let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
            println!("TOPIC\tPARTITION\tCOMMITTED\tEND\tLAG");
            for ((topic, partition), offset) in &offsets {
                if !ends.contains_key(topic) {
                    let end = list_offsets(&mut client, topic, -1)
                        .await
                        .unwrap_or_default();
                    ends.insert(topic.clone(), end);
                }
                let end = ends.get(topic).and_then(|e| e.get(partition)).copied();
                let lag = end.map(|e| (e - offset).max(0).to_string());
                println!(
                    "{topic}\t{partition}\t{offset}\t{}\t{}",
                    end.map(|e| e.to_string()).unwrap_or("-".into()),
                    lag.unwrap_or("-".into())
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_timestamp,
            to_offset,
        } => {
            let g = describe_group(&mut client, &group).await?;
            let state = g.group_state.as_str();
            if !(state == "Empty" || state == "Dead") {
                anyhow::bail!(
                    "group {group} is {state} with {} member(s): offsets can only be reset while \
                     no consumer is in the group; stop its consumers first",
                    g.members.len()
                );
            }
            let targets = match (to_earliest, to_latest, to_timestamp, to_offset) {
                (true, _, _, _) => list_offsets(&mut client, &topic, -2).await?,
                (_, true, _, _) => list_offsets(&mut client, &topic, -1).await?,
                (_, _, Some(ts), _) => {
                    let latest = list_offsets(&mut client, &topic, -1).await?;
                    let mut at = list_offsets(&mut client, &topic, ts).await?;
                    // No record at or after the timestamp: the end of the partition.
                    for (p, o) in at.iter_mut() {
                        if *o < 0 {
                            *o = latest.get(p).copied().unwrap_or(0);
                        }
                    }
                    at
                }
                (_, _, _, Some(offset)) => list_offsets(&mut client, &topic, -1)
                    .await?
                    .into_keys()
                    .map(|p| (p, offset))
                    .collect(),
                _ => anyhow::bail!(
                    "say where to: --to-earliest, --to-latest, --to-timestamp or --to-offset"
                ),
            };
            let partitions = targets
                .iter()
                .map(|(p, o)| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(*p)
                        .with_committed_offset(*o)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(s("")))
                })
                .collect();
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(s(""))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(partitions)]);
            let ResponseKind::OffsetCommit(r) = client
                .send(ApiKey::OffsetCommit, RequestKind::OffsetCommit(request))
                .await?
            else {
                anyhow::bail!("unexpected response");
            };
            for t in &r.topics {
                for p in &t.partitions {
                    check(
                        p.error_code,
                        &format!("committing {}-{}", t.name.as_str(), p.partition_index),
                    )?;
                    let offset = targets.get(&p.partition_index).copied().unwrap_or(-1);
                    println!("{}\t{}\t{offset}", t.name.as_str(), p.partition_index);
                }
            }
        }
    }
    Ok(())
}
