#!/usr/bin/env python3
"""Write a Llama-like bf16 `pytorch_model.bin` in torch.save's zip layout with the
standard library only (no torch): for benches that need large .bin files quickly.

The layout is what torch.save writes: a zip of stored (uncompressed) entries,
`<prefix>/data.pkl` (protocol 2; each tensor a `torch._utils._rebuild_tensor_v2`
of a persistent-id storage), `<prefix>/byteorder`, and one `<prefix>/data/<key>`
entry per storage, its data aligned to 64 bytes. The pickle names torch's
globals without importing torch: stand-in objects carry their module and name.
Values are seeded pseudo-random bf16 numbers (a cheap LCG over the bytes), so
the CRC-32 of each storage is real work.

    python write_bin.py OUT.bin --size-gb 1 [--seed 0] [--transposed]
"""
import argparse
import collections
import io
import os
import pickle
import random
import struct
import sys
import types
import zipfile

PREFIX = "archive"


def stand_in(module, name):
    """An object that pickles as the global `module.name`."""
    mod = sys.modules.setdefault(module, types.ModuleType(module))
    obj = type(name, (), {"__module__": module, "__qualname__": name})
    setattr(mod, name, obj)
    return obj


REBUILD = stand_in("torch._utils", "_rebuild_tensor_v2")
BF16 = stand_in("torch", "BFloat16Storage")


class Tensor:
    def __init__(self, key, shape, transposed=False):
        self.key, self.shape, self.transposed = key, shape, transposed

    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __reduce__(self):
        stride, s = [], 1
        for d in reversed(self.shape):
            stride.insert(0, s)
            s *= d
        if self.transposed:
            # w.t().contiguous().t(): the storage holds the transpose row by row.
            stride = [1, self.shape[0]]
        storage = Storage(self.key, self.numel())
        return (REBUILD, (storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", BF16, obj.key, "cpu", obj.numel)
        return None


def layout(size_gb):
    """Tensor names and shapes of a Llama-like model of about size_gb in bf16."""
    hidden, inter, vocab = 2048, 5632, 32000
    per_block = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    blocks = max(1, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_block))
    out = [("model.embed_tokens.weight", [vocab, hidden])]
    for b in range(blocks):
        p = f"model.layers.{b}."
        out += [(p + f"self_attn.{n}_proj.weight", [hidden, hidden]) for n in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", [inter, hidden]),
                (p + "mlp.up_proj.weight", [inter, hidden]),
                (p + "mlp.down_proj.weight", [hidden, inter]),
                (p + "input_layernorm.weight", [hidden]),
                (p + "post_attention_layernorm.weight", [hidden])]
    out += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
    return out


def values(numel, rng):
    """numel bf16 values: a random block of 65,536 (random signs and mantissas,
    exponents of numbers near 0.01) repeated."""
    words = [(rng.getrandbits(16) & 0x807F) | 0x3C00 for _ in range(1 << 16)]
    block = struct.pack(f"<{len(words)}H", *words)
    n = numel * 2
    return (block * (n // len(block) + 1))[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transposed", action="store_true",
                    help="save every 2-D weight but the embedding as a transposed view")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tensors = layout(args.size_gb)
    dict_ = {
        name: Tensor(str(i), shape, args.transposed and len(shape) == 2 and "embed" not in name)
        for i, (name, shape) in enumerate(tensors)
    }
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(dict_)
    tmp = args.out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{PREFIX}/data.pkl", buf.getvalue())
        z.writestr(f"{PREFIX}/byteorder", b"little")
        for i, (_, shape) in enumerate(tensors):
            numel = Tensor(str(i), shape).numel()
            info = zipfile.ZipInfo(f"{PREFIX}/data/{i}")
            # torch.save aligns each storage's data to 64 bytes with an extra field.
            header = 30 + len(info.filename)
            pad = (-(z.fp.tell() + header + 4)) % 64
            info.extra = struct.pack("<HH", 0xFA4B, pad) + b"Z" * pad
            z.writestr(info, values(numel, rng))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(tensors)} tensors, {os.path.getsize(args.out) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
