//! OffsetForLeaderEpoch (KIP-101, KIP-320): the end offset of the largest epoch <= the one asked,
//! from the partition's leader-epoch cache. librdkafka validates positions with it after leader
//! changes, so the epochs are real ones. A consumer (replica id -1) is answered at most the high
//! watermark for the current epoch, as it may not see past it; a replica (its broker id) gets
//! the epoch's end in the log, the log end for the current epoch (Kafka's answer to followers,
//! which truncate to it).

use super::hosted;
use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::broker::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let replica = request.replica_id.0 >= 0;
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(t.topic.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = EpochEndOffset::default().with_partition(p.partition);
                    let partition = match hosted(topic.as_deref(), p.partition) {
                        Ok(partition) => partition,
                        Err(code) => {
                            return out
                                .with_error_code(code.code())
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        }
                    };
                    if let Err(e) = partition.check_leader(p.current_leader_epoch) {
                        return out
                            .with_error_code(e.code().code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                    let (epoch, end) = partition.end_offset_for_epoch(p.leader_epoch);
                    let visible = if replica {
                        partition.log_end_offset()
                    } else {
                        partition.high_watermark()
                    };
                    // The cache knows epochs by their first batch; an epoch with no batch yet ends
                    // at the visible end when it is the current one.
                    let (epoch, end) = if epoch < 0 && p.leader_epoch >= partition.leader_epoch() {
                        (partition.leader_epoch(), visible)
                    } else if epoch == partition.leader_epoch() {
                        (epoch, end.min(visible))
                    } else {
                        (epoch, end)
                    };
                    out.with_leader_epoch(epoch).with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
