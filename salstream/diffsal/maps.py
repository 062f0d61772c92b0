"""Saliency maps after the model: scaled and resized the same way by every caller.

Overlays, encoder guidance, the quality meters and the metrics all take a map in [0, 1]
at model resolution and need it rescaled (min-max, or divided by its peak) and resized
to a frame. These two functions are the one implementation of both.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

PEAK_FLOOR = 1e-6      # below this a map counts as empty: scaling by its peak would amplify noise


def normalize_map(m: np.ndarray, how: str = "minmax", dtype=np.float32) -> np.ndarray:
    """``"minmax"``: stretch to span [0, 1] (a constant map becomes all zeros);
    ``"peak"``: clip to [0, 1] and divide by the maximum (a map whose peak is ~0 stays as is)."""
    m = np.asarray(m, dtype=dtype)
    if how == "minmax":
        lo, hi = float(m.min()), float(m.max())
        return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    if how == "peak":
        m = np.clip(m, 0.0, 1.0)
        peak = float(m.max())
        return m / peak if peak > PEAK_FLOOR else m
    raise ValueError(f"normalize how={how!r}: choose 'minmax' or 'peak'")


def resize_map(m: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a 2-D map to ``size`` = (H, W): area averaging when shrinking, bilinear
    (half-pixel centres, like ``torch`` ``align_corners=False``) when enlarging; unchanged if equal."""
    h, w = int(size[0]), int(size[1])
    if m.shape[:2] == (h, w):
        return m
    shrink = m.shape[0] > h and m.shape[1] > w
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
