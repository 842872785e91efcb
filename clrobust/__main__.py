"""``python -m clrobust`` and the ``clrobust`` console script.

The command's modules import torch and friends, which takes seconds; a Ctrl-C or
SIGTERM in that time still ends in one line (exit 130 or 143), not a traceback.
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
    """Import the command line (one-line exit on Ctrl-C or SIGTERM meanwhile), then run it."""
    previous = {s: signal.signal(s, _stopped_at_startup) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from clrobust.cli import main as run
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    run(argv)


if __name__ == "__main__":
    main()
