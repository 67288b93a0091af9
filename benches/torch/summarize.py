#!/usr/bin/env python3
"""Markdown tables of medians from the logs of benches/torch/run.sh.

Usage: summarize.py LOG DATA REPS SIZE_GB PHASE...

For each run LABEL.REP, LOG holds LABEL.REP.time (/usr/bin/time -v),
LABEL.REP.mem.json (peak_mem.py), and LABEL.REP.busy / .failed flags;
data-NAME.json are the generator's stamps (tensor and strided bytes). The
labels are the ones run.sh uses. Stdlib only.
"""
import json
import re
import statistics
import sys
from pathlib import Path

LOG, REPS, SIZE = Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4]


def time_v(path):
    """(wall s, CPU s, user s, max RSS MB) from /usr/bin/time -v output."""
    txt = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", txt).group(1).strip()
    secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    user, sys_ = (float(re.search(rf"{k} time \(seconds\): ([\d.]+)", txt).group(1))
                  for k in ("User", "System"))
    return secs, user + sys_, user, rss / 1024


def stats(label):
    """Medians over the successful reps of a label, or None if none succeeded."""
    ok = [r for r in range(1, REPS + 1) if not (LOG / f"{label}.{r}.failed").exists()
          and (LOG / f"{label}.{r}.time").exists()]
    if not ok:
        return None
    walls, cpus, users, rss = zip(*(time_v(LOG / f"{label}.{r}.time") for r in ok))
    mem = [json.loads((LOG / f"{label}.{r}.mem.json").read_text()) for r in ok]
    med = statistics.median
    busy = sum((LOG / f"{label}.{r}.busy").exists() for r in ok)
    return {
        "wall": med(walls), "cpu": med(cpus), "user": med(users), "rss": med(rss),
        "wall_min": min(walls), "wall_max": max(walls),
        "anon": med(m["peak_rssanon_mb"] for m in mem),
        "file": med(m["peak_rssfile_mb"] for m in mem),
        "vmrss": med(m["peak_vmrss_mb"] for m in mem),
        "runs": f"{len(ok)}/{REPS}" + (f", {busy} busy" if busy else ""),
    }


def data(name):
    return json.loads((LOG / f"data-{name}.json").read_text())


def row(cells):
    print("| " + " | ".join(cells) + " |")


def header(cols, align):
    row(cols)
    print("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")


def failed(name, ncols):
    row([name, "failed"] + [""] * (ncols - 2))


def convert():
    print(f"### soup convert vs Python, {SIZE} GB pytorch_model.bin, warm cache\n")
    cols = ["input", "tool", "wall s", "CPU s", "user s", "max RSS MB", "peak RssAnon MB",
            "peak RssFile MB", "wall / soup", "max RSS / soup", "runs"]
    header(cols, "llrrrrrrrrl")
    tools = [("soup", "`soup convert`"), ("py-mmap", "torch.load(mmap=True) + save_file"),
             ("py-load", "torch.load + save_file")]
    for dt in ("f32", "bf16"):
        d = data(f"{dt}-{SIZE}g")
        ref = stats(f"soup-{dt}")
        name = f"{dt}, {d['file_bytes'] / 1e6:.0f} MB, {d['tensors']} tensors"
        for key, tool in tools:
            s = stats(f"{key}-{dt}")
            if s is None:
                failed(name, len(cols)); continue
            ratio = (lambda k: f"{s[k] / ref[k]:.1f}×") if ref else (lambda k: "")
            row([name, tool, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['user']:.2f}",
                 f"{s['rss']:.0f}",
                 f"{s['anon']:.0f}", f"{s['file']:.0f}", ratio("wall"), ratio("rss"),
                 s["runs"]])
            name = ""
        if ref:
            print(f"| | soup: {d['file_bytes'] / 1e9 / ref['wall']:.2f} GB/s "
                  "(file bytes / wall) |" + " |" * (len(cols) - 2))
    print()


def strided():
    print(f"### Strided views: transposed 2-D weights, {SIZE} GB, warm cache\n")
    cols = ["dtype", "input", "tool", "wall s", "CPU s", "user s", "max RSS MB",
            "peak RssAnon MB", "runs"]
    header(cols, "lllrrrrrl")
    gather = []
    for dt in ("f32", "bf16"):
        d = data(f"{dt}-{SIZE}g-t")
        cases = [("soup-c", "contiguous", "`soup convert`"),
                 ("soup-t", f"transposed ({d['strided_bytes'] / 1e6:.0f} MB strided)",
                  "`soup convert`"),
                 ("py-mmap-t", "transposed", "torch.load(mmap=True) + .contiguous() + save_file")]
        name = dt
        for key, inp, tool in cases:
            s = stats(f"{key}-{dt}")
            if s is None:
                failed(name, len(cols)); continue
            row([name, inp, tool, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['user']:.2f}",
                 f"{s['rss']:.0f}", f"{s['anon']:.0f}", s["runs"]])
            name = ""
        c, t = stats(f"soup-c-{dt}"), stats(f"soup-t-{dt}")
        if c and t:
            gather.append((dt, d["strided_bytes"], t["wall"] - c["wall"], t["user"] - c["user"]))
    print()
    if gather:
        # The gather is user-space work; system time (page faults, the output's
        # write and fsync) swings by 0.5 s between identical runs on this machine.
        header(["dtype", "strided MB", "extra wall s", "extra user s",
                "gather GB/s per core (user time)"], "lrrrr")
        for dt, nbytes, dw, du in gather:
            gbu = f"{nbytes / 1e9 / du:.2f}" if du > 0 else "n/a"
            row([dt, f"{nbytes / 1e6:.0f}", f"{dw:.2f}", f"{du:.2f}", gbu])
        print()


