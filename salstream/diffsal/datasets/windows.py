"""From an annotated video to model windows, for any profile.

A *window* is what one model call sees: ``cfg.frames`` frames ``cfg.frame_stride`` apart
and the audio that goes with them, predicting the map of the window's frame
``cfg.target_index`` (the newest frame for the causal ``lite`` profile, the 9th of 16 for
``full``). Timing follows the streaming rules so training, evaluation and a live stream
see identical inputs:

* ``lite`` (causal): the newest ``cfg.audio.n_slices`` grid slices complete at the
  target frame's timestamp, stream sample ``round(i / fps · 16000)`` (as the live window
  assembler plans them)
  (:func:`diffsal.audio.lite_window_slices`); before the clip starts is silence.
* ``full``: the official window-centred rule, centre half a frame before the target
  frame's timestamp (:func:`diffsal.audio.full_window_slices`).

Frames before the first (or after the last) are clamped to the nearest existing frame,
i.e. a still picture at the edges of a video.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from salstream.diffsal.config import ModelConfig
from salstream.diffsal.datasets.layout import Video

AUDIO_RATE = 16000


def window_frame_indices(cfg: ModelConfig, target: int, n_frames: int) -> list[int]:
    """Frame indices of the window whose target frame is ``target`` (clamped to the video)."""
    s = cfg.frame_stride
    first = target - cfg.target_index * s
    return [min(max(first + k * s, 0), n_frames - 1) for k in range(cfg.frames)]


def first_full_target(cfg: ModelConfig) -> int:
    """Smallest target index whose window needs no clamping at the start."""
    return cfg.target_index * cfg.frame_stride


def last_full_target(cfg: ModelConfig, n_frames: int) -> int:
    return n_frames - 1 - (cfg.frames - 1 - cfg.target_index) * cfg.frame_stride


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Whole-track resampling to the model's 16 kHz (polyphase FIR)."""
    if rate == AUDIO_RATE:
        return np.asarray(samples, np.float32)
    from scipy.signal import resample_poly
    g = math.gcd(AUDIO_RATE, int(rate))
    y = resample_poly(np.asarray(samples, np.float64), AUDIO_RATE // g, int(rate) // g)
    return y[: int(len(samples) * AUDIO_RATE / rate)].astype(np.float32)


def audio_end_sample(target: int, fps: float) -> int:
    """Stream sample (exclusive) at which the causal window of frame ``target`` closes:
    the frame's own timestamp, like the live assembler (frame 0 is at time 0)."""
    return int(round(target / fps * AUDIO_RATE))


def lite_slice_indices(cfg: ModelConfig, target: int, fps: float) -> list[int]:
    from salstream.diffsal.audio import latest_slices
    return latest_slices(audio_end_sample(target, fps), cfg.audio.n_slices, cfg.audio)


def window_audio(cfg: ModelConfig, audio_16k: np.ndarray, target: int, fps: float) -> torch.Tensor:
    """Audio input of one window: (1, S, h, w) log-mel slices."""
    from salstream.diffsal import audio as A
    x = torch.from_numpy(np.asarray(audio_16k, np.float32))
    if cfg.per_frame_video:  # the causal, per-slice-cached profile
        return A.lite_window_slices(x, audio_end_sample(target, fps), cfg.audio)
    first = target - cfg.target_index * cfg.frame_stride
    centre = (first + (cfg.frames - 1) * cfg.frame_stride / 2.0) / fps
    return A.full_window_slices(x, centre, cfg.frames * cfg.frame_stride / fps, cfg.audio)


def resize_map(m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float map -> (1, h, w) tensor, bilinear with antialiasing (like torchvision ``Resize``)."""
    x = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x[0]


class WindowSource:
    """Builds model inputs for the windows of one video, caching what is reused.

    Frames are decoded and preprocessed once per video (overlapping windows share
    them); the audio track is read and resampled once.
    """

    def __init__(self, video: Video, cfg: ModelConfig, max_cached_frames: int = 64):
        self.video, self.cfg = video, cfg
        self._frames: dict[int, torch.Tensor] = {}
        self._max = max_cached_frames
        self._audio: Optional[np.ndarray] = None

    def frame_tensor(self, i: int) -> torch.Tensor:
        from salstream.diffsal.preprocess import preprocess_frame
        t = self._frames.get(i)
        if t is None:
            t = preprocess_frame(self.video.frame(i), self.cfg)
            if len(self._frames) >= self._max:
                self._frames.pop(next(iter(self._frames)))
            self._frames[i] = t
        return t

    def video_input(self, target: int) -> torch.Tensor:
        """(3, T, H, W) normalised clip of the window."""
        idx = window_frame_indices(self.cfg, target, self.video.n_frames)
        return torch.stack([self.frame_tensor(i) for i in idx], dim=1)

    def audio_16k(self) -> Optional[np.ndarray]:
        if not self.video.has_audio:
            return None
        if self._audio is None:
            samples, rate = self.video.audio()
            self._audio = resample_to_16k(samples, rate)
        return self._audio

    def audio_input(self, target: int) -> Optional[torch.Tensor]:
        """(1, S, h, w) log-mel slices of the window, or ``None`` for a silent dataset."""
        a = self.audio_16k()
        return None if a is None else window_audio(self.cfg, a, target, self.video.fps)

    def target_map(self, target: int) -> torch.Tensor:
        """(1, *map_size) ground-truth density in [0, 1]."""
        return resize_map(self.video.density(target), self.cfg.map_size)
