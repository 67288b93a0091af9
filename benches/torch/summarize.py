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
    """(wall s, CPU s, max RSS MB) from /usr/bin/time -v output."""
    txt = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", txt).group(1).strip()
    secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", txt).group(1))
              for k in ("User", "System"))
    return secs, cpu, rss / 1024


def stats(label):
    """Medians over the successful reps of a label, or None if none succeeded."""
    ok = [r for r in range(1, REPS + 1) if not (LOG / f"{label}.{r}.failed").exists()
          and (LOG / f"{label}.{r}.time").exists()]
    if not ok:
        return None
    walls, cpus, rss = zip(*(time_v(LOG / f"{label}.{r}.time") for r in ok))
    mem = [json.loads((LOG / f"{label}.{r}.mem.json").read_text()) for r in ok]
    med = statistics.median
    busy = sum((LOG / f"{label}.{r}.busy").exists() for r in ok)
    return {
        "wall": med(walls), "cpu": med(cpus), "rss": med(rss),
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
    cols = ["input", "tool", "wall s", "CPU s", "max RSS MB", "peak RssAnon MB",
            "peak RssFile MB", "wall / soup", "max RSS / soup", "runs"]
    header(cols, "llrrrrrrrl")
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
            row([name, tool, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['rss']:.0f}",
                 f"{s['anon']:.0f}", f"{s['file']:.0f}", ratio("wall"), ratio("rss"),
                 s["runs"]])
            name = ""
        if ref:
            print(f"| | soup throughput: {d['file_bytes'] / 1e9 / ref['wall']:.2f} GB/s "
                  f"(file bytes / wall) | | | | | | | | |")
    print()


def strided():
    print(f"### Strided views: transposed 2-D weights, {SIZE} GB, warm cache\n")
    cols = ["dtype", "input", "tool", "wall s", "CPU s", "max RSS MB", "peak RssAnon MB",
            "runs"]
    header(cols, "lllrrrrl")
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
            row([name, inp, tool, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['rss']:.0f}",
                 f"{s['anon']:.0f}", s["runs"]])
            name = ""
        c, t = stats(f"soup-c-{dt}"), stats(f"soup-t-{dt}")
        if c and t:
            gather.append((dt, d["strided_bytes"], t["wall"] - c["wall"], t["cpu"] - c["cpu"]))
    print()
    if gather:
        header(["dtype", "strided MB", "extra wall s", "extra CPU s",
                "gather GB/s (wall, 2 workers)", "gather GB/s per core (CPU)"], "lrrrrr")
        for dt, nbytes, dw, dc in gather:
            gbw = f"{nbytes / 1e9 / dw:.2f}" if dw > 0 else "n/a"
            gbc = f"{nbytes / 1e9 / dc:.2f}" if dc > 0 else "n/a"
            row([dt, f"{nbytes / 1e6:.0f}", f"{dw:.2f}", f"{dc:.2f}", gbw, gbc])
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
    cols = ["command", "inputs", "wall s", "CPU s", "max RSS MB", "peak RssAnon MB",
            "peak RssFile MB", "runs"]
    header(cols, "llrrrrrl")
    res = {}
    cmd = "`soup merge A B`"
    for kind, inp in (("bin", "2 × pytorch_model.bin"), ("st", "2 × model.safetensors")):
        s = res[kind] = stats(f"merge-{kind}")
        if s is None:
            failed(cmd, len(cols)); continue
        row([cmd, inp, f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['rss']:.0f}",
             f"{s['anon']:.1f}", f"{s['file']:.0f}", s["runs"]])
        cmd = ""
    opened = json.loads((LOG / "open.json").read_text()) if (LOG / "open.json").exists() else {}
    cmd = "`soup inspect A B` (open only)"
    for kind, inp in (("bin", "2 × pytorch_model.bin"), ("st", "2 × model.safetensors")):
        o = opened.get(f"inspect-{kind}")
        if o:
            busy = ", busy" if (LOG / "open.busy").exists() else ""
            row([cmd, inp, f"{o['wall_s']:.3f}", f"{o['cpu_s']:.3f}", f"{o['max_rss_mb']:.0f}",
                 "", "", f"{o['runs']} (interleaved){busy}"])
            cmd = ""
    print()
    mb, ms = res.get("bin"), res.get("st")
    ib, ist = opened.get("inspect-bin"), opened.get("inspect-st")
    if mb and ms:
        print(f"- merge .bin / safetensors: wall {mb['wall'] / ms['wall']:.2f}×, "
              f"CPU {mb['cpu'] / ms['cpu']:.2f}×, max RSS {mb['rss'] / ms['rss']:.1f}×, "
              f"peak RssAnon {mb['anon'] / max(ms['anon'], 0.1):.1f}×; "
              f"extra wall {mb['wall'] - ms['wall']:.2f} s")
    if ib and ist:
        extra = ib["wall_s"] - ist["wall_s"]
        rate = f"{total / 1e9 / extra:.1f} GB/s" if extra > 0 else "n/a"
        print(f"- opening the two .bin files (zip directory, pickle, CRC-32 of "
              f"{total / 1e9:.2f} GB on one thread) takes {ib['wall_s'] * 1000:.0f} ms "
              f"against {ist['wall_s'] * 1000:.0f} ms for the safetensors pair: "
              f"{extra * 1000:.0f} ms extra, {rate}")
        if mb and ms:
            print(f"- that is {extra / mb['wall']:.0%} of the .bin merge's wall time")
    print()


for phase in sys.argv[5:]:
    {"convert": convert, "strided": strided, "scaling": scaling, "merge": merge}[phase]()
