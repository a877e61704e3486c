//! `strata topic create|list|describe|delete|alter-config|reassign|reassignments`, over the
//! Kafka protocol.

use clap::{Args, Subcommand};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::client::Client;

#[derive(Debug, Args)]
pub struct TopicArgs {
    /// A broker's Kafka address.
    #[arg(long, default_value = "127.0.0.1:9092", env = "STRATA_BOOTSTRAP")]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partitions (-1 = broker default num.partitions).
        #[arg(long, default_value_t = -1)]
        partitions: i32,
        /// Replication factor (-1 = broker default).
        #[arg(long, default_value_t = -1)]
        replication_factor: i16,
        /// A topic config, e.g. `--config retention.ms=86400000`. Repeatable.
        #[arg(long = "config", value_name = "NAME=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions (leader, epoch, replicas, ISR, offline replicas) and
    /// non-default configs; with `--under-replicated`, only the partitions whose ISR is
    /// smaller than their replica set, of every topic when no name is given.
    Describe {
        /// The topic (required unless --under-replicated).
        name: Option<String>,
        /// Only partitions whose ISR lacks a replica (Kafka's
        /// `--under-replicated-partitions`).
        #[arg(long)]
        under_replicated: bool,
        /// A broker's admin HTTP address: also show what each tier (local disk, object store)
        /// holds per partition.
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
    /// Delete a topic.
    Delete { name: String },
    /// Set or remove topic configs.
    AlterConfig {
        name: String,
        /// Set a config. Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Remove a config override. Repeatable.
        #[arg(long = "delete", value_name = "NAME")]
        delete: Vec<String>,
    },
    /// Move a partition to other brokers (AlterPartitionReassignments, KIP-455): the new
    /// replicas catch up and join the ISR before the old ones leave. With `--cancel`, stop the
    /// move under way and go back to the old replicas.
    Reassign {
        name: String,
        /// The partition to move.
        #[arg(long)]
        partition: i32,
        /// The new replicas, preferred leader first, e.g. `--replicas 2,3,4`.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Vec<i32>,
        /// Cancel the reassignment under way.
        #[arg(long)]
        cancel: bool,
    },
    /// List the reassignments under way (ListPartitionReassignments), of one topic or of all:
    /// each partition's replicas and those being added and removed.
    Reassignments { name: Option<String> },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn check(code: i16, message: Option<&StrBytes>, what: &str) -> anyhow::Result<()> {
    match code.err() {
        None => Ok(()),
        Some(e) => match message {
            Some(m) => anyhow::bail!("{what}: {e:?}: {}", m.as_str()),
            None => anyhow::bail!("{what}: {e:?}"),
        },
    }
}

fn split_pair(item: &str) -> anyhow::Result<(&str, &str)> {
    item.split_once('=')
        .ok_or_else(|| anyhow::anyhow!("expected NAME=VALUE, got {item:?}"))
}

pub async fn run(args: TopicArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.bootstrap).await?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut topic = CreatableTopic::default()
                .with_name(TopicName(s(&name)))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor);
            for item in &configs {
                let (k, v) = split_pair(item)?;
                topic.configs.push(
                    CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v))),
                );
            }
            let request = CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(30_000);
            let ResponseKind::CreateTopics(r) = client
                .send(ApiKey::CreateTopics, RequestKind::CreateTopics(request))
                .await?
            else {
                anyhow::bail!("unexpected response");
            };
            for t in &r.topics {
                check(
                    t.error_code,
                    t.error_message.as_ref(),
                    &format!("creating {}", t.name.as_str()),
                )?;
                println!(
                    "created {} ({} partitions, id {})",
                    t.name.as_str(),
                    t.num_partitions,
                    t.topic_id
                );
            }
        }
        TopicCommand::List => {
            for t in metadata(&mut client, None).await?.topics {
                if let Some(name) = t.name {
                    println!("{}", name.as_str());
                }
            }
        }
        TopicCommand::Describe {
            name,
            under_replicated: true,
            ..
        } => under_replicated(&mut client, name.as_deref()).await?,
        TopicCommand::Describe {
            name: Some(name),
            admin,
            ..
        } => {
            describe(&mut client, &name).await?;
            if let Some(admin) = admin {
                describe_tiers(&admin, &name).await?;
            }
        }
        TopicCommand::Describe { name: None, .. } => {
            anyhow::bail!("describe needs a topic name (or --under-replicated)")
        }
        TopicCommand::Delete { name } => {
            let request = DeleteTopicsRequest::default()
                .with_topics(vec![
                    DeleteTopicState::default().with_name(Some(TopicName(s(&name))))
                ])
                .with_topic_names(vec![TopicName(s(&name))])
                .with_timeout_ms(30_000);
            let ResponseKind::DeleteTopics(r) = client
                .send(ApiKey::DeleteTopics, RequestKind::DeleteTopics(request))
                .await?
            else {
                anyhow::bail!("unexpected response");
            };
            for t in &r.responses {
                check(
                    t.error_code,
                    t.error_message.as_ref(),
                    &format!("deleting {name}"),
                )?;
            }
            println!("deleted {name}");
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            let mut configs = Vec::new();
            for item in &set {
                let (k, v) = split_pair(item)?;
                configs.push(
                    AlterableConfig::default()
                        .with_name(s(k))
                        .with_config_operation(0)
                        .with_value(Some(s(v))),
                );
            }
            for k in &delete {
                configs.push(
                    AlterableConfig::default()
                        .with_name(s(k))
                        .with_config_operation(1),
                );
            }
            let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(&name))
                    .with_configs(configs),
            ]);
            let ResponseKind::IncrementalAlterConfigs(r) = client
                .send(
                    ApiKey::IncrementalAlterConfigs,
                    RequestKind::IncrementalAlterConfigs(request),
                )
                .await?
            else {
                anyhow::bail!("unexpected response");
            };
            for res in &r.responses {
                check(
                    res.error_code,
                    res.error_message.as_ref(),
                    &format!("altering {name}"),
                )?;
            }
            println!("altered {name}");
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            cancel,
        } => {
            let target = (!cancel).then_some(replicas);
            reassign(&mut client, &name, partition, target).await?
        }
        TopicCommand::Reassignments { name } => reassignments(&mut client, name.as_deref()).await?,
    }
    Ok(())
}

