"""benchmarks/real_footage.py: the motion mask finds what moves past a static camera, and the
mover scores say how much of a map sits on it (checked on frames whose movers we placed)."""
from __future__ import annotations

import numpy as np
import pytest

# benchmarks/ is part of the checkout, not of the installed packages
from benchmarks.real_footage import DEFAULT_CLIP, motion_masks, mover_scores, read_frames, summarise  # noqa: E402
from salstream.diffsal.evaluate import centre_prior


def _walkers(n=40, h=96, w=128):
    """A static textured scene with a dark 12×24 'person' crossing it left to right, and the truth."""
    rng = np.random.default_rng(0)
    scene = rng.integers(90, 170, size=(h, w, 3)).astype(np.uint8)
    scene = np.repeat(np.repeat(scene[::4, ::4], 4, axis=0), 4, axis=1)[:h, :w]   # blocky static texture
    frames, truth = [], []
    for i in range(n):
        f = scene.copy()
        x = 5 + i * 2
        f[40:64, x:x + 12] = 20
        f = np.clip(f.astype(int) + rng.integers(-3, 4, size=f.shape), 0, 255).astype(np.uint8)   # sensor noise
        m = np.zeros((h, w), bool)
        m[40:64, x:x + 12] = True
        frames.append(f)
        truth.append(m)
    return np.stack(frames), np.stack(truth)


def test_motion_mask_is_the_mover_and_nothing_else():
    frames, truth = _walkers()
    masks = motion_masks(frames)
    inter = (masks & truth).sum(axis=(1, 2))
    union = (masks | truth).sum(axis=(1, 2))
    assert np.mean(inter / union) > 0.8             # the person, not the textured background or the noise
    assert (masks & ~truth).mean() < 0.002          # almost no false movers anywhere else


def test_mover_scores_of_known_maps():
    _, truth = _walkers()
    mask = truth[10]
    area = mask.mean()
    on = mover_scores(mask.astype(np.float32), mask)        # all mass on the mover
    assert on["mass"] == pytest.approx(1.0) and on["ratio"] == pytest.approx(1 / area)
    flat = mover_scores(np.ones((24, 32), np.float32), mask)   # a flat map, at model resolution
    assert flat["ratio"] == pytest.approx(1.0, abs=0.02) and flat["nss"] == pytest.approx(0.0, abs=1e-6)
    off = np.zeros(mask.shape, np.float32)
    off[:20, :20] = 1.0                                      # all mass elsewhere
    assert mover_scores(off, mask)["ratio"] == 0.0 and mover_scores(off, mask)["nss"] < 0
    centre = mover_scores(centre_prior(mask.shape), mask)
    assert 0 < centre["ratio"] < on["ratio"]
    s = summarise([on, flat])
    assert s["mass_ratio_pooled"] == pytest.approx((on["mass"] + flat["mass"]) / (2 * area))


@pytest.mark.skipif(not DEFAULT_CLIP.is_file(), reason="benchmarks/media/vtest.mp4 not in this checkout")
def test_shipped_clip_decodes_and_has_walkers():
    frames, fps = read_frames(DEFAULT_CLIP, max_frames=40)
    assert frames.shape[0] == 40 and frames.shape[2] == 384 and fps == pytest.approx(10.0)
    masks = motion_masks(frames)
    assert 0.003 < masks.mean() < 0.2       # people cover a few percent of the picture
