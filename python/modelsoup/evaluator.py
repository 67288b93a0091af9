"""Helpers for evaluators that ``soup greedy``, ``pruned`` and ``learned`` run once
per candidate (``--eval``): the protocol of docs/EVALUATOR.md, so that an
evaluator is only its scoring code.

``soup`` runs the evaluator command on a candidate soup written to a directory,
whose path it puts in ``$SOUP_MODEL`` (and wherever the template says
``{model}``), and reads the score from the last non-empty line of the command's
standard output: a number, or a one-line JSON object with a numeric ``"score"``
and extra metrics. The score must be finite; a command that exits non-zero has
failed even if it printed a score. A complete evaluator::

    import modelsoup

    def score(model_dir):
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        accuracy, loss = my_evaluation(model)
        return {"score": accuracy, "loss": loss}

    if __name__ == "__main__":
        modelsoup.evaluate(score)

run as ``soup greedy runs/*/ -o soup/ --eval 'python eval.py {model}'`` (or by
hand: ``python eval.py runs/lr3e-5/``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["Candidate", "candidate", "evaluate", "model_path", "report", "score_line"]

#: ``soup`` reads back only this many bytes of an evaluator's standard output, so
#: the score line must be shorter.
STDOUT_TAIL = 64 * 1024


@dataclass(frozen=True)
class Candidate:
    """The candidate an evaluator was asked to score, as ``soup`` describes it.

    Attributes:
        model: the candidate's directory (see :func:`model_path`).
        id: the candidate's id (``greedy-0007``; ``$SOUP_CANDIDATE``), ``None``
            when not run by ``soup``. Unique within a run: put it in the names of
            files the evaluator writes, so that parallel evaluations (``--jobs``)
            do not overwrite each other's.
        run_dir: the search's run directory (``$SOUP_RUN_DIR``), or ``None``.
        attempt: 1, then 2, 3, ... when ``soup`` retries a failed evaluation
            (``$SOUP_ATTEMPT``; 1 when not run by ``soup``).
        grad: ``soup learned --gradient``: where to write the gradient of the
            loss with respect to the candidate's weights, a safetensors file
            (``$SOUP_GRAD``); ``None`` when no gradient is wanted.
        temperature: with ``--temperature``, the logit temperature beta to score
            at (``$SOUP_TEMPERATURE``; report ``grad_temperature`` too), else
            ``None``.
    """

    model: str
    id: Optional[str]
    run_dir: Optional[str]
    attempt: int
    grad: Optional[str] = None
    temperature: Optional[float] = None


def model_path(argv: Optional[Sequence[str]] = None) -> str:
    """The directory of the candidate model to score.

    ``$SOUP_MODEL`` when set: ``soup`` always sets it, to the same absolute path
    that replaces ``{model}`` in the template, so the template may pass the path
    anywhere among its arguments or not at all. Otherwise (the evaluator run by
    hand) the first command-line argument, ``argv[0]`` (default
    ``sys.argv[1:]``), when it does not start with ``-``.

    Raises:
        ValueError: neither gives a path.
        FileNotFoundError: the path does not exist.
    """
    path = os.environ.get("SOUP_MODEL") or None
    if path is None:
        args = sys.argv[1:] if argv is None else list(argv)
        if args and args[0] and not args[0].startswith("-"):
            path = args[0]
    if path is None:
        raise ValueError(
            "no candidate model: give its directory as the first argument, "
            "or run the evaluator from soup (which sets SOUP_MODEL)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"the candidate model {path!r} does not exist")
    return path


def candidate(argv: Optional[Sequence[str]] = None) -> Candidate:
    """The candidate to score and what ``soup`` says about it (its environment
    variables); see :class:`Candidate` and :func:`model_path`."""
    attempt = os.environ.get("SOUP_ATTEMPT", "")
    temperature = os.environ.get("SOUP_TEMPERATURE")
    return Candidate(
        model=model_path(argv),
        id=os.environ.get("SOUP_CANDIDATE") or None,
        run_dir=os.environ.get("SOUP_RUN_DIR") or None,
        attempt=int(attempt) if attempt.isdigit() else 1,
        grad=os.environ.get("SOUP_GRAD") or None,
        temperature=float(temperature) if temperature else None,
    )


def score_line(score: Any, metrics: Optional[Mapping[str, Any]] = None) -> str:
    """The line that reports ``score`` (and ``metrics``) to ``soup``, without
    printing it; :func:`report` prints it.

    ``score`` is a number (``int``, ``float``, a NumPy scalar, a one-element
    tensor: anything ``float()`` takes except ``bool`` and strings), or a mapping
    with a ``"score"`` key whose other keys are metrics. Without metrics the line
    is the number (``repr(float(score))``, which ``soup`` reads back exactly);
    with metrics, a one-line JSON object ``{"score": ..., "loss": ...}``.

    Metric values may be numbers, strings, booleans, ``None``, lists and
    mappings of those, NumPy or PyTorch scalars and arrays; a NaN or infinite
    metric becomes ``null`` (JSON has no NaN, and ``soup`` would otherwise reject
    the whole line).

    A NaN or infinite score gives the bare number (``nan``, ``inf``, ``-inf``):
    ``soup`` then records the evaluation as failed with ``score is not finite``,
    as the protocol requires; the metrics cannot be reported with it.

    Raises:
        TypeError: ``score`` is not a number, or a metric is not JSON.
        ValueError: a mapping without ``"score"``, a metric named ``score`` twice,
            or a line too long for ``soup`` to read (64 KiB).
    """
    fields: dict = {}
    if isinstance(score, Mapping):
        if "score" not in score:
            raise ValueError(f"the result has no \"score\": {sorted(map(str, score))}")
        fields.update(score)
        score = fields.pop("score")
    for key, value in (metrics or {}).items():
        if key == "score" or key in fields:
            raise ValueError(f"metric {key!r} is given twice")
        fields[key] = value
    value = _as_score(score)
    if not math.isfinite(value) or not fields:
        return repr(value)
    obj = {"score": value}
    for key, metric in fields.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names are strings, not {key!r}")
        obj[key] = _json_value(metric, key)
    line = json.dumps(obj, allow_nan=False)
    if len(line.encode("utf-8")) + 2 > STDOUT_TAIL:
        raise ValueError(
            f"the score line is {len(line)} characters long; soup reads only the last "
            f"{STDOUT_TAIL // 1024} KiB of standard output: report fewer or smaller metrics"
        )
    return line


def report(score: Any, /, **metrics: Any) -> None:
    """Prints the score for ``soup``: the evaluator's last line of standard output.

    ``report(0.83)``, ``report(0.83, loss=0.41, n=5000)`` or
    ``report({"score": 0.83, "loss": 0.41})``; the accepted values and the
    handling of NaN are those of :func:`score_line`. The line is printed after a
    line break (so that a progress bar left without one on standard output does
    not swallow it) and flushed. Print nothing on standard output after it.

    A non-finite score is printed (``soup`` records the evaluation as failed,
    "score is not finite") and a note with the metrics goes to standard error.
    """
    line = score_line(score, metrics)
    if line in ("nan", "inf", "-inf"):
        rest = {k: v for k, v in (score.items() if isinstance(score, Mapping) else ()) if k != "score"}
        rest.update(metrics)
        print(
            f"modelsoup: the score is {line}: soup records this evaluation as failed"
            + (f" (metrics: {rest!r})" if rest else ""),
            file=sys.stderr,
            flush=True,
        )
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()


def evaluate(score_fn: Callable[[str], Any], argv: Optional[Sequence[str]] = None) -> Any:
    """Scores the candidate: calls ``score_fn(model_path)`` and reports what it
    returns.

    ``score_fn`` receives the candidate's directory (a ``str``, see
    :func:`model_path`) and returns a number or a mapping with ``"score"`` and
    metrics (see :func:`score_line`). Exceptions are not caught: an evaluation that
    raises ends the script with a traceback on standard error (which ``soup``
    keeps in ``RUN_DIR/logs/``) and exit status 1, which ``soup`` records as a
    failed evaluation before going on with the search.

    Returns:
        What ``score_fn`` returned.
    """
    result = score_fn(model_path(argv))
    if result is None:
        raise TypeError("the scoring function returned None: return the score (or a dict with \"score\")")
    report(result)
    return result


def _as_score(value: Any) -> float:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"the score must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the score must be a number, not {type(value).__name__} ({e})") from None


def _json_value(value: Any, key: str) -> Any:
    """``value`` as plain JSON: NaN/inf → None, NumPy/PyTorch values → Python
    ones."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"metric {key!r}: keys are strings, not {k!r}")
            out[k] = _json_value(v, key)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, key) for v in value]
    for method in ("tolist", "item"):  # NumPy arrays and scalars, PyTorch tensors
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                plain = convert()
            except (TypeError, ValueError):
                continue
            if plain is not value:
                return _json_value(plain, key)
    if hasattr(value, "__float__"):
        return _json_value(float(value), key)
    raise TypeError(f"metric {key!r}: {type(value).__name__} is not JSON")
