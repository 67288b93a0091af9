#!/usr/bin/env python3
"""Naive uniform soup: the "Python reference code" baseline.

Loads every shard of every ingredient fully into RAM with the official
`safetensors.torch.load_file`, then computes the per-tensor mean in float32, casts it to
bfloat16 and writes one `model.safetensors` (plus config.json) to OUT.
Peak RAM is roughly (k + 1) x checkpoint size, which is the point: this is
what the straightforward approach costs.

Note: since safetensors 0.8, load_file defaults to backend="mmap", where
tensors are lazily backed by the (page-cached) file; we pass
backend="pread" so every byte is really read into process-owned memory, as
older safetensors / torch.load-based reference code does. --mmap switches
to the lazy default (same VmRSS once touched, but much lower RssAnon).

Usage: naive_average.py -o OUT [--force] INGREDIENT_DIR [INGREDIENT_DIR ...]
"""
import argparse
import glob
import os
import shutil
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def load_all(d, backend):
    """Every *.safetensors file in d, merged into one state dict."""
    files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
    if not files:
        sys.exit(f"naive_average: no .safetensors files in {d}")
    sd = {}
    for f in files:
        sd.update(load_file(f, backend=backend))
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ingredients", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--mmap", action="store_true",
                    help="use safetensors' lazy mmap backend instead of reading into RAM")
    args = ap.parse_args()
    if os.path.exists(args.out):
        if not args.force:
            sys.exit(f"naive_average: {args.out} exists (use --force)")
        shutil.rmtree(args.out)

    t0 = time.time()
    backend = "mmap" if args.mmap else "pread"
    sds = [load_all(d, backend) for d in args.ingredients]  # everything in RAM at once
    t_load = time.time() - t0
    keys = sds[0].keys()
    for d, sd in zip(args.ingredients[1:], sds[1:], strict=True):
        if sd.keys() != keys:
            sys.exit(f"naive_average: tensor names of {d} differ from the first ingredient")

    soup = {}
    for k in keys:
        acc = sds[0][k].float()
        for sd in sds[1:]:
            acc += sd[k].float()
        soup[k] = (acc / len(sds)).to(torch.bfloat16)
    t_mean = time.time() - t0 - t_load

    os.makedirs(args.out)
    save_file(soup, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    cfg = os.path.join(args.ingredients[0], "config.json")
    if os.path.exists(cfg):
        shutil.copy(cfg, args.out)
    print(f"naive_average: {len(sds)} ingredients, {len(soup)} tensors; "
          f"load {t_load:.1f}s, mean {t_mean:.1f}s, "
          f"save {time.time() - t0 - t_load - t_mean:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
