#!/usr/bin/env bash
# End-to-end benchmark: soup vs. a naive all-in-RAM Python average vs.
# mergekit's `linear` merge, on K synthetic Llama-like bf16 checkpoints.
#
# Each tool runs REPS times, round-robin (soup, naive, mergekit, soup, ...),
# under peak_mem.py (sampled peak RssAnon / VmRSS of the process tree) and
# /usr/bin/time -v (wall time, "Maximum resident set size"). The page cache
# is warmed before each round and `sync` runs between runs (outside the
# timing), so no run pays for the previous one's dirty pages. Prints a
# markdown table of medians, also saved to $WORK/results.md.
#
# Env (all optional):
#   SOUP=target/release/soup   soup binary; soup is skipped if it is missing
#   SOUP_BASE=...              a second soup binary (tool "soup-base", e.g. a build
#                              of main), to compare two builds side by side
#   DATA=target/e2e-data       data dir (generated if missing / different)
#   K=4 SIZE_GB=0.75           ingredients and size per ingredient (GB)
#   REPS=3                     repetitions per tool
# Outputs of the last rep are compared (compare_outputs.py) and then deleted.
#   TOOLS="soup naive mergekit"   (without mergekit in TOOLS, the venv holds only
#                              numpy and safetensors)
#   WORK=target/e2e-runs       outputs, logs, results.md
#   SOUP_ARGS / NAIVE_ARGS / MERGEKIT_ARGS   extra flags per tool
#   FORCE_NAIVE=1              run naive even if it would not fit in RAM
#   QUIET_MAX=120              max seconds to wait for an idle machine per run
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SOUP="${SOUP:-$ROOT/target/release/soup}"
DATA="${DATA:-$ROOT/target/e2e-data}"
K="${K:-4}"
SIZE_GB="${SIZE_GB:-0.75}"
REPS="${REPS:-3}"
TOOLS="${TOOLS:-soup naive mergekit}"
WORK="${WORK:-$ROOT/target/e2e-runs}"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
PY="$VENV/bin/python"
export CUDA_VISIBLE_DEVICES=""  # CPU only, everywhere

WITHOUT_MERGEKIT=""; [[ " $TOOLS " == *" mergekit "* ]] || WITHOUT_MERGEKIT=1
BENCH_VENV="$VENV" WITHOUT_MERGEKIT="$WITHOUT_MERGEKIT" bash "$HERE/setup_venv.sh"
mkdir -p "$WORK"
LOG="$WORK/logs"; rm -rf "$LOG"; mkdir -p "$LOG"

# --- data --------------------------------------------------------------------
want="k=$K size_gb=$("$PY" -c "print(float('$SIZE_GB'))") "
if ! grep -qs "^$want" "$DATA/.complete"; then
  echo "== generating $K x ${SIZE_GB} GB checkpoints into $DATA" >&2
  rm -rf "$DATA"/ingredient-* "$DATA/.complete"; mkdir -p "$DATA"  # only what we made
  df -h "$DATA" >&2
  # --verify reads them back with torch, which only the mergekit venv has.
  verify=(--verify); [[ -n $WITHOUT_MERGEKIT ]] && verify=()
  "$PY" "$HERE/make_checkpoints.py" "$DATA" -k "$K" --size-gb "$SIZE_GB" "${verify[@]}"
