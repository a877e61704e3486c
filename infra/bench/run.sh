#!/usr/bin/env bash
# The standard benchmark suite (issue 6): builds release, starts a fresh release broker on
# loopback with a temp data dir, measures the machine ceilings, runs the workloads with
# strata-bench, and rewrites the generated section of BENCHMARKS.md (between the markers) with
# the figures, their ratios to the ceilings, machine facts, commit and date.
#
#   infra/bench/run.sh                  # whole suite, about 3-5 minutes on 2 vCPUs
#   SCALE=0.1 infra/bench/run.sh        # record counts x 0.1 (smoke run)
#   NO_WRITE=1 infra/bench/run.sh       # leave BENCHMARKS.md alone, print the section
#
# Env: CARGO_TARGET_DIR (default target), STRATA_BENCH_DIR (temp data dir parent, default
# /tmp), STRATA_BENCH_PORT (default 39092; +1 peer, +2 admin).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
scale=${SCALE:-1}
port=${STRATA_BENCH_PORT:-39092}

echo "== build" >&2
cargo build --release --features bench --bins >&2
bin=$CARGO_TARGET_DIR/release

work=$(mktemp -d "${STRATA_BENCH_DIR:-/tmp}/strata-bench.XXXXXX")
results=$work/results
mkdir -p "$results" "$work/data"
broker_pid=
cleanup() {
  if [[ -n $broker_pid ]]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== ceilings" >&2
"$bin/strata-bench" ceilings --dir "$work/data" --disk-bytes $((1 << 30)) --seconds 3 --json \
  | tail -1 >"$results/ceilings.json"
cat "$results/ceilings.json" >&2

echo "== broker" >&2
"$bin/strata" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$((port + 1))" \
  --admin-listen "127.0.0.1:$((port + 2))" --data-dir "$work/data" \
  --set remote.log.manager.task.interval.ms=1000 >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
kill -0 "$broker_pid"

count() { python3 -c "print(max(1000, int($1 * $scale)))"; }

# name, mode, topic, then strata-bench flags
run() {
  local name=$1 mode=$2 topic=$3
  shift 3
  echo "== $name" >&2
  # Exit status 2 (a failed delivery, a timeout) still leaves the JSON line: keep going, the
  # report flags the row.
  if ! "$bin/strata-bench" "$mode" --bootstrap "127.0.0.1:$port" --topic "$topic" \
    --broker-pid "$broker_pid" --json --max-seconds 240 "$@" | tail -1 >"$results/$name.json"; then
    echo "strata-bench $name did not finish cleanly" >&2
  fi
}

n1k=$(count 1000000)
run produce_1k_acks1 produce t-1k-acks1 --records "$n1k" --acks 1
run produce_1k_acksall produce t-1k-acksall --records "$n1k" --acks all
run produce_1k_acks1_lz4 produce t-1k-acks1-lz4 --records "$n1k" --acks 1 --compression lz4
run produce_1k_acksall_lz4 produce t-1k-acksall-lz4 --records "$n1k" --acks all --compression lz4
run consume_hot consume t-1k-acks1 --records "$n1k"
# Cold: a topic with 64 MiB segments and no local retention, produced, offloaded to the
# embedded file:// object store, its offloaded segments deleted locally, then consumed from the
# start: everything but the active segment comes from Parquet through the cold-read cache.
"$bin/strata" topic --bootstrap "127.0.0.1:$port" create t-cold --partitions 1 \
  --config segment.bytes=67108864 --config local.retention.ms=0 >&2
run produce_cold produce t-cold --records "$n1k" --acks 1 --partitions 1
cold_records=$(ADMIN="127.0.0.1:$((port + 2))" python3 - <<'PY'
import json, os, sys, time, urllib.request
url = f"http://{os.environ['ADMIN']}/v1/topics/t-cold"
deadline = time.time() + 600
while True:
    p = json.load(urllib.request.urlopen(url))["partitions"][0]
    # Offloaded and deleted locally: only the active segment is left on disk.
    if p["remote"]["files"] > 0 and p["local"]["files"] == 1 \
            and p["local"]["start_offset"] == p["remote"]["end_offset"]:
        print(p["remote"]["end_offset"])
        break
    if time.time() > deadline:
        sys.exit(f"offload did not finish: {p}")
    time.sleep(1)
PY
)
echo "cold records: $cold_records" >&2
run consume_cold consume t-cold --records "$cold_records"
run produce_100b produce t-100b --records "$(count 3000000)" --record-bytes 100 --acks 1
run produce_1000p produce t-1000p --records "$(count 500000)" --partitions 1000 --acks 1
run e2e_50mbs e2e t-e2e --records "$(count 600000)" --rate 50 --acks 1

rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$broker_pid/status")

echo "== report" >&2
ROOT=$root RESULTS=$results LOAD_AT_START=$load_at_start BROKER_RSS_KIB=$rss_kib \
  NO_WRITE=${NO_WRITE:-} SCALE=$scale python3 - <<'PY'
import json, os, platform, re, subprocess, datetime

root, res = os.environ["ROOT"], os.environ["RESULTS"]
def load(name):
    with open(os.path.join(res, name + ".json")) as f:
        return json.load(f)

ceil = load("ceilings")
loop = ceil["loopback_tcp_mb_s"]
disk = ceil["disk_write_mb_s"]

def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.processor()
mem_gib = int(sh("awk '/MemTotal/ {print $2}' /proc/meminfo")) / 2**20
commit = sh(f"git -C {root} rev-parse --short HEAD")
dirty = " (with uncommitted changes)" if sh(f"git -C {root} status --porcelain -uno -- . ':!BENCHMARKS.md'") else ""
fs = sh(f"df -T {res} | tail -1 | awk '{{print $2}}'")

def ms(us):
    return f"{us / 1000:.2f}"

rows = []
def row(label, name, side, note=""):
    r = load(name)
    t = r[side]
    lat = r["produce_latency"] if side == "produce" else None
    if r.get("e2e_latency"):
        lat = r["e2e_latency"]
    b = r.get("broker") or {}
    flags = []
    if r["timed_out"]: flags.append("TIMED OUT")
    if r["records_failed"]: flags.append(f'{r["records_failed"]} failed')
    lat_s = f'{ms(lat["p50_us"])} / {ms(lat["p99_us"])} / {ms(lat["p999_us"])} / {ms(lat["max_us"])}' if lat else "–"
    rows.append(
        f'| {label} | {t["records"]:,} | {t["mb_per_s"]:.0f} | {t["records_per_s"]/1e3:.0f} k '
        f'| {t["mb_per_s"]/loop:.2f} | {t["mb_per_s"]/disk:.2f} | {lat_s} '
        f'| {b.get("cpu_s_per_gib", float("nan")):.2f} | {" ".join(flags + [note]).strip()} |')
    return r

p1 = row("produce 1 KiB, acks=1, none", "produce_1k_acks1", "produce")
row("produce 1 KiB, acks=all, none", "produce_1k_acksall", "produce")
row("produce 1 KiB, acks=1, lz4", "produce_1k_acks1_lz4", "produce")
row("produce 1 KiB, acks=all, lz4", "produce_1k_acksall_lz4", "produce")
c1 = row("consume 1 KiB from hot (page cache)", "consume_hot", "consume")
cold = row("consume 1 KiB from cold (object store, Parquet)", "consume_cold", "consume", "offsets only in the object store")
row("produce 100 B, acks=1, none", "produce_100b", "produce")
row("produce 1 KiB, acks=1, 1000 partitions", "produce_1000p", "produce")
e2e = row("e2e 1 KiB at 50 MB/s, acks=1", "e2e_50mbs", "consume", "latency is end to end")

def goal(name, value, target, higher=True):
    ok = value >= target if higher else value <= target
    if ok:
        return f"- {name}: **met** ({value:.2f} vs goal {'≥' if higher else '≤'} {target})"
    if higher:
        return f"- {name}: **missed by {(target - value) / target * 100:.0f}%** ({value:.2f} vs goal ≥ {target})"
    return f"- {name}: **missed: {value / target:.1f}× the goal** ({value:.2f} vs goal ≤ {target})"

goals = [
    goal("produce 1 KiB acks=1 / loopback ceiling", p1["produce"]["mb_per_s"] / loop, 0.30),
    goal("hot consume 1 KiB / loopback ceiling", c1["consume"]["mb_per_s"] / loop, 0.50),
    goal("cold consume / hot consume (issue 4)", cold["consume"]["mb_per_s"] / c1["consume"]["mb_per_s"], 0.50),
    goal("broker CPU s per GiB ingested (produce 1 KiB acks=1)", p1["broker"]["cpu_s_per_gib"], 0.5, higher=False),
]

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = f"""<!-- BEGIN GENERATED by infra/bench/run.sh: do not edit by hand -->
## Standard suite (generated {now}, commit {commit}{dirty})

Machine: {os.cpu_count()} vCPU ({cpu}), {mem_gib:.1f} GiB RAM, kernel {platform.release()},
data dir on {fs}. Load average at start: {os.environ["LOAD_AT_START"]}; the machine is shared
(another engineer's builds may have been using the other core), so read the ratios, not the
absolute figures. Client (strata-bench, librdkafka) and broker share the cores. Record-count
scale: {os.environ["SCALE"]}.

Ceilings measured in the same run (`strata-bench ceilings`):

| ceiling | figure |
|---|---|
| sequential disk write ({ceil["disk_method"]}) | {disk:.0f} MB/s |
| loopback TCP, one stream | {loop:.0f} MB/s |
| memcpy | {ceil["memcpy_gb_s"]:.2f} GB/s |
| CRC32C | {ceil["crc32c_gb_s"]:.2f} GB/s |

MB = 10^6 bytes of record values. Latency columns: produce ack (send → delivery report) for
produce rows, end to end (send time in the payload → consumer) for the e2e row; in ms.
CPU: broker CPU seconds (utime+stime) per GiB of record values moved.

| workload | records | MB/s | records/s | × loopback | × disk | p50 / p99 / p99.9 / max ms | CPU s/GiB | note |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Broker peak RSS over the suite: {int(os.environ["BROKER_RSS_KIB"]) / 1024:.0f} MiB.

Goals (single broker, 1 KiB uncompressed):

""" + "\n".join(goals) + """

Rerun: `CARGO_TARGET_DIR=... infra/bench/run.sh` (about 3–5 minutes here).
<!-- END GENERATED -->"""

path = os.path.join(root, "BENCHMARKS.md")
text = open(path).read()
pat = re.compile(r"<!-- BEGIN GENERATED.*?<!-- END GENERATED -->", re.S)
if os.environ.get("NO_WRITE"):
    print(out)
else:
    text = pat.sub(lambda _: out, text) if pat.search(text) else text.rstrip() + "\n\n" + out + "\n"
    open(path, "w").write(text)
    print(out)
PY
