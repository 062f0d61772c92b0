"""Window-level prediction: encoders once, then the DDIM loop over ``denoise``.

Works with anything that has ``config``, ``encode_video``, ``encode_audio`` and
``denoise`` — a :class:`~diffsal.models.base.SaliencyModel` or any engine — so the
sampling loop is written once for every backend.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from salstream.diffsal.config import MODES
from salstream.diffsal.diffusion import sample
from salstream.diffsal.models.base import stack_time


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def encode_window(runner: Any, video: Optional[torch.Tensor], audio: Optional[torch.Tensor],
                  mode: str = "av"):
    """Encode one window. ``video``: (B, 3, T, H, W) normalised; ``audio``: (B, 1, S, h, w).

    Per-frame profiles encode each frame (and slice) on its own and stack, which is
    exactly what the streaming cache does incrementally.
    """
    check_mode(mode)
    cfg = runner.config
    v = a = None
    if mode in ("av", "video"):
        if video is None:
            raise ValueError(f"mode {mode!r} needs video")
        if cfg.per_frame_video:
            v = stack_time([runner.encode_video(video[:, :, i]) for i in range(video.shape[2])])
        else:
            v = runner.encode_video(video)
    if mode in ("av", "audio"):
        if audio is None:
            raise ValueError(f"mode {mode!r} needs audio")
        if cfg.per_frame_video:
            a = stack_time([runner.encode_audio(audio[:, :, i]) for i in range(audio.shape[2])])
        else:
            a = runner.encode_audio(audio)
    return v, a


@torch.inference_mode()   # sampling is never differentiated; cached features may be inference tensors
def predict_from_features(runner: Any, video_feats, audio_feats, batch: int, steps: Optional[int] = None,
                          **sample_kwargs) -> torch.Tensor:
    """Run the sampler for one batch of windows whose features are already encoded."""
    cfg = runner.config
    steps = cfg.default_steps if steps is None else steps
    shape = (batch, 1, *cfg.map_size)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return runner.denoise(x_t, t, video_feats, audio_feats)

    sample_kwargs.setdefault("timestep_spacing", cfg.timestep_spacing)
    return sample(denoise, shape, steps, **sample_kwargs)


@torch.inference_mode()
def predict_window(runner: Any, video: Optional[torch.Tensor], audio: Optional[torch.Tensor],
                   mode: str = "av", steps: Optional[int] = None, **sample_kwargs) -> torch.Tensor:
    """Encode a window and sample its map: (B, 1, *map_size) in [0, 1]."""
    v, a = encode_window(runner, video, audio, mode)
    batch = (video if video is not None else audio).shape[0]
    return predict_from_features(runner, v, a, batch, steps, **sample_kwargs)
