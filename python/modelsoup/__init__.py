"""modelsoup for Python: the ``soup`` command and helpers to drive it.

Installing the ``modelsoup`` wheel puts the ``soup`` binary on the ``PATH`` of
the environment (its ``bin/`` directory). This package adds, with nothing beyond
the standard library:

- :func:`run`: runs ``soup`` (``merge``, ``convert``, ``inspect``, ``angles``,
  ``greedy``, ``pruned``, ``learned``) with ``--json`` and returns its result as
  Python values; failures raise :class:`SoupError` with the exit status and
  ``soup``'s error message.
- :func:`evaluate`, :func:`report`, :func:`model_path`, :func:`candidate`: write
  an evaluator for ``soup``'s searches (``--eval``) as a plain scoring function.
- ``serve``: a persistent evaluator (``--eval-server``), in builds that include
  ``modelsoup.server``.

Example::

    import modelsoup

    summary = modelsoup.run("merge", "run-a/", "run-b/", "run-c/", "-o", "soup/")
    print(summary["output_files"])

    report = modelsoup.run("greedy", "run-a/", "run-b/", "run-c/", "-o", "best/",
                           "--eval", "python eval.py {model}")
    print(report["members"], report["score"])

The full guide is docs/PYTHON.md in the source repository.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version as _version
from typing import Any

from .command import BINARY_ENV, SoupError, run, soup_binary
from .evaluator import Candidate, candidate, evaluate, model_path, report, score_line

try:
    __version__ = _version("modelsoup")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

# The persistent-evaluator server is a module of its own, imported only when
# `serve` is first used: scripts that only run soup or score one candidate never
# pay for it, and this package works in builds without it.
_HAS_SERVER = importlib.util.find_spec(f"{__name__}.server") is not None

__all__ = [
    "BINARY_ENV",
    "Candidate",
    "SoupError",
    "__version__",
    "candidate",
    "evaluate",
    "model_path",
    "report",
    "run",
    "score_line",
    "soup_binary",
] + (["serve"] if _HAS_SERVER else [])


def __getattr__(name: str) -> Any:
    if name == "serve":
        if not _HAS_SERVER:
            raise AttributeError(
                "modelsoup.serve (persistent evaluators) is not in this build of modelsoup"
            )
        from .server import serve

        globals()["serve"] = serve
        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
