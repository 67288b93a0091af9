#!/usr/bin/env python3
"""The Python baseline for `soup convert`: torch.load + safetensors save_file.

Usage: py_convert.py [--mmap] IN.bin OUT_DIR

What most conversion scripts do (e.g. safetensors' own convert.py):
    sd = torch.load(IN, map_location="cpu", weights_only=True[, mmap=True])
    sd = {k: v.contiguous() for k, v in sd.items()}   # save_file refuses views
    save_file(sd, OUT/model.safetensors, metadata={"format": "pt"})
Without --mmap, torch.load reads every storage into RAM first; with it, the
storages are file-backed (torch >= 2.1). Either way save_file serializes from
memory. Shared storages (tied weights) are not handled; the benchmark has none.
"""
import argparse
import os

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmap", action="store_true", help="torch.load(..., mmap=True)")
    ap.add_argument("input")
    ap.add_argument("out")
    args = ap.parse_args()
    sd = torch.load(args.input, map_location="cpu", weights_only=True, mmap=args.mmap)
    sd = {k: v.contiguous() for k, v in sd.items()}
    os.makedirs(args.out, exist_ok=True)
    save_file(sd, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
