#!/usr/bin/env bash
# The long fault run (cluster issue C): three release broker processes on loopback, peer
# traffic through the fault proxy, the seeded nemesis (kill -9 of a leader or the controller,
# SIGSTOP past the session timeout, a leader cut off both ways and one way, power loss), one
# broker faulty at a time, under idempotent acks=all load, a tagged acks=1 stream and a
# consumer group; then the checker over the whole history and the final logs.
#
#   infra/faults/run.sh --faults 50 --seed 1        # report: target/faults-report-1.json
#
# Bounded: the run stops by itself (its brokers are killed at the harness's deadline).
set -euo pipefail
cd "$(dirname "$0")/../.."
faults=50
seed=1
while [ $# -gt 0 ]; do
  case "$1" in
    --faults) faults=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--faults N] [--seed S]" >&2; exit 2 ;;
  esac
done
report="$PWD/target/faults-report-$seed.json"
mkdir -p target
STRATA_FAULTS=$faults STRATA_FAULT_SEED=$seed STRATA_FAULT_REPORT=$report \
  cargo test --release --test cluster_faults long_run -- --ignored --nocapture
echo "report: $report"
