"""The `full` profile: the published DiffSal network (spec §2–§4, code variant per §9).

The module tree reproduces the official state-dict names exactly (``visual_net.*``,
``audio_net.*``, ``spatiotemp_net.*``, ``fc.*``, ``decoder_net.*``), so an official
checkpoint with its ``module.`` prefix stripped loads with ``strict=True``. Tensors the
official forward never uses (``audio_net.embeddings``, ``fc``,
``spatiotemp_net.to_patch_embedding``, ``spatiotemp_net.pos_embedding``) exist and
are never computed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from salstream.diffsal.config import AudioConfig, ModelConfig
from salstream.diffsal.models.base import Features, SaliencyModel
from salstream.diffsal.models.mvit import MViT
from salstream.diffsal.models.unet import SaliencyUNet
from salstream.diffsal.models.vggish import AUDIO_CHANNELS, AudioTemporalNet, VGGish
from salstream.diffsal.registry import register_profile
from salstream.errors import SalstreamError


def full_config() -> ModelConfig:
    return ModelConfig(profile="full", frames=16, frame_stride=1, target_index=8,
                       input_size=(224, 384), map_size=(224, 384), pixel_norm="av",
                       per_frame_video=False, default_steps=4,
                       audio=AudioConfig(slice_size=(112, 192)))


def _check_config(cfg: ModelConfig) -> None:
    h, w = cfg.input_size
    if h % 32 or w % 32:
        raise ValueError(f"full: input_size {cfg.input_size} must be multiples of 32")
    if tuple(cfg.map_size) != tuple(cfg.input_size):
        raise ValueError(f"full: map_size {cfg.map_size} must equal input_size {cfg.input_size} "
                         "(the noisy map joins the video features at the same grids)")
    ah, aw = cfg.audio.slice_size
    if (ah // 16, aw // 16) != (h // 32, w // 32) or ah % 16 or aw % 16:
        raise ValueError(f"full: audio slice_size {cfg.audio.slice_size} must be half of input_size "
                         f"{cfg.input_size} (audio grid /16 = video grid /32)")
    if cfg.frames % 2 or cfg.frames // 2 + 1 != cfg.audio.n_slices:
        raise ValueError(f"full: {cfg.frames} frames give {cfg.frames // 2} video slots + 1 noise slot, "
                         f"which must equal audio n_slices ({cfg.audio.n_slices})")


class FullDiffSal(SaliencyModel):
    """DiffSal as released: MViTv2-S + VGGish/transformer + Saliency-UNet."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.visual_net = MViT()
        self.audio_net = VGGish()
        # pos_embedding has 9 slots in the checkpoint whatever the window (it is dead anyway)
        self.spatiotemp_net = AudioTemporalNet(dim=AUDIO_CHANNELS, slices=9)
        self.fc = nn.Sequential(nn.Linear(128, 512), nn.ReLU(inplace=True), nn.Linear(512, 768))
        self.decoder_net = SaliencyUNet(num_slots=config.audio.n_slices)

    def _check_batch(self, x: torch.Tensor, name: str, shape: tuple) -> None:
        if x.dim() != len(shape) or any(e is not None and a != e for a, e in zip(x.shape, shape)):
            want = "×".join("B" if i == 0 else str(e) for i, e in enumerate(shape))
            raise SalstreamError(f"{name} has shape {tuple(x.shape)}, expected {want}")

    def encode_video(self, video: torch.Tensor) -> Features:
        """Normalised clip (B, 3, 16, H, W) -> (V0, V1, V2): (B, 768, 8, H/32, W/32),
        (B, 384, 8, H/16, W/16), (B, 192, 8, H/8, W/8)."""
        self._check_batch(video, "video", (None, 3, self.config.frames, None, None))
        return self.visual_net(video)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel slices (B, 1, 9, h, w) -> f_a (B, 512, 9, h/16, w/16)."""
        s = self.config.audio.n_slices
        self._check_batch(audio, "audio", (None, 1, s, None, None))
        b, _, _, h, w = audio.shape
        if h % 16 or w % 16:
            raise SalstreamError(f"audio slices are {h}×{w}; both sides must be multiples of 16 "
                                 f"(the configured slice size is {self.config.audio.slice_size})")
        # (B, 1, S, h, w) -> (B·S, 1, h, w): one channel, so a plain reshape is batch-major.
        with torch.no_grad():  # VGGish is frozen (never trained, spec §3)
            maps = self.audio_net(audio.reshape(b * s, 1, h, w))
        maps = maps.reshape(b, s, *maps.shape[1:]).transpose(1, 2)
        return self.spatiotemp_net(maps)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats: Optional[Features],
                audio_feats: Optional[torch.Tensor]) -> torch.Tensor:
        """x̂0 (B, 1, *map_size) in (0, 1) from the noisy map x_t at integer timesteps t (B,).

        The features are only read (never modified), so one encoding serves every step.
        Modes: ``audio_feats=None`` is the video-only network of the official code (keys
        from the video itself; the result does not depend on x_t or t, spec §4.5).
        ``video_feats=None`` is audio-only, which the paper reports but the official code
        only runs by feeding random Gaussians as video maps: here **zeros** stand in for
        the video maps instead (our choice, deterministic; not the paper's behaviour).
        """
        if video_feats is None and audio_feats is None:
            raise SalstreamError("denoise needs video features, audio features or both (mode av, "
                                 "video or audio); got neither")
        if not torch.is_tensor(t):
            t = torch.tensor(t)
        t = t.to(x_t.device).reshape(-1)
        if t.numel() == 1 and x_t.shape[0] > 1:
            t = t.expand(x_t.shape[0])
        return self.decoder_net(x_t, t, video_feats, audio_feats)


@register_profile("full", full_config)
def build_full(config: ModelConfig) -> FullDiffSal:
    return FullDiffSal(config)
