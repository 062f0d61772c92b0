"""Pieces of the cluster tests: an engine factory that travels to Ray replicas, map collection."""
from __future__ import annotations

import time
from collections import defaultdict

from salstream.streamer.wire.subscriber import Subscriber


class TinyEngine:
    """Builds the tiny per-frame test model on the torch engine, in whatever process calls it.

    Picklable by reference, so a Ray replica imports this module (``tests`` must be on its
    ``PYTHONPATH``) and registers the ``tiny`` profile itself.
    """

    def __call__(self):
        import torch

        from salstream.diffsal.registry import register_profile
        from salstream.engines import create_engine
        from tests.support.tiny_models import TinySaliency, tiny_config, tiny_model

        torch.set_num_threads(1)          # two replicas share two cores with the test itself
        register_profile("tiny", tiny_config)(TinySaliency)
        return create_engine("torch", model=tiny_model(True))


def collect_maps(sub: Subscriber, until, timeout: float) -> dict[str, list]:
    """Maps per stream (in arrival order) until ``until(maps)`` is true or ``timeout`` s pass."""
    maps: dict[str, list] = defaultdict(list)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(maps):
        msg = sub.recv_map(timeout=0.2)
        if msg is not None:
            maps[msg.stream].append((time.monotonic(), msg))
    return maps
