#!/usr/bin/env python3
"""Test evaluator for `soup learned --gradient` (tests/gradient_cli.rs).

    quadratic.py MODEL_DIR TARGET [--grad PATH] [options]
    quadratic.py --serve TARGET [options]       (an evaluation server)

Reads MODEL_DIR/model.safetensors with the standard library only, concatenates
its F32 tensors in name order into theta, and prints the loss

    L = ||theta - target||^2  (+ (beta - B)^2 with --beta-target B)

where TARGET is a file of little-endian f64 values (as many as the model has F32
elements) and beta is $SOUP_TEMPERATURE (a server: the request's "temperature").
When a gradient is asked for (--grad PATH non-empty, else $SOUP_GRAD; a server:
the request's "grad"), it writes 2 (theta - target), tensor by
tensor under the model's names and shapes, as a safetensors file, and with
--beta-target reports "grad_temperature" = 2 (beta - B) beside the loss.

Options:
  --dtype D       the gradient's dtype: F32 (default), BF16 or F16
  --leave-out N   leave the tensor N out of the gradient file (a zero gradient)
  --log FILE      append `start` and `end` lines (tab-separated: event, candidate,
                  pid, with-gradient) for every call
  --sleep S       sleep S seconds before scoring
  --fault KIND    write a broken gradient (from the --fault-from'th call that
                  writes one, counted in FILE.count beside --log; default: always):
                  missing, unknown-name, shape, dtype, nan, truncated, garbage,
                  directory, no-grad-temperature
"""

import argparse
import json
import math
import os
import struct
import sys
import time


def read_model(model_dir):
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = data[8 + n :]
    header.pop("__metadata__", None)
    tensors = []
    for name in sorted(header):
        info = header[name]
        if info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        count = (end - start) // 4
        tensors.append((name, info["shape"], struct.unpack("<%df" % count, body[start:end])))
    return tensors


def read_target(path):
    with open(path, "rb") as f:
        raw = f.read()
    return struct.unpack("<%dd" % (len(raw) // 8), raw)


def bf16(x):
    """Round an f32-representable value to bfloat16 bits (nearest even)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    bits += 0x7FFF + ((bits >> 16) & 1)
    return struct.pack("<H", (bits >> 16) & 0xFFFF)


def encode(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":
        return b"".join(bf16(v) for v in values)
    raise SystemExit("unknown dtype %r" % dtype)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, offset, body = {}, 0, []
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        body.append(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(body))
    os.rename(tmp, path)


def log(path, event, with_gradient):
    if not path:
        return
    line = "%s\t%s\t%d\t%s\n" % (
        event,
        os.environ.get("SOUP_CANDIDATE", "?"),
        os.getpid(),
        "grad" if with_gradient else "-",
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def gradient_calls(log_path):
    """How many calls (this one included) wrote a gradient so far."""
    counter = (log_path or os.path.join(os.environ.get("SOUP_RUN_DIR", "."), "calls")) + ".count"
    n = 1
    if os.path.exists(counter):
        with open(counter) as f:
            n = int(f.read() or 0) + 1
    with open(counter, "w") as f:
        f.write(str(n))
    return n


def evaluate(args, model, grad_path, beta):
    """The result line's fields for one candidate; writes the gradient when
    `grad_path` is not empty."""
    log(args.log, "start", bool(grad_path))
    if args.sleep > 0:
        time.sleep(args.sleep)
    tensors = read_model(model)
    target = read_target(args.target)
    if sum(len(v) for _, _, v in tensors) != len(target):
        raise SystemExit("target has %d values" % len(target))
    loss, at, grads = 0.0, 0, []
    for name, shape, values in tensors:
        g = []
        for x in values:
            d = x - target[at]
            at += 1
            loss += d * d
            g.append(2.0 * d)
        grads.append((name, shape, g))
    result = {}
    if args.beta_target is not None:
        if beta is None:
            raise SystemExit("no temperature given")
        loss += (float(beta) - args.beta_target) ** 2
        result["grad_temperature"] = 2.0 * (float(beta) - args.beta_target)
    result["beta"] = float(beta) if beta is not None else None

    if grad_path:
        fault = args.fault if args.fault and gradient_calls(args.log) >= args.fault_from else None
        out = [
            (name, args.dtype, shape, encode(g, args.dtype))
            for name, shape, g in grads
            if name not in args.leave_out
        ]
        if fault == "unknown-name":
            out.append(("nope.weight", "F32", [1], encode([1.0], "F32")))
        elif fault == "shape":
            name, dtype, shape, data = out[0]
            out[0] = (name, dtype, [math.prod(shape)] if len(shape) > 1 else shape + [1], data)
        elif fault == "dtype":
            name, _, shape, data = out[0]
            out[0] = (name, "I32", shape, data if args.dtype == "F32" else data + data)
        elif fault == "nan":
            name, dtype, shape, data = out[-1]
            values = list(grads[-1][2])
            values[len(values) // 2] = float("nan")
            out[-1] = (name, dtype, shape, encode(values, dtype))
        elif fault == "no-grad-temperature":
            result.pop("grad_temperature", None)
        if fault == "garbage":
            with open(grad_path, "wb") as f:
                f.write(b"not a safetensors file")
        elif fault == "directory":
            os.mkdir(grad_path)
        elif fault != "missing":
            write_safetensors(grad_path, out)
        if fault == "truncated":
            with open(grad_path, "r+b") as f:
                f.truncate(os.path.getsize(grad_path) - 3)
    log(args.log, "end", bool(grad_path))
    result["score"] = loss
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+", help="MODEL TARGET, or TARGET with --serve")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--grad", default=None)
    parser.add_argument("--dtype", default="F32")
    parser.add_argument("--beta-target", type=float, default=None)
    parser.add_argument("--leave-out", action="append", default=[])
    parser.add_argument("--log")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fault")
    parser.add_argument("--fault-from", type=int, default=1)
    args = parser.parse_args()
    args.target = args.paths[-1]

    if args.serve:
        # The evaluation-server protocol: a request per line, a reply per line.
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            result = evaluate(args, request["model"], request.get("grad") or "",
                              request.get("temperature"))
            result["candidate"] = request["candidate"]
            print(json.dumps(result), flush=True)
        return
    grad_path = args.grad if args.grad is not None else os.environ.get("SOUP_GRAD", "")
    result = evaluate(args, args.paths[0], grad_path, os.environ.get("SOUP_TEMPERATURE"))
    print("loss computed", file=sys.stderr)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
