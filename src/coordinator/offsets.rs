//! The records of `__consumer_offsets`, in Kafka's own formats so Kafka tooling can read them.
//!
//! Every integer is big-endian; `string` is an i16 length then UTF-8 bytes, `nullable string`
//! uses length -1 for null; `bytes` is an i32 length then the bytes.
//!
//! Offset commit (one record per group/topic/partition):
//! - key, version 1: `i16 version=1, string group, string topic, i32 partition`
//! - value, version 3: `i16 version=3, i64 offset, i32 leader_epoch, string metadata,
//!   i64 commit_timestamp`
//! - a null value is a tombstone: the offset was deleted or expired.
//!
//! Group metadata (one record per group, rewritten at each generation):
//! - key, version 2: `i16 version=2, string group`
//! - value, version 3: `i16 version=3, string protocol_type, i32 generation,
//!   nullable string protocol, nullable string leader, i64 current_state_timestamp,
//!   i32 member count, then per member: string member_id, nullable string group_instance_id,
//!   string client_id, string client_host, i32 rebalance_timeout, i32 session_timeout,
//!   bytes subscription, bytes assignment`
//! - a null value is a tombstone: the group was deleted. The member list is left empty when the
//!   members' subscriptions and assignments exceed 8 MiB together.
//!
//! On load only the generation and protocol type of a group are restored; members rejoin (their
//! heartbeats get UNKNOWN_MEMBER_ID) as they would after a coordinator failover in Kafka.
//! A record whose key version is unknown is skipped, as Kafka skips records of newer formats.

use super::group::Group;

/// Largest total of member subscriptions and assignments written into a group record.
const GROUP_VALUE_MEMBERS_MAX_BYTES: usize = 8 * 1024 * 1024;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A decoded record of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<Committed>,
    },
    Group {
        group: String,
        /// (protocol type, generation); None for a tombstone.
        value: Option<(String, i32)>,
    },
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    buf.extend_from_slice(&(len as i16).to_be_bytes());
    buf.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_nullable_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
    buf.extend_from_slice(b);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + group.len() + topic.len());
    buf.extend_from_slice(&1i16.to_be_bytes());
    put_str(&mut buf, group);
    put_str(&mut buf, topic);
    buf.extend_from_slice(&partition.to_be_bytes());
    buf
}

pub fn offset_value(c: &Committed) -> Vec<u8> {
    let mut buf = Vec::with_capacity(24 + c.metadata.len());
    buf.extend_from_slice(&3i16.to_be_bytes());
    buf.extend_from_slice(&c.offset.to_be_bytes());
    buf.extend_from_slice(&c.leader_epoch.to_be_bytes());
    put_str(&mut buf, &c.metadata);
    buf.extend_from_slice(&c.commit_timestamp_ms.to_be_bytes());
    buf
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + group.len());
    buf.extend_from_slice(&2i16.to_be_bytes());
    put_str(&mut buf, group);
    buf
}

pub fn group_value(g: &Group) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&3i16.to_be_bytes());
    put_str(&mut buf, g.protocol_type.as_deref().unwrap_or_default());
    buf.extend_from_slice(&g.generation.to_be_bytes());
    put_nullable_str(&mut buf, g.protocol.as_deref());
    put_nullable_str(&mut buf, g.leader.as_deref());
    buf.extend_from_slice(&g.state_since_ms.to_be_bytes());
    let member_bytes: usize = g
        .members
        .values()
        .map(|m| m.metadata(g.protocol.as_deref()).len() + m.assignment.len())
        .sum();
    // One record must stay well below the topic's max.message.bytes; the members are only
    // informational on load, so a huge group is written without them.
    let members: Vec<_> = if member_bytes <= GROUP_VALUE_MEMBERS_MAX_BYTES {
        g.members.values().collect()
    } else {
        Vec::new()
    };
    buf.extend_from_slice(&(members.len() as i32).to_be_bytes());
    for m in members {
        put_str(&mut buf, &m.id);
        put_nullable_str(&mut buf, m.instance_id.as_deref());
        put_str(&mut buf, &m.client_id);
        put_str(&mut buf, &m.client_host);
        buf.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
        buf.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
        put_bytes(&mut buf, &m.metadata(g.protocol.as_deref()));
        put_bytes(&mut buf, &m.assignment);
    }
    buf
}

/// A bounds-checked big-endian reader.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    pub fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
    }
    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
    }
    pub fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
}

/// Decodes one record; `None` for anything malformed or of an unknown key version.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | 1 => {
            let group = k.string()?;
            let topic = k.string()?;
            let partition = k.i32()?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_offset_value(v)?),
            };
            Some(OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = k.string()?;
            let value = match value {
                None => None,
                Some(v) => {
                    let mut r = Reader(v);
                    let _version = r.i16()?;
                    let protocol_type = r.string()?;
                    let generation = r.i32()?;
                    Some((protocol_type, generation))
                }
            };
            Some(OffsetsRecord::Group { group, value })
        }
        _ => None,
    }
}

fn decode_offset_value(v: &[u8]) -> Option<Committed> {
    let mut r = Reader(v);
    let version = r.i16()?;
    let offset = r.i64()?;
    // Value v3 added the leader epoch; v1 carried an expire timestamp after the commit time.
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

/// The topics of a consumer-protocol subscription (`ConsumerProtocolSubscription`:
/// i16 version, i32 count, strings...).
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(metadata);
    let _version = r.i16()?;
    let count = r.i32()?;
    let count = usize::try_from(count).ok()?;
    // Each topic takes at least 2 bytes: a count beyond that is a lie.
    if count > r.0.len() / 2 {
        return None;
    }
    (0..count).map(|_| r.string()).collect()
}

/// The `__consumer_offsets` partition of a group: Java's `String.hashCode` of the id, as
/// Kafka's `Utils.abs(groupId.hashCode) % offsets.topic.num.partitions`.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    (h & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_and_truncations_are_rejected() {
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        let key = offset_key("g", "t", 7);
        let value = offset_value(&c);
        let expected = OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
            value: Some(c),
        };
        assert_eq!(decode(&key, Some(&value)), Some(expected));
        for n in 0..key.len() {
            assert_eq!(decode(&key[..n], Some(&value)), None);
        }
        for n in 0..value.len() {
            assert_eq!(decode(&key, Some(&value[..n])), None);
        }
    }

    #[test]
    fn group_record_round_trips() {
        let mut g = Group::new("g", 5);
        g.protocol_type = Some("consumer".into());
        g.generation = 9;
        let decoded = decode(&group_key("g"), Some(&group_value(&g)));
        assert_eq!(
            decoded,
            Some(OffsetsRecord::Group {
                group: "g".into(),
                value: Some(("consumer".into(), 9))
            })
        );
    }

    #[test]
    fn partition_matches_java_hash_code() {
        // "test-group".hashCode() == 627841412 in Java.
        assert_eq!(partition_for("test-group", 50), 627841412 % 50);
        assert_eq!(partition_for("", 50), 0);
    }

    #[test]
    fn subscription_topics_are_bounded() {
        let mut m = vec![0, 1, 0, 0, 0, 2];
        put_str(&mut m, "a");
        put_str(&mut m, "bc");
        assert_eq!(subscription_topics(&m), Some(vec!["a".into(), "bc".into()]));
        assert_eq!(subscription_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None);
    }
}
