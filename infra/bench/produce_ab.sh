#!/usr/bin/env bash
# A focused A/B of the hot paths: a fresh release broker per run, strata-bench produce (1 KiB,
# acks=1, 2 M records) then consume of the same records, two binary directories alternating.
#
#   OLD=old/target/release NEW=target/release ROUNDS=6 [RECORDS=2000000] infra/bench/produce_ab.sh
set -u
: "${OLD:?directory with the old strata and strata-bench}" "${NEW:?directory with the new ones}"
port=${STRATA_BENCH_PORT:-39392}
for round in $(seq "${ROUNDS:-6}"); do
  for side in old new; do
    if [[ $side == old ]]; then dir=$OLD; else dir=$NEW; fi
    work=$(mktemp -d /tmp/strata-ab.XXXXXX)
    "$dir/strata" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$((port + 1))" \
      --admin-listen "127.0.0.1:$((port + 2))" --data-dir "$work/data" >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
      sleep 0.1
    done
    p=$("$dir/strata-bench" produce --bootstrap "127.0.0.1:$port" --topic t --records "${RECORDS:-2000000}" \
      --acks 1 --broker-pid "$pid" --json 2>/dev/null | tail -1)
    c=$("$dir/strata-bench" consume --bootstrap "127.0.0.1:$port" --topic t --records "${RECORDS:-2000000}" \
      --broker-pid "$pid" --json 2>/dev/null | tail -1)
    kill "$pid"
    wait "$pid" 2>/dev/null
    rm -rf "$work"
    P=$p C=$c SIDE=$side ROUND=$round python3 - <<'PY'
import json, os
p, c = json.loads(os.environ["P"]), json.loads(os.environ["C"])
print(os.environ["SIDE"], os.environ["ROUND"],
      "produce %.0f MB/s %.3f cpu-s/GiB" % (p["produce"]["mb_per_s"], p["broker"]["cpu_s_per_gib"]),
      "consume %.0f MB/s %.3f cpu-s/GiB" % (c["consume"]["mb_per_s"], c["broker"]["cpu_s_per_gib"]))
PY
  done
done
