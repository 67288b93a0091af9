#!/usr/bin/env python3
"""Generate k synthetic Llama-like bf16 checkpoints in Hugging Face layout.

Each ingredient dir gets config.json, 3 safetensors shards
(model-0000N-of-00003.safetensors) and model.safetensors.index.json.
Values are a shared random "base" plus small per-ingredient noise, so the
ingredients look like fine-tunes of one model.

Memory stays bounded regardless of --size-gb: tensors are produced in row
chunks (a few tens of MB) and written straight into all k ingredients' shard
files in lockstep, with the safetensors headers written by hand up front
(bf16 = upper 16 bits of float32, round-to-nearest-even; numpy has no bf16).

Only numpy is needed to generate; --verify re-opens every shard with the
official `safetensors.safe_open(..., framework="pt")` (needs torch) and
checks dtypes/shapes and a few values.

Example: python make_checkpoints.py target/e2e-data --size-gb 0.75 -k 4
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

CHUNK_ELEMS = 8 << 20  # elements generated per step (32 MB of float32)


def pick_config(size_gb, layers=None):
    """A plausible LlamaConfig whose bf16 weights are ~size_gb * 1e9 bytes.

    A shape family is chosen by size, then num_hidden_layers is solved for.
    """
    if size_gb < 2.5:  # ~TinyLlama-ish widths
        h, inter, heads, kv = 1024, 2816, 16, 4
    elif size_gb < 6:  # ~Llama-3.2-3B-ish
        h, inter, heads, kv = 2048, 5632, 16, 4
    else:  # ~Llama-3-8B-ish widths (but vocab 32000)
        h, inter, heads, kv = 4096, 14336, 32, 8
    vocab = 32000
    kv_dim = h // heads * kv
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h
    fixed = 2 * vocab * h + h  # embed_tokens + lm_head + final norm
    if layers is None:
        layers = max(1, round((size_gb * 1e9 / 2 - fixed) / per_layer))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": h // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def tensor_specs(cfg):
    """(name, shape, kind) in HF order; kind 'norm' tensors are ~1.0."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv_dim = cfg["head_dim"] * cfg["num_key_value_heads"]
    specs = [("model.embed_tokens.weight", (v, h), "w")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", (h, h), "w"),
            (p + "self_attn.k_proj.weight", (kv_dim, h), "w"),
            (p + "self_attn.v_proj.weight", (kv_dim, h), "w"),
            (p + "self_attn.o_proj.weight", (h, h), "w"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", (inter, h), "w"),
            (p + "mlp.up_proj.weight", (inter, h), "w"),
            (p + "mlp.down_proj.weight", (h, inter), "w"),
        ]
    specs += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (v, h), "w")]
    return specs


