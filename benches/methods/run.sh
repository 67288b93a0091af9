#!/usr/bin/env bash
# Merge methods against mergekit: for each method, one mergekit YAML config is
# merged by `mergekit-yaml` and by `soup merge --recipe` (the same file), side by
# side on the same inputs, REPS times round-robin (rep 1: soup, mergekit for
# each method in turn; rep 2: ...), each under /usr/bin/time -v and
# benches/e2e/peak_mem.py. Then, per method, on the last rep's outputs:
#
# - compare_methods.py: agreement of soup, mergekit and an exact float64
#   reference of the method, tensor by tensor (bit-identical fraction, ulps,
#   |diff| / RMS(base)); for DARE, statistics of the change from the base;
# - sanity: `soup merge` with the equivalent command-line flags must write the
#   same bytes as `soup merge --recipe <the mergekit YAML>` (every file).
#
# Inputs: base = ingredient-0, fine-tunes = ingredient-1..3 of $DATA
# (benches/e2e/make_checkpoints.py layout: a hidden random model plus 10 %
# independent noise per checkpoint, so the task vectors x_i - x_0 are
# correlated deltas, pairwise cosine about 0.5; generated if missing). The
# default is 4 x 0.25 GB rather than the e2e bench's 4 x 0.75 GB because
# mergekit's TIES alone takes over a minute per run at 0.75 GB on 2 cores.
# Prints a markdown table of medians, also saved to $WORK/results.md.
#
# Env (all optional):
#   SOUP=target/release/soup      soup binary (cargo build --release)
#   DATA=target/methods-data      4 checkpoints (make_checkpoints.py layout)
#   SIZE_GB=0.25                  size per checkpoint if DATA must be generated
#   REPS=3                        repetitions per method and tool
#   METHODS="linear task_arithmetic ties dare_linear dare_ties slerp model_stock
#            breadcrumbs breadcrumbs_ties della della_linear sce nuslerp multislerp
#            karcher nearswap passthrough slerp_slices"
#   TOOLS="soup mergekit"
#   MK_DTYPE=bfloat16             the configs' `dtype` (mergekit's compute dtype).
#                                 float32 also writes `out_dtype: bfloat16`, so
#                                 both tools still write bf16.
#   SEED=0                        mergekit --random-seed (DARE)
#   WORK=target/methods-runs      configs, logs, compare JSON, results.md
#   KEEP_OUTPUTS=1                keep the last rep's outputs (default: deleted)
#   SKIP_COMPARE=1                timings only
#   QUIET_MAX=10                  max seconds to wait for an idle machine per run
#   BENCH_VENV=target/bench-venv  Python venv with mergekit (benches/e2e/setup_venv.sh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
E2E="$ROOT/benches/e2e"
SOUP="${SOUP:-$ROOT/target/release/soup}"
DATA="$(realpath -m "${DATA:-$ROOT/target/methods-data}")"
SIZE_GB="${SIZE_GB:-0.25}"
REPS="${REPS:-3}"
METHODS="${METHODS:-linear task_arithmetic ties dare_linear dare_ties slerp model_stock breadcrumbs breadcrumbs_ties della della_linear sce nuslerp multislerp karcher nearswap passthrough slerp_slices}"
TOOLS="${TOOLS:-soup mergekit}"
MK_DTYPE="${MK_DTYPE:-bfloat16}"
SEED="${SEED:-0}"
WORK="${WORK:-$ROOT/target/methods-runs}"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
PY="$VENV/bin/python"
export CUDA_VISIBLE_DEVICES=""  # CPU only, everywhere

[[ -x $SOUP ]] || { echo "no soup binary at $SOUP (cargo build --release)" >&2; exit 1; }
BENCH_VENV="$VENV" bash "$E2E/setup_venv.sh"
mkdir -p "$WORK"
LOG="$WORK/logs"; rm -rf "$LOG"; mkdir -p "$LOG"
CFG="$WORK/configs"; rm -rf "$CFG"; mkdir -p "$CFG"

# --- data --------------------------------------------------------------------
if ! [[ -f $DATA/.complete && -d $DATA/ingredient-3 ]]; then
  echo "== generating 4 x ${SIZE_GB} GB checkpoints into $DATA" >&2
  "$PY" "$E2E/make_checkpoints.py" "$DATA" -k 4 --size-gb "$SIZE_GB" --verify
