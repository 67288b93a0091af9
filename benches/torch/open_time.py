#!/usr/bin/env python3
"""Time short commands precisely, interleaved: median wall, CPU and max RSS.

Usage: open_time.py --runs N --json FILE LABEL 'CMD' [LABEL 'CMD' ...]

Each round runs every command once, in order (CMD is split with shlex, no
shell). Wall time is perf_counter around fork..wait (about a millisecond of
overhead, against 10 ms steps in /usr/bin/time's elapsed time), CPU and max
RSS come from os.wait4's rusage of that child alone. One warm-up round is not
counted. Stdlib only. Exit 1 if any run fails.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def once(cmd):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"open_time: {shlex.join(cmd)} failed ({proc.returncode}): {err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", required=True)
    ap.add_argument("pairs", nargs="+", help="LABEL 'CMD' ...")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("expected LABEL 'CMD' pairs")
    cmds = {args.pairs[i]: shlex.split(args.pairs[i + 1]) for i in range(0, len(args.pairs), 2)}
    samples = {label: [] for label in cmds}
    for rnd in range(args.runs + 1):
        for label, cmd in cmds.items():
            s = once(cmd)
            if rnd:
                samples[label].append(s)
    med = statistics.median
    out = {label: {"runs": len(s), "wall_s": med(x[0] for x in s),
                   "wall_min_s": min(x[0] for x in s), "wall_max_s": max(x[0] for x in s),
                   "cpu_s": med(x[1] for x in s), "max_rss_mb": med(x[2] for x in s)}
           for label, s in samples.items()}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    for label, o in out.items():
        print(f"   {label}: wall {o['wall_s'] * 1000:.1f} ms (min {o['wall_min_s'] * 1000:.1f}), "
              f"CPU {o['cpu_s'] * 1000:.0f} ms, max RSS {o['max_rss_mb']:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
