#!/usr/bin/env python3
"""Cross-check a soup written by `soup merge` against the official safetensors
library and numpy.

    crosscheck.py --out DIR --weights W1,...,WK [--dtype NAME] INGREDIENT...

Every ingredient (a .safetensors file, or a Hugging Face checkpoint directory with
model.safetensors or shards listed in model.safetensors.index.json) and every
output file is read with `safetensors.safe_open(framework="numpy")`. The checks:

* output layout: either model.safetensors alone, or shards
  model-0000k-of-0000n.safetensors and model.safetensors.index.json whose
  weight_map covers exactly the tensors (each in the shard that holds it) and
  whose metadata.total_size is the sum of the tensors' byte sizes;
* every output file's metadata: "format" is "pt", and "modelsoup.recipe" parses
  and lists the ingredients (as given), the normalised weights and the dtype;
* every tensor: same names as the ingredients, same shape, the expected dtype
  (--dtype for floats, else the first ingredient's), and values:
  - floats: expected = sum_i w_i * x_i in float64 (weights normalised to sum 1),
    or, when the weights are integers over a common count k_i / d (equal
    weights 1/n), (sum_i k_i * x_i) / d as soup documents it (numpy's
    sum-then-divide), cast to the output dtype with numpy; never more than 1 ulp apart and
    bit-identical for at least 99.9% of the elements. (The tolerance is needed:
    ml_dtypes casts float64 to bfloat16 through float32, which double-rounds a
    few elements in 10^5, whereas soup rounds once.)
  - integers and bools: identical to the first ingredient.

Prints one summary line; on any mismatch prints every problem found and exits 1.
Needs safetensors, numpy and ml_dtypes (see requirements.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from fractions import Fraction

# Importing ml_dtypes registers bfloat16 with numpy, which safetensors' numpy
# loader needs for BF16 tensors; it must come before any load.
import ml_dtypes
import numpy as np
from safetensors import safe_open

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# --dtype as soup takes it (lower case) -> safetensors header name.
CLI_DTYPES = {"f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16"}
NUMPY_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
# Unsigned views of each float width, for comparing bit patterns.
UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
RECIPE_KEY = "modelsoup.recipe"

MIN_EXACT_FRACTION = 0.999
MAX_ULP = 1


class Problems:
    """Collects mismatches so one run reports all of them, not just the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.add(message)
        return ok


class Checkpoint:
    """The tensors of one checkpoint (file or directory), opened with safe_open."""

    def __init__(self, path: str, stack: contextlib.ExitStack) -> None:
        self.path = path
        self.handles = {}  # tensor name -> open safe_open handle holding it
        for file in checkpoint_files(path):
            handle = stack.enter_context(safe_open(file, framework="numpy"))
            for name in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                if name in self.handles:
                    raise SystemExit(
                        f"crosscheck: {path}: tensor {name!r} is in two files"
                    )
                self.handles[name] = handle

    def dtype(self, name: str) -> str:
        """The safetensors dtype name (F32, BF16, I64...) from the header."""
        return self.handles[name].get_slice(name).get_dtype()

    def tensor(self, name: str) -> np.ndarray:
        return self.handles[name].get_tensor(name)


def checkpoint_files(path: str) -> list[str]:
    """The weight files of an ingredient: itself, or a directory's shards."""
    if os.path.isfile(path):
        return [path]
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, shard) for shard in sorted(set(weight_map.values()))]
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    raise SystemExit(f"crosscheck: {path}: no {SINGLE_FILE} or {INDEX_FILE}")


def output_files(out: str, problems: Problems) -> tuple[list[str], dict | None]:
    """The output's weight files, checking the directory's layout; and the index,
    when sharded."""
    present = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    index_path = os.path.join(out, INDEX_FILE)
    if not os.path.exists(index_path):
        problems.check(
            present == [SINGLE_FILE],
            f"without an index the output must hold just {SINGLE_FILE}, found {present}",
        )
        return [os.path.join(out, n) for n in present], None

    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    listed = sorted(set(index.get("weight_map", {}).values()))
    problems.check(
        listed == present,
        f"index lists shards {listed} but the directory holds {present}",
    )
    n = len(present)
    expected_names = [f"model-{k:05}-of-{n:05}.safetensors" for k in range(1, n + 1)]
    problems.check(
        present == expected_names,
        f"shards should be named {expected_names[:1]}...{expected_names[-1:]}, found {present}",
    )
    problems.check(
        all(SHARD_NAME.fullmatch(p) for p in present),
        f"unexpected shard names: {present}",
    )
    return [os.path.join(out, p) for p in present], index


