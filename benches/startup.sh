#!/usr/bin/env bash
# Start-up time of `soup --help` (and `soup merge --help`), beside `/bin/true` as
# the floor of starting any process on this machine. Medians from hyperfine.
#
#   bash benches/startup.sh            # builds the release binary first
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v hyperfine >/dev/null || { apt-get update -q && apt-get install -y -q hyperfine; }
cargo build --release --quiet
hyperfine -N --warmup 20 --runs 300 --export-json target/startup.json \
  '/bin/true' 'target/release/soup --help' 'target/release/soup merge --help' >/dev/null
python3 - <<'PY'
import json, statistics
results = json.load(open("target/startup.json"))["results"]
print("| command | median ms | min ms |")
print("|---|---|---|")
for r in results:
    print(f"| `{r['command']}` | {statistics.median(r['times']) * 1e3:.2f} | {min(r['times']) * 1e3:.2f} |")
PY
