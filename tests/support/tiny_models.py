"""Small real networks implementing the SaliencyModel interface, for export/engine tests.

They use the operations the real profiles rely on (convolutions, LayerNorm, a raw
reshape that mixes batch items' slots, sinusoidal timestep embedding, sigmoid
output) at sizes that export and run in well under a second.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from salstream.diffsal.config import AudioConfig, ModelConfig
from salstream.diffsal.models.base import SaliencyModel


def tiny_config(per_frame: bool = True, profile: str = "tiny") -> ModelConfig:
    return ModelConfig(profile=profile, frames=4, target_index=3 if per_frame else 2, input_size=(32, 48),
                       map_size=(32, 48), per_frame_video=per_frame, default_steps=4,
                       audio=AudioConfig(n_slices=3, slice_size=(16, 24)))


class TinySaliency(SaliencyModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        conv = nn.Conv2d if config.per_frame_video else nn.Conv3d
        self.v1 = conv(3, 8, 3, stride=2, padding=1)
        self.v2 = conv(8, 12, 3, stride=2, padding=1)
        self.a1 = nn.Conv2d(1, 8, 3, stride=2, padding=1) if config.per_frame_video else nn.Conv3d(1, 8, 3, stride=(1, 2, 2), padding=1)
        self.a_norm = nn.LayerNorm(8)
        self.t_proj = nn.Linear(16, 8)
        self.x_in = nn.Conv2d(1, 8, 3, padding=1)
        self.fuse = nn.Conv2d(8 + 8 + 12 + 8, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 1)

    def encode_video(self, video: torch.Tensor):
        f1 = F.gelu(self.v1(video))
        f2 = F.gelu(self.v2(f1))
        return f1, f2

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.a1(audio))
        a = a.mean(dim=(-2, -1))                  # (B, 8) per slice or (B, 8, S) per window
        return self.a_norm(a.transpose(1, -1)).transpose(1, -1)

    def _t_embed(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, device=t.device, dtype=torch.float32) / 8)
        ang = t.float()[:, None] * freqs[None]
        return self.t_proj(torch.cat([ang.sin(), ang.cos()], dim=1))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats: Optional[torch.Tensor]):
        if video_feats is None and audio_feats is None:
            raise ValueError("denoise needs video or audio features")
        b, _, h, w = x_t.shape
        parts = [self.x_in(x_t) + self._t_embed(t)[:, :, None, None]]
        if video_feats is not None:
            f1, f2 = (f.mean(dim=2) for f in video_feats)       # over time
            parts += [F.interpolate(f1, size=(h, w), mode="bilinear", align_corners=False),
                      F.interpolate(f2, size=(h, w), mode="nearest")]
        else:
            parts += [x_t.new_zeros(b, 8, h, w), x_t.new_zeros(b, 12, h, w)]
        if audio_feats is not None:
            a = audio_feats                                     # (B, 8, S)
            # a raw reshape like the official MIM key source: items' channels and slots mix
            a = a.reshape(b * a.shape[2], 8).reshape(b, a.shape[2], 8).mean(dim=1)
            parts.append(a[:, :, None, None].expand(b, 8, h, w))
        else:
            parts.append(x_t.new_zeros(b, 8, h, w))
        return torch.sigmoid(self.out(F.gelu(self.fuse(torch.cat(parts, dim=1)))))


def tiny_model(per_frame: bool = True, seed: int = 0, profile: str = "tiny") -> TinySaliency:
    torch.manual_seed(seed)
    model = TinySaliency(tiny_config(per_frame, profile)).eval()
    with torch.no_grad():  # larger output weights: maps that vary visibly with the inputs
        model.out.weight.mul_(20.0)
    return model
