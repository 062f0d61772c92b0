"""Saliency-UNet: noisy-map encoder + multi-modal attention (MAM) decoder (spec §4).

Module and attribute names follow the official checkpoint (``decoder_net.*``) so
its tensors load unchanged; the building blocks are parameterised so a narrower
profile can reuse them with other widths, kernels and slot counts.

Building blocks (constructor arguments):

``TimeEmbedding(base_channels, embed_channels)``
    sinusoid of ``base_channels`` features (sines first) -> Linear -> swish -> Linear.
``ResnetBlock(in_channels, out_channels, temb_channels, dropout=0.1, groups=32)``
    GroupNorm/swish/conv residual block with an additive timestep projection.
``PadDownsample(channels, stride)``
    zero-pad right/bottom by 1, then a 3×3 conv with the given stride.
``UpEmbed(in_channels, out_channels)``
    per time slot: bilinear ×2 -> (3×3 conv, dilation 2, no bias -> BN -> ReLU) × 2.
``EfficientCrossAttention(dim, num_heads=2, kv_kernel=2, q_kernel=3, qkv_bias=True)``
    ECA: depth-wise conv + LN + Linear for Q (``q_kernel`` taps), K and V (kernel =
    stride = ``kv_kernel``); per-frame attention, logits scaled by ``dim ** -0.5``.
``MAMBlock(dim, num_heads=2, kv_kernel=2, mlp_ratio=2.0, audio_channels=512, q_kernel=3,
qkv_bias=True)``
    LN -> ECA (+ MIM when audio is given) -> residual -> LN -> MLP -> residual, on
    (B, C, S, H, W) slot stacks. ``audio_channels=None`` builds no ``align_conv``
    (video-only network).
``MAMStage(dim, in_dim=None, ...)``
    optional ``UpEmbed`` from ``in_dim`` (stages after the first), optional skip add,
    then one ``MAMBlock`` (same keyword arguments).
``Readout(in_channels, out_channels, kernel)``
    Conv3d (kernel, 1, 1) with equal stride, no bias, ReLU: collapses ``kernel`` slots.
``MAMDecoder(channels, num_heads, kv_kernels, mlp_ratio, audio_channels, num_slots,
readout_kernel, readout_channels, head_channels, q_kernel)``
    the MAM stages, per-stage LN + readout summed at 2^n × the first stage's grid,
    then conv-BN-ReLU (``mt_proj``).
``SaliencyUNet(channels=(768, 384, 192, 96), base_channels=96, ...)``
    the whole denoiser: ``forward(x_t, t, video, audio) -> x0`` in (0, 1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from salstream.diffsal.models.layers import Mlp, from_frames, to_frames
from salstream.errors import SalstreamError


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), spec §4.1.

    ``dim // 2`` frequencies exp(-i·ln(1e4)/(dim//2 - 1)); sines first, then cosines.
    """
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -step)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``temb``: sinusoid -> Linear -> swish -> Linear (weights in ``dense``)."""

    def __init__(self, base_channels: int, embed_channels: int):
        super().__init__()
        self.base_channels = base_channels
        self.dense = nn.ModuleList([nn.Linear(base_channels, embed_channels),
                                    nn.Linear(embed_channels, embed_channels)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.dense[0](timestep_embedding(t, self.base_channels))
        return self.dense[1](F.silu(h))


class ResnetBlock(nn.Module):
    """GN -> swish -> conv (+ timestep) -> GN -> swish -> dropout -> conv, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int,
                 dropout: float = 0.1, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1×1 projection only when the width changes (checkpoint name: nin_shortcut).
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class PadDownsample(nn.Module):
    """Asymmetric zero pad (right/bottom by 1) then a strided 3×3 conv: H -> H / stride."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class UpEmbed(nn.Module):
    """Per-slot ×2 upsampling into the next stage's width (``patch_embed.0``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # Indices 1, 2, 4, 5 carry weights in the checkpoint; keep this exact layout.
        self.proj = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_frames(self.proj(to_frames(x)), x.shape[2])


