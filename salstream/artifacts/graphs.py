"""The three exportable graphs as plain ``nn.Module`` wrappers, plus their I/O naming.

``SaliencyModel`` exposes three methods and takes ``None`` for a missing modality;
exporters and graph compilers need one ``forward`` with tensors only. So each graph
gets a thin wrapper, and the denoiser gets one wrapper per mode (the mode decides
which feature inputs exist). The same wrappers feed ONNX export, Torch-TensorRT and
``torch.compile`` so every backend compiles exactly the same computation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from salstream.diffsal.config import MODES, ModelConfig

VIDEO_GRAPH = "encode_video"
AUDIO_GRAPH = "encode_audio"
# The audio-visual denoiser keeps the plain name the deployment docs use.
DENOISE_GRAPHS: dict[str, str] = {"av": "denoise", "video": "denoise_video", "audio": "denoise_audio"}


def needs_video(mode: str) -> bool:
    return mode in ("av", "video")


def needs_audio(mode: str) -> bool:
    return mode in ("av", "audio")


def as_tuple(x) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class VideoEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return as_tuple(self.model.encode_video(video))


class AudioEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor):
        return self.model.encode_audio(audio)


class DenoiseGraph(nn.Module):
    """``denoise`` for one mode: the absent modality is the ``None`` the model expects."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.model = model
        self.mode = mode

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, video: Optional[tuple[torch.Tensor, ...]] = None,
                audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model.denoise(x_t, t, tuple(video) if needs_video(self.mode) else None,
                                  audio if needs_audio(self.mode) else None)


# ---------------------------------------------------------------- shapes and examples

def video_input_shape(cfg: ModelConfig, batch: int) -> tuple[int, ...]:
    """What ``encode_video`` takes: one frame (per-frame profiles) or one clip."""
    h, w = cfg.input_size
    return (batch, 3, h, w) if cfg.per_frame_video else (batch, 3, cfg.frames, h, w)


def audio_input_shape(cfg: ModelConfig, batch: int) -> tuple[int, ...]:
    """What ``encode_audio`` takes: one log-mel slice (per-frame profiles) or all slices."""
    h, w = cfg.audio.slice_size
    return (batch, 1, h, w) if cfg.per_frame_video else (batch, 1, cfg.audio.n_slices, h, w)


def example_window(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random normalised window: video (B, 3, T, H, W) and audio slices (B, 1, S, h, w)."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.input_size
    ah, aw = cfg.audio.slice_size
    video = torch.randn((batch, 3, cfg.frames, h, w), generator=g)
    audio = torch.randn((batch, 1, cfg.audio.n_slices, ah, aw), generator=g)
    return video, audio


def example_noise(cfg: ModelConfig, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 1, *cfg.map_size), generator=g)


@dataclass
class GraphIO:
    """Names of one graph's flat inputs and outputs, in order."""
    inputs: list[str]
    outputs: list[str]


def video_feature_names(n: int) -> list[str]:
    return [f"video_{i}" for i in range(n)]


def audio_feature_names(n: Optional[int]) -> list[str]:
    # ``None``: the encoder returns one tensor (the interface's usual case).
    return ["audio_feats"] if n is None else [f"audio_{i}" for i in range(n)]


def denoise_io(mode: str, n_video: int, n_audio: Optional[int]) -> GraphIO:
    names = ["x_t", "t"]
    if needs_video(mode):
        names += video_feature_names(n_video)
    if needs_audio(mode):
        names += audio_feature_names(n_audio)
    return GraphIO(names, ["x0"])


def count_outputs(out) -> Optional[int]:
    """``None`` for a single tensor, else the tuple length (how the outputs are named)."""
    return None if isinstance(out, torch.Tensor) else len(out)


def denoise_args(mode: str, x_t: torch.Tensor, t: torch.Tensor, video_feats: Optional[Sequence[torch.Tensor]],
                 audio_feats) -> tuple:
    """Positional arguments for :class:`DenoiseGraph` (nested, as torch.export sees them)."""
    args: list = [x_t, t]
    args.append(tuple(video_feats) if needs_video(mode) else None)
    args.append(audio_feats if needs_audio(mode) else None)
    return tuple(args)


def flat_denoise_inputs(mode: str, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats) -> list[torch.Tensor]:
    """The denoiser's inputs flattened in graph order (x_t, t, video_*, audio_*)."""
    flat = [x_t, t]
    if needs_video(mode):
        flat += list(as_tuple(video_feats))
    if needs_audio(mode):
        flat += list(as_tuple(audio_feats))
    return flat


def mode_of(video_feats, audio_feats) -> str:
    """Which denoise graph a call needs, from which modalities are present."""
    if video_feats is not None and audio_feats is not None:
        return "av"
    if video_feats is not None:
        return "video"
    if audio_feats is not None:
        return "audio"
    raise ValueError("denoise needs video features, audio features or both; got neither")


# ---------------------------------------------------------------- nested <-> flat arguments

def flatten_args(args: Any) -> list[torch.Tensor]:
    """The tensors of a nested argument tuple, depth first (``None`` leaves dropped)."""
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (tuple, list)):
        return [t for a in args for t in flatten_args(a)]
    return []


def rebuild_args(flat: Sequence[torch.Tensor], template: Any) -> Any:
    """Inverse of :func:`flatten_args`: put flat tensors back into ``template``'s nesting."""
    queue = list(flat)

    def build(tpl: Any) -> Any:
        if isinstance(tpl, torch.Tensor):
            return queue.pop(0)
        if isinstance(tpl, (tuple, list)):
            return tuple(build(t) for t in tpl)
        return None
    return build(template)


class FlatInputs(nn.Module):
    """Wraps a graph so it takes flat tensors (for compilers that want a flat input list)."""

    def __init__(self, inner: nn.Module, template: tuple):
        super().__init__()
        self.inner = inner
        self.template = template

    def forward(self, *flat: torch.Tensor):
        return self.inner(*rebuild_args(flat, self.template))
