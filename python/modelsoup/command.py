"""Running the ``soup`` binary from Python: :func:`run` and :class:`SoupError`.

``soup`` prints its results as one JSON object on standard output when given
``--json``, its errors on standard error as ``error: ...``, and says what happened
with its exit status (0 success, 1 nothing acceptable, 2 error, 130 interrupted).
:func:`run` adds ``--json``, parses the object into Python values, passes the
human-readable lines of standard error through, and turns a failure into a
:class:`SoupError` carrying the exit status and the ``error:`` message.

The binary is the one installed with this package (in the scripts directory of
the running interpreter's environment), so a script run with a virtual
environment's Python finds its ``soup`` even when that environment is not
activated; see :func:`soup_binary`.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from typing import Any, Iterable, Optional, Union

__all__ = ["SoupError", "run", "soup_binary", "BINARY_ENV"]

#: Environment variable naming the ``soup`` executable to use instead of the
#: installed one.
BINARY_ENV = "MODELSOUP_BINARY"

_EXE = "soup.exe" if os.name == "nt" else "soup"

# How much of soup's standard error a SoupError keeps (the `error:` lines are
# always kept, up to _MAX_ERROR_LINES of them).
_TAIL_LINES = 50
_MAX_ERROR_LINES = 20
_MAX_LINE = 64 * 1024  # longer lines are kept in pieces

Arg = Union[str, "os.PathLike[str]", int, float]


class SoupError(Exception):
    """``soup`` exited with a non-zero status.

    Attributes:
        returncode: the exit status: 1 when a search finished with nothing it could
            score or ``inspect`` found checkpoints that cannot be souped, 2 for an
            error (bad input, bad arguments, I/O), 130 when interrupted; negative
            (``-N``) when ``soup`` was killed by signal N.
        message: what ``soup`` said after ``error:`` on standard error (several
            such lines joined by newlines), or a description of the exit status
            when it said nothing.
        stderr: the last lines of ``soup``'s standard error.
        command: the command line that was run, as a list.
        result: the JSON ``soup`` printed before failing, parsed, or ``None``
            (``inspect`` prints its full report before exiting with status 1).
    """

    def __init__(
        self,
        returncode: int,
        message: str,
        stderr: str = "",
        command: Optional[list] = None,
        result: Any = None,
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.message = message
        self.stderr = stderr
        self.command = list(command or [])
        self.result = result

    def __str__(self) -> str:
        if self.returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"was killed by signal {-self.returncode}"
        else:
            how = f"exited with status {self.returncode}"
        return f"soup {how}: {self.message}"


def soup_binary(override: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """The path of the ``soup`` executable that :func:`run` uses.

    In this order: ``override`` when given; else the ``MODELSOUP_BINARY``
    environment variable when set; else the ``soup`` installed with this package
    in the running interpreter's scripts directory (``bin/`` of the virtual
    environment, ``~/.local/bin`` for ``pip install --user``); else the first
    ``soup`` on ``PATH``.

    Raises:
        FileNotFoundError: none of those is an executable file.
    """
    if override is None:
        override = os.environ.get(BINARY_ENV) or None
    if override is not None:
        path = os.fspath(override)
        found = shutil.which(path) if os.sep not in path else path
        if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
            raise FileNotFoundError(f"the soup binary {path!r} is not an executable file")
        return found
    user = (
        sysconfig.get_preferred_scheme("user")
        if hasattr(sysconfig, "get_preferred_scheme")
        else f"{os.name}_user"
    )
    for scheme in (None, user):
        try:
            scripts = sysconfig.get_path("scripts") if scheme is None else sysconfig.get_path("scripts", scheme)
        except KeyError:
            continue
        candidate = os.path.join(scripts, _EXE)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("soup")
    if found is None:
        raise FileNotFoundError(
            "no soup binary: not in this Python's scripts directory "
            f"({sysconfig.get_path('scripts')}) nor on PATH; install the modelsoup "
            f"wheel, or set {BINARY_ENV} to the soup executable"
        )
    return found


def run(
    command: Arg,
    *args: Union[Arg, Iterable[Arg]],
    soup: Optional[Union[str, "os.PathLike[str]"]] = None,
    check: bool = True,
    echo: bool = True,
    cwd: Optional[Union[str, "os.PathLike[str]"]] = None,
    env: Optional[dict] = None,
) -> Any:
    """Runs ``soup COMMAND ARGS... --json`` and returns its JSON output, parsed.

    Works for every command that prints its result with ``--json``: ``merge``
    and ``convert`` (a summary: output files, tensors, bytes, seconds, the
    recipe), ``inspect`` (tensors, shards, metadata, compatibility), ``angles``,
    and the searches ``greedy``, ``pruned`` and ``learned`` (the report, as in
    ``report.json``: members, weights, score, every step)::

        import modelsoup
        summary = modelsoup.run("merge", "run-a/", "run-b/", "-o", "soup/")
        report = modelsoup.run("greedy", *runs, "-o", "best/",
                               "--eval", "python eval.py {model}")
        print(report["members"], report["score"])

    Arguments are passed to ``soup`` as they are, without a shell: strings,
    ``pathlib.Path`` objects and numbers; a list or tuple among them is expanded
    in place. ``--json`` is added unless already present.

    Args:
        command: the subcommand (``"merge"``, ``"greedy"``, ...).
        soup: the ``soup`` executable to run instead of the one
            :func:`soup_binary` finds.
        check: with ``False``, exit status 1 (a search that could score nothing,
            checkpoints that cannot be souped) is not an error: the JSON ``soup``
            printed is returned, or ``None`` when it printed none. Other failures
            raise in any case.
        echo: copy ``soup``'s standard error (warnings, a search's progress
            lines) to ``sys.stderr`` as it comes.
        cwd: working directory for ``soup`` (relative paths, the evaluator).
        env: environment for ``soup`` (default: this process's).

    Returns:
        The parsed JSON object (a ``dict``), or ``None`` (see ``check``).

    Raises:
        SoupError: ``soup`` failed; ``returncode`` and ``message`` say why.
        FileNotFoundError: no ``soup`` executable (see :func:`soup_binary`).
        KeyboardInterrupt: Ctrl-C; ``soup`` is sent SIGINT first and waited for,
            so it stops cleanly and leaves nothing partial (a second Ctrl-C while
            waiting kills it).
    """
    argv = [_arg(command)]
    if argv[0].startswith("-"):
        raise ValueError(f"the first argument is the soup command (merge, greedy, ...), not {argv[0]!r}")
    for a in args:
        if isinstance(a, (list, tuple)):
            argv.extend(_arg(x) for x in a)
        else:
            argv.append(_arg(a))
    options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    if "--json" not in options:
        argv.insert(1, "--json")
    full = [soup_binary(soup)] + argv

    proc = subprocess.Popen(
        full,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    errors = _StderrReader(proc.stderr, sys.stderr if echo else None)
    errors.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    except KeyboardInterrupt:
        _interrupt(proc)
        proc.stdout.close()
        errors.join(timeout=1.0)  # whatever still holds the pipe is not soup
        raise
    proc.stdout.close()
    errors.join()

    text = out.decode("utf-8", errors="replace").strip()
    result = None
    parse_error = None
    if text:
        try:
            result = json.loads(text)
        except ValueError as e:
            parse_error = e

    code = proc.returncode
    if code == 0 or (code == 1 and not check):
        if parse_error is not None:
            raise SoupError(
                code,
                f"soup's standard output is not JSON ({parse_error}): {_excerpt(text)}",
                errors.text(),
                full,
            )
        if code == 0 and result is None:
            raise SoupError(code, "soup printed nothing on standard output", errors.text(), full)
        return result
    raise SoupError(code, errors.message(), errors.text(), full, result)


def _arg(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise TypeError(f"soup arguments are strings, paths or numbers, not {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    return os.fspath(value)


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _interrupt(proc: subprocess.Popen) -> None:
    """Asks ``soup`` to stop as on Ctrl-C and waits for it; kills it on a second
    interrupt."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise


class _StderrReader(threading.Thread):
    """Drains ``soup``'s standard error while it runs (so it never blocks on a
    full pipe), copies it to ``echo``, and keeps the ``error:`` lines and the last
    lines for a :class:`SoupError`."""

    def __init__(self, stream, echo) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._echo = echo
        self._tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
        self._errors: list = []

    def run(self) -> None:
        with self._stream:
            for raw in iter(lambda: self._stream.readline(_MAX_LINE), b""):
                line = raw.decode("utf-8", errors="replace")
                # `error:` lines are the SoupError's message: not shown twice.
                if self._echo is not None and not line.startswith("error:"):
                    try:
                        self._echo.write(line)
                        self._echo.flush()
                    except (OSError, ValueError):
                        self._echo = None
                line = line.rstrip("\r\n")
                self._tail.append(line)
                if line.startswith("error:") and len(self._errors) < _MAX_ERROR_LINES:
                    self._errors.append(line[len("error:") :].strip())

    def text(self) -> str:
        return "\n".join(self._tail)

    def message(self) -> str:
        if self._errors:
            return "\n".join(self._errors)
        last = next((l for l in reversed(self._tail) if l.strip()), "")
        return "no error message" + (f" (last line of its stderr: {last})" if last else "")
