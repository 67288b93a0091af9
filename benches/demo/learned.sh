#!/usr/bin/env bash
# Learned soups on the demo task, by CMA-ES and by gradient, at the same budgets:
# for each seed, `soup demo --seed N` (full size, release build) makes the
# fine-tuned ingredients and their run directory; then for each budget B of
# learned evaluations beyond the individual scores (10, 20, 40), `soup learned`
# runs with --budget k + 1 + B by CMA-ES (scored by val accuracy, as in the demo)
# and with --gradient (scored by val loss, `demo-eval --loss --grad {grad}`),
# both in the demo's run directory so the individual scores come from its journal
# (and still count towards the budget). Every soup is then scored by `soup
# demo-eval` on val, the ID test set and the four shifts, and summarize_learned.py
# prints mean ± sd over the seeds. (B = 40 is the demo's own learned rows.)
#
#   bash benches/demo/learned.sh                       # seeds 1 to 5
#   SEEDS="6 7" BUDGETS="10 40" bash benches/demo/learned.sh
#
# Env (all optional): SEEDS="1 2 3 4 5", BUDGETS="10 20 40",
# WORK=target/demo-learned (work directories, kept, and results.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$HERE/../.." && pwd -P)"
cd "$ROOT"
SEEDS="${SEEDS:-1 2 3 4 5}"
BUDGETS="${BUDGETS:-10 20 40}"
WORK="${WORK:-target/demo-learned}"
cargo build --release --quiet
SOUP="$ROOT/target/release/soup"
# The demo's evaluator template, byte for byte, so its journal is reused.
EVAL="'$SOUP' demo-eval {model} --split val"
rm -rf "$WORK"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
for seed in $SEEDS; do
  dir="$WORK/seed-$seed"
  echo "seed $seed: demo ..." >&2
  "$SOUP" demo --seed "$seed" --quiet --json --dir "$dir" >"$WORK/seed-$seed.json"
  (
    cd "$dir"
    mapfile -t ingredients < <(ls -d fine-tuned/ft-* | sort)
    k=${#ingredients[@]}
    for b in $BUDGETS; do
      budget=$((k + 1 + b))
      echo "seed $seed: budget $b (--budget $budget) ..." >&2
      "$SOUP" learned "${ingredients[@]}" -o "learned-cma-$b" --run-dir fine-tuned/run \
        --eval "$EVAL" --budget "$budget" --jobs 2 --quiet --json >"learned-cma-$b.json"
      "$SOUP" learned "${ingredients[@]}" -o "learned-grad-$b" --run-dir fine-tuned/run \
        --eval "$EVAL --loss --grad {grad}" --gradient --budget "$budget" --jobs 2 --quiet \
        --json >"learned-grad-$b.json"
      for method in cma grad; do
        for split in val test heavy-style style-offset noise faint; do
          printf '%s\t%s\t%s\t' "$method" "$b" "$split"
          "$SOUP" demo-eval "learned-$method-$b" --split "$split"
        done
      done >>scores.tsv
    done
  )
done
python3 "$HERE/summarize_learned.py" "$WORK" $SEEDS | tee "$WORK/results.md"
