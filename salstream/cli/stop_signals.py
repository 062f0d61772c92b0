"""The signals that end a running command cleanly, installed for the length of a run."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

# Ctrl-C, a service manager's stop, a closed terminal: all mean "finish what is in flight".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def handling_stop_signals(handler: Callable, keep_if: Optional[Callable[[], bool]] = None) -> Iterator[None]:
    """``handler`` for every stop signal inside the block; the previous handlers after it.

    When ``keep_if()`` is true at the end (a stop was already asked for), ``handler`` stays: the
    process is winding down, and a second Ctrl-C there must still reach it rather than Python's
    default, which raises inside interpreter shutdown and prints a traceback.
    """
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        if keep_if is None or not keep_if():
            for s, h in previous.items():
                signal.signal(s, h)
