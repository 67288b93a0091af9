#!/usr/bin/env python3
"""Check converted checkpoints against a reference, tensor by tensor, bit for bit.

Usage: compare.py REF OTHER [OTHER...]

REF and each OTHER is a torch.save file (.bin/.pt/.pth, read with
torch.load(weights_only=True, mmap=True)), a .safetensors file, or a directory
of *.safetensors. For each OTHER prints one line: tensors compared, and how
many differ in name set, dtype, shape or bits (values are compared as raw
integers, so -0.0 vs 0.0 and NaN payloads count). Exit 1 if anything differs.
"""
import glob
import os
import sys

import torch
from safetensors import safe_open

INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class Source:
    """name -> tensor, lazily, for a torch file or safetensors file(s)."""

    def __init__(self, path):
        self.path = path
        if os.path.isfile(path) and not path.endswith(".safetensors"):
            self.torch = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            self.files = {}
        else:
            files = [path] if os.path.isfile(path) else sorted(
                glob.glob(os.path.join(path, "*.safetensors")))
            if not files:
                sys.exit(f"compare: no safetensors in {path}")
            self.torch, self.files = None, {}
            for f in files:
                with safe_open(f, framework="pt") as st:
                    self.files.update(dict.fromkeys(st.keys(), f))

    def keys(self):
        return set(self.torch) if self.torch is not None else set(self.files)

    def get(self, name):
        if self.torch is not None:
            return self.torch[name]
        with safe_open(self.files[name], framework="pt") as st:
            return st.get_tensor(name)


def bits(t):
    t = t.contiguous()
    return t.view(INT[t.element_size()])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ref = Source(sys.argv[1])
    failed = False
    for other_path in sys.argv[2:]:
        other = Source(other_path)
        names = ref.keys() & other.keys()
        missing = len(ref.keys() ^ other.keys())
        bad_meta = bad_bits = elems = 0
        for name in sorted(names):
            a, b = ref.get(name), other.get(name)
            if a.dtype != b.dtype or a.shape != b.shape:
                bad_meta += 1
                continue
            elems += a.numel()
            if not torch.equal(bits(a), bits(b)):
                bad_bits += 1
        ok = not (missing or bad_meta or bad_bits)
        failed |= not ok
        print(f"compare {other_path} vs {sys.argv[1]}: {len(names)} tensors, {elems} elements; "
              f"{missing} names not in both, {bad_meta} dtype/shape mismatches, "
              f"{bad_bits} tensors with different bits -> {'IDENTICAL' if ok else 'DIFFERENT'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
