#!/usr/bin/env bash
# Replication cost (cluster issue B), on three release broker processes on loopback (the
# README's "Three brokers on one machine", file:// bucket), one client (strata-bench, 1 KiB
# records, 6 partitions, acks=all):
#   - max produce MB/s and the three brokers' CPU seconds per GiB produced, RF 1 against RF 3
#     (min.insync.replicas 2);
#   - follower lag while producing at RATE MB/s (default 50): the leaders' max lag in records
#     and ms (strata_replica_max_lag_*), sampled every 100 ms, p50/p99/max;
#   - full catch-up of an emptied replica: one broker stopped, its partition directories
#     removed (metadata kept), restarted; MB/s until every ISR is whole again.
#
#   infra/bench/replication.sh            # RECORDS=300000 RATE=50 PARTITIONS=6
#
# Replica fetch streams (BENCHMARKS.md "Replica fetch streams"): STREAMS sets the brokers'
# benchmark knob strata.replica.fetch.streams (partition, the default; pair; request), STEPS
# picks the measurements (default "rf1 rf3 lag catchup"), SETTINGS adds broker settings
# (space-separated NAME=VALUE), e.g.
#   STREAMS=pair PARTITIONS=600 STEPS="rf3 lag" RECORDS=200000 infra/bench/replication.sh
#
# Cluster benchmarks of issue 15 (steps not in the default list; strata-bench --linger-ms 0,
# 1 KiB records, acks=all, min ISR 2):
#   - latency: RF 3 at RATE MB/s for SECONDS_PER_STEP (default 30): ack p50/p99/p999 from the client
#     and from each broker's Produce summary on /metrics (WARMUP_SECONDS: the same load first on
#     the same topic, not measured);
#   - sustain: the highest sustainable rate, RF 3 then RF 1: targets in 25 MB/s steps, SECONDS_PER_STEP
#     each on a fresh topic, up to MAX_RATE (default 400), until one achieves < 95 % of its
#     target or has an ack p99 > 50 ms (SUSTAIN_RFS="3" for RF 3 only);
#   - rolling: RF 3 at RATE MB/s while each broker in turn gets SIGTERM, restarts and rejoins
#     every ISR: the run's ack p99/p999/max and failed sends.
#   STEPS="latency sustain rolling" SECONDS_PER_STEP=30 infra/bench/replication.sh
#
# Bounded: every wait has a deadline, the brokers are killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
records=${RECORDS:-300000}
rate=${RATE:-50}
partitions=${PARTITIONS:-6}
streams=${STREAMS:-partition}
seconds=${SECONDS_PER_STEP:-30}
max_rate=${MAX_RATE:-400}
steps=" ${STEPS:-rf1 rf3 lag catchup} "
extra=()
for setting in ${SETTINGS:-}; do extra+=(--set "$setting"); done
step() { [[ $steps == *" $1 "* ]]; }
base=${STRATA_BENCH_PORT:-40092}

if [[ -z ${NO_BUILD:-} ]]; then # NO_BUILD=1: the release binaries are built already
  echo "== build" >&2
  cargo build --release --features bench --bins >&2
fi
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d "${STRATA_BENCH_DIR:-/tmp}/strata-repl.XXXXXX")
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/strata" cluster init-ca --out "$work/ca" >/dev/null
for id in 1 2 3; do
  "$bin/strata" cluster issue --ca "$work/ca" --node-id "$id" --out "$work/node-$id" >/dev/null
