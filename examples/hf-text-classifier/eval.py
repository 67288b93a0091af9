#!/usr/bin/env python3
"""Evaluator for `soup greedy|pruned|learned --eval`: accuracy of a Hugging Face
sequence classifier on one split of a `datasets` dataset.

Called as:
    python eval.py {model} --dataset glue --config sst2 --split validation

Prints progress on stderr and, as its last line on stdout, the score as JSON:
    {"score": 0.9123, "loss": 0.231, "n": 872}
(docs/EVALUATOR.md: the last non-empty stdout line; higher is better). Any failure
exits non-zero, which soup records as a failed evaluation.
"""

import argparse
import json
import sys

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="candidate directory (soup passes {model})")
    parser.add_argument("--dataset", default="glue")
    parser.add_argument("--config", default="sst2")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--text", nargs="+", default=["sentence"],
                        help="text column(s); two for sentence pairs")
    parser.add_argument("--label", default="label")
    parser.add_argument("--shuffle-seed", type=int, default=None,
                        help="shuffle the split with this seed before --range")
    parser.add_argument("--range", default="",
                        help="START:STOP, the examples to use (after shuffling)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # A soup directory holds config.json and the tokenizer files copied from the
    # first ingredient, so it loads like any checkpoint.
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).to(device).eval()

    data = load_dataset(args.dataset, args.config, split=args.split)
    if args.shuffle_seed is not None:
        data = data.shuffle(seed=args.shuffle_seed)
    if args.range:
        start, _, stop = args.range.partition(":")
        data = data.select(range(*slice(int(start or 0), int(stop or len(data))).indices(len(data))))

    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for start in range(0, len(data), args.batch_size):
            batch = data[start:start + args.batch_size]
            texts = [batch[column] for column in args.text]
            encoded = tokenizer(*texts, truncation=True, max_length=args.max_length,
                                padding=True, return_tensors="pt").to(device)
            labels = torch.tensor(batch[args.label], device=device)
            logits = model(**encoded).logits
            loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            total += len(labels)
            print(f"{total}/{len(data)}", file=sys.stderr, flush=True)

    if total == 0:
        print("no examples to evaluate", file=sys.stderr)
        return 1
    print(json.dumps({"score": correct / total, "loss": loss_sum / total, "n": total}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
