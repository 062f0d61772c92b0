"""benchmarks/timing_evidence.py: the scoring finds the object whose region holds the evidence."""
import numpy as np
import pytest

from benchmarks.timing_evidence import found, object_scores


def test_the_object_under_the_evidence_is_found_now_but_not_where_it_was():
    evidence = np.zeros((12, 20), np.float32)
    evidence[3, 15] = 1.0                          # the cell under (300, 60) of a 384×224 picture
    now = [[(300.0, 60.0, 10.0)], [(60.0, 180.0, 10.0)]]
    scores = object_scores(evidence, now, (384, 224))
    assert scores[0] > 0 and scores[1] == 0
    assert found(scores, 0) == (1.0, pytest.approx(1.0)) and found(scores, 1)[0] == 0.0
    # the evidence was left where object 1 passed earlier: only its path finds it
    evidence = np.zeros((12, 20), np.float32)
    evidence[9, 3] = 1.0
    path = [[(300.0, 60.0, 10.0)], [(60.0, 180.0, 10.0), (200.0, 120.0, 10.0)]]
    assert found(object_scores(evidence, path, (384, 224)), 1)[0] == 1.0
    assert found(object_scores(evidence, [[(300.0, 60.0, 10.0)], [(200.0, 120.0, 10.0)]], (384, 224)), 1)[0] == 0.0


def test_fusion_boost_is_the_model_at_beta_zero_and_helps_when_the_evidence_is_right():
    from benchmarks.timing_evidence import fused_cc
    from salstream.diffsal.metrics import cc
    yy, xx = np.mgrid[0:48, 0:80]
    blob = lambda x, y: np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 30.0)        # noqa: E731
    density = blob(60, 12)                                                   # people look at the right one
    pred = blob(60, 12) + blob(20, 36)                                       # the model: both movers alike
    right, wrong = np.zeros((12, 20)), np.zeros((12, 20))
    right[3, 15], wrong[9, 5] = 1.0, 1.0
    assert fused_cc(pred, right, 0.0, density) == pytest.approx(cc(pred, density))
    assert fused_cc(pred, right, 1.0, density) > cc(pred, density) > fused_cc(pred, wrong, 1.0, density)


def test_per_frame_evidence_adds_up_to_the_pathways_own_covariance_channels():
    # The probe splits the pathway's covariances by frame to carry them; split or not, they must
    # be the pathway's numbers, or the probe would score something the model never sees.
    import torch

    from benchmarks.timing_evidence import _evidence
    from salstream.diffsal.models.lite import TimingPathway
    timing = TimingPathway(frames=16, slices=9, rows_per_slice=11, row_seconds=0.01, frame_seconds=2 / 30)
    gen = torch.Generator().manual_seed(0)
    video, rise = torch.randn(1, 8, 16, 6, 10, generator=gen), torch.rand(1, timing.rows, generator=gen)
    channels = timing(video, rise)[0, 2:2 + 2 * len(TimingPathway.LAGS)].sum(0)
    per_frame = timing.per_frame_evidence(video, timing.loudness(rise)[0])
    assert per_frame.shape == (1, 16, 6, 10)
    torch.testing.assert_close(per_frame[0].sum(0), channels, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_evidence(timing, video, rise), torch.relu(channels), rtol=1e-4, atol=1e-5)