done
kafka() { echo "127.0.0.1:$((base + ($1 - 1) * 10))"; }
admin() { echo "127.0.0.1:$((base + ($1 - 1) * 10 + 2))"; }
seeds="1@127.0.0.1:$((base + 1)),2@127.0.0.1:$((base + 11)),3@127.0.0.1:$((base + 21))"
start() {
  local id=$1 off=$((($1 - 1) * 10))
  : >"$work/out-$id"
  "$bin/strata" serve --node-id "$id" --listen "$(kafka "$id")" \
    --peer-listen "127.0.0.1:$((base + off + 1))" --admin-listen "$(admin "$id")" \
    --data-dir "$work/data-$id" --seeds "$seeds" --peer-tls-dir "$work/node-$id" \
    --object-store "file://$work/objects" --set "strata.replica.fetch.streams=$streams" \
    ${extra[@]+"${extra[@]}"} >"$work/out-$id" 2>"$work/log-$id" &
  pid[$id]=$!
}
ready() {
  for _ in $(seq 1 600); do
    grep -q "strata ready" "$work/out-$1" && return 0
    sleep 0.1
  done
  echo "broker $1 not ready; log:" >&2
  tail -20 "$work/log-$1" >&2
  exit 1
}
for id in 1 2 3; do start "$id"; done
for id in 1 2 3; do ready "$id"; done
bootstrap="$(kafka 1),$(kafka 2),$(kafka 3)"