def check_recipe(
    metadata: dict,
    file: str,
    args: argparse.Namespace,
    weights: list[float],
    problems: Problems,
) -> None:
    """The file's __metadata__: format pt and a recipe matching the command."""
    where = os.path.basename(file)
    problems.check(
        metadata.get("format") == "pt",
        f"{where}: metadata format is {metadata.get('format')!r}, expected 'pt'",
    )
    if not problems.check(
        RECIPE_KEY in metadata, f"{where}: no {RECIPE_KEY!r} in metadata"
    ):
        return
    try:
        recipe = json.loads(metadata[RECIPE_KEY])
    except json.JSONDecodeError as e:
        problems.add(
            f"{where}: {RECIPE_KEY} is not JSON ({e}): {metadata[RECIPE_KEY]!r}"
        )
        return
    problems.check(
        str(recipe.get("tool", "")).startswith("modelsoup"),
        f"{where}: recipe tool is {recipe.get('tool')!r}",
    )
    problems.check(
        recipe.get("method") == "linear",
        f"{where}: recipe method is {recipe.get('method')!r}",
    )
    ingredients = recipe.get("ingredients") or []
    paths = [i.get("path") if isinstance(i, dict) else None for i in ingredients]
    problems.check(
        paths == args.ingredients,
        f"{where}: recipe ingredients {paths} != {args.ingredients}",
    )
    # Weights as given (1 each when absent), normalised by the linear method.
    given = [i.get("weight", 1.0) if isinstance(i, dict) else None for i in ingredients]
    numeric = all(isinstance(g, (int, float)) for g in given) and given
    got = [g / sum(given) for g in given] if numeric and sum(given) else given
    problems.check(
        recipe.get("parameters", {}).get("normalize", True) is True
        and len(got) == len(weights)
        and all(
            math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-15)
            for g, w in zip(got, weights, strict=True)
        ),
        f"{where}: recipe weights {given} do not normalise to {weights}",
    )
    dtype = recipe.get("output", {}).get("dtype")
    problems.check(
        dtype == args.dtype,
        f"{where}: recipe dtype {dtype!r}, expected {args.dtype!r}",
    )


def ordered(bits: np.ndarray) -> np.ndarray:
    """Maps float bit patterns (sign-magnitude, as unsigned ints) to integers that
    order like the values (+0 and -0 both map to 0), held modulo 2**64 in uint64 so
    that differences never overflow. (Distances past 2**63, between opposite
    extremes of float64, come out smaller but still huge.)"""
    width = bits.dtype.itemsize * 8
    wide = bits.astype(np.uint64)
    sign = np.uint64(1) << np.uint64(width - 1)
    magnitude = wide & (sign - np.uint64(1))
    return np.where(wide & sign, np.uint64(0) - magnitude, magnitude)


def as_fractions(weights: list[float]):
    """(k_i, d) when every weight is the double nearest k_i / d for integers k_i and
    a count 3 <= d <= 4096 that is not a power of two, else None."""
    fractions = [Fraction(w).limit_denominator(4096) for w in weights]
    if any(float(f) != w for f, w in zip(fractions, weights, strict=True)):
        return None
    d = 1
    for f in fractions:
        d = d * f.denominator // math.gcd(d, f.denominator)
    if d > 4096 or d & (d - 1) == 0:
        return None
    return [int(f * d) for f in fractions], d


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance in ulps of two arrays of one float dtype, flattened (so 0-d
    tensors stay arrays); NaN matches only NaN."""
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    uint = UINT_OF_SIZE[actual.dtype.itemsize]
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps mod 2**64 on purpose
        diff = ordered(actual.view(uint)) - ordered(expected.view(uint))
        distance = np.minimum(diff, np.uint64(0) - diff)
    a_nan = np.isnan(actual.astype(np.float64))
    e_nan = np.isnan(expected.astype(np.float64))
    distance[a_nan & e_nan] = 0
    distance[a_nan ^ e_nan] = np.iinfo(np.uint64).max
    return distance


@dataclasses.dataclass
class Stats:
    """What was checked, for the summary line."""

    tensors: int = 0
    averaged: int = 0
    copied: int = 0
    elements: int = 0
    exact: int = 0  # elements bit-identical to numpy's
    bytes: int = 0  # of the tensors' data
    max_ulp: int = 0


def check_tensor(
    name: str,
    out_file: str,
    out: safe_open,
    ingredients: list[Checkpoint],
    weights: list[float],
    forced: str | None,
    problems: Problems,
    stats: Stats,
) -> None:
    """Compares one output tensor with numpy's weighted average (floats) or with
    the first ingredient's copy (everything else)."""
    actual = out.get_tensor(name)
    out_dtype = out.get_slice(name).get_dtype()
    first_dtype = ingredients[0].dtype(name)
    inputs = [ing.tensor(name) for ing in ingredients]
    where = f"{name} ({os.path.basename(out_file)})"
    stats.tensors += 1
    stats.elements += actual.size
    stats.bytes += actual.nbytes
    shapes_ok = [
        problems.check(
            x.shape == actual.shape, f"{where}: shape {actual.shape} != {x.shape}"
        )
        for x in inputs
    ]
    if not all(shapes_ok):
        return

    if first_dtype not in FLOAT_DTYPES:
        stats.copied += 1
        stats.exact += actual.size
        problems.check(
            out_dtype == first_dtype and actual.dtype == inputs[0].dtype,
            f"{where}: dtype {out_dtype}, expected {first_dtype} as in the first ingredient",
        )
        problems.check(
            actual.tobytes() == inputs[0].tobytes(),
            f"{where}: differs from the first ingredient's copy",
        )
        return

    stats.averaged += 1
    want = forced or first_dtype
    if not problems.check(
        out_dtype == want and actual.dtype == NUMPY_DTYPES[want],
        f"{where}: dtype {out_dtype} ({actual.dtype}), expected {want}",
    ):
        return
    acc = np.zeros(actual.shape, dtype=np.float64)
    numerators, divisor = as_fractions(weights) or (weights, 1)
    for w, x in zip(numerators, inputs, strict=True):
        # soup does not read weight-0 ingredients; w * x = 0 adds nothing anyway.
        if w != 0.0:
            acc += float(w) * x.astype(np.float64)
    if divisor != 1:
        acc /= float(divisor)
    expected = acc.astype(actual.dtype)
    distance = ulp_distance(actual, expected)
    exact = int(np.count_nonzero(distance == 0))
    worst = int(distance.max()) if distance.size else 0
    stats.exact += exact
    stats.max_ulp = max(stats.max_ulp, worst)
    if worst > MAX_ULP:
        at = np.unravel_index(int(distance.argmax()), actual.shape)
        problems.add(
            f"{where}: {worst} ulp apart at {tuple(int(i) for i in at)}: soup "
            f"{actual[at]!r}, numpy {expected[at]!r} (from {acc[at]!r})"
        )
    if actual.size and exact < MIN_EXACT_FRACTION * actual.size:
        problems.add(f"{where}: only {exact}/{actual.size} elements bit-identical")


