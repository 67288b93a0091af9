#!/usr/bin/env python3
"""Compare two merged checkpoints (dirs of *.safetensors) tensor by tensor.

Usage: compare_outputs.py REF_DIR OTHER_DIR

Prints one line: tensor count, dtype mismatches, and how many elements
differ (and by at most how much, in float32). Exit 1 if names, shapes or
dtypes differ; differing values alone are reported, not fatal (bf16
rounding order may legitimately differ between tools).
"""
import glob
import os
import sys

from safetensors import safe_open


def index(d):
    """tensor name -> shard path, over every *.safetensors in d."""
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with safe_open(f, framework="pt") as st:
            out.update(dict.fromkeys(st.keys(), f))
    return out


def main():
    ref_dir, other_dir = sys.argv[1:3]
    ref, other = index(ref_dir), index(other_dir)
    if ref.keys() != other.keys():
        print(f"compare: tensor names differ: only in ref {sorted(ref.keys() - other.keys())[:5]}, "
              f"only in other {sorted(other.keys() - ref.keys())[:5]}")
        sys.exit(1)
    bad, diff_elems, total, max_abs = [], 0, 0, 0.0
    for name in sorted(ref):
        with safe_open(ref[name], framework="pt") as a, safe_open(other[name], framework="pt") as b:
            x, y = a.get_tensor(name), b.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape:
            bad.append(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            continue
        ne = x != y
        total += x.numel()
        if ne.any():
            diff_elems += int(ne.sum())
            max_abs = max(max_abs, (x.float() - y.float()).abs().max().item())
    print(f"compare {os.path.basename(other_dir)} vs {os.path.basename(ref_dir)}: "
          f"{len(ref)} tensors, {len(bad)} dtype/shape mismatches, "
          f"{diff_elems}/{total} elements differ (max abs diff {max_abs:.3g})")
    for line in bad[:10]:
        print("  " + line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
