#!/usr/bin/env python3
"""Writes the three tiny checkpoints in this folder (standard library only).

A BERT-shaped toy model: a shared "pretrained" initialisation plus a small,
different fine-tuning delta per run, in bf16 and f32, with an int64
position_ids buffer. run-c is sharded (two files and an index) to show that
ingredients may be laid out differently. Deterministic: rerunning rewrites the
same bytes.
"""

import json
import random
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {
    "embeddings.word_embeddings.weight": ([64, 16], "BF16"),
    "embeddings.position_ids": ([1, 8], "I64"),
    "encoder.layer.0.attention.weight": ([16, 16], "BF16"),
    "encoder.layer.0.attention.bias": ([16], "F32"),
    "encoder.layer.0.output.LayerNorm.weight": ([16], "F32"),
    "classifier.weight": ([2, 16], "F32"),
    "classifier.bias": ([2], "F32"),
}


def bf16(x):
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits += 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
    return struct.pack("<H", bits >> 16)


def encode(name, dtype, values):
    if dtype == "I64":
        return b"".join(struct.pack("<q", int(v)) for v in values)
    if dtype == "F32":
        return b"".join(struct.pack("<f", v) for v in values)
    return b"".join(bf16(v) for v in values)


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, (shape, dtype, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + b"".join(blobs))


def main():
    base_rng = random.Random(0)
    base = {}
    for name, (shape, dtype) in SHAPES.items():
        n = 1
        for d in shape:
            n *= d
        if dtype == "I64":
            base[name] = list(range(n))
        elif name.endswith("LayerNorm.weight"):
            base[name] = [1.0] * n
        else:
            base[name] = [base_rng.gauss(0, 0.05) for _ in range(n)]
    for run, seed in (("run-a", 1), ("run-b", 2), ("run-c", 3)):
        rng, out = random.Random(seed), HERE / run
        out.mkdir(exist_ok=True)
        tensors = {}
        for name, (shape, dtype) in SHAPES.items():
            values = base[name] if dtype == "I64" else [v + rng.gauss(0, 0.01) for v in base[name]]
            tensors[name] = (shape, dtype, encode(name, dtype, values))
        config = {"model_type": "bert", "hidden_size": 16, "num_labels": 2, "fine_tune_seed": seed}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "tokenizer_config.json").write_text('{"model_max_length": 8}\n')
        if run != "run-c":
            write_safetensors(out / "model.safetensors", tensors)
            continue
        names = list(tensors)
        parts = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
        for file, part in parts.items():
            write_safetensors(out / file, {n: tensors[n] for n in part})
        index = {
            "metadata": {"total_size": sum(len(t[2]) for t in tensors.values())},
            "weight_map": {n: f for f, part in parts.items() for n in part},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
