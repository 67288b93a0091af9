"""Per-candidate wall time and overhead of the two modes, from the journals.

    summarize.py RUN_DIR...    (directories named eval-N.run or server-N.run)

Wall time is the journal's evaluate_seconds (the evaluation alone; writing the
candidate is the same in both modes and reported apart); overhead is wall time
minus the forward passes' own time (the `forward_seconds` metric)."""

import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(lambda: defaultdict(list))
for run_dir in sys.argv[1:]:
    mode = "eval-server" if "/server-" in run_dir else "eval"
    with open(run_dir + "/journal.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if "score" not in r:
                sys.exit("failed evaluation in %s: %s" % (run_dir, r.get("failure")))
            wall, forward = r["evaluate_seconds"], r["metrics"]["forward_seconds"]
            rows[mode]["wall"].append(wall)
            rows[mode]["forward"].append(forward)
            rows[mode]["overhead"].append(wall - forward)
            rows[mode]["write"].append(r["materialise_seconds"])
            rows[mode]["scores"].append(round(r["score"], 9))

med = {m: {k: statistics.median(v) for k, v in d.items() if k != "scores"} for m, d in rows.items()}
print("| mode | candidates | wall s/candidate | forward s | overhead s | writing the candidate s |")
print("|---|---|---|---|---|---|")
for mode in ("eval", "eval-server"):
    m = med[mode]
    print("| --%s | %d | %.3f | %.3f | %.3f | %.3f |" % (
        mode, len(rows[mode]["wall"]), m["wall"], m["forward"], m["overhead"], m["write"]))
ratio = med["eval"]["overhead"] / med["eval-server"]["overhead"]
print("\noverhead ratio (--eval / --eval-server, medians): %.1fx" % ratio)
print("wall ratio: %.1fx" % (med["eval"]["wall"] / med["eval-server"]["wall"]))
same = sorted(rows["eval"]["scores"]) == sorted(rows["eval-server"]["scores"])
print("same scores in both modes: %s" % same)