/// `reassign`: one partition to `replicas`, or (`None`) its move cancelled.
async fn reassign(
    client: &mut Client,
    name: &str,
    partition: i32,
    replicas: Option<Vec<i32>>,
) -> anyhow::Result<()> {
    use alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(s(name)))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    replicas
                        .clone()
                        .map(|r| r.into_iter().map(BrokerId).collect()),
                )])]);
    let ResponseKind::AlterPartitionReassignments(r) = client
        .send(
            ApiKey::AlterPartitionReassignments,
            RequestKind::AlterPartitionReassignments(request),
        )
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    let what = format!("reassigning {name}-{partition}");
    check(r.error_code, r.error_message.as_ref(), &what)?;
    for p in r.responses.iter().flat_map(|t| &t.partitions) {
        check(p.error_code, p.error_message.as_ref(), &what)?;
    }
    match replicas {
        Some(replicas) => println!("reassigning {name}-{partition} to {replicas:?}"),
        None => println!("cancelled the reassignment of {name}-{partition}"),
    }
    Ok(())
}

/// `reassignments`: the moves under way, by topic; nothing when there are none.
async fn reassignments(client: &mut Client, name: Option<&str>) -> anyhow::Result<()> {
    use list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    let mut topics = None;
    if let Some(name) = name {
        // ListPartitionReassignments names partitions: all of the topic's.
        let meta = metadata(client, Some(name)).await?;
        let topic = meta
            .topics
            .first()
            .ok_or_else(|| anyhow::anyhow!("no metadata for {name}"))?;
        check(topic.error_code, None, &format!("describing {name}"))?;
        topics = Some(vec![ListPartitionReassignmentsTopics::default()
            .with_name(TopicName(s(name)))
            .with_partition_indexes(
                topic.partitions.iter().map(|p| p.partition_index).collect(),
            )]);
    }
    let request = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(topics);
    let ResponseKind::ListPartitionReassignments(r) = client
        .send(
            ApiKey::ListPartitionReassignments,
            RequestKind::ListPartitionReassignments(request),
        )
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    check(
        r.error_code,
        r.error_message.as_ref(),
        "listing reassignments",
    )?;
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    for topic in &r.topics {
        println!(
            "topic {} reassigning partitions {}",
            topic.name.as_str(),
            topic.partitions.len()
        );
        for p in &topic.partitions {
            println!(
                "  partition {} replicas {:?} adding {:?} removing {:?}",
                p.partition_index,
                ids(&p.replicas),
                ids(&p.adding_replicas),
                ids(&p.removing_replicas)
            );
        }
    }
    Ok(())
}

