#!/usr/bin/env bash
# Creates the Python venv used by the end-to-end benchmark (baselines + data
# generator) at <repo>/target/bench-venv. Idempotent: a stamp file records
# what was installed, and the script exits early when it matches.
#
# Installs: mergekit (the reference merge tool), numpy, safetensors, and
# mergekit's dependencies (torch etc.). Note: the Linux x86_64 torch wheel on
# PyPI depends on the CUDA runtime packages (a few GB of downloads). A
# `--no-deps` torch install does NOT work: `import torch` hard-fails looking
# for libcublasLt. So we accept the download; it is cached by pip afterwards.
#
# Env: MERGEKIT_VERSION (default 0.1.5), PYTHON (default python3),
#      BENCH_VENV (default <repo>/target/bench-venv),
#      WITHOUT_MERGEKIT=1: numpy and safetensors only (for comparing soup builds,
#      e.g. TOOLS="soup soup-base"; a few MB instead of torch's gigabytes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
PYTHON="${PYTHON:-python3}"
MERGEKIT_VERSION="${MERGEKIT_VERSION:-0.1.5}"
REQS=("mergekit==$MERGEKIT_VERSION" numpy safetensors)
[[ -n ${WITHOUT_MERGEKIT:-} ]] && REQS=(numpy safetensors)
STAMP="$VENV/.bench-setup-ok"

# /usr/bin/time -v is used by run.sh to read wall time and max RSS.
if [[ ! -x /usr/bin/time ]]; then
  echo "setup: installing Debian package 'time' for /usr/bin/time" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${REQS[*]}" ]]; then
  echo "setup: $VENV already set up (${REQS[*]})" >&2
  exit 0
fi

echo "setup: creating $VENV" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${REQS[@]}"

# Smoke test: everything the benchmark imports, plus the mergekit CLI.
if [[ -n ${WITHOUT_MERGEKIT:-} ]]; then
  "$VENV/bin/python" -c 'import numpy, safetensors'
else
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import numpy, safetensors, torch, mergekit  # noqa: F401
for p in ("mergekit", "torch", "safetensors", "numpy", "transformers"):
    print(f"setup: {p}=={md.version(p)}")
PY
  "$VENV/bin/mergekit-yaml" --help >/dev/null
fi

echo "${REQS[*]}" > "$STAMP"
echo "setup: done" >&2
