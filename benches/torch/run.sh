#!/usr/bin/env bash
# PyTorch checkpoints: `soup convert` / `soup merge` on torch.save state dicts
# (pytorch_model.bin), against the Python baseline, side by side in one run.
#
#   bash benches/torch/run.sh        # ~10 min on 2 cores, up to ~6 GB of disk (merge phase)
#
# Phases (PHASES="convert strided scaling merge"), each round-robin over its
# commands, REPS times, page cache warmed (cat) before each round and `sync`
# before each run (outside the timing); every run goes under peak_mem.py
# (sampled peak RssAnon / RssFile / VmRSS of the process tree) and
# /usr/bin/time -v (wall, CPU, "Maximum resident set size"):
#
#  convert  a ~SIZE_GB f32 and bf16 Llama-like pytorch_model.bin, each through
#           `soup convert`, py_convert.py --mmap (torch.load(mmap=True) +
#           safetensors save_file) and py_convert.py (torch.load, no mmap);
#           outputs checked bit for bit against the .bin (compare.py).
#  strided  the same files with every 2-D weight but the embedding saved as a
#           transposed view (make_torch_checkpoint.py --transposed): soup convert
#           of both versions and py_convert.py --mmap of the transposed one; the
#           extra time gives the gather throughput. Outputs checked against the
#           contiguous .bin (same values).
#  scaling  soup convert of bf16 files of 0.5, SIZE_GB and 2 GB (SCALE_SIZES):
#           RssAnon and max RSS must not grow with the model.
#  merge    soup merge of two bf16 .bin ingredients vs the same two converted to
#           safetensors (outputs compared), with and without --no-init-check,
#           and soup inspect of one ingredient in each format, OPEN_RUNS=10 times
#           interleaved (open_time.py): opening alone, which for .bin is the
#           CRC-32 pass over every byte.
#
# Env (all optional):
#   SOUP=target/release/soup      binary (built with cargo build --release)
#   BENCH_VENV=target/bench-venv  Python with torch + safetensors (set up by
#                                 benches/e2e/setup_venv.sh when missing)
#   DATA=target/torch-bench       generated checkpoints (re-used if unchanged)
#   WORK=target/torch-runs        outputs (deleted), logs, results.md
#   REPS=3  SIZE_GB=1  SCALE_SIZES="0.5 2"  PHASES="convert strided scaling merge"
#   QUIET_MAX=10   max seconds to wait for an idle machine before each run
#                  (runs that start on a busy machine are counted in the tables)
#   KEEP_DATA=1    keep the generated checkpoints (default: delete them at the end)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
SOUP="${SOUP:-$ROOT/target/release/soup}"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
PY="$VENV/bin/python"
DATA="${DATA:-$ROOT/target/torch-bench}"
WORK="${WORK:-$ROOT/target/torch-runs}"
REPS="${REPS:-3}"
OPEN_RUNS="${OPEN_RUNS:-10}"
SIZE_GB="${SIZE_GB:-1}"
SCALE_SIZES="${SCALE_SIZES:-0.5 2}"
PHASES="${PHASES:-convert strided scaling merge}"
PEAK_MEM="$ROOT/benches/e2e/peak_mem.py"
export CUDA_VISIBLE_DEVICES=""  # CPU only

[[ -x $PY ]] || BENCH_VENV="$VENV" bash "$ROOT/benches/e2e/setup_venv.sh"
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (Debian package 'time')" >&2; exit 1; }
if [[ $SOUP == "$ROOT/target/release/soup" ]]; then cargo build --release --quiet; fi
[[ -x $SOUP ]] || { echo "no soup binary at $SOUP" >&2; exit 1; }
mkdir -p "$DATA" "$WORK"
LOG="$WORK/logs"; rm -rf "$LOG"; mkdir -p "$LOG"
OUT="$WORK/out"; rm -rf "$OUT"; mkdir -p "$OUT"
GENERATED=()

# gen NAME ARGS...: $DATA/NAME/pytorch_model.bin (skipped when up to date).
gen() {
  local name=$1; shift
  "$PY" "$HERE/make_torch_checkpoint.py" "$DATA/$name" "$@"
  GENERATED+=("$DATA/$name")
  cp "$DATA/$name/.complete" "$LOG/data-$name.json"  # sizes, for the summary
}
bin() { echo "$DATA/$1/pytorch_model.bin"; }
warm() { local f; for f in "$@"; do cat "$f" >/dev/null; done; }

