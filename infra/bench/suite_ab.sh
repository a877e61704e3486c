#!/usr/bin/env bash
# The standard suite (run.sh) of two checkouts, alternating, so the machine's drift hits both
# alike (issue 12's before/after). Each checkout builds its own release binaries.
#
#   OLD=/path/to/old/checkout NEW=/path/to/new/checkout ROUNDS=2 SCALE=1 infra/bench/suite_ab.sh
#
# Prints each run's generated section to $OUT/bench-{old,new}-{round}.out (default /tmp).
set -u
: "${OLD:?checkout to compare against}" "${NEW:?checkout to measure}"
out=${OUT:-/tmp}
for round in $(seq "${ROUNDS:-2}"); do
  for side in old new; do
    if [[ $side == old ]]; then dir=$OLD; else dir=$NEW; fi
    echo "=== round $round $side"
    (cd "$dir" && SCALE=${SCALE:-1} NO_WRITE=1 infra/bench/run.sh 2>"$out/bench-$side-$round.err") \
      >"$out/bench-$side-$round.out"
    echo "rc=$?"
  done
done