def scaling():
    sizes = (LOG / "scale-sizes").read_text().split()
    print("### Memory of soup convert against model size (bf16, warm cache)\n")
    cols = ["file MB", "tensors", "wall s", "max RSS MB (time -v)", "peak RssAnon MB",
            "peak RssFile MB", "peak VmRSS MB", "runs"]
    header(cols, "rrrrrrrl")
    for s in sizes:
        d, st = data(f"bf16-{s}g"), stats(f"scale-{s}")
        name = f"{d['file_bytes'] / 1e6:.0f}"
        if st is None:
            failed(name, len(cols)); continue
        row([name, str(d["tensors"]), f"{st['wall']:.2f}", f"{st['rss']:.0f}",
             f"{st['anon']:.1f}", f"{st['file']:.0f}", f"{st['vmrss']:.0f}", st["runs"]])
    print()


def merge():
    a = data(f"bf16-{SIZE}g")
    b = data(f"bf16-{SIZE}g-v1")
    total = a["file_bytes"] + b["file_bytes"]
    print(f"### soup merge of two {SIZE} GB bf16 ingredients: .bin vs safetensors, "
          "warm cache\n")
    cols = ["command", "inputs", "wall s", "CPU s", "user s", "max RSS MB", "peak RssAnon MB",
            "peak RssFile MB", "runs"]
    header(cols, "llrrrrrrl")
    res = {}
    for key, cmd in (("", "`soup merge A B`"), ("-noinit", "`soup merge A B --no-init-check`")):
        for kind, inp in (("bin", "2 × pytorch_model.bin"), ("st", "2 × model.safetensors")):
            s = res[kind + key] = stats(f"merge-{kind}{key}")
            if s is None:
                failed(cmd, len(cols)); continue
            row([cmd, inp, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['user']:.2f}",
                 f"{s['rss']:.0f}", f"{s['anon']:.1f}", f"{s['file']:.0f}", s["runs"]])
            cmd = ""
    opened = json.loads((LOG / "open.json").read_text()) if (LOG / "open.json").exists() else {}
    cmd = "`soup inspect A` (open only)"
    for kind, inp in (("bin", "1 × pytorch_model.bin"), ("st", "1 × model.safetensors")):
        o = opened.get(f"inspect-{kind}")
        if o:
            busy = ", busy" if (LOG / "open.busy").exists() else ""
            row([cmd, inp, f"{o['wall_s']:.3f}", f"{o['cpu_s']:.3f}", "",
                 f"{o['max_rss_mb']:.0f}", "", "", f"{o['runs']} (interleaved){busy}"])
            cmd = ""
    print()
    for key, what in (("", ""), ("-noinit", " (--no-init-check)")):
        mb, ms = res.get("bin" + key), res.get("st" + key)
        if mb and ms:
            print(f"- merge{what} .bin / safetensors: wall {mb['wall'] / ms['wall']:.2f}×, "
                  f"CPU {mb['cpu'] / ms['cpu']:.2f}×, user {mb['user'] / ms['user']:.2f}×, "
                  f"max RSS {mb['rss'] / ms['rss']:.1f}×, "
                  f"peak RssAnon {mb['anon'] / max(ms['anon'], 0.1):.1f}×; "
                  f"extra wall {mb['wall'] - ms['wall']:.2f} s")
    ib, ist = opened.get("inspect-bin"), opened.get("inspect-st")
    if ib and ist:
        extra = ib["wall_s"] - ist["wall_s"]
        rate = f"{a['file_bytes'] / 1e9 / extra:.1f} GB/s" if extra > 0 else "n/a"
        print(f"- opening one .bin file (zip directory, pickle, CRC-32 of "
              f"{a['file_bytes'] / 1e9:.2f} GB on one thread) takes {ib['wall_s'] * 1000:.0f} ms "
              f"against {ist['wall_s'] * 1000:.0f} ms for its safetensors twin: "
              f"{extra * 1000:.0f} ms extra, {rate}")
        mb = res.get("bin")
        if mb and extra > 0:
            print(f"- for the two ingredients (×{total / a['file_bytes']:.2f}) that is "
                  f"{extra * total / a['file_bytes'] / mb['wall']:.0%} of the .bin merge's "
                  "wall time")
    print()


for phase in sys.argv[5:]:
    {"convert": convert, "strided": strided, "scaling": scaling, "merge": merge}[phase]()
