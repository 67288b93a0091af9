#!/usr/bin/env python3
"""Compare two merged checkpoints (dirs of *.safetensors) tensor by tensor.

Usage: compare_outputs.py REF_DIR OTHER_DIR

Prints one line: tensor count, dtype mismatches, and how many elements
differ (and by at most how much, in float32). Exit 1 if names, shapes or
dtypes differ; differing values alone are reported, not fatal (bf16
rounding order may legitimately differ between tools).

Uses torch when it is installed; without it (the venv of a soup-vs-soup run has
only numpy and safetensors) the files are read with numpy, bf16 as its bits.
"""
import glob
import json
import os
import struct
import sys

import numpy as np

try:
    import torch  # noqa: F401
    from safetensors import safe_open
except ImportError:
    safe_open = None

NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
         "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class _Tensor:
    """A tensor read with numpy: bf16 widened to float32 exactly."""

    def __init__(self, dtype, shape, raw):
        self.dtype, self.shape = dtype, tuple(shape)
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            self.values = bits.view(np.float32)
        else:
            self.values = np.frombuffer(raw, dtype=NUMPY[dtype])

    def numel(self):
        return self.values.size


class _File:
    """Enough of safe_open for this script, without torch."""

    def __init__(self, path, framework=None):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.header = {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}
        self.start = 8 + n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return list(self.header)

    def get_tensor(self, name):
        entry = self.header[name]
        begin, end = entry["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.start + begin)
            return _Tensor(entry["dtype"], entry["shape"], f.read(end - begin))


if safe_open is None:
    safe_open = _File


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
        total += x.numel()
        if isinstance(x, _Tensor):
            a, b = x.values.astype(np.float64), y.values.astype(np.float64)
            ne = (x.values != y.values) & ~(np.isnan(a) & np.isnan(b))
            if ne.any():
                diff_elems += int(ne.sum())
                max_abs = max(max_abs, float(np.abs(a[ne] - b[ne]).max()))
            continue
        ne = x != y
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
