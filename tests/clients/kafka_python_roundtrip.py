#!/usr/bin/env python3
"""kafka-python round trip against a strata broker.

Usage: kafka_python_roundtrip.py BOOTSTRAP TOPIC

Checks, collecting every difference before exiting 1:
  * the topic is auto-created through Metadata (kafka-python never calls
    CreateTopics for a producer);
  * produce 1000 records (common.make_records, with b"null" where other
    clients send a null header value: kafka-python's send() takes only bytes)
    to partition 0 with acks=all in three phases: gzip with the client's defaults (kafka-python 3 enables the
    idempotent producer by default: InitProducerId + sequence numbers), lz4
    with enable_idempotence=False, snappy with defaults again; every future
    resolves without error, offsets 0..999 in order;
  * ListOffsets: beginning_offsets 0, end_offsets 1000, offsets_for_times finds
    record 321;
  * Fetch with group_id=None (no coordinator) + assign + seek_to_beginning:
    every key, value, header, CreateTime timestamp and offset is identical;
  * Fetch from offset 517 (inside a compressed batch) returns records 517...
"""

import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import common

CLIENT = "kafka_python"

PHASES = [
    ("gzip", {}),
    ("lz4", {"enable_idempotence": False}),
    ("snappy", {}),
]


def produce(bootstrap, topic, recs, diffs):
    offsets = []
    for (codec, extra), chunk in zip(PHASES, common.split(recs, len(PHASES))):
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            compression_type=codec,
            linger_ms=5,
            batch_size=64 * 1024,
            request_timeout_ms=15000,
            max_block_ms=15000,
            **extra,
        )
        futures = [
            producer.send(
                topic,
                key=r.key,
                value=r.value,
                headers=r.headers,
                partition=0,
                timestamp_ms=r.timestamp,
            )
            for r in chunk
        ]
        producer.flush(timeout=30)
        for i, f in enumerate(futures):
            try:
                offsets.append(f.get(timeout=5).offset)
            except Exception as e:  # noqa: BLE001 - report whatever the client raised
                diffs.append(f"{codec}: send of record #{len(offsets)} failed: {e!r}")
                offsets.append(None)
        producer.close(timeout=10)
    if offsets != list(range(len(recs))):
        bad = [(i, o) for i, o in enumerate(offsets) if o != i][:10]
        diffs.append(f"produce offsets are not 0..{len(recs) - 1} in order; first mismatches (index, offset): {bad}")


def poll_records(consumer, count, deadline_s=20):
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < count and time.monotonic() < deadline:
        for _tp, msgs in consumer.poll(timeout_ms=500, max_records=500).items():
            for m in msgs:
                ts = m.timestamp if m.timestamp_type == 0 else ("not CreateTime", m.timestamp_type, m.timestamp)
                got.append(common.Got(m.offset, m.key, m.value, list(m.headers or []), ts))
    return got


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    # kafka-python's send() accepts only bytes header values (no null); it decodes null ones.
    recs = common.make_records(null_header_values=False)
    n = len(recs)
    diffs = []
    common.arm_timeout(CLIENT, 75, diffs)

    produce(bootstrap, topic, recs, diffs)

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10000,
    )
    tp = TopicPartition(topic, 0)

    def metadata():
        parts = consumer.partitions_for_topic(topic)
        if parts != {0}:
            diffs.append(f"partitions_for_topic({topic}): {parts}, expected {{0}}")

    def offsets():
        lo = consumer.beginning_offsets([tp], timeout_ms=10000).get(tp)
        hi = consumer.end_offsets([tp], timeout_ms=10000).get(tp)
        if (lo, hi) != (0, n):
            diffs.append(f"beginning/end offsets: expected (0, {n}), got ({lo}, {hi})")

    def by_time():
        found = consumer.offsets_for_times({tp: recs[321].timestamp}, timeout_ms=10000).get(tp)
        if found is None or found.offset != 321:
            diffs.append(f"offsets_for_times(ts of record 321): got {found}")

    def from_beginning():
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        diffs.extend(common.compare(recs, poll_records(consumer, n)))

    def from_middle():
        consumer.seek(tp, 517)
        got = poll_records(consumer, 20)[:20]
        diffs.extend(f"from offset 517: {d}" for d in common.compare(recs[517:537], got, first_offset=517))

    for what, section in [
        ("metadata", metadata),
        ("beginning/end offsets", offsets),
        ("offsets_for_times", by_time),
        ("fetch from the beginning", from_beginning),
        ("fetch from offset 517", from_middle),
    ]:
        try:
            section()
        except Exception as e:  # noqa: BLE001 - report and go on with the next check
            diffs.append(f"{what}: {type(e).__name__}: {e}")
    consumer.close()

    common.report(CLIENT, diffs)


if __name__ == "__main__":
    main()
