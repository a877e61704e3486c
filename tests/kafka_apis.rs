//! Protocol-level checks of the served APIs: topic administration, configs, offsets, DeleteRecords,
//! cluster description and the Fetch rules (long-poll, limits, KIP-74, sessions).

// Test clients and servers are spawned outside any broker: clippy.toml's rule on spawning
// (keep a broker's metrics scope) is for the crate's own code.
#![allow(clippy::disallowed_methods)]

use crate::support;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata::record::batch::split_batches;
use support::{batch, fetch_request, now_ms, KafkaConn, TestBroker};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

async fn create(
    conn: &mut KafkaConn,
    name: &str,
    partitions: i32,
    rf: i16,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> CreateTopicsResponse {
    let topic = CreatableTopic::default()
        .with_name(tn(name))
        .with_num_partitions(partitions)
        .with_replication_factor(rf)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_validate_only(validate_only)
        .with_timeout_ms(5000);
    conn.call(ApiKey::CreateTopics, 7, &request).await
}

async fn produce(
    conn: &mut KafkaConn,
    topic: &str,
    partition: i32,
    records: Vec<u8>,
) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(records)))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn list_offset(conn: &mut KafkaConn, topic: &str, timestamp: i64) -> (i16, i64, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![
                ListOffsetsPartition::default().with_timestamp(timestamp)
            ])]);
    let r: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &request).await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_administration() {
    let broker = TestBroker::start(&[("num.partitions", "4")]).await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;

    // validate_only creates nothing; -1 means the broker defaults (KIP-464).
    let r = create(
        &mut conn,
        "admin",
        -1,
        -1,
        &[("retention.ms", "3600000")],
        true,
    )
    .await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].num_partitions, 4);
    assert!(broker.running.broker.topic("admin").is_none());
    let r = create(
        &mut conn,
        "admin",
        -1,
        -1,
        &[("retention.ms", "3600000")],
        false,
    )
    .await;
    let t = &r.topics[0];
    assert_eq!(
        (t.error_code, t.num_partitions, t.replication_factor),
        (0, 4, 1)
    );
    let configs = t.configs.as_ref().unwrap();
    let retention = configs
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .unwrap();
    assert_eq!(retention.value.as_ref().unwrap().as_str(), "3600000");
    assert_eq!(
        create(&mut conn, "admin", 1, 1, &[], false).await.topics[0].error_code,
        36,
        "TOPIC_ALREADY_EXISTS"
    );

    // Metadata carries the topic id (KIP-516) and the partitions.
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(tn("admin"))),
    ]));
    let m: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request).await;
    assert_eq!(m.topics[0].topic_id, t.topic_id);
    assert_eq!(m.topics[0].partitions.len(), 4);
    assert_eq!(m.controller_id.0, 1);
    assert_eq!(m.brokers[0].port, broker.running.kafka_addr().port() as i32);

    // CreatePartitions grows; shrinking is refused.
    let grow = |count| {
        CreatePartitionsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(tn("admin"))
                .with_count(count)])
    };
    let r: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &grow(6)).await;
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(
        broker
            .running
            .broker
            .topic("admin")
            .unwrap()
            .partitions
            .len(),
        6
    );
    let r: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &grow(2)).await;
    assert_eq!(r.results[0].error_code, 37, "INVALID_PARTITIONS");
    // Assignments name registered brokers only (this node is 1).
    let assigned = |broker: i32| {
        use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;
        CreatePartitionsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(tn("admin"))
                .with_count(7)
                .with_assignments(Some(vec![
                    CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(broker)])
                ]))])
    };
    let r: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &assigned(7)).await;
    assert_eq!(r.results[0].error_code, 39, "INVALID_REPLICA_ASSIGNMENT");
    let r: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &assigned(1)).await;
    assert_eq!(r.results[0].error_code, 0);

    // IncrementalAlterConfigs then DescribeConfigs with synonyms.
    let alter = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("admin"))
            .with_configs(vec![
                AlterableConfig::default()
                    .with_name(s("segment.bytes"))
                    .with_config_operation(0)
                    .with_value(Some(s("1048576"))),
                AlterableConfig::default()
                    .with_name(s("retention.ms"))
                    .with_config_operation(1),
            ]),
    ]);
    let r: IncrementalAlterConfigsResponse =
        conn.call(ApiKey::IncrementalAlterConfigs, 1, &alter).await;
    assert_eq!(r.responses[0].error_code, 0);
    let describe = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_include_documentation(true)
        .with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("admin"))]);
    let r: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &describe).await;
    let entries = &r.results[0].configs;
    let get = |name: &str| entries.iter().find(|c| c.name.as_str() == name).unwrap();
    assert_eq!(
        get("segment.bytes").value.as_ref().unwrap().as_str(),
        "1048576"
    );
    assert_eq!(
        get("segment.bytes").config_source,
        1,
        "DYNAMIC_TOPIC_CONFIG"
    );
    assert_eq!(
        get("retention.ms").value.as_ref().unwrap().as_str(),
        "604800000"
    );
    assert_eq!(
        get("retention.ms").config_source,
        5,
        "back to DEFAULT_CONFIG"
    );
    assert!(get("segment.bytes")
        .synonyms
        .iter()
        .any(|syn| syn.name.as_str() == "log.segment.bytes"));
    assert!(get("cleanup.policy").documentation.is_some());
    // AlterConfigs replaces the whole set; a bad value is refused and changes nothing.
    let alter = AlterConfigsRequest::default().with_resources(vec![
        kafka_protocol::messages::alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("admin"))
            .with_configs(vec![
                kafka_protocol::messages::alter_configs_request::AlterableConfig::default()
                    .with_name(s("segment.ms"))
                    .with_value(Some(s("-3"))),
            ]),
    ]);
    let r: AlterConfigsResponse = conn.call(ApiKey::AlterConfigs, 2, &alter).await;
    assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG");
    assert_eq!(
        broker
            .running
            .broker
            .topic("admin")
            .unwrap()
            .config
            .segment_bytes,
        1_048_576
    );
    // Broker configs are described read-only.
    let describe =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s("1"))]);
    let r: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &describe).await;
    let np = r.results[0]
        .configs
        .iter()
        .find(|c| c.name.as_str() == "num.partitions")
        .unwrap();
    assert_eq!(np.value.as_ref().unwrap().as_str(), "4");
    assert!(np.read_only);

    // DescribeCluster and DescribeLogDirs.
    let r: DescribeClusterResponse = conn
        .call(
            ApiKey::DescribeCluster,
            1,
            &DescribeClusterRequest::default().with_endpoint_type(1),
        )
        .await;
    assert_eq!(r.error_code, 0);
    assert_eq!(
        r.cluster_id.as_str(),
        m.cluster_id.as_ref().unwrap().as_str()
    );
    assert_eq!(r.brokers.len(), 1);
    assert_eq!(
        produce(&mut conn, "admin", 0, batch(0, 10, now_ms()))
            .await
            .0,
        0
    );
    let r: DescribeLogDirsResponse = conn
        .call(
            ApiKey::DescribeLogDirs,
            4,
            &DescribeLogDirsRequest::default().with_topics(None),
        )
        .await;
    let dir = &r.results[0];
    assert!(dir.total_bytes > 0 && dir.usable_bytes > 0);
    let admin = dir
        .topics
        .iter()
        .find(|t| t.name.as_str() == "admin")
        .unwrap();
    assert_eq!(admin.partitions.len(), 7);
    assert!(admin
        .partitions
        .iter()
        .any(|p| p.partition_index == 0 && p.partition_size > 0));

    // DeleteTopics by id (v6) and by name; internal topics are protected.
    let r: DeleteTopicsResponse = conn
        .call(
            ApiKey::DeleteTopics,
            6,
            &DeleteTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![DeleteTopicState::default().with_topic_id(t.topic_id)]),
        )
        .await;
    assert_eq!(r.responses[0].error_code, 0);
    assert!(broker.running.broker.topic("admin").is_none());
    let r: DeleteTopicsResponse = conn
        .call(
            ApiKey::DeleteTopics,
            5,
            &DeleteTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topic_names(vec![tn("admin")]),
        )
        .await;
    assert_eq!(r.responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    // Recreating the name gives a fresh, empty topic with a new id.
    let r = create(&mut conn, "admin", 1, 1, &[], false).await;
    assert_ne!(r.topics[0].topic_id, t.topic_id);
    assert_eq!(list_offset(&mut conn, "admin", -1).await.1, 0);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_epochs_and_delete_records() {
    let broker = TestBroker::start(&[]).await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    create(
        &mut conn,
        "offsets",
        1,
        1,
        &[("segment.bytes", "2000")],
        false,
    )
    .await;
    let ts0 = now_ms() - 10_000;
    for i in 0..10 {
        // Batches of 5 with timestamps ts0 + 10*i .. + 4; batch 7 carries the largest timestamp.
        let t = if i == 7 {
            ts0 + 5_000
        } else {
            ts0 + 10 * i as i64
        };
        assert_eq!(
            produce(&mut conn, "offsets", 0, batch(i * 5, 5, t)).await,
            (0, i as i64 * 5)
        );
    }
    assert_eq!(
        list_offset(&mut conn, "offsets", -2).await,
        (0, 0, -1),
        "earliest"
    );
    assert_eq!(
        list_offset(&mut conn, "offsets", -1).await,
        (0, 50, -1),
        "latest"
    );
    assert_eq!(
        list_offset(&mut conn, "offsets", -3).await,
        (0, 39, ts0 + 5_004),
        "max timestamp: last record of batch 7"
    );
    assert_eq!(
        list_offset(&mut conn, "offsets", ts0 + 22).await,
        (0, 12, ts0 + 22),
        "inside batch 2"
    );
    assert_eq!(
        list_offset(&mut conn, "offsets", ts0 + 5_000).await,
        (0, 35, ts0 + 5_000)
    );
    assert_eq!(
        list_offset(&mut conn, "offsets", ts0 + 99_999).await,
        (0, -1, -1),
        "no record that late"
    );

    // OffsetForLeaderEpoch: epoch 0 ends at the log end; an epoch newer than the leader's is
    // UNKNOWN_LEADER_EPOCH when the client claims it as current.
    let request = |leader_epoch, current| {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(tn("offsets"))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_leader_epoch(leader_epoch)
                    .with_current_leader_epoch(current)])])
    };
    let r: OffsetForLeaderEpochResponse = conn
        .call(ApiKey::OffsetForLeaderEpoch, 4, &request(0, 0))
        .await;
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (0, 0, 50));
    let r: OffsetForLeaderEpochResponse = conn
        .call(ApiKey::OffsetForLeaderEpoch, 4, &request(0, 3))
        .await;
    assert_eq!(
        r.topics[0].partitions[0].error_code, 75,
        "UNKNOWN_LEADER_EPOCH"
    );

    // DeleteRecords moves the log start; reads below it are out of range.
    let delete = |offset| {
        DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(tn("offsets"))
                .with_partitions(vec![
                    DeleteRecordsPartition::default().with_offset(offset)
                ])])
    };
    let r: DeleteRecordsResponse = conn.call(ApiKey::DeleteRecords, 2, &delete(23)).await;
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.low_watermark), (0, 23));
    assert_eq!(list_offset(&mut conn, "offsets", -2).await.1, 23);
    let r: DeleteRecordsResponse = conn.call(ApiKey::DeleteRecords, 2, &delete(51)).await;
    assert_eq!(
        r.topics[0].partitions[0].error_code, 1,
        "beyond the high watermark"
    );
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("offsets", 5, 1 << 20, 1 << 20, 0, 0),
        )
        .await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 1, "OFFSET_OUT_OF_RANGE below the log start");
    assert_eq!(p.log_start_offset, 23);
    // Reading from the new start works and begins with the batch holding offset 23.
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("offsets", 23, 1 << 20, 1 << 20, 0, 0),
        )
        .await;
    let records = f.responses[0].partitions[0].records.clone().unwrap();
    let (batches, _) = split_batches(&records);
    assert_eq!(batches[0].0.base_offset, 20);
    // The moved start survives a restart.
    let broker = broker.restart(&[]).await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    assert_eq!(list_offset(&mut conn, "offsets", -2).await.1, 23);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_limits_and_sessions() {
    let broker = TestBroker::start(&[]).await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    create(&mut conn, "fetch", 1, 1, &[], false).await;

    // Nothing to read: the fetch waits max_wait_ms, then answers empty (never null records).
    let started = Instant::now();
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("fetch", 0, 1 << 20, 1 << 20, 300, 1),
        )
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}"
    );
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.records.as_ref().map(|r| r.len()), Some(0));
    assert_eq!((p.high_watermark, p.last_stable_offset), (0, 0));
    assert_eq!(p.aborted_transactions.as_ref().map(|a| a.len()), Some(0));

    // A produce during the wait completes the fetch early.
    let addr = broker.bootstrap();
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = KafkaConn::connect(&addr).await;
        produce(&mut c, "fetch", 0, batch(0, 3, now_ms())).await
    });
    let started = Instant::now();
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("fetch", 0, 1 << 20, 1 << 20, 10_000, 1),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "long poll woke up on produce"
    );
    assert_eq!(producer.await.unwrap(), (0, 0));
    let (batches, _) = split_batches(f.responses[0].partitions[0].records.as_ref().unwrap());
    assert_eq!(batches.len(), 1);

    // Limits: never split a batch; KIP-74 returns the first batch even when it is too large.
    let big = batch(3, 200, now_ms());
    let big_len = big.len();
    produce(&mut conn, "fetch", 0, big).await;
    produce(&mut conn, "fetch", 0, batch(203, 3, now_ms())).await;
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("fetch", 3, 100, 100, 0, 0),
        )
        .await;
    let records = f.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(
        records.len(),
        big_len,
        "exactly the one oversized first batch"
    );
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("fetch", 0, (big_len + 150) as i32, 1 << 20, 0, 0),
        )
        .await;
    let records = f.responses[0].partitions[0].records.clone().unwrap();
    let (batches, whole) = split_batches(&records);
    assert_eq!(whole, records.len());
    assert_eq!(batches.len(), 2, "max_bytes stops before the third batch");

    // Fetch sessions are not kept: a named session is not found; a new one gets id 0.
    let mut named = fetch_request("fetch", 0, 1 << 20, 1 << 20, 0, 0);
    named.session_id = 42;
    named.session_epoch = 1;
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &named).await;
    assert_eq!(f.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    let mut new_session = fetch_request("fetch", 0, 1 << 20, 1 << 20, 0, 0);
    new_session.session_epoch = 0;
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &new_session).await;
    assert_eq!((f.error_code, f.session_id), (0, 0));

    // Fetch v13+ names topics by id.
    let id = broker.running.broker.topic("fetch").unwrap().id;
    let mut by_id = fetch_request("", 0, 1 << 20, 1 << 20, 0, 0);
    by_id.topics[0].topic_id = id;
    let f: FetchResponse = conn.call(ApiKey::Fetch, 13, &by_id).await;
    assert_eq!(f.responses[0].partitions[0].error_code, 0);
    assert!(!f.responses[0].partitions[0]
        .records
        .as_ref()
        .unwrap()
        .is_empty());
    by_id.topics[0].topic_id = uuid::Uuid::new_v4();
    let f: FetchResponse = conn.call(ApiKey::Fetch, 13, &by_id).await;
    assert_eq!(
        f.responses[0].partitions[0].error_code, 100,
        "UNKNOWN_TOPIC_ID"
    );
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_follows_the_broker_setting_and_transactions_are_refused() {
    let broker = TestBroker::start(&[("auto.create.topics.enable", "false")]).await;
    let mut conn = KafkaConn::connect(&broker.bootstrap()).await;
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(tn("nope")))
        ]));
    let m: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request).await;
    assert_eq!(m.topics[0].error_code, 3);
    assert!(broker.running.broker.topic("nope").is_none());
    // LogAppendTime topics stamp the batch with the broker's clock.
    create(
        &mut conn,
        "lat",
        1,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
        false,
    )
    .await;
    let before = now_ms();
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(tn("lat"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch(0, 2, 1_000))))])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request).await;
    let append_time = r.responses[0].partition_responses[0].log_append_time_ms;
    assert!(append_time >= before, "log_append_time_ms {append_time}");
    let f: FetchResponse = conn
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request("lat", 0, 1 << 20, 1 << 20, 0, 0),
        )
        .await;
    let records = f.responses[0].partitions[0].records.clone().unwrap();
    let (batches, _) = split_batches(&records);
    let (header, range) = &batches[0];
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, append_time);
    strata::record::batch::check_crc(header, &records[range.clone()]).expect("CRC recomputed");
    // A transactional producer is refused at once with a fatal error.
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s("tx-1"))))
        .with_transaction_timeout_ms(60_000);
    let r: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &request).await;
    assert_eq!(r.error_code, 53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED");
    let r: InitProducerIdResponse = conn
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
        )
        .await;
    assert_eq!(r.error_code, 0);
    assert!(r.producer_id.0 >= 0);
    broker.running.shutdown().await;
}