def split_shards(specs, n_shards):
    """Contiguous split into n_shards of roughly equal bytes (by the byte
    midpoint of each tensor, like HF's max_shard_size splitting in spirit)."""
    total = sum(2 * int(np.prod(s)) for _, s, _ in specs)
    shards, acc = [[] for _ in range(n_shards)], 0
    for spec in specs:
        n = 2 * int(np.prod(spec[1]))
        shards[min(n_shards - 1, (2 * acc + n) * n_shards // (2 * total))].append(spec)
        acc += n
    assert all(shards), "too few tensors for the number of shards"
    return shards, total


def header_bytes(shard_specs):
    """safetensors header: u64 LE length + JSON padded with spaces to 8 bytes."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in shard_specs:
        n = 2 * int(np.prod(shape))
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js


def to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns (round to nearest even)."""
    b = x.view(np.uint32)
    b += 0x7FFF + ((b >> 16) & 1)  # in place; finite inputs only
    return (b >> 16).astype(np.uint16)


def generate(args):
    cfg = pick_config(args.size_gb, args.layers)
    specs = tensor_specs(cfg)
    shards, total = split_shards(specs, args.shards)
    names = [f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors" for i in range(args.shards)]
    dirs = [os.path.join(args.out, f"ingredient-{j}") for j in range(args.k)]
    weight_map = {n: names[i] for i, sh in enumerate(shards) for n, _, _ in sh}
    print(f"config: hidden={cfg['hidden_size']} inter={cfg['intermediate_size']} "
          f"layers={cfg['num_hidden_layers']} tensors={len(specs)} "
          f"size/ingredient={total / 1e6:.1f} MB x k={args.k}", file=sys.stderr)

    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)

    base_rng = np.random.default_rng([args.seed, 0])
    rngs = [np.random.default_rng([args.seed, j + 1]) for j in range(args.k)]
    t0, done = time.time(), 0
    for si, shard_specs in enumerate(shards):
        hdr = header_bytes(shard_specs)
        files = [open(os.path.join(d, names[si]), "wb") for d in dirs]
        for f in files:
            f.write(hdr)
        for _name, shape, kind in shard_specs:
            n = int(np.prod(shape))
            for start in range(0, n, CHUNK_ELEMS):
                m = min(CHUNK_ELEMS, n - start)
                base = base_rng.standard_normal(m, dtype=np.float32)
                base *= 0.02
                if kind == "norm":
                    base += 1.0
                for rng, f in zip(rngs, files, strict=True):
                    x = rng.standard_normal(m, dtype=np.float32)
                    x *= 0.02 * args.noise
                    x += base
                    f.write(to_bf16_bits(x).tobytes())
            done += 2 * n
        for f in files:
            f.close()
        print(f"  shard {si + 1}/{args.shards} written "
              f"({done / 1e6:.0f}/{total / 1e6:.0f} MB per ingredient, "
              f"{time.time() - t0:.1f}s)", file=sys.stderr)
    return dirs, names


def verify(dirs, names):
    """Re-open every shard with the official safetensors (torch framework)."""
    import torch
    from safetensors import safe_open

    for d in dirs:
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            index = json.load(f)
        seen, nbytes = set(), 0
        for name in names:
            with safe_open(os.path.join(d, name), framework="pt") as f:
                keys = list(f.keys())
                seen.update(keys)
                for k in keys:  # slicing only reads headers; cheap
                    sl = f.get_slice(k)
                    assert sl.get_dtype() == "BF16", (k, sl.get_dtype())
                    nbytes += 2 * int(np.prod(sl.get_shape()))
                t = f.get_tensor(keys[-1])  # materialize one tensor per shard
                assert t.dtype == torch.bfloat16 and torch.isfinite(t).all()
        assert seen == set(index["weight_map"]), d
        assert nbytes == index["metadata"]["total_size"], d
        norm_shard = os.path.join(d, index["weight_map"]["model.norm.weight"])
        w = safe_open(norm_shard, framework="pt").get_tensor("model.norm.weight")
        assert abs(w.float().mean().item() - 1.0) < 0.01, "norm weights should be ~1"
    print(f"verify: {len(dirs)} ingredients OK (safetensors safe_open, framework=pt)",
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory (ingredient-0..k-1 are created in it)")
    ap.add_argument("-k", type=int, default=4, help="number of ingredients (default 4)")
    ap.add_argument("--size-gb", type=float, default=0.75,
                    help="target bf16 size per ingredient in GB (1e9 bytes; default 0.75)")
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--shards", type=int, default=3, help="shards per ingredient (default 3)")
    ap.add_argument("--noise", type=float, default=0.1,
                    help="per-ingredient noise std relative to the base std (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true",
                    help="re-open the result with safetensors.safe_open(framework='pt')")
    args = ap.parse_args()

    t0 = time.time()
    dirs, names = generate(args)
    print(f"generated {args.k} ingredients in {time.time() - t0:.1f}s -> {args.out}",
          file=sys.stderr)
    if args.verify:
        verify(dirs, names)
    # Completion stamp: run.sh regenerates when this is missing or differs.
    with open(os.path.join(args.out, ".complete"), "w") as f:
        f.write(f"k={args.k} size_gb={args.size_gb} layers={args.layers} "
                f"shards={args.shards} noise={args.noise} seed={args.seed}\n")


if __name__ == "__main__":
    main()
