#!/usr/bin/env python3
"""confluent-kafka (librdkafka 2.x wheel) round trip against a strata broker.

Usage: confluent_kafka_roundtrip.py BOOTSTRAP TOPIC

Checks, collecting every difference before exiting 1:
  * produce 1000 records (common.make_records) to partition 0 with acks=all,
    half zstd-compressed and half lz4-compressed; every delivery report is
    error-free and the reported offsets are 0..999 in order;
  * Metadata: the topic exists with one partition and a leader;
  * ListOffsets: watermarks are (0, 1000); offsets_for_times finds record 321;
  * Fetch from the beginning with assign() (no consumer group: group.id is set
    only because librdkafka's consumer requires one, auto commit is off and no
    offsets are committed): every key, value, header, CreateTime timestamp and
    offset is identical, in order;
  * Fetch from offset 517, inside a compressed batch: the client gets records
    517.. (the broker returns whole batches; the client skips the head);
  * CreateTopics: a 3-partition topic is created and reported by Metadata.
"""

import sys
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

import common

CLIENT = "confluent_kafka"


def produce(bootstrap, topic, recs, diffs):
    offsets = [None] * len(recs)
    start = 0
    for codec, chunk in zip(["zstd", "lz4"], common.split(recs, 2)):
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "compression.type": codec,
                "linger.ms": 5,
                "batch.num.messages": 300,
                "message.timeout.ms": 20000,
                "error_cb": lambda err: print(f"producer error_cb: {err}", file=sys.stderr),
            }
        )

        def on_delivery(err, msg, idx):
            if err is not None:
                diffs.append(f"delivery of record #{idx} failed: {err}")
            else:
                offsets[idx] = msg.offset()

        for j, r in enumerate(chunk):
            idx = start + j
            producer.produce(
                topic,
                value=r.value,
                key=r.key,
                partition=0,
                timestamp=r.timestamp,
                headers=r.headers,
                on_delivery=lambda err, msg, idx=idx: on_delivery(err, msg, idx),
            )
            producer.poll(0)
        left = producer.flush(30)
        if left:
            diffs.append(f"{codec} producer: {left} record(s) still undelivered after 30 s")
        start += len(chunk)
    if offsets != list(range(len(recs))):
        bad = [(i, o) for i, o in enumerate(offsets) if o != i][:10]
        diffs.append(f"delivery offsets are not 0..{len(recs) - 1} in order; first mismatches (index, offset): {bad}")


def consume(consumer, topic, start_offset, count, deadline_s=20):
    """Read `count` records from partition 0 starting at `start_offset`."""
    tp = TopicPartition(topic, 0, OFFSET_BEGINNING if start_offset == 0 else start_offset)
    consumer.assign([tp])
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise RuntimeError(f"fatal consumer error: {err}")
                print(f"consumer error (non-fatal): {err}", file=sys.stderr)
                continue
            ts_type, ts = msg.timestamp()
            if ts_type != TIMESTAMP_CREATE_TIME:
                ts = ("not CreateTime", ts_type, ts)
            got.append(common.Got(msg.offset(), msg.key(), msg.value(), list(msg.headers() or []), ts))
    consumer.unassign()
    return got


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    recs = common.make_records()
    n = len(recs)
    diffs = []
    common.arm_timeout(CLIENT, 75, diffs)

    produce(bootstrap, topic, recs, diffs)

    admin = AdminClient({"bootstrap.servers": bootstrap})
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by librdkafka's consumer even for assign(); nothing is
            # committed (auto commit off, no commit() call), so the group
            # coordinator is never needed.
            "group.id": "strata-test-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "error_cb": lambda err: print(f"consumer error_cb: {err}", file=sys.stderr),
        }
    )

    def metadata():
        md = admin.list_topics(topic=topic, timeout=10)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            diffs.append(f"metadata for {topic}: {tmd and tmd.error}")
        elif list(tmd.partitions) != [0] or tmd.partitions[0].leader < 0:
            diffs.append(f"metadata for {topic}: partitions {tmd.partitions}")
        if not md.brokers:
            diffs.append("metadata lists no broker")

    def watermarks():
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if (lo, hi) != (0, n):
            diffs.append(f"watermarks: expected (0, {n}), got ({lo}, {hi})")

    def from_beginning():
        diffs.extend(common.compare(recs, consume(consumer, topic, 0, n)))

    def from_middle():
        got = consume(consumer, topic, 517, 20)[:20]
        diffs.extend(f"from offset 517: {d}" for d in common.compare(recs[517:537], got, first_offset=517))

    def by_time():
        found = consumer.offsets_for_times([TopicPartition(topic, 0, recs[321].timestamp)], timeout=10)
        if found[0].error is not None or found[0].offset != 321:
            diffs.append(f"offsets_for_times(ts of record 321): got offset {found[0].offset}, error {found[0].error}")

    def create_topic():
        created = topic + "-created"
        futures = admin.create_topics(
            [NewTopic(created, num_partitions=3, replication_factor=1)], operation_timeout=10
        )
        futures[created].result(timeout=15)
        md = admin.list_topics(topic=created, timeout=10)
        parts = sorted(md.topics[created].partitions) if created in md.topics else None
        if parts != [0, 1, 2]:
            diffs.append(f"created topic {created}: partitions {parts}, expected [0, 1, 2]")

    for what, section in [
        ("metadata", metadata),
        ("watermarks", watermarks),
        ("fetch from the beginning", from_beginning),
        ("fetch from offset 517", from_middle),
        ("offsets_for_times", by_time),
        ("create_topics", create_topic),
    ]:
        try:
            section()
        except Exception as e:  # noqa: BLE001 - report and go on with the next check
            diffs.append(f"{what}: {type(e).__name__}: {e}")
    consumer.close()

    common.report(CLIENT, diffs)


if __name__ == "__main__":
    main()
