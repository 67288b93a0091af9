#!/usr/bin/env bash
# Memory of `soup merge` at two model sizes: 2 ingredients of ~0.75 GB and of
# ~8 GB (bf16, Llama-like, 3 shards each). Peak RssAnon (sampled every 20 ms over
# the process tree by peak_mem.py) and peak RSS (/usr/bin/time -v) must not grow
# with the model. The 8 GB pair is 16 GB of input: on a 24 GB machine it does not
# stay in page cache between runs, so that run also reads from disk.
#
#   bash benches/memory_scaling.sh          # generates missing data (~4 min for 8 GB)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${BENCH_VENV:-target/bench-venv}"
BENCH_VENV="$VENV" bash benches/e2e/setup_venv.sh >/dev/null
cargo build --release --quiet
OUT=target/memory-scaling
mkdir -p "$OUT"
echo "| size per ingredient | input GB | wall s | peak RSS MB (time -v) | peak RssAnon MB (sampled) | peak RssFile MB (sampled) |"
echo "|---|---|---|---|---|---|"
for size in 0.75 8; do
  data="target/e2e-data-k2-${size}g"
  [ "$size" = 0.75 ] && [ -d target/e2e-data/ingredient-1 ] && data=target/e2e-data
  [ "$size" = 8 ] && [ -d target/e2e-data-8g/ingredient-1 ] && data=target/e2e-data-8g
  if [ ! -d "$data/ingredient-1" ]; then
    "$VENV/bin/python" benches/e2e/make_checkpoints.py "$data" -k 2 --size-gb "$size" >&2
  fi
  input_gb=$(du -sb "$data/ingredient-0" "$data/ingredient-1" | awk '{s+=$1} END {printf "%.1f", s/1e9}')
  "$VENV/bin/python" benches/e2e/peak_mem.py --json "$OUT/peak-$size.json" -- \
    /usr/bin/time -v -o "$OUT/time-$size.txt" \
    target/release/soup merge "$data/ingredient-0" "$data/ingredient-1" -o "$OUT/soup" --force --quiet 2>/dev/null
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$OUT/time-$size.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$OUT/time-$size.txt")
  python3 - "$OUT/peak-$size.json" "$size" "$input_gb" "$wall" "$rss" <<'PY'
import json, sys
peak = json.load(open(sys.argv[1]))
anon, file = peak["peak_rssanon_mb"], peak["peak_rssfile_mb"]
print(f"| {sys.argv[2]} GB | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {anon:.1f} | {file:.1f} |")
PY
  rm -rf "$OUT/soup"
done
