#!/usr/bin/env node
// kafkajs 2.2.x against a strata broker.
//
// Usage: node kafkajs_roundtrip.js BOOTSTRAP TOPIC [EXPECTED_JSONL]
//
// Checks, collecting every difference before exiting 1:
//   * produce 1000 records to partition 0 of TOPIC (auto-created through
//     Metadata) with acks=-1 (all) and gzip (the only codec kafkajs has without
//     plugins), in 5 send() calls; every call succeeds and its baseOffset
//     continues where the previous one ended;
//   * admin.fetchTopicOffsets: low 0, high 1000; fetchTopicOffsetsByTimestamp
//     finds record 321;
//   * admin.createTopics creates TOPIC-created with 3 partitions, listTopics
//     lists both topics, fetchTopicMetadata shows 3 partitions.
//
// kafkajs's consumer always joins a consumer group (FindCoordinator, JoinGroup,
// SyncGroup, OffsetFetch, Heartbeat): the script consumes the topic with kafkajs
// itself through a group and compares (STRATA_KAFKAJS_CONSUME=0 skips that). It
// also writes the records it produced as JSON lines (offset, key, payload,
// headers, ts) to EXPECTED_JSONL, and tests/external_clients.rs reads the topic
// back with kcat (librdkafka) and compares too.

'use strict'

const fs = require('fs')
const { Kafka, CompressionTypes, logLevel } = require('kafkajs')

const CLIENT = 'kafkajs'
const N_RECORDS = 1000
const SENDS = 5

const [bootstrap, topic, expectedPath] = process.argv.slice(2)
if (!bootstrap || !topic) {
  console.error('usage: kafkajs_roundtrip.js BOOTSTRAP TOPIC [EXPECTED_JSONL]')
  process.exit(2)
}

// Every difference found, reported at the end (or at the deadline).
const diffs = []

// Hard per-script deadline, independent of the caller's timeout.
setTimeout(() => {
  console.error(`FAIL ${CLIENT}: script timeout after 75s; differences so far:`)
  for (const d of diffs.slice(0, 50)) console.error('  ' + d)
  process.exit(2)
}, 75000).unref()

// Text-only records (kcat's JSON output is compared against these), with null
// keys, null and empty values, a large value, repeated header keys and headers
// with empty values. Headers are [key, value] pairs in wire order. No null header
// values: kafkajs 2.2.4 crashes sizing them (Buffer.byteLength(null) in
// protocol/recordBatch/record/v0), although its encoder would write them.
function makeRecords(n) {
  const baseTs = Date.now() - 60000
  const recs = []
  for (let i = 0; i < n; i++) {
    const key = i % 50 === 7 ? null : `key-${i}`
    let value
    if (i % 13 === 5 && key !== null) value = null
    else if (i % 17 === 3) value = ''
    else if (i % 100 === 42) value = `large-${i}-` + 'lorem ipsum dolor sit amet '.repeat(800)
    else value = `value-${i}-` + 'abc'.repeat(i % 10)
    let headers
    switch (i % 4) {
      case 0:
        headers = []
        break
      case 1:
        headers = [['trace', `t${i}`]]
        break
      case 2:
        headers = [['h', 'a'], ['h', 'b'], ['empty', '']]
        break
      default:
        headers = [['\u00fcn\u00ef', '\u2713']]
    }
    recs.push({ offset: i, key, payload: value, headers, ts: baseTs + i })
  }
  return recs
}

// kafkajs takes headers as an object; an array value gives a repeated key.
function toKafkajsHeaders(pairs) {
  const obj = {}
  for (const [k, v] of pairs) {
    if (k in obj) obj[k] = [].concat(obj[k], [v])
    else obj[k] = v
  }
  return obj
}

function fromKafkajsHeaders(obj) {
  const pairs = []
  for (const [k, v] of Object.entries(obj || {})) {
    for (const one of Array.isArray(v) ? v : [v]) pairs.push([k, one === null ? null : one.toString()])
  }
  return pairs
}

function compareRecords(expected, got) {
  const diffs = []
  if (got.length !== expected.length) diffs.push(`record count: expected ${expected.length}, got ${got.length}`)
  for (let i = 0; i < Math.min(got.length, expected.length); i++) {
    const e = JSON.stringify(expected[i])
    const g = JSON.stringify(got[i])
    if (e !== g) diffs.push(`record #${i}:\n    expected ${e.slice(0, 300)}\n    got      ${g.slice(0, 300)}`)
  }
  return diffs
}

