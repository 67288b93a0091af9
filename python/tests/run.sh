#!/usr/bin/env bash
# Tests the Python package as a user gets it: builds the wheel with maturin (from
# PyPI, in a venv under target/), installs it into a fresh venv under target/ with
# no package index (so it must need nothing else), and runs python/tests/ with that
# venv's Python: soup --version, merge/inspect/greedy through modelsoup.run() (the
# greedy evaluator written with the helper module), the evaluator helpers and
# run()'s error handling.
#
#   python/tests/run.sh            # from anywhere; PYTHON=python3.X to choose the interpreter
#
# The wheel's binary is a release build in target/release (shared with
# `cargo build --release`, so a warm tree rebuilds nothing).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
maturin_pin="maturin==1.16.0"
work="$root/target/python"
build_venv="$work/build-venv"
test_venv="$work/test-venv"
wheels="$work/wheels"
start=$SECONDS

# The build venv is kept between runs while it has the pinned maturin.
if [[ "$("$build_venv/bin/maturin" --version 2>/dev/null)" != "maturin ${maturin_pin#maturin==}" ]]; then
    echo "python/tests: installing $maturin_pin into $build_venv" >&2
    rm -rf "$build_venv"
    "$python" -m venv "$build_venv"
    "$build_venv/bin/pip" install --disable-pip-version-check --no-input --quiet "$maturin_pin"
fi

rm -rf "$wheels"
"$build_venv/bin/maturin" build --release --locked --out "$wheels" >&2
wheel=("$wheels"/modelsoup-*.whl)
[[ ${#wheel[@]} -eq 1 && -f "${wheel[0]}" ]] || { echo "python/tests: expected one wheel in $wheels" >&2; exit 1; }
built=$SECONDS

rm -rf "$test_venv"
"$python" -m venv "$test_venv"
"$test_venv/bin/pip" install --disable-pip-version-check --no-input --quiet --no-index "${wheel[0]}"

# Not activated, PATH without the venv, outside the source tree, no override: the
# tests see the package and the binary exactly as installed.
cd "$work"
status=0
env -u MODELSOUP_BINARY -u VIRTUAL_ENV -u PYTHONPATH \
    MODELSOUP_REPO="$root" MODELSOUP_WHEEL="${wheel[0]}" PYTHONDONTWRITEBYTECODE=1 \
    "$test_venv/bin/python" "$root/python/tests/runner.py" || status=$?
echo "python/tests: wheel built in $((built - start)) s, installed and tested in $((SECONDS - built)) s" >&2
exit "$status"
