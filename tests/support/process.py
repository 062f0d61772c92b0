"""Probes of this process's resources (Linux ``/proc``), for leak checks in tests and the soak."""
from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def open_descriptors() -> tuple[int, set[str]]:
    """(number of open file descriptors, the ``socket:[inode]`` targets among them)."""
    n, sockets = 0, set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue          # the descriptor listdir itself used, already closed
        n += 1
        if target.startswith("socket:"):
            sockets.add(target)
    return n, sockets


def settled(probe: Callable[[], T], want: T, timeout: float = 5.0, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns ``want`` or ``timeout`` s pass; returns the last value.

    ZeroMQ closes sockets in its own I/O thread a moment after ``close()``, and threads
    finish a moment after being told to stop: a leak check must give them that moment.
    """
    deadline = time.monotonic() + timeout
    got = probe()
    while got != want and time.monotonic() < deadline:
        time.sleep(interval)
        got = probe()
    return got
