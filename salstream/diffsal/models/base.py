"""The interface every profile's network implements (and every engine mirrors).

Three graphs, matching what ``export/`` writes and what ``engines/`` run:

``encode_video(video)``
    ``per_frame_video=False`` (full): one normalised clip (B, 3, T, H, W) -> tuple of
    multi-scale window features. ``per_frame_video=True`` (lite): one normalised frame
    (B, 3, H, W) -> tuple of per-frame features; a window's features are the per-frame
    tuples stacked on a new time axis (dim 2) by :func:`stack_time`.
``encode_audio(audio)``
    full: the window's log-mel slices (B, 1, S, h, w) -> audio features.
    lite: one log-mel slice (B, 1, h, w) -> per-slice features, stacked by :func:`stack_time`.
``denoise(x_t, t, video_feats, audio_feats)``
    noisy map (B, 1, *map_size), integer timesteps (B,), window features -> predicted x0
    in [0, 1]. ``video_feats=None`` is the audio-only mode, ``audio_feats=None`` the
    video-only mode; ``None`` for both is an error.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from salstream.diffsal.config import ModelConfig

Features = tuple[torch.Tensor, ...]


def stack_time(items: Sequence[torch.Tensor | Features]) -> torch.Tensor | Features:
    """Stack per-frame (or per-slice) features on a new time axis at dim 2."""
    if isinstance(items[0], torch.Tensor):
        return torch.stack(list(items), dim=2)
    return tuple(torch.stack([it[i] for it in items], dim=2) for i in range(len(items[0])))


class SaliencyModel(nn.Module):
    config: ModelConfig

    def encode_video(self, video: torch.Tensor) -> Features:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats: Optional[Features],
                audio_feats: Optional[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError
