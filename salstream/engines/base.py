"""The engine contract and the one factory, :func:`create_engine`.

An engine runs one model's three graphs on one backend. It is a
:class:`~salstream.diffsal.interface.SaliencyRunner` (so the one DDIM loop drives every
engine) plus a ``name``, the ``device`` its tensors live on and :meth:`Engine.describe`.
Implementations register a factory under their name; ``salstream.engines`` imports them.
Engines only *read* artifacts (exported graphs); writing them is ``salstream.export``'s job.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch

from salstream.diffsal.interface import SaliencyRunner
from salstream.errors import EngineUnavailable, SalstreamError

__all__ = ["Engine", "EngineUnavailable", "available_engines", "create_engine", "register_engine"]


@runtime_checkable
class Engine(SaliencyRunner, Protocol):
    """A runner bound to a backend. All calls accept a batch dimension (several windows at once)."""
    name: str
    device: torch.device

    def describe(self) -> dict:
        """What runs where (engine, profile, precision, threads…), for logs and benchmark records."""
        return {"engine": self.name, "profile": self.config.profile}


_ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def deco(factory: Callable[..., Engine]):
        _ENGINES[name] = factory
        return factory
    return deco


def available_engines() -> list[str]:
    return sorted(_ENGINES)


def create_engine(name: str, *, model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None,
                  **kwargs: Any) -> Engine:
    """Build engine ``name`` for an in-memory ``model`` or a ``checkpoint`` path (exported-graph
    engines also need ``artifacts``, the directory ``salstream export`` wrote)."""
    if name not in _ENGINES:
        raise SalstreamError(f"unknown engine {name!r}; choose one of {', '.join(sorted(_ENGINES))}")
    return _ENGINES[name](model=model, checkpoint=checkpoint, **kwargs)
