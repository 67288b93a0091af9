#!/usr/bin/env bash
# Creates the venv of the evaluator-overhead benchmark at
# <repo>/target/eval-bench-venv (never committed): torch, transformers and
# safetensors from PyPI. Idempotent: a stamp file records what was installed.
# The Linux x86_64 torch wheel pulls the CUDA runtime wheels too (a few GB);
# the benchmark itself runs on the CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/target/eval-bench-venv}"
PYTHON="${PYTHON:-python3}"
REQS=(torch transformers safetensors)
STAMP="$VENV/.setup-ok"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${REQS[*]}" ]]; then
  exit 0
fi
echo "setup: creating $VENV" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${REQS[@]}"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers, safetensors  # noqa: F401
for p in ("torch", "transformers", "safetensors"):
    print(f"setup: {p}=={md.version(p)}")
PY
echo "${REQS[*]}" > "$STAMP"
