#!/usr/bin/env python3
"""Test evaluator for `soup greedy` / `soup pruned` (tests/search_cli.rs).

    distance.py MODEL_DIR TARGET [options]

Reads MODEL_DIR/model.safetensors with the standard library only, concatenates its
F32 tensors in name order, and prints

    score = SIGN * q(||soup - target||)

where TARGET is a file of little-endian f64 values (as many as the model has F32
elements), q(d) = floor(d / Q) * Q with --quantum Q > 0 (coarse scores, so that ties
happen) and q(d) = d otherwise, and SIGN is -1 (higher is better) unless --sign +1.
The distance is accumulated element by element in file order, exactly as the Rust
reference in tests/search_cli.rs does, so both get the same bits.

The candidate's members are read from the `modelsoup.recipe` in the file's metadata
and named by their file or directory name without `.safetensors`.

Options:
  --quantum Q         quantise the distance (default 0: exact)
  --sign S            +1 or -1 (default -1)
  --log FILE          append `start` and `end` lines (tab-separated: event,
                      candidate, pid, comma-separated members) for every call
  --sleep S           sleep S seconds before scoring
  --metrics           print {"score": ..., "distance": ..., "members": ...} instead
                      of a bare number
  --fault NAME=KIND   misbehave when the candidate contains ingredient NAME
  --fault-alone NAME=KIND
                      misbehave when the candidate is ingredient NAME alone
KIND is `exit` (exit code 3 after printing a score), `hang` (start `sleep 1000` in
the background, write its pid to $SOUP_RUN_DIR/hang-<candidate>.pid, then sleep),
`garbage` (print `accuracy: 0.9`) or `nan` (print `nan`).
"""

import argparse
import json
import math
import os
import struct
import sys
import time


def member_name(label):
    name = os.path.basename(label.rstrip("/"))
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    return name


def read_model(model_dir):
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = data[8 + n :]
    metadata = header.pop("__metadata__", {})
    recipe = json.loads(metadata["modelsoup.recipe"])
    values = []
    for name in sorted(header):
        info = header[name]
        if info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        count = (end - start) // 4
        values.extend(struct.unpack("<%df" % count, body[start:end]))
    return [member_name(m["path"]) for m in recipe["ingredients"]], values


def read_target(path):
    with open(path, "rb") as f:
        raw = f.read()
    return struct.unpack("<%dd" % (len(raw) // 8), raw)


def score_of(values, target, quantum, sign):
    """(score, distance) of a model's values against the target."""
    if len(target) != len(values):
        raise SystemExit("target has %d values, model %d" % (len(target), len(values)))
    acc = 0.0
    for x, t in zip(values, target):
        d = x - t
        acc += d * d
    dist = math.sqrt(acc)
    if quantum > 0:
        dist = float(math.floor(dist / quantum)) * quantum
    return sign * dist, dist


def log(path, event, members, candidate=None):
    if not path:
        return
    line = "%s\t%s\t%d\t%s\n" % (
        event,
        candidate or os.environ.get("SOUP_CANDIDATE", "?"),
        os.getpid(),
        ",".join(members),
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def misbehave(kind):
    if kind == "exit":
        print("0.5", flush=True)
        sys.exit(3)
    if kind == "hang":
        import subprocess

        child = subprocess.Popen(["sleep", "1000"])
        pidfile = os.path.join(
            os.environ["SOUP_RUN_DIR"], "hang-%s.pid" % os.environ["SOUP_CANDIDATE"]
        )
        with open(pidfile + ".tmp", "w") as f:
            f.write("%d\n" % child.pid)
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(1000)
        print("1.0")
        sys.exit(0)
    if kind == "garbage":
        print("accuracy: 0.9")
        sys.exit(0)
    if kind == "nan":
        print("nan")
        sys.exit(0)
    raise SystemExit("unknown fault kind %r" % kind)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("target")
    parser.add_argument("--quantum", type=float, default=0.0)
    parser.add_argument("--sign", type=float, default=-1.0)
    parser.add_argument("--log")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--fault-alone", action="append", default=[])
    args = parser.parse_args()

    members, values = read_model(args.model)
    log(args.log, "start", members)
    if args.sleep > 0:
        time.sleep(args.sleep)
    for spec in args.fault:
        name, kind = spec.split("=", 1)
        if name in members:
            misbehave(kind)
    for spec in args.fault_alone:
        name, kind = spec.split("=", 1)
        if members == [name]:
            misbehave(kind)

    score, dist = score_of(values, read_target(args.target), args.quantum, args.sign)
    print("distance computed", file=sys.stderr)
    print("progress: done")  # not the last line: ignored by soup
    log(args.log, "end", members)
    if args.metrics:
        print(json.dumps({"score": score, "distance": dist, "members": len(members)}))
    else:
        print(repr(score), flush=True)


if __name__ == "__main__":
    main()
