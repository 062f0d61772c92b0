"""Frame preprocessing and map post-processing (diffsal.preprocess)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from salstream.diffsal.config import PIXEL_NORMS, ModelConfig
from salstream.diffsal.preprocess import postprocess_map, preprocess_clip, preprocess_frame
from salstream.errors import SalstreamError


def cfg(norm: str = "tf", size=(48, 80)) -> ModelConfig:
    return ModelConfig(profile="test", input_size=size, pixel_norm=norm)


@pytest.mark.parametrize("norm", sorted(PIXEL_NORMS))
def test_normalisation_per_channel(norm):
    mean, std = PIXEL_NORMS[norm]
    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    out = preprocess_frame(rgb, cfg(norm))
    assert out.shape == (3, 48, 80) and out.dtype == torch.float32
    for c, v in enumerate((0, 128, 255)):
        assert torch.allclose(out[c], torch.tensor((v - mean[c]) / std[c]), atol=1e-5)


def test_tf_norm_spans_minus_one_to_one():
    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[:, 40:] = 255
    out = preprocess_frame(rgb, cfg("tf"))
    assert out.min().item() == -1.0 and out.max().item() == 1.0


def test_resize_is_antialiased_bilinear_like_torchvision():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = preprocess_frame(rgb, cfg("tf", (224, 384)))
    ref = TF.resize(torch.from_numpy(rgb).permute(2, 0, 1), [224, 384], antialias=True)
    assert torch.equal(out, (ref.float() - 127.5) / 127.5)
    # Antialiasing really happens: a 1-pixel checkerboard shrinks to flat grey, not to aliasing.
    checker = ((np.indices((480, 640)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    flat = preprocess_frame(checker, cfg("tf", (120, 160)))
    assert flat.abs().max() < 0.05


def test_layout_is_rows_by_columns():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:50, :, 0] = 255          # top half red
    out = preprocess_frame(rgb, cfg("tf", (20, 40)))
    assert out[0, :8].min() > 0.9 and out[0, 12:].max() < -0.9
    assert out[1].max() == -1.0


def test_clip_stacks_on_time_axis():
    frames = [np.full((30, 40, 3), v, np.uint8) for v in (0, 100, 200)]
    clip = preprocess_clip(frames, cfg("tf", (30, 40)))
    assert clip.shape == (3, 3, 30, 40)
    for t, v in enumerate((0, 100, 200)):
        assert torch.allclose(clip[:, t], torch.tensor((v - 127.5) / 127.5))
    with pytest.raises(SalstreamError, match="no frames"):
        preprocess_clip([], cfg())


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((10, 10, 4), np.uint8), "RGB"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (torch.zeros(10, 10, 3, dtype=torch.uint8), "numpy"),
])
def test_bad_frames_are_named(bad, msg):
    with pytest.raises(SalstreamError, match=msg):
        preprocess_frame(bad, cfg())


def test_unknown_norm():
    with pytest.raises(SalstreamError, match="pixel_norm"):
        preprocess_frame(np.zeros((8, 8, 3), np.uint8), cfg("bogus"))


def test_postprocess_clamps_resizes_and_normalises():
    x = torch.linspace(-0.5, 1.5, 12).view(1, 1, 3, 4).repeat(2, 1, 1, 1)
    x[1] = 0.25 + 0.5 * torch.rand(1, 3, 4)
    out = postprocess_map(x)
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[1], x[1, 0].numpy())
    big = postprocess_map(x, size=(30, 40))
    assert big.shape == (2, 30, 40)
    ref = torch.nn.functional.interpolate(x, size=(30, 40), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(big, ref[:, 0].clamp(0, 1).numpy(), atol=1e-6)
    norm = postprocess_map(x, normalize=True)
    assert np.allclose(norm.min(axis=(1, 2)), 0) and np.allclose(norm.max(axis=(1, 2)), 1)
    # A constant map has no contrast: it becomes zeros, not NaN.
    flat = postprocess_map(torch.full((1, 1, 4, 4), 0.3), normalize=True)
    assert np.all(flat == 0)
    with pytest.raises(SalstreamError, match=r"\(B, 1, h, w\)"):
        postprocess_map(torch.zeros(1, 4, 4))
