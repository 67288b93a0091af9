#!/usr/bin/env python3
"""Markdown tables from benches/methods/run.sh's logs.

Usage: summarize.py LOG_DIR REPS "METHODS" "TOOLS"

Timing: medians over the successful reps of wall time, CPU time and max RSS
(from /usr/bin/time -v) and of the sampled peak RssAnon (peak_mem.py).
Agreement: from <method>.compare.json (compare_methods.py) and
<method>.flags-equal (same_output.py). Stdlib only.
"""
import json
import re
import statistics
import sys
from pathlib import Path


def time_v(path):
    """(wall s, max RSS MB, user+sys CPU s) from /usr/bin/time -v output."""
    txt = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", txt).group(1).strip()
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", txt).group(1))
              for k in ("User", "System"))
    return secs, rss / 1024, cpu


def pct(x, digits=2):
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def main():
    log, reps = Path(sys.argv[1]), int(sys.argv[2])
    methods, tools = sys.argv[3].split(), sys.argv[4].split()
    med = statistics.median

    print("| method | soup wall s | mergekit wall s | mergekit/soup wall | soup wall / soup linear "
          "| soup statistics passes read GB | soup CPU s "
          "| mergekit CPU s | soup max RSS MB | mergekit max RSS MB | soup peak RssAnon MB "
          "| mergekit peak RssAnon MB | runs ok (on a busy machine) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def soup_stats(m):
        """Median statistics-pass bytes of soup's --json summaries."""
        read = []
        for r in range(1, reps + 1):
            out = log / f"{m}.soup.{r}.stdout"
            try:
                read.append(json.loads(out.read_text())["statistics_bytes_read"])
            except (OSError, ValueError, KeyError):
                continue
        return med(read) / 1e9 if read else None

    def soup_wall(m):
        ok = [r for r in range(1, reps + 1) if not (log / f"{m}.soup.{r}.failed").exists()
              and (log / f"{m}.soup.{r}.time").exists()]
        return med(time_v(log / f"{m}.soup.{r}.time")[0] for r in ok) if ok else None

    linear_wall = soup_wall("linear")
    for m in methods:
        res, runs = {}, []
        for t in tools:
            ok = [r for r in range(1, reps + 1) if not (log / f"{m}.{t}.{r}.failed").exists()
                  and (log / f"{m}.{t}.{r}.time").exists()]
            busy = sum((log / f"{m}.{t}.{r}.busy").exists() for r in ok)
            runs.append(f"{t} {len(ok)}/{reps}" + (f" ({busy})" if busy else ""))
            if ok:
                w, rss, cpu = zip(*(time_v(log / f"{m}.{t}.{r}.time") for r in ok))
                anon = [json.loads((log / f"{m}.{t}.{r}.mem.json").read_text())["peak_rssanon_mb"]
                        for r in ok]
                res[t] = (med(w), med(cpu), med(rss), med(anon))
        cell = lambda t, i, f: f.format(res[t][i]) if t in res else "failed"  # noqa: E731
        ratio = (f"**{res['mergekit'][0] / res['soup'][0]:.1f}×**"
                 if "soup" in res and "mergekit" in res else "—")
        to_linear = (f"{res['soup'][0] / linear_wall:.2f}×" if "soup" in res and linear_wall
                     else "—")
        print(f"| {m} | {cell('soup', 0, '{:.2f}')} | {cell('mergekit', 0, '{:.2f}')} | {ratio} "
              f"| {to_linear} | {fmt(soup_stats(m), '.2f')} "
              f"| {cell('soup', 1, '{:.2f}')} | {cell('mergekit', 1, '{:.2f}')} "
              f"| {cell('soup', 2, '{:.0f}')} | {cell('mergekit', 2, '{:.0f}')} "
              f"| {cell('soup', 3, '{:.1f}')} | {cell('mergekit', 3, '{:.0f}')} | {', '.join(runs)} |")

    cmp = {m: json.loads((log / f"{m}.compare.json").read_text())
           for m in methods if (log / f"{m}.compare.json").exists()}
    flags = {m: (log / f"{m}.flags-equal").read_text().strip()
             for m in methods if (log / f"{m}.flags-equal").exists()}
    if not cmp and not flags:
        return
    print()
    print("Agreement of the last rep's outputs, over all elements of all tensors "
          "(ulps: distance in adjacent bf16 values; RMS(base): of each tensor in the base, "
          "the first model for linear; change: |mergekit − base|):")
    print()
    print("| method | soup = mergekit (bit-identical) | within 1 ulp | ulp p99 / p99.99 "
          "| max abs diff / RMS(base) | mean abs diff / mean abs change "
          "| soup = f64 reference | mergekit = f64 reference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        if m not in cmp:
            continue
        p = cmp[m]["pairs"]
        sm, sr, mr = p.get("soup/mergekit"), p.get("soup/ref"), p.get("mergekit/ref")
        dare = m.startswith("dare") or m.startswith("della")
        ref_cell = (lambda x: "n/a (random)" if dare else pct(x["identical"], 4))  # noqa: E731
        rel = sm.get("mean_abs_diff_over_mean_abs_change")
        print(f"| {m} | {pct(sm['identical'])} | {pct(sm.get('within_1_ulp'))} "
              f"| {sm.get('ulp_p99')} / {sm.get('ulp_p9999')} "
              f"| {sm['max_abs_diff_over_base_rms']:.3g} "
              f"| {'—' if rel is None else f'{rel:.2g}'} | {ref_cell(sr)} | {ref_cell(mr)} |")
    if "slerp" in cmp:
        p = cmp["slerp"]["pairs"]
        print()
        print("SLERP against a per-output-row reference (one angle per row): "
              f"soup {pct(p['soup/ref_rows']['identical'])} identical, "
              f"mergekit {pct(p['mergekit/ref_rows']['identical'])}; "
              f"per-tensor vs per-row references: {pct(p['ref/ref_rows']['identical'])} identical, "
              f"mean abs diff / mean abs change "
              f"{p['ref/ref_rows']['mean_abs_diff_over_mean_abs_change']:.2g}.")
    rows = [m for m in methods if m in cmp and cmp[m]["change_from_base"]]
    if rows:
        print()
        print("Change from the base (fraction of elements changed; mean |out − base| relative to "
              "the reference's; regression slope of out − base on Σ wᵢ(xᵢ − b), overall and the "
              "largest per-tensor deviation from the reference's). For DARE the reference is one "
              "draw of the paper's DARE (Bernoulli(density) masks, survivors / density), for "
              "DELLA one draw of its rank-based masks (survivors / their probability):")
        print()
        print("| method | output | fraction changed | mean abs change / reference's "
              "| slope | max per-tensor slope deviation |")
        print("|---|---|---:|---:|---:|---:|")
        for m in rows:
            c = cmp[m]["change_from_base"]
            ref = c["ref"]["mean_abs_change"]
            for label in ("soup", "mergekit", "ref"):
                if label not in c:
                    continue
                x = c[label]
                dev = x.get("max_per_tensor_slope_dev_from_ref")
                print(f"| {m} | {label} | {pct(x['fraction_changed'], 3)} "
                      f"| {x['mean_abs_change'] / ref:.4f} | {fmt(x['slope_on_task_vector_sum'], '.4f')} "
                      f"| {fmt(dev, '.2g')} |")
    if flags:
        print()
        print("`soup merge --recipe <config>` vs `soup merge` with the equivalent flags:")
        print()
        for m in methods:
            if m in flags:
                print(f"- {m}: {flags[m]}")


if __name__ == "__main__":
    main()
