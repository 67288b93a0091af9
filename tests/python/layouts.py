#!/usr/bin/env python3
"""Real layouts end to end: BERT, T5 (tied and untied embeddings) and CLIP made by
`transformers` from small configs of the standard architectures with random
weights, three "fine-tunes" of each (one pretrained model plus seeded noise)
written by `save_pretrained` as safetensors, sharded safetensors and sharded
pytorch_model.bin; `soup merge` of the three; the soup loaded back with the
family's `from_pretrained`, which must find every weight (no missing or
unexpected keys), and compared with a reference soup computed in torch in
float64 (the mean of the three state dicts, loaded into a float64 model):

- every weight within 1 ulp of f32 of the f64 mean (the soup rounds
  Σ ⅓·θᵢ, computed in f64, once);
- the model's outputs on fixed inputs within rtol 1e-5, atol 1e-6 of the
  reference model's (the soup model run in float64, so the only difference is
  the weights' rounding to f32);
- `soup merge --dtype bf16`: config.json's dtype says bfloat16 and
  `from_pretrained(torch_dtype="auto")` loads bfloat16 weights.

Usage: layouts.py --soup PATH/TO/soup [--work DIR]
Needs torch and transformers (.ci/layouts provisions them). Exit status 0 when
every check passes; each failure is printed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    T5Config,
    T5ForConditionalGeneration,
)

FAILURES = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def families():
    bert = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )
    t5 = dict(
        vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
    )
    clip = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=30, patch_size=6),
        projection_dim=16,
    )
    ids = torch.tensor([[5, 17, 42, 8, 3, 61, 2]])

    def bert_out(model):
        return model(input_ids=ids).last_hidden_state

    def t5_out(model):
        return model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits

    pixels = torch.linspace(-1, 1, 3 * 30 * 30, dtype=torch.float64).reshape(1, 3, 30, 30)

    def clip_out(model):
        dtype = next(model.parameters()).dtype
        out = model(input_ids=ids, pixel_values=pixels.to(dtype))
        return torch.cat([out.logits_per_image.flatten(), out.image_embeds.flatten()])

    return [
        ("bert", BertModel, bert, bert_out),
        ("t5-tied", T5ForConditionalGeneration, T5Config(tie_word_embeddings=True, **t5), t5_out),
        ("t5-untied", T5ForConditionalGeneration, T5Config(tie_word_embeddings=False, **t5), t5_out),
        ("clip", CLIPModel, clip, clip_out),
    ]


def soup(binary, args):
    run = subprocess.run([binary, *args], capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
    return run.returncode == 0


def one_family(binary, work, name, cls, config, outputs):
    torch.manual_seed(0)
    pretrained = cls(config).eval()
    dirs, states = [], []
    for seed, how in zip((1, 2, 3), ("safetensors", "sharded-safetensors", "sharded-bin")):
        model = cls(config).eval()
        model.load_state_dict(pretrained.state_dict())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        d = os.path.join(work, f"{name}-{seed}")
        kwargs = {}
        if how != "safetensors":
            kwargs["max_shard_size"] = "20KB"
        if how == "sharded-bin":
            kwargs["safe_serialization"] = False
        model.save_pretrained(d, **kwargs)
        dirs.append(d)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    out = os.path.join(work, f"{name}-soup")
    check(soup(binary, ["merge", *dirs, "-o", out, "--quiet"]), f"{name}: soup merge of safetensors, sharded safetensors and sharded .bin")
    loaded, info = cls.from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    check(not problems, f"{name}: from_pretrained finds every weight {problems or ''}")

    mean = {k: sum(s[k].double() for s in states) / 3 for k in states[0]}
    worst = 0.0
    for k, v in loaded.state_dict().items():
        ref = mean[k]
        ulp = torch.finfo(torch.float32).eps * ref.abs().clamp(min=torch.finfo(torch.float32).tiny)
        worst = max(worst, ((v.double() - ref).abs() / ulp).max().item())
    check(worst <= 1.0, f"{name}: every weight within 1 ulp of the f64 mean (worst {worst:.2f} ulp)")

    reference = cls(config).eval().double()
    reference.load_state_dict(mean)
    with torch.no_grad():
        want = outputs(reference)
        got = outputs(loaded.double())
    diff = (got - want).abs().max().item()
    check(torch.allclose(got, want, rtol=1e-5, atol=1e-6), f"{name}: outputs match the f64 reference soup (max abs diff {diff:.2e})")

    out16 = os.path.join(work, f"{name}-soup-bf16")
    soup(binary, ["merge", *dirs, "-o", out16, "--dtype", "bf16", "--quiet"])
    with open(os.path.join(out16, "config.json")) as f:
        cfg = json.load(f)
    said = cfg.get("torch_dtype", cfg.get("dtype"))
    check(said == "bfloat16", f"{name}: config.json of a bf16 soup says {said}")
    auto = cls.from_pretrained(out16, torch_dtype="auto")
    check(next(auto.parameters()).dtype == torch.bfloat16, f"{name}: from_pretrained(torch_dtype='auto') loads bf16")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--soup", required=True)
    p.add_argument("--work")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="soup-layouts-")
    os.makedirs(work, exist_ok=True)
    try:
        for family in families():
            one_family(os.path.abspath(args.soup), work, *family)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(FAILURES)} failed" if FAILURES else "all layout checks passed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
