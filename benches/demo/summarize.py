"""Summarise `soup demo` runs over seeds (benches/demo/seeds.sh): the tables as
mean ± sd over the seeds, the story's checks per seed, wall time and peak RSS.

    python3 benches/demo/summarize.py WORK SEED...
"""
import json
import os
import re
import statistics
import sys

work, seeds = sys.argv[1], sys.argv[2:]
reports = {s: json.load(open(os.path.join(work, f"seed-{s}", "report.json"))) for s in seeds}


def cell(values):
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


first = reports[seeds[0]]
shifts = first["shifts"]
print(f"Seeds {', '.join(seeds)}; accuracy in %, mean ± sample standard deviation over the seeds.\n")
for key in first["sets"]:
    rows = first["sets"][key]["rows"]
    print(f"**{key.replace('_', '-')}** (chance {100 * first['sets'][key]['chance']:.1f} %)\n")
    print("| method | val | ID test | " + " | ".join(shifts) + " | avg shift | ingredients |")
    print("|---|" + "---:|" * (len(shifts) + 4))
    for i, row in enumerate(rows):
        runs = [reports[s]["sets"][key]["rows"][i] for s in seeds]
        assert all(r["method"] == row["method"] for r in runs)
        cells = [cell([r["val"] for r in runs]), cell([r["test"] for r in runs])]
        cells += [cell([r["shifts"][n] for r in runs]) for n in shifts]
        cells.append(cell([r["avg_shift"] for r in runs]))
        counts = [r["ingredients"] for r in runs]
        cells.append(f"{min(counts)}–{max(counts)}" if min(counts) != max(counts) else str(counts[0]))
        print(f"| {row['method']} | " + " | ".join(cells) + " |")
    print()


def timing(seed):
    text = open(os.path.join(work, f"seed-{seed}.time")).read()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    busy = os.path.exists(os.path.join(work, f"seed-{seed}.busy"))
    return seconds, rss, busy


names = ["greedy ≥ best on val, > on ID test or avg shift", "a soup +0.5 on avg shift",
         "from-scratch uniform within 5 of chance", "init check warns on from-scratch only"]
print("| seed | " + " | ".join(names) + " | greedy takes | wall s | peak RSS MB |")
print("|---|" + "---|" * (len(names) + 3))
held = {s: [c["holds"] for c in reports[s]["checks"]] for s in seeds}
for s in seeds:
    seconds, rss, busy = timing(s)
    greedy = next(r for r in reports[s]["sets"]["fine_tuned"]["rows"] if r["method"] == "greedy")
    marks = ["yes" if h else "**no**" for h in held[s]]
    total = len(reports[s]["sets"]["fine_tuned"]["ingredient_scores"])
    print(f"| {s} | " + " | ".join(marks) + f" | {greedy['ingredients']} of {total} | {seconds:.1f}"
          + (" (busy)" if busy else "") + f" | {rss / 1024:.0f} |")
print()
for i, name in enumerate(names):
    failed = [s for s in seeds if not held[s][i]]
    verdict = "held on every seed" if not failed else f"failed on seed(s) {', '.join(failed)}"
    print(f"- {name}: {verdict} ({len(seeds) - len(failed)} of {len(seeds)})")
for s in seeds:
    for c in reports[s]["checks"]:
        if not c["holds"]:
            print(f"  - seed {s}: {c['claim']}")
