#!/usr/bin/env bash
# Cold PyTorch inputs: `soup merge A.bin B.bin` and `soup convert A.bin` with the
# input files dropped from the page cache before every run, for two builds side by
# side (BEFORE, e.g. a build that checked every storage's CRC-32 at open, and
# SOUP), interleaved run by run.
#
#   BEFORE=/path/to/old/soup bash benches/torch/cold.sh
#
# Dropping a file's pages needs no root: the file is synced, then
# posix_fadvise(POSIX_FADV_DONTNEED) drops its clean pages. Each run reports its
# wall time and the bytes the disk delivered meanwhile (sectors read on the
# file's device in /proc/diskstats, × 512: machine-wide, so run it on a quiet
# machine). What opening alone reads is checked by tests/torch_first_read.rs.
#
# Env (all optional but BEFORE):
#   SOUP=target/release/soup   DATA=target/torch-cold (two .bin files, kept)
#   SIZE_GB=1   REPS=5
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SOUP="${SOUP:-$ROOT/target/release/soup}"
BEFORE="${BEFORE:?BEFORE=<a soup binary to compare with>}"
DATA="$(realpath -m "${DATA:-$ROOT/target/torch-cold}")"
SIZE_GB="${SIZE_GB:-1}"
REPS="${REPS:-5}"

mkdir -p "$DATA"
for seed in 1 2; do
  f="$DATA/in-$seed.bin"
  [[ -f $f ]] || python3 "$HERE/write_bin.py" "$f" --size-gb "$SIZE_GB" --seed "$seed"
done
A="$DATA/in-1.bin"
B="$DATA/in-2.bin"
OUT="$DATA/out"
dev="$(basename "$(df --output=source "$DATA" | tail -1)")"
grep -q " $dev " /proc/diskstats || { echo "no /proc/diskstats line for $dev" >&2; exit 1; }

sectors() { awk -v d="$dev" '$3 == d { print $6 }' /proc/diskstats; }
evict() {
  python3 - "$@" <<'EOF'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
}

RESULTS="$DATA/runs.tsv"
: >"$RESULTS"
timed() {  # timed BUILD WHAT COMMAND...
  local build=$1 what=$2
  shift 2
  rm -rf "$OUT"
  sync
  evict "$A" "$B"
  local s0 t0 t1 s1
  s0=$(sectors)
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  s1=$(sectors)
  printf '%s\t%s\t%.3f\t%.2f\n' "$build" "$what" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "($s1 - $s0) * 512 / 1000000000" | bc -l)" | tee -a "$RESULTS"
}

for rep in $(seq "$REPS"); do
  for build in before after; do
    bin=$SOUP
    [[ $build == before ]] && bin=$BEFORE
    timed "$build" merge "$bin" merge "$A" "$B" -o "$OUT" --force --quiet
    timed "$build" convert "$bin" convert "$A" -o "$OUT" --force --quiet
  done
done
rm -rf "$OUT"

python3 - "$RESULTS" "$(du -b "$A" | cut -f1)" "$(du -b "$B" | cut -f1)" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
a, b = int(sys.argv[2]) / 1e9, int(sys.argv[3]) / 1e9
inputs = {"merge": a + b, "convert": a}
print(f"\n| command | inputs GB | build | wall s (median) | disk read GB (median) | runs |")
print("|---|---:|---|---:|---:|---:|")
for what in ("merge", "convert"):
    for build in ("before", "after"):
        r = [x for x in rows if x[0] == build and x[1] == what]
        wall = statistics.median(float(x[2]) for x in r)
        read = statistics.median(float(x[3]) for x in r)
        print(f"| {what} | {inputs[what]:.2f} | {build} | {wall:.2f} | {read:.2f} | {len(r)} |")
EOF
