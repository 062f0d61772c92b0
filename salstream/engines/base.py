"""Engine interface and factory."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from salstream.diffsal.config import ModelConfig
from salstream.errors import SalstreamError


class EngineUnavailable(SalstreamError, RuntimeError):
    """The engine's runtime or device is missing; the message names what to install.

    A :class:`SalstreamError` so the command line prints it as one line, not a traceback.
    """


class Engine:
    """Runs one model's graphs on one backend. Subclasses fill in the three calls.

    ``encode_video`` / ``encode_audio`` / ``denoise`` take and return CPU or device
    torch tensors with the same shapes as :class:`diffsal.models.base.SaliencyModel`.
    All calls accept a batch dimension (several windows or streams at once).
    """
    name: str = "engine"
    config: ModelConfig

    def encode_video(self, video: torch.Tensor):
        raise NotImplementedError

    def encode_audio(self, audio: torch.Tensor):
        raise NotImplementedError

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"engine": self.name, "profile": self.config.profile}


_ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def deco(factory: Callable[..., Engine]):
        _ENGINES[name] = factory
        return factory
    return deco


def _load_builtin_engines() -> None:
    from . import torch_engine  # noqa: F401
    try:  # engines added by the export work register themselves here
        from . import onnxruntime_engine  # noqa: F401
    except ImportError:
        pass
    # GPU engines import their runtimes lazily, so registering them is always safe.
    from . import tensorrt_engine, torch_cuda_engine  # noqa: F401


def available_engines() -> list[str]:
    _load_builtin_engines()
    return sorted(_ENGINES)


def create_engine(name: str, *, model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None,
                  **kwargs) -> Engine:
    """Build engine ``name`` for an in-memory ``model`` or a ``checkpoint`` path."""
    _load_builtin_engines()
    if name not in _ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(sorted(_ENGINES))}")
    return _ENGINES[name](model=model, checkpoint=checkpoint, **kwargs)
