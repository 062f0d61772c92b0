"""MViTv2-S video encoder (``visual_net``, spec §2).

Pooling attention with decomposed relative positions and residual pooling, a class
token carried through every block, and a LayerNorm that *replaces* the running token
stream at the end of each of the four stages (blocks 0, 2, 13, 15). Tensor names and
shapes follow the official checkpoint (mmaction2 layout).

Relative-position tables are stored at their 224×224 training lengths; any other
input (any H, W that are multiples of 32) resamples them at run time by 1-D linear
interpolation. Resampled-and-gathered tables are cached per size while no gradient
is being recorded.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from salstream.diffsal.models.layers import Mlp
from salstream.errors import SalstreamError

# MViTv2-S: 16 blocks; width and heads double and q is pooled ×2 at blocks 1, 3, 14;
# kv pooling starts at (1, 8, 8) and halves at each of those blocks.
DEPTH = 16
DOWNSCALE_BLOCKS = (1, 3, 14)
STAGE_END_BLOCKS = {0: 0, 2: 1, 13: 2, 15: 3}   # block index -> norm{i}
EMBED_DIM = 96
TRAIN_GRID = (8, 56)  # token grid (t, h=w) of the 16×224×224 training clips: table lengths


def _rel_pos_gather(table: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Relative-position rows for every (query, key) pair on one axis: (q_len, k_len, C).

    The table needs 2·max(q, k) − 1 rows; a stored table of another length is resampled
    (linear, align_corners False). Coordinates of the shorter axis are stretched so
    both span the same extent: index = floor(i·max(k/q, 1) − j·max(q/k, 1) + (k−1)·max(q/k, 1)).
    """
    length = 2 * max(q_len, k_len) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear",
                              align_corners=False).squeeze(0).t()
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    # float32 arithmetic, truncated: the same integers the checkpoint was trained with
    qi = torch.arange(q_len, device=table.device)[:, None] * q_ratio
    kj = torch.arange(k_len, device=table.device)[None, :] * k_ratio
    idx = ((qi - kj) + (k_len - 1) * k_ratio).long()
    return table[idx]


def _pool_tokens(x: torch.Tensor, pool: nn.Module, thw: tuple[int, int, int],
                 norm: Optional[nn.Module] = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pool the spatio-temporal tokens of (B, heads, 1 + T·H·W, C); the class token
    (index 0) bypasses the pooling but not the norm."""
    b, n_heads, _, c = x.shape
    t, h, w = thw
    cls, grid = x[:, :, :1], x[:, :, 1:]
    grid = grid.reshape(b * n_heads, t, h, w, c).permute(0, 4, 1, 2, 3)
    grid = pool(grid)
    out_thw = tuple(grid.shape[2:])
    grid = grid.reshape(b, n_heads, c, -1).transpose(2, 3)
    x = torch.cat([cls, grid], dim=2)
    if norm is not None:
        x = norm(x)
    return x, out_thw


class MultiScaleAttention(nn.Module):
    """Pooling attention: q, k, v pooled per head (depth-wise 3×3×3 conv + LN)."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, stride_q: tuple[int, int, int],
                 stride_kv: tuple[int, int, int], rel_len_t: int, rel_len_hw: int):
        super().__init__()
        self.num_heads = num_heads
        self.out_dim = out_dim
        head_dim = out_dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)

        def pool(stride):
            return nn.Conv3d(head_dim, head_dim, 3, stride=stride, padding=1, groups=head_dim, bias=False)

        self.pool_q, self.norm_q = pool(stride_q), nn.LayerNorm(head_dim)
        self.pool_k, self.norm_k = pool(stride_kv), nn.LayerNorm(head_dim)
        self.pool_v, self.norm_v = pool(stride_kv), nn.LayerNorm(head_dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_len_hw, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_len_hw, head_dim))
        self.rel_pos_t = nn.Parameter(torch.zeros(rel_len_t, head_dim))
        self._rel_cache: dict = {}

    def _rel(self, name: str, q_len: int, k_len: int) -> torch.Tensor:
        table: torch.Tensor = getattr(self, name)
        # Inference tensors (a model built under inference_mode) have no version counter.
        cacheable = not (torch.is_grad_enabled() or torch.jit.is_tracing()
                         or torch.compiler.is_compiling() or table.is_inference())
        if not cacheable:
            return _rel_pos_gather(table, q_len, k_len)
        # The version counter changes on every in-place write (load_state_dict, optimiser).
        key = (name, q_len, k_len, table.device, table.dtype)
        stamp = (table._version, table.data_ptr())
        hit = self._rel_cache.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, _rel_pos_gather(table.detach(), q_len, k_len))
            self._rel_cache[key] = hit
        return hit[1]

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, q_thw = _pool_tokens(q, self.pool_q, thw, self.norm_q)
        k, k_thw = _pool_tokens(k, self.pool_k, thw, self.norm_k)
        v, _ = _pool_tokens(v, self.pool_v, thw, self.norm_v)

        attn = (q * self.scale) @ k.transpose(-2, -1)
        # Decomposed relative positions (t, h, w), from the *unscaled* pooled queries;
        # the class token row and column get none.
        (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
        rq = q[:, :, 1:].reshape(b, self.num_heads, qt, qh, qw, -1)
        rel_t = torch.einsum("bntyxc,tkc->bntyxk", rq, self._rel("rel_pos_t", qt, kt))
        rel_h = torch.einsum("bntyxc,ykc->bntyxk", rq, self._rel("rel_pos_h", qh, kh))
        rel_w = torch.einsum("bntyxc,xkc->bntyxk", rq, self._rel("rel_pos_w", qw, kw))
        bias = (rel_t[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :])
        bias = bias.reshape(b, self.num_heads, qt * qh * qw, kt * kh * kw)
        attn = attn + F.pad(bias, (1, 0, 1, 0))  # zero bias in the class-token row and column
        attn = attn.softmax(dim=-1)
        out = attn @ v
        # Residual pooling: the pooled query is added back, class token excluded.
        out = torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)
        out = out.transpose(1, 2).reshape(b, -1, self.out_dim)
        return self.proj(out), q_thw


class MultiScaleBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_heads: int, stride_q: tuple[int, int, int],
                 stride_kv: tuple[int, int, int], rel_len_t: int, rel_len_hw: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = MultiScaleAttention(in_dim, out_dim, num_heads, stride_q, stride_kv, rel_len_t, rel_len_hw)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, 4 * out_dim)
        # When the width changes, the skip path is a Linear of the *normalised* input.
        self.proj = nn.Linear(in_dim, out_dim) if in_dim != out_dim else None
        self.pool_skip = (nn.MaxPool3d((1, 3, 3), stride_q, (0, 1, 1))
                          if max(stride_q) > 1 else None)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        normed = self.norm1(x)
        attn, out_thw = self.attn(normed, thw)
        skip = x if self.proj is None else self.proj(normed)
        if self.pool_skip is not None:
            skip = _pool_tokens(skip.unsqueeze(1), self.pool_skip, thw)[0].squeeze(1)
        x = skip + attn
        return x + self.mlp(self.norm2(x)), out_thw


class PatchEmbed3D(nn.Module):
    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.projection = nn.Conv3d(3, dim, (3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.projection(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class MViT(nn.Module):
    """MViTv2-S; ``forward(video (B, 3, T, H, W))`` -> the UNet's three maps, coarsest first:
    (B, 768, T/2, H/32, W/32), (B, 384, T/2, H/16, W/16), (B, 192, T/2, H/8, W/8).

    Stage 0's normalised map (96 × H/4 × W/4) is never read by the UNet, so it is not
    returned (its LayerNorm still feeds the token stream).
    """

    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed3D(EMBED_DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.blocks = nn.ModuleList()
        dim, heads, kv = EMBED_DIM, 1, (1, 8, 8)
        t_len, size = TRAIN_GRID
        for i in range(DEPTH):
            out_dim, sq = dim, (1, 1, 1)
            if i in DOWNSCALE_BLOCKS:
                heads, out_dim, sq = heads * 2, dim * 2, (1, 2, 2)
                kv = tuple(max(s // 2, 1) for s in kv)
            rel_hw = 2 * max(size // sq[1], size // kv[1]) - 1
            self.blocks.append(MultiScaleBlock(dim, out_dim, heads, sq, kv, 2 * t_len - 1, rel_hw))
            dim, size = out_dim, size // sq[1]
            if i in STAGE_END_BLOCKS:
                self.add_module(f"norm{STAGE_END_BLOCKS[i]}", nn.LayerNorm(dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Random init in the mmaction2 style (the real weights come from a checkpoint)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, MultiScaleAttention):
                for p in (m.rel_pos_h, m.rel_pos_w, m.rel_pos_t):
                    nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if video.dim() != 5 or video.shape[1] != 3:
            raise SalstreamError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if t % 2 or h % 32 or w % 32:
            raise SalstreamError(f"video clip {t}×{h}×{w} (T×H×W): T must be even and H, W multiples "
                                 "of 32; resize the frames (e.g. to 224×384)")
        x, thw = self.patch_embed(video)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        maps = []
        for i, block in enumerate(self.blocks):
            x, thw = block(x, thw)
            if i in STAGE_END_BLOCKS:
                stage = STAGE_END_BLOCKS[i]
                x = getattr(self, f"norm{stage}")(x)  # the normalised stream feeds the next block
                if stage > 0:
                    b, _, c = x.shape
                    maps.append(x[:, 1:].transpose(1, 2).reshape(b, c, *thw).contiguous())
        return tuple(maps[::-1])
