"""Rate–distortion measures of guided encoding: EW-PSNR (diffsal.metrics) and Bjøntegaard deltas (guidance.quality)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from salstream.diffsal.metrics import WeightedPsnr, psnr_from_mse, weighted_psnr
from salstream.streamer.guidance.quality import bd_quality, bd_rate

RATES = [100e3, 200e3, 400e3, 800e3]
PSNR = [31.0, 34.1, 36.9, 39.2]


def test_weighted_psnr_counts_errors_where_the_density_is():
    ref = np.zeros((4, 8))
    dist = ref.copy()
    dist[:, :4] = 10.0                                   # error 10 on the left half only
    left = np.zeros((4, 8))
    left[:, :4] = 1.0
    right = left[:, ::-1]
    assert weighted_psnr(ref, dist, right) == math.inf                       # nobody looks at the error
    assert weighted_psnr(ref, dist, left) == pytest.approx(psnr_from_mse(100.0))
    assert weighted_psnr(ref, dist, None) == pytest.approx(psnr_from_mse(50.0))   # plain PSNR
    mixed = left + 3 * right                              # 1/4 of the weight on the error
    assert weighted_psnr(ref, dist, mixed) == pytest.approx(psnr_from_mse(25.0))


def test_weighted_psnr_gives_every_frame_equal_weight_and_resizes_the_density():
    acc = WeightedPsnr()
    ref = np.zeros((4, 8))
    acc.add(ref, ref + 2.0, np.full((4, 8), 100.0))      # a heavy density does not make a frame count more
    acc.add(ref, ref + 4.0, np.full((2, 4), 0.01))        # a density at model resolution is resized
    assert acc.frames == 2 and acc.mse == pytest.approx((4.0 + 16.0) / 2)
    clip = weighted_psnr(np.zeros((2, 4, 8)), np.stack([ref + 2.0, ref + 4.0]), np.ones((2, 4, 8)))
    assert clip == pytest.approx(acc.value)
    with pytest.raises(ValueError, match="all zero"):
        acc.add(ref, ref, np.zeros((4, 8)))
    with pytest.raises(ValueError, match="differs"):
        acc.add(ref, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="no frames"):
        _ = WeightedPsnr().value


def test_bd_rate_of_a_curve_that_needs_a_fixed_share_fewer_bits():
    # Same quality at 80 % of the rate everywhere: BD-rate is exactly −20 %, whatever the shape.
    assert bd_rate(RATES, PSNR, [r * 0.8 for r in RATES], PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-9)
    # Partly overlapping quality ranges: only the common range counts (B's extra top point barely matters;
    # it changes only the end slope of B's interpolant).
    assert bd_rate(RATES, PSNR, [r * 1.25 for r in RATES[1:]] + [1.25 * 1600e3], PSNR[1:] + [41.0]) == \
        pytest.approx(25.0, abs=1.0)


def test_bd_quality_is_the_mean_gain_at_equal_rate():
    assert bd_quality(RATES, PSNR, RATES, [q + 0.5 for q in PSNR]) == pytest.approx(0.5, abs=1e-9)
    # A better curve (more quality per bit) has negative BD-rate and positive BD-PSNR, consistently.
    better = [q + 1.0 for q in PSNR]
    assert bd_rate(RATES, PSNR, RATES, better) < -10 and bd_quality(RATES, PSNR, RATES, better) > 0.99


@pytest.mark.parametrize("rates_b, quality_b, needle", [
    (RATES[:3], PSNR[:3], "at least 4"),
    (RATES, [31.0, 30.0, 36.9, 39.2], "monotonic"),
    ([r * 100 for r in RATES], [q + 20 for q in PSNR], "no quality range"),
])
def test_bd_rate_refuses_curves_it_cannot_compare(rates_b, quality_b, needle):
    with pytest.raises(ValueError, match=needle):
        bd_rate(RATES, PSNR, rates_b, quality_b)


def test_encode_quality_study_runs_end_to_end(small_checkpoint, tmp_path):
    """The RD study on a short clip (model maps from a small checkpoint): JSON, an RD plot per clip, the sweep."""
    import json

    from benchmarks.encode_quality import main

    out = tmp_path / "study"
    assert main(["--out-dir", str(out), "--clips", "1", "--frames", "20", "--codecs", "libx264",
                 "--rates", "100k,200k,400k,800k", "--sweep-strengths", "0,1", "--sweep-smooth", "", "--controls", "centre",
                 "--checkpoint", str(small_checkpoint), "--cache", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "encode_quality.json").read_text())
    (row,) = report["results"]
    assert row["codec"] == "libx264" and len(row["plain"]) == len(row["guided"]) == 4
    assert all(p["ew_psnr"] > 20 and p["psnr"] > 20 for p in row["plain"] + row["guided"])
    rates = [p["bitrate"] for p in row["plain"]]
    assert rates == sorted(rates) and rates[-1] > 3 * rates[0]
    # Strength 0 = every offset 0: the plain encode but for x264 receiving an all-zero offset array,
    # so (one encoder thread: repeatable encodes) next to no rate is saved.
    (zero, one) = report["sweep"]["strength"]
    assert zero["value"] == 0 and abs(zero["mean_bd_rate_ew_psnr_pct"]) < 1.0
    assert one["per_clip"][0] == row["compare"]
    (ctrl,) = report["controls"]
    assert ctrl["guide"] == "centre" and len(ctrl["guided"]) == 4
    assert (out / "rd_synthetic2000000.png").stat().st_size > 10_000 and (out / "sweep.png").exists()


@pytest.mark.parametrize("codec, crf", [("libx265", None), ("libx264", 28.0)])
def test_hevc_and_crf_encodes_honour_the_regions(tmp_path, codec, crf):
    import av

    from salstream.errors import SalstreamError
    from salstream.streamer.guidance.encoder import EncodeSettings
    from salstream.streamer.guidance.quality import encode_clip, measure_region_quality
    from salstream.streamer.guidance.roi import RoiConfig

    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV's FFmpeg has no {codec}")
    w, h = 256, 128
    yy, xx = np.mgrid[0:h, 0:w]
    sal = np.zeros((h, w), np.float32)
    sal[:, : w // 2] = 1.0                                  # left half salient
    frames = []
    for i in range(20):
        noise = np.random.default_rng(i).integers(-8, 9, size=(h, w))
        img = np.clip(128 + 60 * np.sin(xx / 9.0 + 0.2 * i) * np.cos(yy / 7.0) + noise, 0, 255).astype(np.uint8)
        frames.append((np.repeat(img[..., None], 3, axis=2), sal))
    settings = EncodeSettings(bitrate=300_000, codec=codec, crf=crf)
    encode_clip(tmp_path / "plain.mp4", frames, w, h, 30, settings, guided=False)
    encode_clip(tmp_path / "guided.mp4", frames, w, h, 30, settings, guided=True, roi=RoiConfig(time_constant=0))
    with av.open(str(tmp_path / "guided.mp4")) as c:
        assert c.streams.video[0].codec_context.name == ("hevc" if codec == "libx265" else "h264")
    plain = measure_region_quality(tmp_path / "plain.mp4", frames)
    guided = measure_region_quality(tmp_path / "guided.mp4", frames)
    assert guided.psnr_inside > plain.psnr_inside + 0.5 and guided.psnr_outside < plain.psnr_outside - 0.5
    with pytest.raises(SalstreamError, match="CRF 60"):
        EncodeSettings(crf=60)
    with pytest.raises(SalstreamError, match="libvpx"):
        EncodeSettings(codec="libvpx")


def test_study_map_cache_follows_the_weights_content_not_their_path(small_checkpoint, tmp_path):
    """A re-trained checkpoint keeps its file name and often its size: its maps must not come
    from the cache of the weights it replaced."""
    import shutil

    import torch

    from benchmarks.encode_quality import model_maps
    from salstream.diffsal.checkpoint import load_model, save_checkpoint
    from salstream.diffsal.datasets.synthetic import SyntheticClip, split_seed

    weights = tmp_path / "lite.safetensors"
    shutil.copy(small_checkpoint, weights)
    clip = SyntheticClip(split_seed("test", 0), n_frames=12)
    first, info = model_maps(clip, "torch", str(weights), tmp_path / "cache")
    assert "cached" not in info
    assert model_maps(clip, "torch", str(weights), tmp_path / "cache")[1].get("cached")
    model = load_model(weights)
    with torch.no_grad():
        model.logits.bias.add_(1.5)               # other weights, same file name, same size
    size = weights.stat().st_size
    save_checkpoint(model, weights)
    assert weights.stat().st_size == size
    second, info = model_maps(clip, "torch", str(weights), tmp_path / "cache")
    assert "cached" not in info
    assert not np.allclose(np.stack(first), np.stack(second))
