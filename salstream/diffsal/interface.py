"""The contract every saliency network and every engine satisfies: three graphs and a config.

:func:`salstream.diffsal.inference.predict_from_features` (the one DDIM loop), the live
scheduler, evaluation and the benchmarks take anything that fits :class:`SaliencyRunner`:
a :class:`~salstream.diffsal.models.base.SaliencyModel` in eager PyTorch or an engine
running exported graphs. Shapes are those documented in :mod:`salstream.diffsal.models.base`.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch

from salstream.diffsal.config import ModelConfig

Features = Union[torch.Tensor, tuple[torch.Tensor, ...]]


@runtime_checkable
class SaliencyRunner(Protocol):
    config: ModelConfig

    def encode_video(self, video: torch.Tensor) -> Features:
        """One frame (per-frame profiles) or one clip -> video features."""

    def encode_audio(self, audio: torch.Tensor) -> Features:
        """One log-mel slice (per-frame profiles) or a window's slices -> audio features."""

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats: Optional[Sequence[torch.Tensor]],
                audio_feats: Optional[Features]) -> torch.Tensor:
        """Noisy map and timesteps plus window features -> predicted x0 in [0, 1]."""
