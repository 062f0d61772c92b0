"""Audio encoder of the `full` profile (spec §3).

``VGGish`` (``audio_net``): the AudioSet VGGish convolution stack, frozen; its FC head
(``embeddings``) is kept only so the official checkpoint loads, and never runs.
``AudioTemporalNet`` (``spatiotemp_net``): one pre-norm transformer layer over all
slice × space tokens plus a final LayerNorm. Its patch embedding and temporal
position embedding exist in the checkpoint but the official forward discards their
result, so they are never computed here.
"""
from __future__ import annotations

import torch
from torch import nn

AUDIO_CHANNELS = 512


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


def _pool() -> list[nn.Module]:
    return [nn.MaxPool2d(2, 2)]


class VGGish(nn.Module):
    """``features``: (N, 1, h, w) log-mel -> (N, 512, h/16, w/16)."""

    def __init__(self):
        super().__init__()
        # Layer indices 0, 3, 6, 8, 11, 13 carry weights in the checkpoint.
        self.features = nn.Sequential(
            *_conv(1, 64), *_pool(),
            *_conv(64, 128), *_pool(),
            *_conv(128, 256), *_conv(256, 256), *_pool(),
            *_conv(256, 512), *_conv(512, 512), *_pool(),
        )
        # Unused FC head of the original 96×64 VGGish (12 288 = 512·4·6 inputs).
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention (``layers.0.0``): LN -> qkv (no bias) -> out."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Pre-norm MLP (``layers.0.1``): LN -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([SelfAttention(dim, heads, head_dim), FeedForward(dim, mlp_dim)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


class AudioTemporalNet(nn.Module):
    """``spatiotemp_net``: (B, 512, S, h, w) VGGish maps -> same shape, mixed over all
    S·h·w positions by one transformer layer (2 heads × 64, MLP 256)."""

    def __init__(self, dim: int = AUDIO_CHANNELS, depth: int = 1, heads: int = 2, head_dim: int = 64,
                 mlp_dim: int = 256, slices: int = 9):
        super().__init__()
        # Dead in the official forward (computed, then thrown away); kept for the checkpoint.
        self.to_patch_embedding = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 1, slices, 1, 1))
        self.transformer = Transformer(dim, depth, heads, head_dim, mlp_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = feats.shape
        tokens = feats.flatten(2).transpose(1, 2)             # (B, S·h·w, C), slice-major
        out = self.transformer(tokens)
        return out.transpose(1, 2).reshape(b, c, s, h, w)
