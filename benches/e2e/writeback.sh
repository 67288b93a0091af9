#!/usr/bin/env bash
# A durable merge's wall time against its two floors, side by side in one run:
#
# - soup: `soup merge` of the e2e data (uniform soup, durable: written, synced,
#   renamed), with writeback started behind the workers;
# - before: the same command with another build (BEFORE=path to a soup binary
#   without the writeback, e.g. one built from an earlier commit), if given;
# - compute floor: the same merge written to /dev/shm (tmpfs: no disk at all);
# - write floor: `dd if=/dev/zero of=... bs=64M oflag=direct` of the output's
#   size into the output's directory (the disk's own pace, no page cache).
#
# REPS rounds, round-robin, each run after a warm-up of the inputs and a
# `sync`. Prints medians and the ratio wall / max(floors); target <= 1.2.
#
# Env: SOUP (target/release/soup), BEFORE (unset), DATA (target/e2e-data; made by
# benches/e2e/run.sh or make_checkpoints.py), WORK (target/writeback-runs),
# REPS (5), SHM (/dev/shm).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SOUP="${SOUP:-$ROOT/target/release/soup}"
DATA="${DATA:-$ROOT/target/e2e-data}"
WORK="${WORK:-$ROOT/target/writeback-runs}"
REPS="${REPS:-5}"
SHM="${SHM:-/dev/shm}"
mkdir -p "$WORK"
INPUTS=("$DATA"/ingredient-*)
(( ${#INPUTS[@]} > 0 )) || { echo "no data in $DATA (run benches/e2e/run.sh once)" >&2; exit 1; }
warm() { for d in "${INPUTS[@]}"; do cat "$d"/*.safetensors; done >/dev/null; }
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }

declare -A T
variants=(soup compute write)
[[ -n ${BEFORE:-} ]] && variants=(soup before compute write)
for ((r = 1; r <= REPS; r++)); do
  for v in "${variants[@]}"; do
    warm; rm -rf "$WORK/out" "$SHM/soup-writeback-out"; sync
    case $v in
      soup) t=$(seconds "$SOUP" merge "${INPUTS[@]}" -o "$WORK/out" --quiet --no-card --no-init-check) ;;
      before) t=$(seconds "$BEFORE" merge "${INPUTS[@]}" -o "$WORK/out" --quiet --no-init-check) ;;
      compute) t=$(seconds "$SOUP" merge "${INPUTS[@]}" -o "$SHM/soup-writeback-out" --quiet --no-card --no-init-check) ;;
      write)
        size=$(cat "$WORK/size")
        t=$(seconds dd if=/dev/zero of="$WORK/dd" bs=64M count=$(( (size + (64 << 20) - 1) / (64 << 20) )) oflag=direct)
        rm -f "$WORK/dd" ;;
    esac
    [[ $v == soup ]] && du -bc "$WORK"/out/*.safetensors | tail -n1 | cut -f1 >"$WORK/size"
    T[$v]+="$t "
    echo "rep $r $v ${t}s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
rm -rf "$WORK/out" "$SHM/soup-writeback-out"
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "| variant | median wall s |"
echo "|---|---:|"
for v in "${variants[@]}"; do echo "| $v | $(echo "${T[$v]}" | median) |"; done
soup=$(echo "${T[soup]}" | median); c=$(echo "${T[compute]}" | median); w=$(echo "${T[write]}" | median)
echo
echo "output $(( $(cat "$WORK/size") / 1000000 )) MB; soup / max(compute floor, write floor) = $(python3 -c "print(f'{$soup / max($c, $w):.2f}')")"
