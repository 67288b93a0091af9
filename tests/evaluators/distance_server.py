#!/usr/bin/env python3
"""Test evaluation server for `soup … --eval-server` (tests/search_cli.rs): the
score of tests/evaluators/distance.py, served by modelsoup.server.serve
(python/modelsoup/server.py, put on PYTHONPATH by the tests).

    distance_server.py TARGET [options]

Options:
  --quantum Q, --sign S, --log FILE, --sleep S    as in distance.py (the log's
                      candidate is the request's, its pid the server's)
  --starts FILE       append `PID SOUP_SLOT CUDA_VISIBLE_DEVICES` when the server starts
  --fault NAME=KIND   misbehave when the candidate contains ingredient NAME:
                      `exit` (the server exits with code 3), `hang` (sleeps 1000 s),
                      `error` (score_fn raises ValueError), `noise` (prints a line
                      that is not a reply to stdout before the score)
  --trap FILE         on SIGTERM, write `term` to FILE before exiting (serve
                      turns SIGTERM into SystemExit(143))
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import distance  # noqa: E402
from modelsoup.server import serve  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--quantum", type=float, default=0.0)
    parser.add_argument("--sign", type=float, default=-1.0)
    parser.add_argument("--log")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--starts")
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--trap")
    args = parser.parse_args()
    target = distance.read_target(args.target)
    if args.starts:
        with open(args.starts, "a") as f:
            f.write("%d %s %s\n" % (os.getpid(), os.environ.get("SOUP_SLOT", "?"),
                                    os.environ.get("CUDA_VISIBLE_DEVICES", "-")))

    def score(request):
        members, values = distance.read_model(request.model)
        distance.log(args.log, "start", members, request.candidate)
        if args.sleep > 0:
            time.sleep(args.sleep)
        for spec in args.fault:
            name, kind = spec.split("=", 1)
            if name not in members:
                continue
            if kind == "exit":
                print("giving up on %s" % request.candidate, file=sys.stderr, flush=True)
                os._exit(3)
            if kind == "hang":
                time.sleep(1000)
            if kind == "error":
                raise ValueError("cannot score %s" % name)
            if kind == "noise":
                print('{"candidate": "someone-else", "score": 1e9}')
                print("progress: 100%")
        result, dist = distance.score_of(values, target, args.quantum, args.sign)
        distance.log(args.log, "end", members, request.candidate)
        return {"score": result, "distance": dist}

    try:
        serve(score)
    except SystemExit as e:
        if args.trap and e.code == 143:
            with open(args.trap, "a") as f:
                f.write("term\n")
        raise


if __name__ == "__main__":
    main()
