#!/usr/bin/env python3
"""Evaluation server for `soup greedy|pruned|learned --eval-server`: the same
accuracy as eval.py, but the model, tokenizer and data are loaded once, and each
candidate only has its weights loaded (load_state_dict from its safetensors).

Called as:
    soup greedy runs/*/ -o soup/ --eval-server \
        'exec python examples/hf-text-classifier/serve.py runs/lr2e-5-seed0 --dataset glue --config sst2 --split validation'

The first argument is any one of the ingredients (or the pretrained model with the
same head): it gives the architecture, config and tokenizer. Requests come on
stdin and replies go to stdout through modelsoup.server.serve (docs/EVALUATOR.md,
"Evaluation servers"); progress goes to stderr, which soup keeps in its logs.
With --devices, soup sets CUDA_VISIBLE_DEVICES for each server, so "cuda" is the
slot's own GPU.
"""

import argparse
import json
import os
import sys

import torch
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from modelsoup.server import serve


def candidate_state(directory):
    """Every tensor of a candidate: model.safetensors, or the shards of its index."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(directory, shard)))
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="an ingredient: architecture, config, tokenizer")
    parser.add_argument("--dataset", default="glue")
    parser.add_argument("--config", default="sst2")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--text", nargs="+", default=["sentence"])
    parser.add_argument("--label", default="label")
    parser.add_argument("--shuffle-seed", type=int, default=None)
    parser.add_argument("--range", default="")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.reference)
    model = AutoModelForSequenceClassification.from_pretrained(args.reference).to(device).eval()
    data = load_dataset(args.dataset, args.config, split=args.split)
    if args.shuffle_seed is not None:
        data = data.shuffle(seed=args.shuffle_seed)
    if args.range:
        start, _, stop = args.range.partition(":")
        data = data.select(range(*slice(int(start or 0), int(stop or len(data))).indices(len(data))))
    # Tokenised once: every candidate sees the same batches.
    batches = []
    for start in range(0, len(data), args.batch_size):
        batch = data[start:start + args.batch_size]
        texts = [batch[column] for column in args.text]
        encoded = tokenizer(*texts, truncation=True, max_length=args.max_length,
                            padding=True, return_tensors="pt")
        batches.append((encoded, torch.tensor(batch[args.label])))
    if not batches:
        print("no examples to evaluate", file=sys.stderr)
        return 1

    def score(request):
        # strict=False: a checkpoint may leave out tied weights the model rebuilds.
        missing, unexpected = model.load_state_dict(candidate_state(request.model), strict=False)
        if unexpected:
            raise ValueError("tensors the model does not have: %s" % unexpected[:5])
        correct, total, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for encoded, labels in batches:
                encoded, labels = encoded.to(device), labels.to(device)
                logits = model(**encoded).logits
                loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                correct += (logits.argmax(-1) == labels).sum().item()
                total += len(labels)
        print(f"{request.candidate}: {correct}/{total}", file=sys.stderr, flush=True)
        return {"score": correct / total, "loss": loss_sum / total, "n": total}

    serve(score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