# Before each run wait until the machine is idle (benches/support/quiet.sh);
# runs that started busy are flagged (LABEL.REP.busy) and counted in the tables.
# shellcheck source=../support/quiet.sh
source "$ROOT/benches/support/quiet.sh"

# run LABEL REP CMD...: one measured run; its output dir is $OUT/LABEL.
run() {
  local label=$1 r=$2; shift 2
  rm -rf "${OUT:?}/$label"; sync
  wait_quiet "$LOG/$label.$r.busy"
  local rc=0
  python3 "$PEAK_MEM" --json "$LOG/$label.$r.mem.json" -- \
    /usr/bin/time -v -o "$LOG/$label.$r.time" "$@" \
    >"$LOG/$label.$r.stdout" 2>"$LOG/$label.$r.stderr" || rc=$?
  echo "   rep $r $label: $(grep -o 'wall=[^ ]*.*RssFile=[^ ]*' "$LOG/$label.$r.stderr" | tail -n 1)" >&2
  if (( rc != 0 )); then
    echo "   $label failed (exit $rc); see $LOG/$label.$r.stderr" >&2
    touch "$LOG/$label.$r.failed"
  fi
}
soup_convert() { run "$1" "$2" "$SOUP" convert "$3" -o "$OUT/$1" --force --quiet; }
py_convert() { run "$1" "$2" "$PY" "$HERE/py_convert.py" "${@:4}" "$3" "$OUT/$1"; }
check() {  # compare.py REF OUTPUTS... into the log (a difference is reported, not fatal)
  "$PY" "$HERE/compare.py" "$@" 2>&1 | sed "s|$ROOT/||g" | tee -a "$LOG/compare.txt" >&2 || true
}
clean_out() { rm -rf "${OUT:?}"/*; }
# finish LABEL REP [REF]: after the last rep, check the output against REF; then
# delete it (1 GB each: keeping them all would need ~6 GB more disk).
finish() {
  if (( $2 == REPS )) && [[ -n ${3:-} ]]; then check "$3" "$OUT/$1"; fi
  rm -rf "${OUT:?}/$1"
}

echo "== disk:" >&2; df -h "$DATA" >&2
for phase in $PHASES; do
  echo "== phase $phase" >&2
  case $phase in
    convert)
      gen "f32-${SIZE_GB}g" --dtype f32 --size-gb "$SIZE_GB"
      gen "bf16-${SIZE_GB}g" --dtype bf16 --size-gb "$SIZE_GB"
      for ((r = 1; r <= REPS; r++)); do
        for dt in f32 bf16; do
          f=$(bin "$dt-${SIZE_GB}g"); warm "$f"
          soup_convert "soup-$dt" "$r" "$f"; finish "soup-$dt" "$r" "$f"
          py_convert "py-mmap-$dt" "$r" "$f" --mmap; finish "py-mmap-$dt" "$r" "$f"
          py_convert "py-load-$dt" "$r" "$f"; finish "py-load-$dt" "$r" "$f"
        done
      done ;;
    strided)
      gen "f32-${SIZE_GB}g" --dtype f32 --size-gb "$SIZE_GB"
      gen "bf16-${SIZE_GB}g" --dtype bf16 --size-gb "$SIZE_GB"
      gen "f32-${SIZE_GB}g-t" --dtype f32 --size-gb "$SIZE_GB" --transposed
      gen "bf16-${SIZE_GB}g-t" --dtype bf16 --size-gb "$SIZE_GB" --transposed
      for ((r = 1; r <= REPS; r++)); do
        for dt in f32 bf16; do
          c=$(bin "$dt-${SIZE_GB}g") t=$(bin "$dt-${SIZE_GB}g-t"); warm "$c" "$t"
          soup_convert "soup-c-$dt" "$r" "$c"; finish "soup-c-$dt" "$r"
          soup_convert "soup-t-$dt" "$r" "$t"; finish "soup-t-$dt" "$r" "$c"
          py_convert "py-mmap-t-$dt" "$r" "$t" --mmap; finish "py-mmap-t-$dt" "$r" "$c"
        done
      done
      rm -rf "$DATA/f32-${SIZE_GB}g" "$DATA"/*-t ;;  # make room
    scaling)
      sizes=()
      for s in $SCALE_SIZES "$SIZE_GB"; do sizes+=("$(printf '%s' "$s")"); done
      mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | sort -g -u)
      for s in "${sizes[@]}"; do gen "bf16-${s}g" --dtype bf16 --size-gb "$s"; done
      for ((r = 1; r <= REPS; r++)); do
        for s in "${sizes[@]}"; do
          f=$(bin "bf16-${s}g"); warm "$f"
          soup_convert "scale-$s" "$r" "$f"; finish "scale-$s" "$r"
        done
      done
      for s in "${sizes[@]}"; do [[ $s == "$SIZE_GB" ]] || rm -rf "$DATA/bf16-${s}g"; done
      echo "${sizes[*]}" >"$LOG/scale-sizes" ;;
    merge)
      a="bf16-${SIZE_GB}g" b="bf16-${SIZE_GB}g-v1"
      gen "$a" --dtype bf16 --size-gb "$SIZE_GB"
      gen "$b" --dtype bf16 --size-gb "$SIZE_GB" --variant 1
      for x in "$a" "$b"; do  # the safetensors twins (not timed)
        [[ -f $DATA/$x-st/model.safetensors && $DATA/$x-st/model.safetensors -nt $(bin "$x") ]] ||
          "$SOUP" convert "$(bin "$x")" -o "$DATA/$x-st" --force --quiet
        GENERATED+=("$DATA/$x-st")
      done
      bins=("$(bin "$a")" "$(bin "$b")")
      sts=("$DATA/$a-st/model.safetensors" "$DATA/$b-st/model.safetensors")
      for ((r = 1; r <= REPS; r++)); do
        warm "${bins[@]}" "${sts[@]}"
        run merge-bin "$r" "$SOUP" merge "${bins[@]}" -o "$OUT/merge-bin" --force --quiet
        run merge-st "$r" "$SOUP" merge "${sts[@]}" -o "$OUT/merge-st" --force --quiet
        # The shared-init check samples every matrix of both ingredients first;
        # without it, what is left is the open and the streaming pass.
        run merge-bin-noinit "$r" "$SOUP" merge "${bins[@]}" -o "$OUT/merge-bin-noinit" \
          --force --quiet --no-init-check
        run merge-st-noinit "$r" "$SOUP" merge "${sts[@]}" -o "$OUT/merge-st-noinit" \
          --force --quiet --no-init-check
      done
      # Opening one file alone (soup inspect of one checkpoint runs no init
      # check), too short for /usr/bin/time's 10 ms steps.
      warm "${bins[0]}" "${sts[0]}"; wait_quiet "$LOG/open.busy"
      python3 "$HERE/open_time.py" --runs "$OPEN_RUNS" --json "$LOG/open.json" \
        inspect-bin "$(printf '%q ' "$SOUP" inspect "${bins[0]}")" \
        inspect-st "$(printf '%q ' "$SOUP" inspect "${sts[0]}")"
      check "$OUT/merge-st" "$OUT/merge-bin" "$OUT/merge-bin-noinit" "$OUT/merge-st-noinit"
      clean_out ;;
    *) echo "unknown phase $phase" >&2; exit 1 ;;
  esac
done

# --- summary -----------------------------------------------------------------
{
  echo "## PyTorch checkpoints: medians of $REPS ($(date +%F))"
  echo
  echo "$(nproc) cores ($(lscpu | awk -F': *' '/Model name/ {print $2; exit}')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM;" \
    "$("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("torch", "safetensors")))');" \
    "$("$SOUP" --version)"
  echo
  "$PY" "$HERE/summarize.py" "$LOG" "$DATA" "$REPS" "$SIZE_GB" $PHASES
  if [[ -f $LOG/compare.txt ]]; then
    echo; echo "Output checks (last rep):"; echo
    sed 's/^/- /' "$LOG/compare.txt"
  fi
} | tee "$WORK/results.md"

if [[ -z ${KEEP_DATA:-} ]]; then
  for d in "${GENERATED[@]}"; do rm -rf "$d"; done
  rmdir "$DATA" 2>/dev/null || true
fi
rm -rf "$OUT"
