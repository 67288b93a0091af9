#!/usr/bin/env python3
"""Write one synthetic Llama-like state dict with torch.save (a pytorch_model.bin).

Names and shapes come from benches/e2e/make_checkpoints.py (pick_config,
tensor_specs), with the number of layers solved so the file is about --size-gb
(1e9 bytes) in --dtype. Values: a shared random "base" (std 0.02, norms ~1)
drawn per tensor from --seed, plus, with --variant J > 0, per-ingredient noise
of 0.1 x the base std, so variants look like fine-tunes of one model.

--transposed saves every 2-D weight except the embedding as `p.t()`, where
p = w.t().contiguous(): the saved tensor has the same shape and values as in
the contiguous file, but it is a non-contiguous view (strides (1, rows)) of
its storage, as when a model keeps Conv1D-style (in, out) parameters and its
state dict hands out transposed views. Converting both files must therefore
give identical outputs.

Writes OUT/pytorch_model.bin and OUT/.complete (JSON: the arguments, tensor
bytes and strided bytes); when it exists with the same arguments, nothing is
written again.
Memory: the whole state dict (about --size-gb) plus one tensor.

Example: python make_torch_checkpoint.py target/torch-bench/bf16-1g --dtype bf16 --size-gb 1
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from make_checkpoints import pick_config, tensor_specs  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory (pytorch_model.bin is written in it)")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--size-gb", type=float, default=1.0, help="target file size, 1e9 bytes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shared base values")
    ap.add_argument("--variant", type=int, default=0, help="0: the base; J>0: base + noise J")
    ap.add_argument("--transposed", action="store_true",
                    help="save 2-D weights (not the embedding) as transposed views")
    args = ap.parse_args()
    stamp = os.path.join(args.out, ".complete")
    try:
        with open(stamp) as f:
            if json.load(f)["args"] == vars(args):
                print(f"{args.out}: up to date", file=sys.stderr)
                return
    except (OSError, ValueError, KeyError):
        pass

    dtype, esize = DTYPES[args.dtype], torch.finfo(DTYPES[args.dtype]).bits // 8
    # pick_config sizes in bf16 bytes; ask for the same element count.
    cfg = pick_config(args.size_gb * 2 / esize)
    specs = tensor_specs(cfg)
    t0, sd, strided = time.time(), {}, 0
    for i, (name, shape, kind) in enumerate(specs):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        x = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        if kind == "norm":
            x += 1.0
        if args.variant:
            gv = torch.Generator().manual_seed((args.seed + 7919 * args.variant) * 1_000_003 + i)
            x += torch.randn(shape, generator=gv, dtype=torch.float32) * 0.002
        w = x.to(dtype)
        del x
        if args.transposed and len(shape) == 2 and name != "model.embed_tokens.weight":
            w = w.t().contiguous().t()  # same values, a transposed view of its storage
            assert not w.is_contiguous()
            strided += w.numel() * esize
        sd[name] = w
    total = sum(t.numel() * esize for t in sd.values())
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "pytorch_model.bin")
    torch.save(sd, path)
    with open(stamp, "w") as f:
        json.dump({"args": vars(args), "tensors": len(sd), "tensor_bytes": total,
                   "strided_bytes": strided, "file_bytes": os.path.getsize(path)}, f)
    print(f"{path}: {len(sd)} tensors, {cfg['num_hidden_layers']} layers, "
          f"{total / 1e6:.0f} MB of {args.dtype} ({strided / 1e6:.0f} MB strided), "
          f"file {os.path.getsize(path) / 1e6:.0f} MB, {time.time() - t0:.1f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
