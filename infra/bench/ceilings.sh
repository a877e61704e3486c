#!/usr/bin/env bash
# Machine ceilings for issue 6: sequential disk write (O_DIRECT where the filesystem allows it,
# else buffered + fdatasync; the output says which), loopback TCP, memcpy and CRC32C.
#
#   infra/bench/ceilings.sh [DIR] [--json]    DIR: the filesystem to test (default: .)
#
# Runs `strata-bench ceilings` (built with `--features bench`); with --json the last stdout
# line is one JSON object. A `dd` cross-check of the disk figure goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.}
shift || true
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
bin=$CARGO_TARGET_DIR/release/strata-bench
if [[ ! -x $bin || -n ${STRATA_BENCH_REBUILD:-} ]]; then
  cargo build --release --features bench --bin strata-bench >&2
fi

# dd cross-check: 1 GiB with O_DIRECT, else buffered with fdatasync.
ddfile="$dir/.strata-ceilings-dd.$$"
if out=$(dd if=/dev/zero of="$ddfile" bs=1M count=1024 oflag=direct 2>&1); then
  echo "dd oflag=direct: $(tail -1 <<<"$out")" >&2
else
  out=$(dd if=/dev/zero of="$ddfile" bs=1M count=1024 conv=fdatasync 2>&1)
  echo "dd conv=fdatasync (O_DIRECT refused): $(tail -1 <<<"$out")" >&2
fi
rm -f "$ddfile"

exec "$bin" ceilings --dir "$dir" "$@"
