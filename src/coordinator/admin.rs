//! The group administration APIs: ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::group::State;
use super::offsets::{group_key, offset_key};
use super::GroupHost;
use super::{store, Coordinator};

/// A group as ListGroups reports it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

/// A member as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups reports it; an unknown group is "Dead" with no error, as in Kafka.
#[derive(Debug, Clone)]
pub struct Described {
    pub error: i16,
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

impl Coordinator {
    pub fn list(&self) -> Result<Vec<Listed>, ResponseError> {
        if !self.is_loaded() {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let mut listed: Vec<Listed> = self
            .groups()
            .values()
            .map(|g| Listed {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect();
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(listed)
    }

    pub fn describe(&self, group_id: &str) -> Described {
        let mut described = Described {
            error: 0,
            group_id: group_id.to_string(),
            state: "Dead",
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        };
        if let Err(e) = self.ready(group_id) {
            described.error = e.code();
            return described;
        }
        let groups = self.groups();
        let Some(g) = groups.get(group_id) else {
            return described;
        };
        described.state = g.state.name();
        described.protocol_type = g.protocol_type.clone().unwrap_or_default();
        // Kafka reports the protocol and assignments only once the group is Stable.
        let stable = g.state == State::Stable;
        if stable {
            described.protocol = g.protocol.clone().unwrap_or_default();
        }
        described.members = g
            .members
            .values()
            .map(|m| DescribedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata(g.protocol.as_deref())
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        described
    }

    /// DeleteGroups: only groups without members (NON_EMPTY_GROUP otherwise); the group and
    /// its offsets get tombstones in `__consumer_offsets`.
    pub async fn delete_group(
        &self,
        host: &dyn GroupHost,
        group_id: &str,
    ) -> Result<(), ResponseError> {
        self.ready(group_id)?;
        let partition = self.partition_of(group_id);
        let Some(writer) = self.writers.get().and_then(|w| w.get(partition as usize)) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let _writer = writer.lock().await;
        let records = {
            let groups = self.groups();
            let Some(g) = groups.get(group_id) else {
                return Err(ResponseError::GroupIdNotFound);
            };
            if g.state != State::Empty || !g.is_empty() {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut records: Vec<store::KeyValue> = g
                .offsets
                .keys()
                .map(|(t, p)| (offset_key(group_id, t, *p), None))
                .collect();
            records.push((group_key(group_id), None));
            records
        };
        store::append(host, partition, &records).await?;
        let mut groups = self.groups();
        // A member may have joined while the tombstones were written: keep the group then.
        if groups
            .get(group_id)
            .is_some_and(|g| g.state == State::Empty && g.is_empty())
        {
            groups.remove(group_id);
        }
        Ok(())
    }

    /// OffsetDelete (KIP-496): a partition of a topic the group's members subscribe to gets
    /// GROUP_SUBSCRIBED_TO_TOPIC; an active group that is not a consumer group cannot have
    /// offsets deleted at all (NON_EMPTY_GROUP).
    pub async fn delete_offsets(
        &self,
        host: &dyn GroupHost,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, i16)>)>, ResponseError> {
        self.ready(group_id)?;
        let partition = self.partition_of(group_id);
        let Some(writer) = self.writers.get().and_then(|w| w.get(partition as usize)) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let _writer = writer.lock().await;
        let mut records = Vec::new();
        let mut doomed = Vec::new();
        let result = {
            let groups = self.groups();
            let Some(g) = groups.get(group_id) else {
                return Err(ResponseError::GroupIdNotFound);
            };
            let subscribed = if g.state == State::Empty {
                Default::default()
            } else {
                g.subscribed_topics().ok_or(ResponseError::NonEmptyGroup)?
            };
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let codes = partitions
                        .into_iter()
                        .map(|p| {
                            if subscribed.contains(&topic) {
                                return (p, ResponseError::GroupSubscribedToTopic.code());
                            }
                            if !host.has_partition(&topic, p) {
                                return (p, ResponseError::UnknownTopicOrPartition.code());
                            }
                            if g.offsets.contains_key(&(topic.clone(), p)) {
                                records.push((offset_key(group_id, &topic, p), None));
                                doomed.push((topic.clone(), p));
                            }
                            (p, 0)
                        })
                        .collect();
                    (topic, codes)
                })
                .collect()
        };
        if !records.is_empty() {
            store::append(host, partition, &records).await?;
            if let Some(g) = self.groups().get_mut(group_id) {
                for key in doomed {
                    g.offsets.remove(&key);
                }
            }
        }
        Ok(result)
    }
}
