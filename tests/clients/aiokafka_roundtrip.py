#!/usr/bin/env python3
"""aiokafka round trip against a strata broker.

Usage: aiokafka_roundtrip.py BOOTSTRAP TOPIC

Checks, collecting every difference before exiting 1:
  * the topic is auto-created through Metadata;
  * produce 1000 records (common.make_records) to partition 0 with acks=all,
    first half lz4-compressed, second half gzip-compressed; every send
    resolves without error, offsets 0..999 in order;
  * ListOffsets: beginning_offsets 0, end_offsets 1000, offsets_for_times finds
    record 321;
  * Fetch with group_id=None (no coordinator) + assign + seek_to_beginning and
    isolation_level=read_committed (the broker must return a last stable
    offset): every key, value, header, CreateTime timestamp and offset is
    identical;
  * Fetch from offset 517 (inside a compressed batch) returns records 517...
"""

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import common

CLIENT = "aiokafka"


async def produce(bootstrap, topic, recs, diffs):
    offsets = []
    for codec, chunk in zip(["lz4", "gzip"], common.split(recs, 2)):
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            compression_type=codec,
            linger_ms=5,
            request_timeout_ms=15000,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topic,
                    key=r.key,
                    value=r.value,
                    headers=r.headers,
                    partition=0,
                    timestamp_ms=r.timestamp,
                )
                for r in chunk
            ]
            await producer.flush()
            for f in futures:
                try:
                    offsets.append((await asyncio.wait_for(f, 10)).offset)
                except Exception as e:  # noqa: BLE001 - report whatever the client raised
                    diffs.append(f"{codec}: send of record #{len(offsets)} failed: {e!r}")
                    offsets.append(None)
        finally:
            await producer.stop()
    if offsets != list(range(len(recs))):
        bad = [(i, o) for i, o in enumerate(offsets) if o != i][:10]
        diffs.append(f"produce offsets are not 0..{len(recs) - 1} in order; first mismatches (index, offset): {bad}")


async def fetch(consumer, count, deadline_s=20):
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while len(got) < count and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=500)
        for msgs in batches.values():
            for m in msgs:
                ts = m.timestamp if m.timestamp_type == 0 else ("not CreateTime", m.timestamp_type, m.timestamp)
                got.append(common.Got(m.offset, m.key, m.value, list(m.headers or []), ts))
    return got


async def run(bootstrap, topic, diffs):
    recs = common.make_records()
    n = len(recs)

    await produce(bootstrap, topic, recs, diffs)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        request_timeout_ms=10000,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])

        async def offsets():
            lo = (await consumer.beginning_offsets([tp])).get(tp)
            hi = (await consumer.end_offsets([tp])).get(tp)
            if (lo, hi) != (0, n):
                diffs.append(f"beginning/end offsets: expected (0, {n}), got ({lo}, {hi})")

        async def by_time():
            found = (await consumer.offsets_for_times({tp: recs[321].timestamp})).get(tp)
            if found is None or found.offset != 321:
                diffs.append(f"offsets_for_times(ts of record 321): got {found}")

        async def from_beginning():
            await consumer.seek_to_beginning(tp)
            diffs.extend(common.compare(recs, await fetch(consumer, n)))

        async def from_middle():
            consumer.seek(tp, 517)
            got = (await fetch(consumer, 20))[:20]
            diffs.extend(f"from offset 517: {d}" for d in common.compare(recs[517:537], got, first_offset=517))

        for what, section in [
            ("beginning/end offsets", offsets),
            ("offsets_for_times", by_time),
            ("fetch from the beginning", from_beginning),
            ("fetch from offset 517", from_middle),
        ]:
            try:
                await section()
            except Exception as e:  # noqa: BLE001 - report and go on with the next check
                diffs.append(f"{what}: {type(e).__name__}: {e}")
    finally:
        await consumer.stop()


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    diffs = []
    common.arm_timeout(CLIENT, 75, diffs)
    asyncio.run(run(bootstrap, topic, diffs))
    common.report(CLIENT, diffs)


if __name__ == "__main__":
    main()