class _DepthwiseProjection(nn.Module):
    """Depth-wise conv over one frame, then tokens + LayerNorm (``conv`` / ``bn``).

    The stored kernel is 3-D (the official code runs Conv3d on a single time slot);
    with one slot and zero temporal padding only the middle temporal tap ever sees
    data, so the frame is convolved in 2-D with that tap: same result, and 2-D
    depth-wise convolutions are what every runtime optimises.
    """

    def __init__(self, dim: int, kernel: tuple[int, int, int], stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel, stride=(1, stride, stride),
                              padding=(kernel[0] // 2, padding, padding), bias=False, groups=dim)
        self.bn = nn.LayerNorm(dim)  # named "bn" in the checkpoint, but it is a LayerNorm
        self._stride = stride
        self._padding = padding

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight[:, :, self.conv.kernel_size[0] // 2]
        y = F.conv2d(frames, w, stride=self._stride, padding=self._padding, groups=frames.shape[1])
        return self.bn(y.flatten(2).transpose(1, 2))


class EfficientCrossAttention(nn.Module):
    """ECA (spec §4.3): queries from every pixel, keys/values from a k×k-strided grid.

    Attention runs per frame (per time slot); the key source may differ from the
    query/value source (MIM-weighted audio in AV mode).
    """

    def __init__(self, dim: int, num_heads: int = 2, kv_kernel: int = 2, q_kernel: int = 3,
                 qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ECA width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = dim ** -0.5  # the official code scales by the full width, not per head
        self.conv_proj_q = _DepthwiseProjection(dim, (q_kernel,) * 3, 1, q_kernel // 2)
        self.conv_proj_k = _DepthwiseProjection(dim, (1, kv_kernel, kv_kernel), kv_kernel, 0)
        self.conv_proj_v = _DepthwiseProjection(dim, (1, kv_kernel, kv_kernel), kv_kernel, 0)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, c = x.shape
        return x.reshape(n, tokens, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, frames: torch.Tensor, key_frames: torch.Tensor) -> torch.Tensor:
        """frames, key_frames: (N, C, H, W) -> tokens (N, H·W, C)."""
        q = self._heads(self.proj_q(self.conv_proj_q(frames)))
        k = self._heads(self.proj_k(self.conv_proj_k(key_frames)))
        v = self._heads(self.proj_v(self.conv_proj_v(frames)))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.proj(out.reshape(out.shape[0], out.shape[1], -1))


class MAMBlock(nn.Module):
    """One multi-modal attention block on a slot stack (``blocks.0``, spec §4.3)."""

    def __init__(self, dim: int, num_heads: int = 2, kv_kernel: int = 2, mlp_ratio: float = 2.0,
                 audio_channels: Optional[int] = 512, q_kernel: int = 3, qkv_bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = EfficientCrossAttention(dim, num_heads, kv_kernel, q_kernel, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.align_conv = nn.Conv2d(audio_channels, dim, 1) if audio_channels else None

    def interaction_keys(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """MIM (spec §4.3): the audio-weighted key source, as (B·S, C, H, W) frames.

        ``x`` is the block input (B, C, S, H, W); ``audio`` (B, Ca, S, h, w) with slot
        j of the audio meeting slot j of ``x``.
        """
        if self.align_conv is None:
            raise SalstreamError("this network was built without audio (audio_channels=None); "
                                 "call it with audio_feats=None")
        b, c, s, h, w = x.shape
        if audio.shape[2] != s:
            raise SalstreamError(f"audio has {audio.shape[2]} slices but the decoder has {s} time "
                                 "slots; they must be equal")
        a = self.align_conv(to_frames(audio))
        ah, aw = a.shape[-2:]
        if (ah, aw) != (h, w):
            if h % ah or w % aw or h // ah != w // aw:
                raise SalstreamError(f"audio grid {ah}×{aw} cannot be upsampled to the stage grid "
                                     f"{h}×{w}; the audio grid must equal the video grid at H/32×W/32")
            # 1×1 conv first, then nearest upsampling (the code's order, §9 row 8).
            a = F.interpolate(a, size=(h, w), mode="nearest")
        a = from_frames(a, s)
        mask = torch.softmax((a * x).mean(dim=2, keepdim=True), dim=-1)  # softmax over width only
        weighted = (a * mask).contiguous()
        # The official code re-reads this (B, C, S, H, W) buffer as (B·S, H·W, C) without
        # a permute, mixing channels, slots and space; the checkpoint was trained on it.
        return weighted.reshape(b * s, h * w, c).transpose(1, 2).reshape(b * s, c, h, w)

    def forward(self, x: torch.Tensor, audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, S, H, W) slot stack; audio: (B, Ca, S, h, w) or None."""
        b, c, s, h, w = x.shape
        tokens = to_frames(x).flatten(2).transpose(1, 2)          # (B·S, H·W, C)
        normed = self.norm(tokens)
        frames = normed.transpose(1, 2).reshape(b * s, c, h, w)
        keys = frames if audio is None else self.interaction_keys(x, audio)
        tokens = tokens + self.attn(frames, keys)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return from_frames(tokens.transpose(1, 2).reshape(b * s, c, h, w), s)


class MAMStage(nn.Module):
    """``mid_stages.i``: [UpEmbed from the previous width] [+ skip] -> MAMBlock."""

    def __init__(self, dim: int, in_dim: Optional[int] = None, num_heads: int = 2,
                 kv_kernel: int = 2, mlp_ratio: float = 2.0, audio_channels: Optional[int] = 512,
                 q_kernel: int = 3, qkv_bias: bool = True):
        super().__init__()
        self.patch_embed = nn.ModuleList([UpEmbed(in_dim, dim)]) if in_dim is not None else None
        self.blocks = nn.ModuleList([MAMBlock(dim, num_heads, kv_kernel, mlp_ratio, audio_channels,
                                              q_kernel, qkv_bias)])

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None,
                audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.patch_embed is not None:
            x = self.patch_embed[0](x)
        if skip is not None:
            x = x + skip
        return self.blocks[0](x, audio)


class Readout(nn.Module):
    """``redu_chan_up.i``: Conv3d (k, 1, 1) / stride (k, 1, 1), no bias, then ReLU.

    (B, C, S, H, W) -> (B, out, (S - k) // k + 1, H, W). When that is one slot, it is
    run as a 1×1 Conv2d over the first k slots stacked into channels: the same sum,
    but a kernel every runtime optimises (and slots ≥ k are never touched).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (kernel, 1, 1), stride=(kernel, 1, 1), bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.proj[0]
        k = conv.kernel_size[0]
        b, c, s, h, w = x.shape
        if not k <= s < 2 * k:
            return self.proj(x)
        # channel index c·k + j of the stacked input meets weight[:, c, j]
        stacked = x[:, :, :k].reshape(b, c * k, h, w)
        y = F.conv2d(stacked, conv.weight.reshape(conv.out_channels, c * k, 1, 1))
        return torch.relu(y).unsqueeze(2)


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs {n} values (one per stage), got {len(value)}")
        return list(value)
    return [value] * n


class MAMDecoder(nn.Module):
    """``invpt_decoder``: MAM stages, readouts summed at 2^n × the first grid, ``mt_proj``."""

    def __init__(self, channels: Sequence[int] = (768, 384, 192, 96), num_heads=2,
                 kv_kernels: Sequence[int] = (2, 4, 8, 16), mlp_ratio: float = 2.0,
                 audio_channels: Optional[int] = 512, num_slots: int = 9, readout_kernel: int = 5,
                 readout_channels: int = 768, head_channels: int = 96, q_kernel: int = 3):
        super().__init__()
        n = len(channels)
        heads = _per_stage(num_heads, n, "num_heads")
        kv = _per_stage(kv_kernels, n, "kv_kernels")
        if (num_slots - readout_kernel) // readout_kernel + 1 != 1 or readout_kernel > num_slots:
            raise ValueError(f"a readout kernel of {readout_kernel} must collapse {num_slots} slots "
                             "to exactly one")
        self.num_slots = num_slots
        self.readout_kernel = readout_kernel
        self.mid_stages = nn.ModuleList()
        self.norm_mts = nn.ModuleList()
        self.redu_chan_up = nn.ModuleList()
        prev = None
        for i, c in enumerate(channels):
            self.mid_stages.append(MAMStage(c, prev, heads[i], kv[i], mlp_ratio, audio_channels, q_kernel))
            self.norm_mts.append(nn.LayerNorm(c))
            self.redu_chan_up.append(Readout(c, readout_channels, readout_kernel))
            prev = c
        self.mt_proj = nn.Sequential(nn.Conv2d(readout_channels, head_channels, 3, padding=1),
                                     nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True))

    def forward(self, stacks: Sequence[torch.Tensor], audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """stacks[0]: first-stage input (B, C0, S, h, w); stacks[i]: skip added at stage i.

        Returns the head features (B, head_channels, h·2^n, w·2^n).
        """
        x = stacks[0]
        h, w = x.shape[-2:]
        n = len(self.mid_stages)
        size = (h * 2 ** n, w * 2 ** n)
        total = 0
        # The readout collapses slots 0..k-1 into one; later slots need no readout norm.
        read = self.readout_kernel if self.num_slots < 2 * self.readout_kernel else None
        for i, stage in enumerate(self.mid_stages):
            skip = stacks[i] if 0 < i < len(stacks) else None
            x = stage(x, skip, audio)
            # LayerNorm over channels per token, then collapse the slots and upsample.
            y = self.norm_mts[i](x[:, :, :read].permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
            y = self.redu_chan_up[i](y).squeeze(2)
            total = total + F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.mt_proj(total)


class SigmoidHead(nn.Module):
    """``logits``: 1×1 conv to one channel, then sigmoid."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.linear_pred = nn.Conv2d(in_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear_pred(x))


class SaliencyUNet(nn.Module):
    """``decoder_net``: x̂0 = UNet(x_t, t, video maps, audio features), spec §4.

    ``channels``: MAM stage widths, coarsest first; the first ``len(channels) - 1``
    video maps (same widths, grids /32, /16, /8 of the map) each get the noisy-map
    feature of their size appended as the last time slot. ``num_slots`` counts the
    slots after that append (video slots + 1) and must equal the number of audio
    slices. ``skip_unread_slots``: in video-only mode compute only the slots the
    readout reads (exactly the same output, spec §4.5; see :meth:`forward`).
    """

    def __init__(self, channels: Sequence[int] = (768, 384, 192, 96), base_channels: int = 96,
                 num_heads=2, kv_kernels: Sequence[int] = (2, 4, 8, 16), mlp_ratio: float = 2.0,
                 audio_channels: Optional[int] = 512, num_slots: int = 9, readout_kernel: int = 5,
                 readout_channels: int = 768, head_channels: Optional[int] = None,
                 dropout: float = 0.1, q_kernel: int = 3, skip_unread_slots: bool = True):
        super().__init__()
        self.channels = tuple(channels)
        self.num_slots = num_slots
        self.readout_kernel = readout_kernel
        self.skip_unread_slots = skip_unread_slots
        temb_channels = 4 * base_channels
        self.temb = TimeEmbedding(base_channels, temb_channels)
        self.conv_in = nn.Conv2d(1, base_channels, 3, padding=1)
        self.down1 = PadDownsample(base_channels, 4)
        # Noise encoder widths run fine-to-coarse: base -> channels[-2] -> ... -> channels[0].
        widths = [base_channels] + list(reversed(self.channels[:-1]))
        self.res_encoder = nn.ModuleList(
            nn.Sequential(ResnetBlock(cin, cout, temb_channels, dropout), PadDownsample(cout, 2))
            for cin, cout in zip(widths[:-1], widths[1:])
        )
        self.invpt_decoder = MAMDecoder(self.channels, num_heads, kv_kernels, mlp_ratio, audio_channels,
                                        num_slots, readout_kernel, readout_channels,
                                        head_channels or base_channels, q_kernel)
        self.logits = SigmoidHead(head_channels or base_channels)
        self.init_weights()

    def init_weights(self) -> None:
        """Training-from-scratch init of the official code: N(0, 0.01²) weights, zero bias."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def noise_features(self, x_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Noisy map -> features at grids /32, /16, /8 (coarsest first), each (B, C, H, W)."""
        temb = self.temb(t)
        h = self.down1(self.conv_in(x_t))
        feats = []
        for block in self.res_encoder:
            h = block[1](block[0](h, temb))
            feats.append(h)
        return feats[::-1]

    def _video_only_slots(self) -> Optional[int]:
        # Without audio nothing mixes slots, and the readout reads slots 0..k-1 only;
        # the noise slot is the last one, so when k < num_slots it cannot matter.
        # (Eval only: in training, BatchNorm statistics do mix the slots.)
        if self.skip_unread_slots and not self.training and self.readout_kernel < self.num_slots:
            return self.readout_kernel
        return None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                video: Optional[Sequence[torch.Tensor]], audio: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t (B, 1, H, W), t (B,) int, video maps coarsest first (B, C_i, S-1, h_i, w_i)
        or None (audio-only: zeros stand in for the video maps), audio (B, Ca, S, h, w) or
        None (video-only). Returns x̂0 (B, 1, H, W) in (0, 1). Never modifies its inputs.
        """
        if video is None and audio is None:
            raise SalstreamError("denoise needs video features, audio features or both; got neither")
        n_joined = len(self.channels) - 1
        keep = self._video_only_slots() if audio is None else None
        if keep is not None:
            # Video-only: the output cannot depend on x_t or t (spec §4.5 a); skip the
            # noise encoder and the slots the readout never reads.
            stacks = [v[:, :, :keep] for v in video[:n_joined]]
        else:
            noise = self.noise_features(x_t, t)
            if video is None:
                video = [x.new_zeros(x.shape[0], x.shape[1], self.num_slots - 1, *x.shape[-2:])
                         for x in noise]
            stacks = []
            for i, (v, nz) in enumerate(zip(video[:n_joined], noise)):
                if v.shape[-2:] != nz.shape[-2:] or v.shape[1] != nz.shape[1]:
                    raise SalstreamError(
                        f"video map {i} has shape {tuple(v.shape[1:])} but the noisy map "
                        f"{tuple(x_t.shape[-2:])} gives a {nz.shape[1]}×{tuple(nz.shape[-2:])} "
                        "feature; the map size must equal the video input size")
                stacks.append(torch.cat([v, nz.unsqueeze(2)], dim=2))  # a new tensor: inputs untouched
        out = self.logits(self.invpt_decoder(stacks, audio))
        return F.interpolate(out, size=tuple(x_t.shape[-2:]), mode="bilinear", align_corners=False)
