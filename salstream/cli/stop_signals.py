"""The signals that end a running command cleanly, installed for the length of a run."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator

# Ctrl-C, a service manager's stop, a closed terminal: all mean "finish what is in flight".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def handling_stop_signals(handler: Callable) -> Iterator[None]:
    """``handler`` for every stop signal inside the block; the previous handlers after it."""
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
