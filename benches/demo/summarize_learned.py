"""Summarise benches/demo/learned.sh: accuracy of learned soups by CMA-ES and by
gradient at each budget, mean ± sd over the seeds, with the evaluations each
made and the val loss the gradient search reached.

    python3 benches/demo/summarize_learned.py WORK SEED...
"""
import json
import os
import statistics
import sys

work, seeds = sys.argv[1], sys.argv[2:]
SHIFTS = ["heavy-style", "style-offset", "noise", "faint"]
scores = {}  # (seed, method, budget) -> {split: accuracy}
for seed in seeds:
    with open(os.path.join(work, f"seed-{seed}", "scores.tsv")) as f:
        for line in f:
            method, budget, split, result = line.rstrip("\n").split("\t")
            scores.setdefault((seed, method, int(budget)), {})[split] = json.loads(result)["score"]
budgets = sorted({b for (_, _, b) in scores})


def cell(values, scale=100.0, digits=1):
    values = [scale * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def report(seed, method, budget):
    with open(os.path.join(work, f"seed-{seed}", f"learned-{method}-{budget}.json")) as f:
        return json.load(f)


print(f"Seeds {', '.join(seeds)}; accuracy in %, mean ± sample standard deviation over the seeds.\n")
print("| learned evaluations | method | val | ID test | avg shift | evaluations | best individual on val beaten |")
print("|---|---|---:|---:|---:|---:|---|")
names = {"cma": "CMA-ES (val accuracy)", "grad": "gradient (val loss)"}
for budget in budgets:
    for method in ["cma", "grad"]:
        runs = [scores[(s, method, budget)] for s in seeds]
        val = [r["val"] for r in runs]
        test = [r["test"] for r in runs]
        shift = [sum(r[n] for n in SHIFTS) / len(SHIFTS) for r in runs]
        reports = [report(s, method, budget) for s in seeds]
        counts = {r["evaluations"]["finished"] + r["evaluations"]["reused"] for r in reports}
        demo = [json.load(open(os.path.join(work, f"seed-{s}.json"))) for s in seeds]
        best = [next(row["val"] for row in d["sets"]["fine_tuned"]["rows"] if row["method"] == "best individual") for d in demo]
        beaten = sum(v > b for v, b in zip(val, best))
        print(f"| {budget} | {names[method]} | {cell(val)} | {cell(test)} | {cell(shift)} | "
              f"{'/'.join(map(str, sorted(counts)))} | {beaten} of {len(seeds)} |")
print()
print("Val loss of the learned soup by gradient (mean cross-entropy), against the uniform soup's:\n")
print("| learned evaluations | uniform | learned (gradient) |")
print("|---|---:|---:|")
for budget in budgets:
    reports = [report(s, "grad", budget) for s in seeds]
    uniform = [r["uniform"]["score"] for r in reports]
    learned = [r["score"] for r in reports]
    print(f"| {budget} | {cell(uniform, 1.0, 4)} | {cell(learned, 1.0, 4)} |")
