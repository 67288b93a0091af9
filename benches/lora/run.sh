#!/usr/bin/env bash
# LoRA materialisation: adapters read as W0 + s*B*A, chunk by chunk, against the
# same work on full checkpoints of the same model, side by side in one run.
#
#   bash benches/lora/run.sh          # ~5 min on 2 cores, ~5 GB of disk
#
# A Llama-like bf16 base (hidden 2048, intermediate 5632, 6 blocks, vocab 32000:
# 0.72 GB), 4 full fine-tunes of it, and 4 rank-16 f32 adapters on every linear
# layer of every block (benches/lora/make_lora.py). Pairs, round-robin, REPS
# times each, page cache warm, every run under /usr/bin/time -v and
# benches/e2e/peak_mem.py (peak RssAnon of the process):
#
#   convert  soup convert lora0 (base from its config) -o OUT   vs   soup convert full0 -o OUT
#   soup4    soup merge lora0..3 -o OUT                         vs   soup merge full0..3 -o OUT
#
# Env: SOUP=target/release/soup  PY=target/pyenv/bin/python (numpy, safetensors,
# ml_dtypes; made by `cargo test --test python_crosscheck`)  DATA=target/lora-bench
# WORK=target/lora-runs  REPS=3  THREADS (default: all cores)  KEEP_DATA=1
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
SOUP="${SOUP:-$ROOT/target/release/soup}"
PY="${PY:-$ROOT/target/pyenv/bin/python}"
DATA="${DATA:-$ROOT/target/lora-bench}"
WORK="${WORK:-$ROOT/target/lora-runs}"
REPS="${REPS:-3}"
THREADS=(${THREADS:+-t "$THREADS"})
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (Debian package 'time')" >&2; exit 1; }
[[ -x $PY ]] || { echo "no Python at $PY (run cargo test --test python_crosscheck once)" >&2; exit 1; }
if [[ $SOUP == "$ROOT/target/release/soup" ]]; then cargo build --release --quiet; fi
"$PY" "$HERE/make_lora.py" "$DATA"
rm -rf "$WORK"; mkdir -p "$WORK/logs"
warm() { find "$@" -type f -exec cat {} + >/dev/null; }

run() {  # run LABEL REP ARGS...: one timed run, output removed afterwards
  local label=$1 rep=$2; shift 2
  local log="$WORK/logs/$label.$rep"
  sync
  /usr/bin/time -v -o "$log.time" "$PY" "$ROOT/benches/e2e/peak_mem.py" --json "$log.mem.json" -- \
    "$SOUP" "$@" -o "$WORK/out" --force --quiet --json "${THREADS[@]}" >"$log.json" 2>"$log.err"
  rm -rf "$WORK/out"
}

for rep in $(seq 1 "$REPS"); do
  warm "$DATA"
  run convert-lora "$rep" convert "$DATA/lora0"
  run convert-full "$rep" convert "$DATA/full0"
  run soup4-lora "$rep" merge --no-init-check "$DATA"/lora{0,1,2,3}
  run soup4-full "$rep" merge --no-init-check "$DATA"/full{0,1,2,3}
done

"$PY" - "$WORK/logs" "$REPS" <<'PYEOF'
import json, re, statistics, sys
logs, reps = sys.argv[1], int(sys.argv[2])
def field(path, name):
    for line in open(path):
        if name in line:
            return line.rsplit(":", 1)[1].strip()
def secs(t):
    parts = [float(x) for x in t.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rows = []
for label in ["convert-lora", "convert-full", "soup4-lora", "soup4-full"]:
    wall, rss, anon, out = [], [], [], None
    for r in range(1, reps + 1):
        base = f"{logs}/{label}.{r}"
        wall.append(secs(field(base + ".time", "Elapsed (wall clock)")))
        rss.append(int(field(base + ".time", "Maximum resident set size")) / 1024)  # kB
        anon.append(json.load(open(base + ".mem.json"))["peak_rssanon_mb"])
        out = json.load(open(base + ".json"))["bytes_written"]
    w = statistics.median(wall)
    rows.append((label, w, out / w / 1e9, statistics.median(rss), statistics.median(anon)))
print("| run | wall (median) | output GB/s | peak RSS MB | peak RssAnon MB |")
print("|---|---|---|---|---|")
for label, w, gbs, rss, anon in rows:
    print(f"| {label} | {w:.2f} s | {gbs:.2f} | {rss:.0f} | {anon:.0f} |")
PYEOF
[[ -n ${KEEP_DATA:-} ]] || rm -rf "$DATA"
