"""Group consumption with a Python client, using the client's own group coordination.

usage: group_consumer.py CLIENT BOOTSTRAP TOPIC   (CLIENT: confluent_kafka | kafka_python | aiokafka)

  1. produce 90 records to a 3-partition topic;
  2. a consumer in group G subscribes, reads all 90, commits after processing, closes;
  3. produce 30 more;
  4. a second consumer in G subscribes and must read exactly the 30 new records (resuming at
     the committed offsets: nothing skipped, nothing read twice), commits and closes;
  5. the committed offsets equal the end offsets.

Prints "OK group-<CLIENT>" or "FAIL ..." with the differences, exit 1 on failure.
"""

import asyncio
import sys
import time

FIRST, SECOND, PARTITIONS = 90, 30, 3
DEADLINE_S = 40


def fail(client, msg):
    print(f"FAIL group-{client}: {msg}")
    sys.exit(1)


def check(client, got, expected, what):
    if sorted(got) != sorted(expected):
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        fail(client, f"{what}: {len(got)} read, {len(expected)} expected; missing {missing}, unexpected {extra}")


def values(tag, n):
    return [f"{tag}-{i}".encode() for i in range(n)]


# --------------------------------------------------------------------------------------------
def run_confluent(bootstrap, topic, group):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)

    def produce(vals):
        p = Producer({"bootstrap.servers": bootstrap})
        for i, v in enumerate(vals):
            p.produce(topic, v, partition=i % PARTITIONS)
        assert p.flush(15) == 0

    def consume(n):
        c = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
        })
        c.subscribe([topic])
        got, deadline = [], time.time() + DEADLINE_S
        while len(got) < n and time.time() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            got.append(m.value())
            c.commit(message=m, asynchronous=False)
        # A short extra poll: anything beyond n would be a duplicate.
        end = time.time() + 1
        while time.time() < end:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append(m.value())
        committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
        c.close()
        return got, sum(tp.offset for tp in committed)

    produce(values("a", FIRST))
    got, _ = consume(FIRST)
    check("confluent_kafka", got, values("a", FIRST), "first consumer")
    produce(values("b", SECOND))
    got, committed = consume(SECOND)
    check("confluent_kafka", got, values("b", SECOND), "second consumer")
    return committed


# --------------------------------------------------------------------------------------------
def run_kafka_python(bootstrap, topic, group):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    admin.close()

    def produce(vals):
        p = KafkaProducer(bootstrap_servers=bootstrap)
        for i, v in enumerate(vals):
            p.send(topic, v, partition=i % PARTITIONS)
        p.flush(15)
        p.close()

    def consume(n):
        c = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=10000,
        )
        c.subscribe([topic])
        got, deadline = [], time.time() + DEADLINE_S
        while len(got) < n and time.time() < deadline:
            for _, msgs in c.poll(timeout_ms=200).items():
                got.extend(m.value for m in msgs)
                c.commit()
        end = time.time() + 1
        while time.time() < end:
            for _, msgs in c.poll(timeout_ms=200).items():
                got.extend(m.value for m in msgs)
        committed = sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))
        c.close()
        return got, committed

    produce(values("a", FIRST))
    got, _ = consume(FIRST)
    check("kafka_python", got, values("a", FIRST), "first consumer")
    produce(values("b", SECOND))
    got, committed = consume(SECOND)
    check("kafka_python", got, values("b", SECOND), "second consumer")
    return committed


# --------------------------------------------------------------------------------------------
async def run_aiokafka_async(bootstrap, topic, group):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()

    async def produce(vals):
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        for i, v in enumerate(vals):
            await p.send_and_wait(topic, v, partition=i % PARTITIONS)
        await p.stop()

    async def consume(n):
        c = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=10000,
        )
        await c.start()
        got, deadline = [], time.time() + DEADLINE_S
        while len(got) < n and time.time() < deadline:
            batches = await c.getmany(timeout_ms=200)
            for _, msgs in batches.items():
                got.extend(m.value for m in msgs)
            if batches:
                await c.commit()
        end = time.time() + 1
        while time.time() < end:
            for _, msgs in (await c.getmany(timeout_ms=200)).items():
                got.extend(m.value for m in msgs)
        committed = 0
        for p in range(PARTITIONS):
            committed += await c.committed(TopicPartition(topic, p)) or 0
        await c.stop()
        return got, committed

    await produce(values("a", FIRST))
    got, _ = await consume(FIRST)
    check("aiokafka", got, values("a", FIRST), "first consumer")
    await produce(values("b", SECOND))
    got, committed = await consume(SECOND)
    check("aiokafka", got, values("b", SECOND), "second consumer")
    return committed


def run_aiokafka(bootstrap, topic, group):
    return asyncio.run(run_aiokafka_async(bootstrap, topic, group))


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    client, bootstrap, topic = sys.argv[1:]
    runners = {
        "confluent_kafka": run_confluent,
        "kafka_python": run_kafka_python,
        "aiokafka": run_aiokafka,
    }
    if client not in runners:
        fail(client, "unknown client")
    committed = runners[client](bootstrap, topic, f"strata-group-{client}")
    if committed != FIRST + SECOND:
        fail(client, f"committed offsets sum to {committed}, expected {FIRST + SECOND}")
    print(f"OK group-{client}")


if __name__ == "__main__":
    main()