def check_index(
    index: dict, output: dict, total_bytes: int, problems: Problems
) -> None:
    """The sharded output's index: weight_map and metadata.total_size."""
    weight_map = index.get("weight_map", {})
    problems.check(
        set(weight_map) == set(output),
        "index weight_map does not cover exactly the tensors",
    )
    wrong = [
        n for n, (f, _) in output.items() if weight_map.get(n) != os.path.basename(f)
    ]
    problems.check(not wrong, f"index maps tensors to the wrong shard: {wrong[:5]}")
    total_size = index.get("metadata", {}).get("total_size")
    problems.check(
        total_size == total_bytes,
        f"index total_size {total_size} != {total_bytes} bytes of tensors",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the soup's output directory")
    parser.add_argument(
        "--weights", required=True, help="w1,...,wk as given to soup (1,1,1: uniform)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(CLI_DTYPES), help="--dtype given to soup, if any"
    )
    parser.add_argument(
        "ingredients", nargs="+", help="the ingredients, exactly as given to soup"
    )
    args = parser.parse_args()

    raw = [float(w) for w in args.weights.split(",")]
    if len(raw) != len(args.ingredients) or sum(raw) <= 0:
        raise SystemExit(
            f"crosscheck: {len(raw)} weights for {len(args.ingredients)} ingredients"
        )
    weights = [w / sum(raw) for w in raw]  # as soup normalises them
    forced = CLI_DTYPES[args.dtype] if args.dtype else None
    problems = Problems()
    stats = Stats()

    with contextlib.ExitStack() as stack:
        ingredients = [Checkpoint(p, stack) for p in args.ingredients]
        names = set(ingredients[0].handles)
        for ing in ingredients[1:]:
            problems.check(
                set(ing.handles) == names,
                f"{ing.path}: tensor names differ from {ingredients[0].path}",
            )

        # Open every output file with the official library and check its metadata.
        files, index = output_files(args.out, problems)
        output = {}  # tensor name -> (file, handle)
        for file in files:
            handle = stack.enter_context(safe_open(file, framework="numpy"))
            check_recipe(handle.metadata() or {}, file, args, weights, problems)
            for name in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                problems.check(name not in output, f"{name} is in two output files")
                output[name] = (file, handle)
        missing, extra = sorted(names - set(output)), sorted(set(output) - names)
        problems.check(not missing, f"tensors missing from the output: {missing}")
        problems.check(
            not extra, f"tensors in the output but in no ingredient: {extra}"
        )

        for name in sorted(names & set(output)):
            file, handle = output[name]
            check_tensor(
                name, file, handle, ingredients, weights, forced, problems, stats
            )
        if index is not None:
            check_index(index, output, stats.bytes, problems)

    exact_fraction = stats.exact / stats.elements if stats.elements else 1.0
    layout = f"{len(files)} shards" if index is not None else "1 file"
    summary = (
        f"crosscheck {args.out}: {stats.tensors} tensors ({stats.averaged} averaged, "
        f"{stats.copied} copied) in {layout}, {stats.elements} elements, "
        f"exact {exact_fraction:.6f}, max ulp {stats.max_ulp}"
    )
    if problems.items:
        print(
            f"{summary}\ncrosscheck FAILED: {len(problems.items)} problem(s):",
            file=sys.stderr,
        )
        for p in problems.items:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{summary}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