fi
INGREDIENTS=()
for ((i = 0; i < K; i++)); do INGREDIENTS+=("$DATA/ingredient-$i"); done
in_bytes=$(cat "$DATA"/ingredient-*/*.safetensors | wc -c)  # cheap warm-up too
echo "== data: $K ingredients, $((in_bytes / 1000000)) MB total in $DATA" >&2

# --- tools -------------------------------------------------------------------
# mergekit config: uniform linear merge == plain mean.
MK_YAML="$WORK/mergekit.yml"
{
  echo "merge_method: linear"
  echo "models:"
  for d in "${INGREDIENTS[@]}"; do
    echo "  - model: $d"
    echo "    parameters: {weight: 1.0}"
  done
  echo "parameters: {normalize: true}"
  echo "dtype: bfloat16"
} >"$MK_YAML"

# Sets cmd=(command line for tool $1); output goes to $WORK/out-<tool>.
# (*_ARGS are word-split on purpose.)
# --no-copy-tokenizer: the synthetic data has no tokenizer (mergekit would log
# a traceback and carry on). --lazy-unpickle only affects pickled .bin inputs,
# so it is irrelevant here. --out-shard-size is left at its default (5B; it is
# compared against bytes, so the whole <5 GB output is buffered in RAM).
# shellcheck disable=SC2206
tool_cmd() {
  local out="$WORK/out-$1"
  case "$1" in
    # HOOK(soup RssAnon): when soup can report its own peak RssAnon (env var or
    # flag), add it here; the summary below picks up any numeric "*rss*" key
    # from soup's --json stdout. peak_mem.py already samples RssAnon meanwhile.
    soup) cmd=("$SOUP" merge "${INGREDIENTS[@]}" -o "$out" --force --quiet --json ${SOUP_ARGS:-}) ;;
    soup-base) cmd=("$SOUP_BASE" merge "${INGREDIENTS[@]}" -o "$out" --force --quiet --json ${SOUP_ARGS:-}) ;;
    naive) cmd=("$PY" "$HERE/naive_average.py" -o "$out" --force ${NAIVE_ARGS:-} "${INGREDIENTS[@]}") ;;
    mergekit) cmd=("$VENV/bin/mergekit-yaml" "$MK_YAML" "$out" --quiet --no-copy-tokenizer ${MERGEKIT_ARGS:-}) ;;
    *) echo "unknown tool $1" >&2; return 1 ;;
  esac
}

RUN_TOOLS=()
for t in $TOOLS; do
  if [[ $t == soup && ! -x $SOUP ]]; then
    echo "== skipping soup: no binary at $SOUP (cargo build --release)" >&2; continue
  fi
  if [[ $t == naive && -z ${FORCE_NAIVE:-} ]]; then
    # naive holds K inputs + output + fp32 temporaries; don't OOM the box.
    need_kb=$(( in_bytes * (K + 2) / K / 1024 + 2 * 1024 * 1024 ))
    avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
    if (( need_kb > avail_kb )); then
      echo "== skipping naive: needs ~$((need_kb / 1024)) MB, $((avail_kb / 1024)) MB available (FORCE_NAIVE=1 to try)" >&2
      continue
    fi
  fi
  RUN_TOOLS+=("$t")
done
(( ${#RUN_TOOLS[@]} )) || { echo "nothing to run" >&2; exit 1; }
echo "== disk before runs:" >&2; df -h "$WORK" >&2

# --- runs --------------------------------------------------------------------
# Before each run wait until the machine is idle (benches/support/quiet.sh), up to
# QUIET_MAX s (here 120 by default); runs that started busy are flagged.
QUIET_MAX="${QUIET_MAX:-120}"
# shellcheck source=../support/quiet.sh
source "$ROOT/benches/support/quiet.sh"

for ((r = 1; r <= REPS; r++)); do
  cat "$DATA"/ingredient-*/*.safetensors >/dev/null  # (re)warm the page cache
  for t in "${RUN_TOOLS[@]}"; do
    tool_cmd "$t"
    rm -rf "$WORK/out-$t"; sync
    wait_quiet "$LOG/$t.$r.busy"
    echo "== rep $r/$REPS: $t" >&2
    rc=0
    python3 "$HERE/peak_mem.py" --json "$LOG/$t.$r.mem.json" -- \
      /usr/bin/time -v -o "$LOG/$t.$r.time" "${cmd[@]}" \
      >"$LOG/$t.$r.stdout" 2>"$LOG/$t.$r.stderr" || rc=$?
    tail -n 1 "$LOG/$t.$r.stderr" >&2
    if (( rc != 0 )); then
      echo "   $t failed (exit $rc); see $LOG/$t.$r.stderr" >&2
      touch "$LOG/$t.$r.failed"
    fi
    du -sh "$WORK/out-$t" >&2 2>/dev/null || true
  done
done
# Cross-check the last rep's outputs against the first tool's (informational).
for t in "${RUN_TOOLS[@]:1}"; do
  if [[ -d $WORK/out-${RUN_TOOLS[0]} && -d $WORK/out-$t ]]; then
    "$PY" "$HERE/compare_outputs.py" "$WORK/out-${RUN_TOOLS[0]}" "$WORK/out-$t" \
      | tee -a "$LOG/compare.txt" >&2 || true
  fi
done
for t in "${RUN_TOOLS[@]}"; do rm -rf "$WORK/out-$t"; done  # keep logs only

# --- summary -----------------------------------------------------------------
{
  echo "## soup e2e benchmark: $K x $((in_bytes / K / 1000000)) MB bf16, medians of $REPS"
  echo
  soup_v=""; [[ -x $SOUP ]] && soup_v="; $("$SOUP" --version 2>/dev/null || echo 'soup ?')"
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM;" \
    "$("$PY" -c 'import importlib.metadata as m
def v(p):
    try:
        return f"{p} {m.version(p)}"
    except m.PackageNotFoundError:
        return f"no {p}"
print(", ".join(v(p) for p in ("mergekit", "torch", "safetensors")))')$soup_v"
  echo
  "$PY" - "$LOG" "$REPS" "${RUN_TOOLS[@]}" <<'PY'
import json, re, statistics, sys
from pathlib import Path
log, reps, tools = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def time_v(path):
    """(wall seconds, max RSS MB) from /usr/bin/time -v output."""
    txt = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", txt).group(1).strip()
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", txt).group(1))
              for k in ("User", "System"))
    return secs, rss / 1024, cpu

rows, wall_med, rss_med = [], {}, {}
for t in tools:
    ok = [r for r in range(1, reps + 1) if not (log / f"{t}.{r}.failed").exists()]
    if not ok:
        rows.append(f"| {t} | failed | | | | | |"); continue
    walls, rss, cpu = zip(*(time_v(log / f"{t}.{r}.time") for r in ok))
    busy = sum((log / f"{t}.{r}.busy").exists() for r in ok)
    mem = [json.loads((log / f"{t}.{r}.mem.json").read_text()) for r in ok]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    wall_med[t], rss_med[t] = med(walls), med(rss)
    extra = ""
    if t == "soup":  # HOOK: self-reported memory numbers from `soup --json`
        try:
            js = json.loads((log / f"soup.{ok[-1]}.stdout").read_text())
            extra = " ".join(f"{k}={v}" for k, v in js.items()
                             if "rss" in k.lower() and isinstance(v, (int, float)))
        except (ValueError, OSError, AttributeError):
            pass
    runs = f"{len(ok)}/{reps}" + (f", {busy} on a busy machine" if busy else "") \
        + ("" if extra == "" else f" ({extra})")
    rows.append(f"| {t} | {med(walls):.2f} | {med(cpu):.2f} | {med(rss):.0f} "
                f"| {med(m['peak_rssanon_mb'] for m in mem):.0f} "
                f"| {med(m['peak_vmrss_mb'] for m in mem):.0f} | {runs} |")
print("| tool | wall s | CPU s (user+sys) | max RSS MB (time -v) | peak RssAnon MB "
      "| peak VmRSS MB (tree) | ok runs |")
print("|---|---:|---:|---:|---:|---:|---|")
print("\n".join(rows))
cmp = log / "compare.txt"
if cmp.exists():
    print("\nOutput cross-check (last rep):\n")
    print("\n".join(f"- {line}" for line in cmp.read_text().splitlines()))
if "soup" in wall_med:
    print()
    for t in ("naive", "mergekit", "soup-base"):
        if t in wall_med:
            print(f"- {t}/soup: wall {wall_med[t] / wall_med['soup']:.2f}x, "
                  f"max RSS {rss_med[t] / rss_med['soup']:.2f}x")
PY
} | tee "$WORK/results.md"
