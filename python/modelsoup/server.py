"""Reference evaluation server for ``soup greedy|pruned|learned --eval-server``.

A per-candidate evaluator (``--eval``) starts a new Python process for every
candidate soup: import torch, build the model, load the weights, score. A server
does the expensive part once and then, for each candidate, only loads the new
weights and scores them. ``serve`` speaks soup's protocol (docs/EVALUATOR.md,
"Evaluation servers") so that a server is a few lines::

    from modelsoup.server import serve

    model = build_and_load_once()

    def score(request):
        load_weights(model, request.model)    # the candidate's directory
        return {"score": accuracy(model), "loss": loss}   # or just a number

    serve(score)

``serve`` reads one JSON request per line from stdin until stdin closes, calls
``score_fn`` with a ``Request`` (``candidate``, ``model``, ``attempt``,
``members``, ``weights``, and for learned soups by gradient ``grad`` and
``temperature``) and writes one reply line per request to stdout:
``{"candidate": ..., "score": ..., <metrics>}``, or ``{"candidate": ...,
"error": ...}`` when ``score_fn`` raises (the traceback goes to stderr) or
returns something that is not a finite score. While it runs, anything written
to stdout, by Python or by a C library, goes to stderr instead, so prints can
never garble a reply. SIGTERM (soup's request to stop) raises ``SystemExit``,
so ``finally`` blocks and context managers run before the process ends.

Standard library only.
"""

import json
import math
import numbers
import os
import signal
import sys
import threading
import traceback
from collections import namedtuple

__all__ = ["Request", "serve"]

Request = namedtuple(
    "Request",
    ["candidate", "model", "attempt", "members", "weights", "grad", "temperature"],
    defaults=(None, None),
)
Request.__doc__ = """One candidate to score.

candidate: its id (``greedy-0007``), also the name of its logs.
model: the absolute path of the directory soup wrote it to.
attempt: 1, then 2, 3, ... when soup retries a failed evaluation.
members: the ingredients mixed (paths as given to soup; ``GROUP|PATH`` for
    layer-wise learned soups, ``base:PATH`` for the base of task vectors).
weights: one weight per member.
grad: ``soup learned --gradient`` only: where to write the gradient of the loss
    with respect to the candidate's weights (a safetensors file), or ``None``
    when none is wanted (docs/EVALUATOR.md, "Gradients").
temperature: with ``--temperature``: the logit temperature beta to score at;
    then also return ``"grad_temperature"``, d loss / d beta. ``None`` otherwise.
"""


def serve(score_fn, stdin=None, stdout=None):
    """Answers soup's requests with ``score_fn(request)`` until stdin closes.

    ``score_fn`` returns a number, or a mapping with a numeric ``"score"`` whose
    other keys are reported as metrics. ``stdin``/``stdout`` default to the
    process's own (file descriptors 0 and 1); other streams are for tests.
    """
    restore = []
    if stdout is None:
        # Keep fd 1 for replies only; point fd 1 (and sys.stdout) at stderr.
        sys.stdout.flush()
        reply_fd = os.dup(1)
        os.dup2(2, 1)
        stdout = os.fdopen(reply_fd, "w", encoding="utf-8", newline="\n")
        saved_stdout = sys.stdout
        sys.stdout = sys.stderr
        restore.append(lambda: setattr(sys, "stdout", saved_stdout))
    if stdin is None:
        stdin = sys.stdin
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_term)
            restore.append(lambda: signal.signal(signal.SIGTERM, previous))
    try:
        for line in stdin:
            line = line.strip()
            if not line:
                continue
            request = _parse(line)
            if request is None:
                continue
            reply = _answer(score_fn, request)
            stdout.write(reply + "\n")
            stdout.flush()
    finally:
        for undo in reversed(restore):
            undo()


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def _parse(line):
    """The request a line holds, or None (reported on stderr) when it holds none."""
    try:
        fields = json.loads(line)
        return Request(
            candidate=str(fields["candidate"]),
            model=str(fields["model"]),
            attempt=int(fields.get("attempt", 1)),
            members=list(fields.get("members", [])),
            weights=[float(w) for w in fields.get("weights", [])],
            grad=str(fields["grad"]) if fields.get("grad") else None,
            temperature=float(fields["temperature"]) if fields.get("temperature") is not None else None,
        )
    except (ValueError, KeyError, TypeError) as e:
        print("modelsoup.server: ignoring a line that is not a request (%s): %.200s"
              % (e, line), file=sys.stderr, flush=True)
        return None


def _answer(score_fn, request):
    """The reply line for one request."""
    try:
        result = score_fn(request)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return _error(request, "%s: %s" % (type(e).__name__, e))
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        reply = {"score": float(result)}
    elif hasattr(result, "keys") and "score" in result:
        reply = dict(result)
        score = reply["score"]
        if not isinstance(score, numbers.Real) or isinstance(score, bool):
            return _error(request, "the score is not a number: %r" % (score,))
        reply["score"] = float(score)
    else:
        return _error(request, "score_fn returned %.200r, not a number or a mapping "
                               "with a \"score\"" % (result,))
    if not math.isfinite(reply["score"]):
        return _error(request, "the score is not finite: %r" % (reply["score"],))
    reply["candidate"] = request.candidate
    try:
        return json.dumps(reply, allow_nan=False)
    except (TypeError, ValueError) as e:
        return _error(request, "the metrics cannot be sent as JSON: %s" % e)


def _error(request, message):
    return json.dumps({"candidate": request.candidate, "error": message})
