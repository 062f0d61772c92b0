"""The `full` profile: Saliency-UNet building blocks, MViT, audio encoder, whole model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsal.models.unet import (MAMBlock, Readout, SaliencyUNet, timestep_embedding)

# Small decoder inputs: map 64×128 -> grids 2×4 (/32), 4×8 (/16), 8×16 (/8). At least two
# keys per frame at every stage (a 1×1 key grid would make the attention ignore its keys).
H, W = 64, 128


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that every path visibly moves the output (the training init,
    N(0, 0.01²), leaves the map almost constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            std = 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
            if name.endswith(("align_conv.weight", "linear_pred.weight")):
                std *= 10  # the MIM path that carries x_t in AV mode is weak; make it show
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def _video_maps(b: int, g: torch.Generator, h: int = H, w: int = W, slots: int = 8):
    return (torch.randn(b, 768, slots, h // 32, w // 32, generator=g),
            torch.randn(b, 384, slots, h // 16, w // 16, generator=g),
            torch.randn(b, 192, slots, h // 8, w // 8, generator=g))


@pytest.fixture(scope="module")
def unet() -> SaliencyUNet:
    torch.manual_seed(0)
    m = SaliencyUNet(skip_unread_slots=False).eval()
    _randomize(m)
    return m


# ---------------------------------------------------------------- timestep embedding

def test_timestep_embedding_is_sines_then_cosines_of_48_frequencies():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 96)
    assert emb.shape == (3, 96)
    freqs = np.exp(-np.arange(48) * math.log(1e4) / 47)
    angles = t.double().numpy()[:, None] * freqs[None]
    np.testing.assert_allclose(emb[:, :48].numpy(), np.sin(angles), atol=2e-4)
    np.testing.assert_allclose(emb[:, 48:].numpy(), np.cos(angles), atol=2e-4)
    # t = 0: all sines 0, all cosines 1 (so the order really is sin first)
    assert torch.equal(emb[0, :48], torch.zeros(48)) and torch.equal(emb[0, 48:], torch.ones(48))


# ---------------------------------------------------------------- MIM raw-reshape scramble

def test_mim_keys_are_the_weighted_audio_buffer_reread_without_permute():
    torch.manual_seed(1)
    b, c, s, h, w, ca = 2, 6, 3, 4, 6, 5
    blk = MAMBlock(c, num_heads=2, kv_kernel=2, audio_channels=ca).eval()
    x = torch.randn(b, c, s, h, w)
    audio = torch.randn(b, ca, s, h // 2, w // 2)          # upsampled ×2 (nearest) inside
    keys = blk.interaction_keys(x, audio)
    assert keys.shape == (b * s, c, h, w)

    # Independent derivation with numpy.
    wt = blk.align_conv.weight.detach().numpy()[:, :, 0, 0]
    bias = blk.align_conv.bias.detach().numpy()
    a = np.einsum("oc,bcshw->boshw", wt, audio.numpy()) + bias[None, :, None, None, None]
    a = a.repeat(2, axis=3).repeat(2, axis=4)                # nearest ×2
    p = (a * x.numpy()).mean(axis=2, keepdims=True)
    m = np.exp(p - p.max(axis=-1, keepdims=True))
    m = m / m.sum(axis=-1, keepdims=True)                    # softmax over width only
    buf = np.ascontiguousarray(a * m).ravel()                # (B, C, S, H, W) memory order
    expected = np.empty((b * s, c, h, w))
    for n in range(b * s):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    expected[n, ch, i, j] = buf[n * h * w * c + (i * w + j) * c + ch]
    np.testing.assert_allclose(keys.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # and it is not the "natural" (b t) c h w regrouping
    natural = torch.from_numpy(a * m).float().transpose(1, 2).reshape(b * s, c, h, w)
    assert not torch.allclose(keys, natural, atol=1e-3)


def test_mim_rejects_mismatched_slots_and_grids():
    from diffsal.errors import SalstreamError
    blk = MAMBlock(8, audio_channels=4).eval()
    x = torch.randn(1, 8, 3, 4, 6)
    with pytest.raises(SalstreamError, match="slices"):
        blk.interaction_keys(x, torch.randn(1, 4, 2, 4, 6))
    with pytest.raises(SalstreamError, match="grid"):
        blk.interaction_keys(x, torch.randn(1, 4, 3, 3, 5))


# ---------------------------------------------------------------- readout

def test_readout_reads_slots_zero_to_four_only():
    torch.manual_seed(2)
    r = Readout(6, 4, kernel=5).eval()
    x = torch.randn(1, 6, 9, 3, 5)
    y = r(x)
    assert y.shape == (1, 4, 1, 3, 5)
    wt = r.proj[0].weight[:, :, :, 0, 0]                     # (out, in, 5)
    expected = torch.relu(torch.einsum("oik,bikhw->bohw", wt, x[:, :, :5]))
    torch.testing.assert_close(y[:, :, 0], expected, rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:, :, 5:] = torch.randn(1, 6, 4, 3, 5)
    assert torch.equal(r(x2), y)                              # slots 5-8: no effect
    x2[:, :, 4] += 1.0
    assert not torch.allclose(r(x2), y)                       # slot 4: read


# ---------------------------------------------------------------- spec §4.5

@torch.no_grad()
def test_video_only_output_ignores_noisy_map_and_timestep(unet):
    g = torch.Generator().manual_seed(3)
    video = _video_maps(1, g)
    a = unet(torch.randn(1, 1, H, W, generator=g), torch.tensor([999]), video, None)
    b = unet(torch.randn(1, 1, H, W, generator=g) * 3, torch.tensor([3]), video, None)
    assert a.shape == (1, 1, H, W)
    assert torch.equal(a, b)                                  # exactly, not approximately


@torch.no_grad()
def test_av_output_depends_on_noisy_map(unet):
    g = torch.Generator().manual_seed(4)
    video = _video_maps(1, g)
    audio = torch.randn(1, 512, 9, H // 32, W // 32, generator=g)
    t = torch.tensor([500])
    x1, x2 = torch.randn(2, 1, 1, H, W, generator=g)
    a = unet(x1, t, video, audio)
    b = unet(x2, t, video, audio)
    assert torch.equal(unet(x1, t, video, audio), a)          # deterministic: noise floor 0
    # Weak by construction (x_t reaches the map only through the MIM mean, §4.5 b),
    # but far above float rounding.
    assert (a - b).abs().max() > 1e-6
    assert ((a > 0) & (a < 1)).all()


@torch.no_grad()
def test_video_only_shortcut_equals_the_full_nine_slot_decoder(unet):
    g = torch.Generator().manual_seed(5)
    video = _video_maps(2, g)
    x_t = torch.randn(2, 1, H, W, generator=g)
    t = torch.tensor([250, 250])
    full = unet(x_t, t, video, None)
    unet.skip_unread_slots = True
    try:
        short = unet(x_t, t, video, None)
    finally:
        unet.skip_unread_slots = False
    torch.testing.assert_close(short, full, rtol=0, atol=1e-6)


@torch.no_grad()
def test_unet_does_not_modify_its_inputs_and_checks_sizes(unet):
    from diffsal.errors import SalstreamError
    g = torch.Generator().manual_seed(6)
    video = _video_maps(1, g)
    audio = torch.randn(1, 512, 9, H // 32, W // 32, generator=g)
    copies = [v.clone() for v in video] + [audio.clone()]
    unet(torch.randn(1, 1, H, W, generator=g), torch.tensor([0]), video, audio)
    assert all(torch.equal(a, b) for a, b in zip(list(video) + [audio], copies))
    assert all(v.shape[2] == 8 for v in video)
    with pytest.raises(SalstreamError, match="map size"):
        unet(torch.randn(1, 1, 2 * H, W), torch.tensor([0]), video, audio)
    with pytest.raises(SalstreamError, match="neither"):
        unet(torch.randn(1, 1, H, W), torch.tensor([0]), None, None)
