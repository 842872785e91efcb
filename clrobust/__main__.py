"""``python -m clrobust`` and the ``clrobust`` console script.

The command's modules import torch and friends, which takes seconds; a Ctrl-C or
SIGTERM in that time still ends in one line (exit 130 or 143), not a traceback.
"""

import signal
import sys
from typing import Any, List, Optional


def _terminated_at_startup(signum: int, frame: Any) -> None:
    sys.stderr.write("terminated during start-up: nothing was run.\n")
    sys.exit(143)


def main(argv: Optional[List[str]] = None) -> None:
    """Import the command line (one-line exit on Ctrl-C or SIGTERM meanwhile), then run it."""
    previous = signal.signal(signal.SIGTERM, _terminated_at_startup)
    try:
        from clrobust.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted during start-up: nothing was run.\n")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    run(argv)


if __name__ == "__main__":
    main()
