#!/usr/bin/env bash
# Evaluator overhead: the same greedy search scored by a per-candidate command
# (--eval: a new Python process per candidate that imports torch and transformers
# and loads the model) and by a persistent server (--eval-server: the model is
# built once; each candidate only has its weights loaded), side by side, rounds
# interleaved. CPU only, one torch thread in both.
#
#   bash benches/eval_server/run.sh          (REPS=3 rounds by default)
#
# Provisions target/eval-bench-venv (torch, transformers, safetensors from PyPI)
# and works in target/eval-bench/. Prints per-candidate medians from the journals.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/benches/eval_server"
WORK="$ROOT/target/eval-bench"
REPS="${REPS:-3}"
source "$ROOT/benches/support/quiet.sh"

bash "$HERE/setup_venv.sh"
PY="$ROOT/target/eval-bench-venv/bin/python"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
SOUP="$ROOT/target/release/soup"
rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" "$HERE/make_models.py" "$WORK/models" 6
INGREDIENTS=("$WORK"/models/ft-*)
export PYTHONPATH="$ROOT/python"

runs=()
for r in $(seq 1 "$REPS"); do
  for mode in eval server; do
    wait_quiet "$WORK/busy-$mode-$r"
    out="$WORK/$mode-$r"
    if [[ $mode == eval ]]; then
      flag=(--eval "$PY $HERE/eval_command.py {model}")
    else
      flag=(--eval-server "exec $PY $HERE/eval_server.py $WORK/models/base")
    fi
    start=$(date +%s.%N)
    "$SOUP" greedy "${INGREDIENTS[@]}" -o "$out" "${flag[@]}" --quiet --force
    echo "round $r --$mode: search took $(echo "$(date +%s.%N) - $start" | bc) s" >&2
    runs+=("$out.run")
  done
done
"$PY" "$HERE/summarize.py" "${runs[@]}"
busy=$(find "$WORK" -maxdepth 1 -name "busy-*" | wc -l)
echo "runs started on a busy machine: $busy of $(( 2 * REPS ))"