async fn metadata(client: &mut Client, topic: Option<&str>) -> anyhow::Result<MetadataResponse> {
    let topics =
        topic.map(|t| vec![MetadataRequestTopic::default().with_name(Some(TopicName(s(t))))]);
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    let ResponseKind::Metadata(r) = client
        .send(ApiKey::Metadata, RequestKind::Metadata(request))
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    Ok(r)
}

async fn describe(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let meta = metadata(client, Some(name)).await?;
    let topic = meta
        .topics
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for {name}"))?;
    check(topic.error_code, None, &format!("describing {name}"))?;
    println!(
        "topic {name} id {} partitions {}",
        topic.topic_id,
        topic.partitions.len()
    );
    for p in &topic.partitions {
        print_partition(p);
    }
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(name))]);
    let ResponseKind::DescribeConfigs(r) = client
        .send(
            ApiKey::DescribeConfigs,
            RequestKind::DescribeConfigs(request),
        )
        .await?
    else {
        anyhow::bail!("unexpected response");
    };
    for res in &r.results {
        check(
            res.error_code,
            res.error_message.as_ref(),
            "describing configs",
        )?;
        println!("  configs:");
        for c in &res.configs {
            let value = c.value.as_ref().map(|v| v.as_str()).unwrap_or("null");
            let marker = if c.config_source == 1 {
                " (override)"
            } else {
                ""
            };
            println!("    {}={}{}", c.name.as_str(), value, marker);
        }
    }
    Ok(())
}

fn print_partition(p: &metadata_response::MetadataResponsePartition) {
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    println!(
        "  partition {} leader {} epoch {} replicas {:?} isr {:?} offline {:?}",
        p.partition_index,
        p.leader_id.0,
        p.leader_epoch,
        ids(&p.replica_nodes),
        ids(&p.isr_nodes),
        ids(&p.offline_replicas)
    );
}

/// `describe --under-replicated`: every partition (of `name`, or of every topic) whose ISR
/// is smaller than its replica set, by topic; nothing when all are fully replicated.
async fn under_replicated(client: &mut Client, name: Option<&str>) -> anyhow::Result<()> {
    let meta = metadata(client, name).await?;
    for topic in &meta.topics {
        let topic_name = topic.name.as_ref().map_or("", |n| n.as_str());
        check(topic.error_code, None, &format!("describing {topic_name}"))?;
        let under: Vec<_> = topic
            .partitions
            .iter()
            .filter(|p| p.isr_nodes.len() < p.replica_nodes.len())
            .collect();
        if under.is_empty() {
            continue;
        }
        println!(
            "topic {topic_name} under-replicated partitions {}",
            under.len()
        );
        for p in under {
            print_partition(p);
        }
    }
    Ok(())
}

/// The per-tier table of `describe --admin`, from `GET /v1/topics/{topic}`.
async fn describe_tiers(admin: &str, name: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/v1/topics/{name}");
    let response = reqwest::get(&url)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let code = response.status();
    let body = response.text().await?;
    anyhow::ensure!(code.is_success(), "GET {url}: {code}: {}", body.trim());
    let status: crate::tiering::status::TopicStatus = serde_json::from_str(&body)?;
    print!("{}", tier_table(&status));
    Ok(())
}

fn tier_table(status: &crate::tiering::status::TopicStatus) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "  tiers (remote storage {}):\n",
        if status.remote_storage_enable {
            "on"
        } else {
            "off"
        }
    );
    let _ = writeln!(
        out,
        "    {:>9} {:>23} {:>12} {:>6} {:>23} {:>12} {:>6} {:>24} {:>11}",
        "partition",
        "local offsets",
        "local bytes",
        "segs",
        "remote offsets",
        "remote bytes",
        "files",
        "last offload",
        "lag records"
    );
    for p in &status.partitions {
        let range = |t: &crate::tiering::status::TierStatus| {
            format!("[{}, {})", t.start_offset, t.end_offset)
        };
        let last = p.last_offload_ms.map_or("-".to_string(), |ms| {
            let age = crate::clock::Clock::System.now_ms() - ms;
            format!("{ms} ({}s ago)", age / 1000)
        });
        let _ = writeln!(
            out,
            "    {:>9} {:>23} {:>12} {:>6} {:>23} {:>12} {:>6} {:>24} {:>11}",
            p.partition,
            range(&p.local),
            p.local.bytes,
            p.local.files,
            range(&p.remote),
            p.remote.bytes,
            p.remote.files,
            last,
            p.offload_lag_records
        );
    }
    out
}
