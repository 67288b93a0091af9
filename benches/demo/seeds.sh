#!/usr/bin/env bash
# The demo's story over several seeds: `soup demo --seed N` (full size, release
# build) for each seed, one after the other, each under /usr/bin/time -v after
# waiting for an idle machine; then summarize.py prints the tables as mean ± sd
# over the seeds, every story check per seed, and the wall time and peak RSS of
# each run. Every number comes from the runs' report.json files.
#
#   bash benches/demo/seeds.sh                 # seeds 1 to 5
#   SEEDS="6 7 8" bash benches/demo/seeds.sh   # others
#
# Env (all optional): SEEDS="1 2 3 4 5", WORK=target/demo-seeds (work directories,
# kept, and results.md), QUIET_MAX=10 (seconds to wait for an idle machine).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../support/quiet.sh
source "$HERE/../support/quiet.sh"
SEEDS="${SEEDS:-1 2 3 4 5}"
WORK="${WORK:-target/demo-seeds}"
cargo build --release --quiet
rm -rf "$WORK"
mkdir -p "$WORK"
for seed in $SEEDS; do
  echo "seed $seed ..." >&2
  wait_quiet "$WORK/seed-$seed.busy"
  /usr/bin/time -v target/release/soup demo --seed "$seed" --quiet --json --dir "$WORK/seed-$seed" \
    >"$WORK/seed-$seed.json" 2>"$WORK/seed-$seed.time"
done
python3 "$HERE/summarize.py" "$WORK" $SEEDS | tee "$WORK/results.md"
