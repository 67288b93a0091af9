#!/usr/bin/env python3
"""Run a command and report peak memory of its whole process tree.

Usage: peak_mem.py [--interval 0.02] [--json FILE] [--] CMD [ARGS...]

Every --interval seconds (default 20 ms) it finds all descendants of the
child (by scanning /proc/*/stat for parent pids; this kernel has no
/proc/PID/task/TID/children) and sums VmRSS, RssAnon and RssFile from
/proc/PID/status. Peaks of those sums are reported, plus the largest
per-process VmHWM seen (the kernel's own high-water mark, so not subject to
sampling gaps) and the ru_maxrss of the largest waited-for descendant.

RssAnon is the interesting number for mmap-based tools: file-backed pages
of memory-mapped inputs show up in VmRSS/RssFile but are reclaimable page
cache, whereas RssAnon is memory the process really owns. Spikes shorter
than the interval can be missed.

Stdlib only. Prints a one-line summary to stderr; --json writes details.
The exit status is the command's (128+signal if it was killed).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def children_map():
    """ppid -> [pid] for every process currently in /proc."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # comm may contain spaces/parens; fields after the last ')' are fixed.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(root):
    kids, out, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def status_kb(pid):
    """Selected /proc/PID/status fields in kB (empty dict if gone/zombie)."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in FIELDS:
                    vals[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return vals


def main():
    ap = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].removeprefix("Usage: "))
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--json", help="write the measurements as JSON to this file")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")

    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    max_hwm, samples, max_procs = 0, 0, 0
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    try:
        while proc.poll() is None:
            pids = tree(proc.pid)
            totals = dict.fromkeys(peak, 0)
            for pid in pids:
                st = status_kb(pid)
                for k in totals:
                    totals[k] += st.get(k, 0)
                max_hwm = max(max_hwm, st.get("VmHWM", 0))
            for k in peak:
                peak[k] = max(peak[k], totals[k])
            samples += 1
            max_procs = max(max_procs, len(pids))
            time.sleep(args.interval)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
    wall = time.monotonic() - t0
    rc = proc.returncode
    ru_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB

    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    result = {
        "cmd": cmd,
        "exit_code": rc,
        "wall_s": round(wall, 3),
        "peak_vmrss_mb": mb(peak["VmRSS"]),
        "peak_rssanon_mb": mb(peak["RssAnon"]),
        "peak_rssfile_mb": mb(peak["RssFile"]),
        "max_vmhwm_mb": mb(max_hwm),
        "ru_maxrss_mb": mb(ru_maxrss),
        "samples": samples,
        "max_procs": max_procs,
        "interval_s": args.interval,
    }
    print(f"peak_mem: wall={result['wall_s']}s VmRSS={result['peak_vmrss_mb']}MB "
          f"RssAnon={result['peak_rssanon_mb']}MB RssFile={result['peak_rssfile_mb']}MB "
          f"VmHWM={result['max_vmhwm_mb']}MB samples={samples} rc={rc}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