async function consumeWithGroup(kafka, recs) {
  const consumer = kafka.consumer({ groupId: `strata-kafkajs-${topic}`, sessionTimeout: 10000, rebalanceTimeout: 10000 })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const got = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('consume timed out after 20s')), 20000)
    consumer
      .run({
        eachMessage: async ({ message }) => {
          got.push({
            offset: Number(message.offset),
            key: message.key === null ? null : message.key.toString(),
            payload: message.value === null ? null : message.value.toString(),
            headers: fromKafkajsHeaders(message.headers),
            ts: Number(message.timestamp),
          })
          if (got.length >= recs.length) {
            clearTimeout(timer)
            resolve()
          }
        },
      })
      .catch(reject)
  })
  await consumer.disconnect()
  return compareRecords(recs, got)
}

async function main() {
  const kafka = new Kafka({
    clientId: 'strata-kafkajs-test',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 3 },
  })
  const recs = makeRecords(N_RECORDS)

  const producer = kafka.producer({ allowAutoTopicCreation: true })
  await producer.connect()
  const per = Math.ceil(recs.length / SENDS)
  for (let start = 0; start < recs.length; start += per) {
    const chunk = recs.slice(start, start + per)
    const result = await producer.send({
      topic,
      acks: -1,
      timeout: 15000,
      compression: CompressionTypes.GZIP,
      messages: chunk.map((r) => ({
        partition: 0,
        key: r.key,
        value: r.payload,
        headers: toKafkajsHeaders(r.headers),
        timestamp: String(r.ts),
      })),
    })
    const meta = result.find((m) => m.topicName === topic && m.partition === 0)
    if (!meta || meta.errorCode !== 0 || Number(meta.baseOffset) !== start) {
      diffs.push(`send of records ${start}..${start + chunk.length - 1}: expected baseOffset ${start}, got ${JSON.stringify(result)}`)
    }
  }
  await producer.disconnect()

  const admin = kafka.admin()
  await admin.connect()
  // Each check runs even when an earlier one threw, so one run shows every problem.
  const section = async (what, fn) => {
    try {
      await fn()
    } catch (e) {
      diffs.push(`${what}: ${e && e.name}: ${e && e.message}`)
    }
  }
  await section('fetchTopicOffsets', async () => {
    const offsets = await admin.fetchTopicOffsets(topic)
    const p0 = offsets.find((o) => o.partition === 0)
    if (offsets.length !== 1 || !p0 || p0.low !== '0' || p0.high !== String(N_RECORDS) || p0.offset !== String(N_RECORDS)) {
      diffs.push(`fetchTopicOffsets: expected [{partition 0, low '0', high/offset '${N_RECORDS}'}], got ${JSON.stringify(offsets)}`)
    }
  })
  await section('fetchTopicOffsetsByTimestamp', async () => {
    const byTs = await admin.fetchTopicOffsetsByTimestamp(topic, recs[321].ts)
    if (byTs.length !== 1 || byTs[0].offset !== '321') {
      diffs.push(`fetchTopicOffsetsByTimestamp(ts of record 321): got ${JSON.stringify(byTs)}`)
    }
  })
  const created = `${topic}-created`
  await section('createTopics', async () => {
    const ok = await admin.createTopics({ topics: [{ topic: created, numPartitions: 3 }], waitForLeaders: true, timeout: 10000 })
    if (ok !== true) diffs.push(`createTopics(${created}) returned ${ok}`)
  })
  await section('listTopics', async () => {
    const topics = await admin.listTopics()
    for (const t of [topic, created]) {
      if (!topics.includes(t)) diffs.push(`listTopics does not include ${t}: ${JSON.stringify(topics)}`)
    }
  })
  await section('fetchTopicMetadata', async () => {
    const md = await admin.fetchTopicMetadata({ topics: [created] })
    const parts = md.topics[0].partitions.map((p) => p.partitionId).sort()
    if (JSON.stringify(parts) !== '[0,1,2]') diffs.push(`fetchTopicMetadata(${created}): partitions ${JSON.stringify(parts)}`)
  })
  await admin.disconnect()

  if (process.env.STRATA_KAFKAJS_CONSUME !== '0') {
    diffs.push(...(await consumeWithGroup(kafka, recs)))
  }

  if (expectedPath) {
    fs.writeFileSync(expectedPath, recs.map((r) => JSON.stringify(r)).join('\n') + '\n')
  }

  if (diffs.length) {
    console.error(`FAIL ${CLIENT}: ${diffs.length} difference(s)`)
    for (const d of diffs.slice(0, 50)) console.error('  ' + d)
    process.exit(1)
  }
  console.log(`OK ${CLIENT}`)
  process.exit(0)
}

main().catch((e) => {
  console.error(`FAIL ${CLIENT}: ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