fi
I0="$DATA/ingredient-0" I1="$DATA/ingredient-1" I2="$DATA/ingredient-2" I3="$DATA/ingredient-3"
LAYERS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$I0/config.json")
in_bytes=$(cat "$I0"/*.safetensors | wc -c)
echo "== data: $(cat "$DATA/.complete") ($((in_bytes / 1000000)) MB per checkpoint) in $DATA" >&2

# --- configs and the equivalent soup flags -----------------------------------
# One config per method, in mergekit 0.1.5's syntax; FLAGS[m] is the same merge
# as `soup merge` options (checked byte for byte after the runs).
dtype_lines() {
  echo "dtype: $MK_DTYPE"
  [[ $MK_DTYPE == bfloat16 ]] || echo "out_dtype: bfloat16"
}
declare -A FLAGS
task_models() {  # $1 = extra per-model parameters
  echo "base_model: $I0"
  echo "models:"
  for d in "$I1" "$I2" "$I3"; do
    echo "  - model: $d"
    echo "    parameters: {weight: 1.0$1}"
  done
}
for m in $METHODS; do
  y="$CFG/$m.yml"
  {
    echo "merge_method: ${m%_slices}"
    case $m in
      linear)
        echo "models:"
        echo "  - {model: $I1, parameters: {weight: 0.5}}"
        echo "  - {model: $I2, parameters: {weight: 0.3}}"
        echo "  - {model: $I3, parameters: {weight: 0.2}}"
        FLAGS[$m]="$I1 $I2 $I3 --weights 0.5,0.3,0.2" ;;
      task_arithmetic)
        task_models ""
        echo "parameters: {lambda: 0.8}"
        FLAGS[$m]="$I1 $I2 $I3 --base $I0 --method task-arithmetic --weights 1,1,1 --lambda 0.8" ;;
      ties)
        task_models ", density: 0.2"
        FLAGS[$m]="$I1 $I2 $I3 --base $I0 --method ties --weights 1,1,1 --density 0.2" ;;
      dare_linear | dare_ties)
        task_models ", density: 0.3"
        FLAGS[$m]="$I1 $I2 $I3 --base $I0 --method ${m/_/-} --weights 1,1,1 --density 0.3" ;;
      slerp)
        echo "base_model: $I0"
        echo "models:"
        echo "  - model: $I0"
        echo "  - model: $I1"
        echo "parameters: {t: 0.4}"
        FLAGS[$m]="$I0 $I1 --method slerp --t 0.4" ;;
      model_stock)
        echo "base_model: $I0"
        echo "models:"
        for d in "$I1" "$I2" "$I3"; do echo "  - model: $d"; done
        FLAGS[$m]="$I1 $I2 $I3 --base $I0 --method model-stock" ;;
      # The methods below have no command-line flags (recipes only).
      breadcrumbs | breadcrumbs_ties)
        task_models ", density: 0.3, gamma: 0.01" ;;
      della | della_linear)
        task_models ", density: 0.3, epsilon: 0.1" ;;
      sce)
        echo "base_model: $I0"
        echo "models:"
        for d in "$I1" "$I2" "$I3"; do echo "  - model: $d"; done
        echo "parameters: {select_topk: 0.5}" ;;
      nuslerp)
        echo "base_model: $I0"
        echo "models:"
        echo "  - {model: $I1, parameters: {weight: 0.4}}"
        echo "  - {model: $I2, parameters: {weight: 0.6}}" ;;
      multislerp)
        echo "models:"
        echo "  - {model: $I1, parameters: {weight: 0.5}}"
        echo "  - {model: $I2, parameters: {weight: 0.3}}"
        echo "  - {model: $I3, parameters: {weight: 0.2}}" ;;
      karcher)
        echo "models:"
        for d in "$I1" "$I2" "$I3"; do echo "  - model: $d"; done ;;
      nearswap)
        echo "base_model: $I0"
        echo "models:"
        echo "  - model: $I0"
        echo "  - model: $I1"
        echo "parameters: {t: 0.002}" ;;
      passthrough)
        # A frankenmerge: the first half of one model's layers, then the last
        # three quarters of another's.
        echo "slices:"
        echo "  - sources: [{model: $I1, layer_range: [0, $((LAYERS / 2))]}]"
        echo "  - sources: [{model: $I2, layer_range: [$((LAYERS / 4)), $LAYERS]}]" ;;
      slerp_slices)
        # mergekit's SLERP example form: one slice over every layer.
        echo "base_model: $I0"
        echo "slices:"
        echo "  - sources:"
        echo "      - {model: $I0, layer_range: [0, $LAYERS]}"
        echo "      - {model: $I1, layer_range: [0, $LAYERS]}"
        echo "parameters: {t: 0.4}"
        FLAGS[$m]="$I0 $I1 --method slerp --t 0.4" ;;
      *) echo "unknown method $m" >&2; exit 1 ;;
    esac
    dtype_lines
  } >"$y"
  [[ -z ${FLAGS[$m]:-} ]] || FLAGS[$m]+=" --dtype bf16"
done

# Sets cmd=(command line for tool $1, method $2); output in $WORK/out-$2-$1.
# mergekit: --no-copy-tokenizer (the synthetic data has none); --lazy-unpickle
# only concerns pickled .bin inputs, so it is left out; --out-shard-size stays
# at its default (5B parameters: one output shard); --random-seed makes DARE
# reproducible from run to run (it cannot match soup's masks anyway).
tool_cmd() {
  local out="$WORK/out-$2-$1"
  case "$1" in
    soup) cmd=("$SOUP" merge --recipe "$CFG/$2.yml" -o "$out" --force --quiet --json) ;;
    mergekit) cmd=("$VENV/bin/mergekit-yaml" "$CFG/$2.yml" "$out" --quiet --no-copy-tokenizer
                   --random-seed "$SEED") ;;
    *) echo "unknown tool $1" >&2; return 1 ;;
  esac
}

# --- runs --------------------------------------------------------------------
# shellcheck source=../support/quiet.sh
source "$ROOT/benches/support/quiet.sh"
warm() { cat "$I0"/*.safetensors "$I1"/*.safetensors "$I2"/*.safetensors "$I3"/*.safetensors >/dev/null; }

# The last rep's outputs of one method: compared, sanity-checked, deleted.
check_method() {
  local m=$1 s="$WORK/out-$1-soup" k="$WORK/out-$1-mergekit" f="$WORK/out-$1-flags"
  if [[ -z ${SKIP_COMPARE:-} && -d $s && -d $k ]]; then
    echo "== compare $m" >&2
    "$PY" "$HERE/compare_methods.py" "$CFG/$m.yml" "$s" "$k" --json "$LOG/$m.compare.json" \
      >/dev/null 2>"$LOG/$m.compare.stderr" || echo "   compare failed: $LOG/$m.compare.stderr" >&2
  fi
  if [[ -d $s && -n ${FLAGS[$m]:-} ]]; then
    # shellcheck disable=SC2086  # FLAGS are word-split on purpose
    if "$SOUP" merge ${FLAGS[$m]} -o "$f" --force --quiet 2>"$LOG/$m.flags.stderr"; then
      python3 "$HERE/same_output.py" "$s" "$f" >"$LOG/$m.flags-equal" || true
    else
      echo "failed: soup merge ${FLAGS[$m]}: $(tail -n1 "$LOG/$m.flags.stderr")" >"$LOG/$m.flags-equal"
    fi
    echo "   recipe == flags: $(cat "$LOG/$m.flags-equal")" >&2
  fi
  [[ -n ${KEEP_OUTPUTS:-} ]] || rm -rf "$s" "$k"
  rm -rf "$f"
}

echo "== disk before runs:" >&2; df -h "$WORK" >&2
for ((r = 1; r <= REPS; r++)); do
  for m in $METHODS; do
    warm
    for t in $TOOLS; do
      tool_cmd "$t" "$m"
      rm -rf "$WORK/out-$m-$t"; sync
      wait_quiet "$LOG/$m.$t.$r.busy"
      echo "== rep $r/$REPS: $m $t" >&2
      rc=0
      python3 "$E2E/peak_mem.py" --json "$LOG/$m.$t.$r.mem.json" -- \
        /usr/bin/time -v -o "$LOG/$m.$t.$r.time" "${cmd[@]}" \
        >"$LOG/$m.$t.$r.stdout" 2>"$LOG/$m.$t.$r.stderr" || rc=$?
      tail -n 1 "$LOG/$m.$t.$r.stderr" >&2
      if (( rc != 0 )); then
        echo "   $m $t failed (exit $rc); see $LOG/$m.$t.$r.stderr" >&2
        touch "$LOG/$m.$t.$r.failed"
      fi
    done
    (( r < REPS )) || check_method "$m"
  done
done

# --- summary -----------------------------------------------------------------
{
  echo "## Merge methods vs mergekit: 4 x $((in_bytes / 1000000)) MB bf16, medians of $REPS"
  echo
  echo "$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -n1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM;" \
    "$("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("mergekit", "torch")))');" \
    "$("$SOUP" --version); configs with dtype: $MK_DTYPE"
  echo
  "$PY" "$HERE/summarize.py" "$LOG" "$REPS" "$METHODS" "$TOOLS"
} | tee "$WORK/results.md"
