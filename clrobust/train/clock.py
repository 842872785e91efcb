"""Seconds of work: the wall clock less the time the process spent stopped.

A background training job is often paused (``kill -STOP``, Ctrl-Z) while something else uses the
machine; the plain wall clock would count the pause as training cost. :func:`work_seconds` leaves
stops out: a daemon thread beats every :data:`BEAT` seconds, a stop freezes it too, and when the
process is continued (SIGCONT) the silence since its last beat, less one beat, counts as stopped.
Where no SIGCONT handler can be installed (no such signal; not the main thread) it is the wall clock.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Optional

#: Seconds between two beats of the watching thread: a stop shorter than this is not noticed.
BEAT = 0.2


class _StopWatch:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # a second SIGCONT may arrive inside the handler
        self.last = time.monotonic()  # the last beat
        self.silence = 0.0  # the longest silence of the thread since the last continuation
        self.stopped = 0.0  # seconds stopped in all
        self.previous: Any = None

    def beat(self) -> None:
        while True:
            time.sleep(BEAT)
            with self.lock:
                now = time.monotonic()
                self.silence = max(self.silence, now - self.last)
                self.last = now

    def continued(self, signum: int, frame: Any) -> None:
        with self.lock:  # the thread may or may not have woken since: take the longer silence
            silence = max(self.silence, time.monotonic() - self.last)
            self.stopped += max(0.0, silence - BEAT)
            self.silence = 0.0
            self.last = time.monotonic()
        if callable(self.previous):
            self.previous(signum, frame)


_watch: Optional[_StopWatch] = None


def _start() -> Optional[_StopWatch]:
    global _watch
    if _watch is None and hasattr(signal, "SIGCONT") and threading.current_thread() is threading.main_thread():
        w = _StopWatch()
        w.previous = signal.signal(signal.SIGCONT, w.continued)
        threading.Thread(target=w.beat, name="clrobust-stop-watch", daemon=True).start()
        _watch = w
    return _watch


def work_seconds() -> float:
    """A monotonic clock in seconds that does not advance while the process is stopped (the first call
    starts the watch; differences of two calls are what mean something)."""
    w = _start()
    return time.monotonic() - (w.stopped if w is not None else 0.0)
