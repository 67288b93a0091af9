"""``python -m modelsoup ARGS...`` runs ``soup ARGS...``: the installed binary,
found as :func:`modelsoup.soup_binary` finds it, for when the environment's
scripts directory is not on ``PATH``."""

import os
import subprocess
import sys

from .command import soup_binary


def main() -> None:
    """Replaces this process with ``soup`` (elsewhere than on POSIX, runs it and
    exits with its status)."""
    exe = soup_binary()
    argv = [exe] + sys.argv[1:]
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(exe, argv)
    sys.exit(subprocess.call(argv))


if __name__ == "__main__":
    main()
