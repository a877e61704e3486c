#!/usr/bin/env bash
# A normal client's Metadata p50/p99 idle and under each attack of issue 17, against one release
# broker (one run): length prefixes alone, 500-connection slowloris, 10 000 idle connections,
# four CPU-heavy producers (examples/hostile_bench.rs).
#
#   cargo build --release --bin strata --example hostile_bench
#   STRATA=target/release/strata infra/bench/hostile.sh
set -u
strata=${STRATA:-target/release/strata}
bench=${BENCH:-target/release/examples/hostile_bench}
port=${STRATA_BENCH_PORT:-39492}
work=$(mktemp -d /tmp/strata-hostile.XXXXXX)
"$strata" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$((port + 1))" \
  --admin-listen "127.0.0.1:$((port + 2))" --data-dir "$work/data" \
  --set remote.log.storage.system.enable=false >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
for attack in ${ATTACKS:-none prefix slowloris idle cpu none}; do
  "$bench" --bootstrap "127.0.0.1:$port" --attack "$attack" --requests "${REQUESTS:-300}"
  sleep 1
done
grep -E "connection limits|refused|accept failed" "$work/log" | head -5
kill "$pid"
wait "$pid" 2>/dev/null
rm -rf "$work"
