#!/usr/bin/env python3
"""A test evaluator written with modelsoup's helper module, as a user would.

    soup greedy ... --eval 'PYTHON tiny_eval.py TARGET'

Scores the candidate in $SOUP_MODEL (modelsoup.evaluate reads it) by
-||soup - target||^2 over its float tensors in name order, where TARGET holds the
target vector as a JSON list. Reports extra metrics: the distance, the candidate id
(from modelsoup.candidate()) and a NaN metric (which must arrive as null).

Before scoring it prints a progress message without a line break, as a careless
evaluator might: the score must still be read.
"""

import json
import math
import sys

import modelsoup
import support


def main():
    target = json.loads(open(sys.argv[1]).read())
    print("loading the candidate ...", end="", flush=True)

    def score(model_dir):
        soup = support.float_vector(support.read_checkpoint(model_dir))
        if len(soup) != len(target):
            raise ValueError(f"{len(soup)} values in the soup, {len(target)} in the target")
        squared = sum((s - t) ** 2 for s, t in zip(soup, target))
        return {
            "score": -squared,
            "distance": math.sqrt(squared),
            "candidate": modelsoup.candidate().id,
            "undefined": float("nan"),
        }

    modelsoup.evaluate(score, argv=[])


if __name__ == "__main__":
    main()
