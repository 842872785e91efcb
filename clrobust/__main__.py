"""``python -m clrobust`` and the ``clrobust`` console script.

Importing torch takes seconds; a Ctrl-C or SIGTERM in that time still ends in one line
(exit 130 or 143), not a traceback. ``clrobust --help`` does not import it at all.
"""

import os
import signal
import sys
from typing import Any, List, Optional


def _stopped_at_startup(signum: int, frame: Any) -> None:
    """Nothing has run yet, so exit at once: an exception could be swallowed by an importing library."""
    word, code = ("interrupted", 130) if signum == signal.SIGINT else ("terminated", 143)
    sys.stderr.write(f"{word} during start-up: nothing was run.\n")
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    """Import the command line and, unless only help or the version is asked for, torch (one-line exit on
    Ctrl-C or SIGTERM meanwhile: libraries can swallow an exception raised while they import), then run it."""
    args = list(sys.argv[1:] if argv is None else argv)
    previous = {s: signal.signal(s, _stopped_at_startup) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from clrobust.cli import main as run

        if not any(a in ("-h", "--help", "--version") for a in args):
            import torch  # noqa: F401  (the seconds-long import every command needs, under the start-up guard)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    run(args)


if __name__ == "__main__":
    main()
