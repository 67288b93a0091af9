#!/usr/bin/env python3
"""Writes the LoRA benchmark's models: a Llama-like bf16 base, NFULL full
fine-tunes of it (the base plus small noise, same layout), and NADAPT LoRA
adapters (peft's layout: f32 lora_A/lora_B of rank R on every linear layer of
every block, adapter_config.json naming the base by its absolute path).

Usage: make_lora.py DIR [--hidden 2048] [--inter 5632] [--layers 6] [--vocab 32000]
                        [--rank 16] [--adapters 4] [--full 4]
numpy, safetensors and ml_dtypes only. Skips work when DIR/.complete matches.
"""
import argparse
import json
import os
import zlib

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--hidden", type=int, default=2048)
p.add_argument("--inter", type=int, default=5632)
p.add_argument("--layers", type=int, default=6)
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--adapters", type=int, default=4)
p.add_argument("--full", type=int, default=4)
args = p.parse_args()
stamp = json.dumps(vars(args), sort_keys=True)
done = os.path.join(args.dir, ".complete")
if os.path.exists(done) and open(done).read() == stamp:
    raise SystemExit(0)
os.makedirs(args.dir, exist_ok=True)
rng = np.random.default_rng(0)
h, f = args.hidden, args.inter
linear = {
    "self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
    "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h),
    "mlp.down_proj": (h, f),
}


def layout():
    yield "model.embed_tokens.weight", (args.vocab, h)
    for i in range(args.layers):
        yield f"model.layers.{i}.input_layernorm.weight", (h,)
        for name, shape in linear.items():
            yield f"model.layers.{i}.{name}.weight", shape
        yield f"model.layers.{i}.post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (args.vocab, h)


def bf16(x):
    return x.astype(np.float32).astype(ml_dtypes.bfloat16)


def write_model(path, noise):
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for name, shape in layout():
        base = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape, dtype=np.float32) * 0.02
        if noise:
            base += rng.standard_normal(shape, dtype=np.float32) * 0.002
        tensors[name] = bf16(base)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump({"model_type": "llama", "torch_dtype": "bfloat16"}, fh)


write_model(os.path.join(args.dir, "base"), False)
for k in range(args.full):
    write_model(os.path.join(args.dir, f"full{k}"), True)
base_abs = os.path.abspath(os.path.join(args.dir, "base"))
for k in range(args.adapters):
    path = os.path.join(args.dir, f"lora{k}")
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for i in range(args.layers):
        for name, (out, inp) in linear.items():
            prefix = f"base_model.model.model.layers.{i}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((args.rank, inp), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((out, args.rank), dtype=np.float32) * 0.01
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "r": args.rank, "lora_alpha": 2 * args.rank,
        "target_modules": [n.split(".")[1] for n in linear], "fan_in_fan_out": False,
        "use_rslora": False, "base_model_name_or_path": base_abs,
    }
    with open(os.path.join(path, "adapter_config.json"), "w") as fh:
        json.dump(config, fh)
with open(done, "w") as fh:
    fh.write(stamp)