cpu_ticks() {
  local total=0
  for id in 1 2 3; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/${pid[$id]}/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

whole_isrs() {
  "$bin/strata" topic --bootstrap "$(kafka 1)" describe --under-replicated >"$work/urp" || return 1
  ! grep -q "under-replicated" "$work/urp"
}
wait_whole() { # fatal unless "measure" is given: then a warning, and the step goes on
  for _ in $(seq 1 1200); do
    whole_isrs && return 0
    sleep 0.1
  done
  echo "ISRs did not become whole within 120 s" >&2
  [[ ${1:-} == measure ]] || exit 1
  echo "== measuring anyway" >&2
}

produce() { # topic rf min_isr
  "$bin/strata" topic --bootstrap "$(kafka 1)" create "$1" --partitions "$partitions" \
    --replication-factor "$2" --config "min.insync.replicas=$3" >/dev/null
  wait_whole measure
  local t0 c0 c1
  c0=$(cpu_ticks)
  "$bin/strata-bench" produce --bootstrap "$bootstrap" --topic "$1" --records "$records" \
    --partitions "$partitions" --acks all --json --max-seconds 240 | tail -1 >"$work/$1.json"
  c1=$(cpu_ticks)
  echo "$(( c1 - c0 ))" >"$work/$1.cpu"
}

echo "== streams: $streams, partitions: $partitions, steps:$steps, settings: ${SETTINGS:-}" >&2
if step rf1; then
  echo "== produce RF 1" >&2
  produce t-rf1 1 1
fi
if step rf3; then
  echo "== produce RF 3" >&2
  produce t-rf3 3 2
fi

if step lag; then
  echo "== lag at $rate MB/s" >&2
  "$bin/strata" topic --bootstrap "$(kafka 1)" create t-lag --partitions "$partitions" \
    --replication-factor 3 --config min.insync.replicas=2 >/dev/null
  wait_whole measure
  : >"$work/lag.samples"
  (
    while :; do
      for id in 1 2 3; do
        curl -s "http://$(admin "$id")/metrics" |
          awk '/^strata_replica_max_lag_(records|ms)/ {printf "%s %s ", $1, $2} END {print ""}'
      done >>"$work/lag.samples"
      sleep 0.1
    done
  ) &
  sampler=$!
  lag_records=$(( rate * 1000000 * 20 / 1024 ))
  "$bin/strata-bench" produce --bootstrap "$bootstrap" --topic t-lag --records "$lag_records" \
    --partitions "$partitions" --acks 1 --rate "$rate" --json --max-seconds 120 | tail -1 >"$work/lag.json"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
fi

# strata-bench at linger 0 and a rate for `seconds`: bench_at topic rate json-out
bench_at() {
  "$bin/strata-bench" produce --bootstrap "$bootstrap" --topic "$1" \
    --records "$(( $2 * 1000000 * seconds / 1024 ))" --partitions "$partitions" --acks all \
    --linger-ms 0 --rate "$2" --json --max-seconds "$(( seconds * 3 ))" | tail -1 >"$3"
}
create() { # topic rf min_isr
  "$bin/strata" topic --bootstrap "$(kafka 1)" create "$1" --partitions "$partitions" \
    --replication-factor "$2" --config "min.insync.replicas=$3" >/dev/null
  wait_whole measure
}
drop_topic() { "$bin/strata" topic --bootstrap "$(kafka 1)" delete "$1" >/dev/null || true; }

if step latency; then
  echo "== ack latency, RF 3 at $rate MB/s for $seconds s" >&2
  create t-lat 3 2
  if (( ${WARMUP_SECONDS:-0} > 0 )); then # the same load first, not measured
    echo "== warm-up: $WARMUP_SECONDS s" >&2
    (seconds=$WARMUP_SECONDS; bench_at t-lat "$rate" "$work/latency-warmup.json")
    tail -c 600 "$work/latency-warmup.json" >&2
  fi
  bench_at t-lat "$rate" "$work/latency.json"
  for id in 1 2 3; do
    curl -s "http://$(admin "$id")/metrics" |
      grep '^strata_request_duration_seconds{.*api="Produce"' >"$work/latency.broker-$id" || true
  done
  drop_topic t-lat
fi

if step sustain; then
  cat >"$work/verdict.py" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
p, l = r["produce"], r.get("produce_latency") or {}
t = float(os.environ["TARGET"])
ok = p["mb_per_s"] >= 0.95 * t and l.get("p99_us", 1e12) <= 50000
ms = lambda k: l.get(k, 0) / 1000
print(f"{t:.0f} {p['mb_per_s']:.1f} {ms('p50_us'):.1f} {ms('p99_us'):.1f} {ms('p999_us'):.1f} "
      f"{r.get('records_failed', 0)} {'ok' if ok else 'no'}")
PY
  for rf in ${SUSTAIN_RFS:-3 1}; do
    : >"$work/sustain-rf$rf"
    for (( target = 25; target <= max_rate; target += 25 )); do
      echo "== sustain RF $rf at $target MB/s" >&2
      create "t-s$rf-$target" "$rf" "$(( rf > 1 ? 2 : 1 ))"
      bench_at "t-s$rf-$target" "$target" "$work/s.json"
      drop_topic "t-s$rf-$target"
      verdict=$(TARGET=$target python3 "$work/verdict.py" "$work/s.json")
      echo "$verdict" | tee -a "$work/sustain-rf$rf" >&2
      [[ $verdict == *" ok" ]] || break
    done
  done
fi

if step rolling; then
  echo "== rolling restart under RF 3 at $rate MB/s" >&2
  create t-roll 3 2
  bench_at t-roll "$rate" "$work/rolling.json" &
  bench=$!
  sleep 5
  for id in 1 2 3; do
    echo "== SIGTERM broker $id" >&2
    kill -TERM "${pid[$id]}"
    for _ in $(seq 1 300); do kill -0 "${pid[$id]}" 2>/dev/null || break; sleep 0.1; done
    wait "${pid[$id]}" 2>/dev/null || true
    start "$id"
    ready "$id"
    wait_whole measure
  done
  echo "== rolling restart done; waiting for the load to end" >&2
  wait "$bench" || true
fi

bytes=0 t0=0 t1=0
if step catchup; then
  echo "== catch-up of an emptied replica" >&2
  kill -9 "${pid[3]}"
  wait "${pid[3]}" 2>/dev/null || true
  bytes=$(du -sb "$work/data-3/topics" | cut -f1)
  rm -rf "$work/data-3/topics"
  t0=$(date +%s.%N)
  start 3
  ready 3
  sleep 1
  wait_whole
  t1=$(date +%s.%N)
fi

WORK=$work HZ=$hz BYTES=$bytes T0=$t0 T1=$t1 RECORDS=$records RATE=$rate \
  STREAMS=$streams PARTITIONS=$partitions python3 - <<'PY'
import json, os, re
w = os.environ["WORK"]
hz = int(os.environ["HZ"])
def load(name):
    return json.load(open(os.path.join(w, name + ".json")))
print(f"streams={os.environ['STREAMS']} partitions={os.environ['PARTITIONS']} "
      f"settings={os.environ.get('SETTINGS', '')}")
for topic, label in (("t-rf1", "RF 1"), ("t-rf3", "RF 3, min ISR 2")):
    if not os.path.exists(os.path.join(w, topic + ".json")):
        continue
    r = load(topic)
    p = r["produce"]
    gib = p["bytes"] / 2**30
    cpu = int(open(os.path.join(w, topic + ".cpu")).read()) / hz
    lat = r.get("produce_latency") or {}
    print(f"{label}: {p['mb_per_s']:.1f} MB/s, brokers' CPU {cpu:.1f} s = {cpu / gib:.2f} s/GiB, "
          f"ack p50 {lat.get('p50_us', 0) / 1000:.1f} ms p99 {lat.get('p99_us', 0) / 1000:.1f} ms")
recs, mss = [], []
samples = os.path.join(w, "lag.samples")
for line in open(samples) if os.path.exists(samples) else []:
    best_r = best_m = 0.0
    for name, value in re.findall(r"(strata_replica_max_lag_\w+)\S* (\S+)", line):
        if name.endswith("records"):
            best_r = max(best_r, float(value))
        else:
            best_m = max(best_m, float(value))
    recs.append(best_r)
    mss.append(best_m)
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else float("nan")
if recs:
    lag = load("lag")["produce"]
    print(f"lag at {lag['mb_per_s']:.1f} MB/s (asked {os.environ['RATE']}): {len(recs)} samples; "
          f"max lag records p50 {pct(recs, .5):.0f} p99 {pct(recs, .99):.0f} max {max(recs):.0f}; "
          f"ms p50 {pct(mss, .5):.0f} p99 {pct(mss, .99):.0f} max {max(mss):.0f}")
def quantiles(path):
    out = {}
    for line in open(path) if os.path.exists(path) else []:
        m = re.search(r'quantile="([0-9.]+)"\S* (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2)) * 1000
    return out
def client(name, label):
    path = os.path.join(w, name + ".json")
    if not os.path.exists(path):
        return
    r = load(name)
    p, l = r["produce"], r.get("produce_latency") or {}
    print(f"{label}: {p['mb_per_s']:.1f} MB/s achieved, failed {r.get('records_failed', 0)}; "
          f"client ack ms p50 {l.get('p50_us', 0) / 1000:.2f} p99 {l.get('p99_us', 0) / 1000:.2f} "
          f"p999 {l.get('p999_us', 0) / 1000:.2f} max {l.get('max_us', 0) / 1000:.1f}")
client("latency", f"ack latency, RF 3 at {os.environ['RATE']} MB/s, linger 0")
for id in (1, 2, 3):
    q = quantiles(os.path.join(w, f"latency.broker-{id}"))
    if q:
        print(f"  broker {id} Produce (last 60 s) ms p50 {q.get('0.5', 0):.2f} "
              f"p99 {q.get('0.99', 0):.2f} p999 {q.get('0.999', 0):.2f} max {q.get('1', 0):.1f}")
for rf in (3, 1):
    path = os.path.join(w, f"sustain-rf{rf}")
    if not os.path.exists(path):
        continue
    rows = [l.split() for l in open(path) if l.strip()]
    best = max([float(r[0]) for r in rows if r[-1] == "ok"], default=0)
    print(f"sustain RF {rf}: highest sustainable target {best:.0f} MB/s "
          "(target achieved p50 p99 p999 ms, failed, verdict):")
    for r in rows:
        print("  " + " ".join(r))
client("rolling", f"rolling restart, RF 3 at {os.environ['RATE']} MB/s")
b, t = int(os.environ["BYTES"]), float(os.environ["T1"]) - float(os.environ["T0"])
if t > 0:
    print(f"catch-up of an emptied replica: {b / 1e6:.0f} MB in {t:.1f} s (start included) = {b / 1e6 / t:.1f} MB/s")
PY
