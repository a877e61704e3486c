#!/usr/bin/env bash
# Produce p99 with and without local retention deleting 200 segments of another partition
# (issue 12). acks=1, 1 KiB records, a steady 20 MB/s to topic `p99` for RECORDS records; in the
# "with" run, topic `ret` (tiered, segment.bytes 16 KiB, local.retention.ms 0) gets 200
# segments' worth of records at the start, which the broker offloads and then deletes locally
# while `p99` is produced to. Each binary directory given is measured in turn, ROUNDS times,
# alternating, so the machine's drift hits every binary alike.
#
#   infra/bench/retention_p99.sh DIR...     # DIR holds release `strata` and `strata-bench`
#   ROUNDS=2 RECORDS=600000 infra/bench/retention_p99.sh target/release /tmp/old/release
#
# Prints one line per run: binary, mode, round, p50/p99/p99.9/max ack latency (ms), segments
# deleted locally (from /metrics), and a JSON line per run to RESULTS (default /dev/null).
set -euo pipefail
rounds=${ROUNDS:-2}
records=${RECORDS:-600000}
port=${STRATA_BENCH_PORT:-39192}
results=${RESULTS:-/dev/null}

run_one() {
  local dir=$1 mode=$2 round=$3
  local work
  work=$(mktemp -d /tmp/strata-p99.XXXXXX)
  "$dir/strata" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$((port + 1))" \
    --admin-listen "127.0.0.1:$((port + 2))" --data-dir "$work/data" \
    --set remote.log.manager.task.interval.ms=200 >"$work/broker.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  "$dir/strata" topic --bootstrap "127.0.0.1:$port" create p99 --partitions 1 >/dev/null
  "$dir/strata" topic --bootstrap "127.0.0.1:$port" create ret --partitions 1 \
    --config segment.bytes=16384 --config local.retention.ms=0 >/dev/null
  if [[ $mode == with ]]; then
    # 200 segments of ~16 KiB: 3 200 records of 1 KiB, as fast as they go.
    "$dir/strata-bench" produce --bootstrap "127.0.0.1:$port" --topic ret --records 3200 \
      --partitions 1 --acks 1 --batch-bytes 8192 --json >/dev/null 2>&1 &
  fi
  local line
  line=$("$dir/strata-bench" produce --bootstrap "127.0.0.1:$port" --topic p99 \
    --records "$records" --partitions 1 --acks 1 --rate 20 --broker-pid "$pid" --json \
    --max-seconds 120 2>/dev/null | tail -1)
  wait_bg=$(jobs -pr | grep -v "^$pid$" || true)
  [[ -n $wait_bg ]] && wait $wait_bg 2>/dev/null || true
  local deleted
  deleted=$(curl -s "127.0.0.1:$((port + 2))/metrics" \
    | awk '/^strata_tier_local_start_moves_total|^strata_log_segments\{.*topic="ret"/ {print $NF}' \
    | tail -1)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
  echo "$line" >>"$results"
  LINE=$line DIR=$dir MODE=$mode ROUND=$round SEGS=${deleted:-?} python3 - <<'PY'
import json, os
r = json.loads(os.environ["LINE"])
l = r["produce_latency"]
ms = lambda us: f"{us / 1000:.2f}"
print(f'{os.environ["DIR"]:<28} {os.environ["MODE"]:<8} round {os.environ["ROUND"]}: '
      f'p50 {ms(l["p50_us"])} p99 {ms(l["p99_us"])} p99.9 {ms(l["p999_us"])} '
      f'max {ms(l["max_us"])} ms, {r["produce"]["mb_per_s"]:.1f} MB/s, '
      f'ret segments left {os.environ["SEGS"]}')
PY
}

for round in $(seq "$rounds"); do
  for dir in "$@"; do
    for mode in without with; do
      run_one "$dir" "$mode" "$round"
    done
  done
done
