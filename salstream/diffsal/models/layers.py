"""Small building blocks shared by the encoders and the Saliency-UNets of both profiles."""
from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (``fc1``/``fc2``: the names the official checkpoint uses)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, H, W) -> (B·S, C, H, W), batch-major then slot."""
    b, c, s, h, w = x.shape
    return x.transpose(1, 2).reshape(b * s, c, h, w)


def from_frames(x: torch.Tensor, slots: int) -> torch.Tensor:
    """(B·S, C, H, W) -> (B, C, S, H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n // slots, slots, c, h, w).transpose(1, 2)
