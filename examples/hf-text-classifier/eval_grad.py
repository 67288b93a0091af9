#!/usr/bin/env python3
"""Gradient evaluator for `soup learned --gradient`: the cross-entropy loss of a
Hugging Face sequence classifier on one split of a `datasets` dataset, with the
loss's gradient with respect to every weight of the candidate.

Called as:
    python eval_grad.py {model} --grad {grad} --dataset glue --config sst2 --split validation

The loss is the mean cross-entropy of beta * logits over the examples (beta is
the logit temperature: $SOUP_TEMPERATURE when soup learns it with
--temperature, else 1). Prints progress on stderr and, as its last line on
stdout, {"score": loss, "accuracy": ..., "n": ...} (plus "grad_temperature",
d loss / d beta, when soup learns beta). When a gradient is asked for (--grad
PATH not empty, or $SOUP_GRAD), one backward pass (torch autograd, batch by
batch, gradients summed) gives d loss / d weight for every parameter, written to
PATH as a safetensors file in float32 under the names the candidate's own files
use (docs/EVALUATOR.md, "Gradients"). Any failure exits non-zero, which soup
records as a failed evaluation.

Dropout is off (model.eval()): the loss is the evaluation loss, a deterministic
function of the weights, so soup's gradient check can compare it with central
differences.
"""

import argparse
import json
import os
import sys


def file_names(directory):
    """The tensor names a checkpoint directory's safetensors files hold."""
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    names = set()
    for shard in shards:
        with safe_open(os.path.join(directory, shard), framework="pt") as f:
            names.update(f.keys())
    return names


def select_gradients(parameters, state_names, in_file):
    """The gradients to write, by the name the candidate's files use.

    parameters: (name, tensor) pairs of the model's parameters with a gradient
        (``named_parameters()`` lists a tied parameter once, under one name).
    state_names: (name, tensor) pairs of ``state_dict(keep_vars=True)``, which
        lists every name of a tied parameter (an output head stored on the input
        embedding's weights, say).
    in_file: the names the candidate's safetensors files hold.

    A parameter is written under the first of its names that the files hold
    (its own, else an alias sharing its storage); a parameter the files do not
    hold under any name is left out (soup reads it as a zero gradient) and
    reported on stderr. Returns {name: tensor}.
    """
    aliases = {}
    for name, tensor in state_names:
        aliases.setdefault(tensor.data_ptr(), []).append(name)
    chosen = {}
    for name, tensor in parameters:
        candidates = [name] + [a for a in aliases.get(tensor.data_ptr(), []) if a != name]
        found = next((c for c in candidates if c in in_file), None)
        if found is None:
            print("eval_grad: %s is not in the candidate's files; its gradient is left out" % name,
                  file=sys.stderr)
            continue
        chosen[found] = tensor
    return chosen


def loss_and_gradient(model, tokenizer, data, args, beta, want_gradient):
    """Mean cross-entropy of beta * logits over `data` (a `datasets` split, or
    anything sliced into {column: [values]}), accuracy and count; the
    parameters' .grad and beta.grad hold the gradient when asked for."""
    import torch

    n = len(data)
    correct, loss_sum = 0, 0.0
    device = next(model.parameters()).device
    for start in range(0, n, args.batch_size):
        batch = data[start:start + args.batch_size]
        texts = [batch[column] for column in args.text]
        encoded = tokenizer(*texts, truncation=True, max_length=args.max_length,
                            padding=True, return_tensors="pt").to(device)
        labels = torch.tensor(batch[args.label], device=device)
        with torch.set_grad_enabled(want_gradient):
            logits = model(**encoded).logits.float()
            # Summed here and divided by n: the batches' gradients add up to the
            # gradient of the mean over the whole split.
            loss = torch.nn.functional.cross_entropy(beta * logits, labels, reduction="sum") / n
            if want_gradient:
                loss.backward()
        loss_sum += loss.item()
        correct += (logits.argmax(-1) == labels).sum().item()
        print(f"{min(start + args.batch_size, n)}/{n}", file=sys.stderr, flush=True)
    return loss_sum, correct / n, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="candidate directory (soup passes {model})")
    parser.add_argument("--grad", default=None,
                        help="where to write the gradient (soup passes {grad}; default $SOUP_GRAD)")
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
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    grad_path = args.grad if args.grad is not None else os.environ.get("SOUP_GRAD", "")
    temperature = os.environ.get("SOUP_TEMPERATURE")
    want_gradient = bool(grad_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # float32 whatever the soup's dtype, so the gradient is not rounded to bf16.
    model = AutoModelForSequenceClassification.from_pretrained(args.model).float().to(device).eval()
    model.requires_grad_(want_gradient)
    beta = torch.tensor(float(temperature) if temperature else 1.0, device=device,
                        requires_grad=want_gradient and temperature is not None)

    data = load_dataset(args.dataset, args.config, split=args.split)
    if args.shuffle_seed is not None:
        data = data.shuffle(seed=args.shuffle_seed)
    if args.range:
        start, _, stop = args.range.partition(":")
        data = data.select(range(*slice(int(start or 0), int(stop or len(data))).indices(len(data))))
    if len(data) == 0:
        print("no examples to evaluate", file=sys.stderr)
        return 1

    loss, accuracy, n = loss_and_gradient(model, tokenizer, data, args, beta, want_gradient)
    result = {"score": loss, "accuracy": accuracy, "n": n}
    if want_gradient:
        parameters = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
        chosen = select_gradients(parameters, model.state_dict(keep_vars=True).items(),
                                  file_names(args.model))
        save_file({name: p.grad.detach().float().contiguous().cpu() for name, p in chosen.items()},
                  grad_path)
        if temperature is not None:
            result["grad_temperature"] = beta.grad.item()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
