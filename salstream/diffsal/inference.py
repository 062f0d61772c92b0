"""Window-level prediction: encoders once, then the DDIM loop over ``denoise``.

Works with anything that has ``config``, ``encode_video``, ``encode_audio`` and
``denoise`` — a :class:`~diffsal.models.base.SaliencyModel` or any engine — so the
sampling loop is written once for every backend.

Several draws per window (:func:`predict_samples`): a diffusion model gives a different
map for each noise draw; where the draws agree the model is sure. The ``K`` draws of a
window run as *one* batch through the same DDIM loop (each window's features repeated
``K`` times along the batch axis, so the encoders still run once per window), and
:func:`draw_stats` turns them into the mean map and the per-pixel spread.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from salstream.diffsal.config import MODES
from salstream.diffsal.diffusion import sample
from salstream.diffsal.models.base import stack_time

MAX_SAMPLES = 64


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


def repeat_batch(feats, k: int):
    """Features (a tensor or a tuple, batch axis first) with each item repeated ``k`` times in a row:
    item ``b``'s copies are rows ``b*k … b*k+k-1``. ``None`` stays ``None``."""
    if feats is None or k == 1:
        return feats
    if isinstance(feats, torch.Tensor):
        return feats.repeat_interleave(k, dim=0)
    return tuple(repeat_batch(f, k) for f in feats)


@torch.inference_mode()
def predict_samples(runner: Any, video_feats, audio_feats, batch: int, samples: int = 1,
                    steps: Optional[int] = None, **sample_kwargs) -> torch.Tensor:
    """``samples`` independent draws per window: (batch, samples, 1, *map_size) in [0, 1].

    All ``batch * samples`` draws go through the denoiser as one batch; the encoders are not
    involved (the features are given). A ``warm_start`` of shape (batch, 1, h, w) is shared
    by a window's draws. With ``samples == 1`` this is exactly :func:`predict_from_features`
    (same noise, same map).
    """
    k = int(samples)
    if not 1 <= k <= MAX_SAMPLES:
        raise ValueError(f"samples must be in 1…{MAX_SAMPLES}, got {samples}")
    if k > 1:
        video_feats, audio_feats = repeat_batch(video_feats, k), repeat_batch(audio_feats, k)
        if sample_kwargs.get("warm_start") is not None:
            sample_kwargs["warm_start"] = repeat_batch(sample_kwargs["warm_start"], k)
        noise = sample_kwargs.get("noise")
        if noise is not None and noise.shape[0] != batch * k:
            raise ValueError(f"noise for {batch} window(s) × {k} samples needs batch {batch * k}, "
                             f"got {noise.shape[0]}")
    x0 = predict_from_features(runner, video_feats, audio_feats, batch * k, steps, **sample_kwargs)
    return x0.reshape(batch, k, *x0.shape[1:])


def draw_stats(draws: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Draws (B, K, 1, h, w) -> the mean map (B, 1, h, w) and the per-pixel standard deviation
    (B, 1, h, w; with K − 1 in the denominator), or ``None`` for a single draw (nothing to spread)."""
    if draws.shape[1] == 1:
        return draws[:, 0], None
    return draws.mean(dim=1), draws.std(dim=1, correction=1)


@torch.inference_mode()
def predict_window(runner: Any, video: Optional[torch.Tensor], audio: Optional[torch.Tensor],
                   mode: str = "av", steps: Optional[int] = None, **sample_kwargs) -> torch.Tensor:
    """Encode a window and sample its map: (B, 1, *map_size) in [0, 1]."""
    v, a = encode_window(runner, video, audio, mode)
    batch = (video if video is not None else audio).shape[0]
    return predict_from_features(runner, v, a, batch, steps, **sample_kwargs)
