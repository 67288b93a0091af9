#!/usr/bin/env bash
# Memory and time of a hostile safetensors header: N empty tensors (default
# 500,000, the most soup accepts in one checkpoint) with names long enough for a
# header of about 100 MB (safetensors' cap), inspected and converted. Prints
# wall seconds and max RSS (/usr/bin/time -v) per build; SOUP_BASE adds a second
# build side by side (e.g. one of main). Files go to $WORK and are removed.
#
# Env: SOUP (default target/release/soup), SOUP_BASE, N (500000),
#      NAME_BYTES (140), WORK (target/hostile-header)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SOUP="${SOUP:-$ROOT/target/release/soup}"
N="${N:-500000}"; NAME_BYTES="${NAME_BYTES:-140}"
WORK="${WORK:-$ROOT/target/hostile-header}"
mkdir -p "$WORK"; trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/many.safetensors" "$N" "$NAME_BYTES" <<'PY'
import json, struct, sys
path, n, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
parts = (f'"t{i:0{width - 1}d}":{entry}' for i in range(n))
header = ("{" + ",".join(parts) + "}").encode()
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
print(f"{n} tensors, header {len(header) / 1e6:.1f} MB", file=sys.stderr)
PY
run() {  # $1 = label, rest = command
  local label=$1; shift
  /usr/bin/time -v -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || true
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$WORK/time")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time")
  printf '| %s | %s | %s | %.2f | %s |\n' "$label" "$2" "$wall" "$(echo "$rss / 1048576" | bc -l)" \
    "$(grep -m1 '^error' "$WORK/err" | cut -c1-80 || true)"
}
echo "| build | command | wall | max RSS GB | error |"
echo "|---|---|---|---|---|"
for b in "soup:$SOUP" ${SOUP_BASE:+"soup-base:$SOUP_BASE"}; do
  label=${b%%:*}; bin=${b#*:}
  run "$label" "$bin" inspect "$WORK/many.safetensors"
  rm -rf "$WORK/out"
  run "$label" "$bin" convert "$WORK/many.safetensors" -o "$WORK/out" --quiet
  rm -rf "$WORK/out"
done
