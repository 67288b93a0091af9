"""The scoring work shared by both evaluators of the overhead benchmark: a fixed
batch of random token ids and labels, a few forward passes, -loss as the score.
`forward_seconds` is the time spent in the forward passes alone, so that the
benchmark can subtract it from the evaluation's wall time."""

import time

import torch

BATCHES, BATCH, LENGTH = 4, 16, 128


def score(model):
    g = torch.Generator().manual_seed(0)
    total, start = 0.0, time.perf_counter()
    with torch.no_grad():
        for _ in range(BATCHES):
            ids = torch.randint(0, model.config.vocab_size, (BATCH, LENGTH), generator=g)
            labels = torch.randint(0, model.config.num_labels, (BATCH,), generator=g)
            total += model(input_ids=ids, labels=labels).loss.item()
    return {"score": -total / BATCHES, "forward_seconds": time.perf_counter() - start}
