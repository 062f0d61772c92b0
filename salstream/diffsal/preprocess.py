"""Frame preprocessing and map post-processing, written once for every caller.

Streaming, training, evaluation and export parity all go through these functions, so a
frame is prepared the same way everywhere and a map leaves the model the same way.

Resizing uses PyTorch's antialiased bilinear filter on uint8 (what torchvision's
``Resize`` does on tensors and close to PIL's bilinear, which the DHF1K pipeline used);
antialiasing matters because camera frames are usually shrunk 2–3×, and on uint8 it
costs ≈0.5 ms per 640×480 frame on one core.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from salstream.diffsal.config import PIXEL_NORMS, ModelConfig
from salstream.diffsal.maps import normalize_map, resize_map
from salstream.errors import SalstreamError


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise SalstreamError(f"frame must be a numpy array (H, W, 3) uint8 RGB, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SalstreamError(f"frame must have shape (H, W, 3) RGB, got {rgb.shape}; "
                             "convert grey or RGBA frames to RGB first")
    if rgb.dtype != np.uint8:
        raise SalstreamError(f"frame must be uint8 (0-255), got {rgb.dtype}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise SalstreamError(f"frame of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small")
    return rgb


def _norm_stats(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in PIXEL_NORMS:
        raise SalstreamError(f"unknown pixel_norm {name!r}; choose one of {', '.join(sorted(PIXEL_NORMS))}")
    mean, std = PIXEL_NORMS[name]
    return (torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(3, 1, 1))


def resize_rgb(rgb: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 tensor, antialiased bilinear (unchanged if same size)."""
    rgb = np.ascontiguousarray(_check_rgb(rgb))
    if not rgb.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        rgb = rgb.copy()
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[1:]) == (h, w):
        return x
    return F.interpolate(x.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True).squeeze(0)


def preprocess_frame(rgb: np.ndarray, cfg: ModelConfig) -> torch.Tensor:
    """One RGB frame (H, W, 3) uint8 -> (3, *cfg.input_size) float32 normalised by ``cfg.pixel_norm``.

    Each frame is prepared exactly once on arrival; windows reuse the result.
    """
    mean, std = _norm_stats(cfg.pixel_norm)
    x = resize_rgb(rgb, cfg.input_size).to(torch.float32)
    return (x - mean) / std


def preprocess_clip(frames: Sequence[np.ndarray], cfg: ModelConfig) -> torch.Tensor:
    """A list of RGB frames -> (3, T, *cfg.input_size), the layout ``encode_window`` takes (add a batch axis)."""
    if len(frames) == 0:
        raise SalstreamError("preprocess_clip got no frames")
    return torch.stack([preprocess_frame(f, cfg) for f in frames], dim=1)


def postprocess_map(x0: torch.Tensor, size: Optional[Sequence[int]] = None, normalize: bool = False) -> np.ndarray:
    """Model output (B, 1, h, w) -> float32 numpy maps (B, H, W) in [0, 1].

    Values are clamped to [0, 1]. ``size`` (H, W): resized to e.g. the source frame size,
    and ``normalize=True``: min-max scaled to span [0, 1] (how the official code writes
    prediction images before the metrics; a constant map becomes all zeros), both by
    :mod:`salstream.diffsal.maps`.
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() != 4 or x0.shape[1] != 1:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise SalstreamError(f"saliency output must be a tensor (B, 1, h, w), got {shape}")
    maps = x0.detach().to(device="cpu", dtype=torch.float32)[:, 0].numpy()
    if size is not None:
        maps = np.stack([resize_map(m, size) for m in maps])
    maps = np.clip(maps, 0.0, 1.0)
    if normalize:
        maps = np.stack([normalize_map(m) for m in maps])
    return np.ascontiguousarray(maps, dtype=np.float32)
