"""Saliency metrics on maps small enough to work out by hand."""
import math

import numpy as np
import pytest

from salstream.diffsal import metrics as M

X = np.array([[1.0, 2.0], [3.0, 4.0]])          # mean 2.5, population std √1.25
Y = np.array([[0.0, 0.0], [0.0, 1.0]])


def test_cc_hand_values():
    # cov = 1.5/4, var_x = 5/4, var_y = 0.75/4  ->  r = 1.5/√3.75 = √(3/5)
    assert M.cc(X, Y) == pytest.approx(math.sqrt(3 / 5))
    assert M.cc(Y, Y) == pytest.approx(1.0)
    assert M.cc(2 * Y + 7, Y) == pytest.approx(1.0)        # invariant to affine scaling
    assert M.cc(1 - Y, Y) == pytest.approx(-1.0)


def test_sim_hand_values():
    p = np.array([[0.0, 1.0], [1.0, 2.0]])   # min-max -> [0, .5, .5, 1] -> /2 -> [0, .25, .25, .5]
    g = np.array([[1.0, 1.0], [0.0, 0.0]])   # -> [.5, .5, 0, 0]
    assert M.sim(p, g) == pytest.approx(0.25)
    assert M.sim(g, g) == pytest.approx(1.0)
    assert M.sim(1 - g, g) == pytest.approx(0.0)


def test_kld_hand_values():
    g = np.array([[1.0, 0.0]])
    assert M.kld(np.array([[1.0, 1.0]]), g) == pytest.approx(math.log(2))
    assert M.kld(g * 3, g) == pytest.approx(0.0, abs=1e-12)   # scale does not matter
    # P puts 1/4 where G puts 1/2: KL = ½·log 2 + ½·log(2/3)
    g2 = np.array([[1.0, 1.0]])
    p2 = np.array([[1.0, 3.0]])
    assert M.kld(p2, g2) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))


def test_nss_hand_values():
    fix = np.array([[0, 0], [0, 1]])
    assert M.nss(X, fix) == pytest.approx(1.5 / math.sqrt(1.25))
    fix2 = np.array([[1, 0], [0, 1]])  # mean of -1.5 and +1.5 standardised values = 0
    assert M.nss(X, fix2) == pytest.approx(0.0)


def test_auc_judd_hand_values():
    p = np.array([[4.0, 3.0], [2.0, 1.0]])
    # threshold 3 (min-max 2/3): TP 1, FP = 1 of 3 negatives -> curve (0,0),(1/3,1),(1,1)
    assert M.auc_judd(p, np.array([[0, 1], [0, 0]])) == pytest.approx(5 / 6)
    assert M.auc_judd(p, np.array([[1, 0], [0, 0]])) == pytest.approx(1.0)
    # the lowest-valued pixel fixated: the only point is (1, 1) -> the diagonal, area ½
    assert M.auc_judd(p, np.array([[0, 0], [0, 1]])) == pytest.approx(0.5)
    # fixations at 4 and 2 (2 negatives): (0, ½), (½, 1), (1, 1) -> ½·¾ + ½
    assert M.auc_judd(p, np.array([[1, 0], [1, 0]])) == pytest.approx(0.875)


def test_auc_shuffled_hand_values():
    p = np.zeros((8, 8))
    fix = np.zeros((8, 8), bool)
    fix[2, 3] = fix[5, 5] = True
    p[fix] = 1.0
    other = np.zeros((8, 8), bool)
    other[0, 0] = other[7, 7] = other[1, 6] = True
    # every fixation outranks every negative at thresholds 0.1…1, ties at 0 -> area 1
    assert M.auc_shuffled(p, fix, other) == pytest.approx(1.0)
    # negatives drawn from the same places as the positives: TP = FP everywhere -> 0.5
    assert M.auc_shuffled(p, fix, fix) == pytest.approx(0.5)
    # one positive at 1; negatives: one of {1.0, 0.0} each split -> split AUC is .5 or 1
    other2 = np.zeros((8, 8), bool)
    other2[2, 3] = other2[0, 0] = True
    one = np.zeros((8, 8), bool)
    one[2, 3] = True
    v = M.auc_shuffled(p, one, other2, n_splits=200, seed=1)
    assert 0.6 < v < 0.9
    assert v == M.auc_shuffled(p, one, other2, n_splits=200, seed=1)  # seeded


def test_constant_prediction_has_defined_values():
    g = np.array([[0.0, 1.0], [0.5, 0.2]])
    fix = np.array([[0, 1], [0, 0]])
    c = np.full((2, 2), 0.3)
    assert M.cc(c, g) == 0.0
    assert M.nss(c, fix) == 0.0
    assert M.auc_judd(c, fix) == pytest.approx(0.5)
    assert M.auc_shuffled(c, fix, np.array([[1, 0], [0, 1]])) == pytest.approx(0.5)
    # uniform prediction: SIM = Σ min(¼, G_i/ΣG), G already spans [0, 1]
    gn = np.array([0.0, 1.0, 0.5, 0.2]) / 1.7
    assert M.sim(c, g) == pytest.approx(np.minimum(0.25, gn).sum())
    assert M.kld(np.zeros((2, 2)), g) == pytest.approx(M.kld(c, g))
    for f in (M.cc, M.sim, M.kld, M.nss, M.auc_judd):
        assert np.isfinite(f(c, g if f in (M.cc, M.sim, M.kld) else fix))


@pytest.mark.parametrize("fn", [M.cc, M.sim, M.kld])
def test_empty_density_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="gt_density is all zero"):
        fn(X, np.zeros((2, 2)))


@pytest.mark.parametrize("fn", [M.nss, M.auc_judd])
def test_no_fixations_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="no fixated pixel"):
        fn(X, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="other_fixations has no fixated pixel"):
        M.auc_shuffled(X, np.eye(2), np.zeros((2, 2)))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="pred contains NaN"):
        M.cc(np.array([[np.nan, 1.0], [0.0, 0.0]]), Y)
    with pytest.raises(ValueError, match="gt_density has negative"):
        M.cc(X, -Y)
    with pytest.raises(ValueError, match="2-D map"):
        M.nss(np.zeros(4), np.ones((2, 2)))


def test_prediction_is_resized_bilinear_to_ground_truth():
    yy, xx = np.mgrid[0:40, 0:60]
    g = np.exp(-((xx - 40) ** 2 + (yy - 15) ** 2) / 50.0)
    small = np.exp(-((xx[::2, ::2] / 2 - 20) ** 2 + (yy[::2, ::2] / 2 - 7.5) ** 2) / 12.5)
    assert small.shape == (20, 30)
    for fn in (M.cc, M.sim, M.kld):
        assert fn(small, g) == pytest.approx(fn(M.resize_to(small, g.shape), g))
    assert M.cc(small, g) > 0.95
    fix = g > 0.9
    assert M.nss(small, fix) == pytest.approx(M.nss(M.resize_to(small, g.shape), fix))
    assert M.auc_judd(small, fix) > 0.95


def test_better_prediction_scores_better():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    g = np.exp(-((xx - 45) ** 2 + (yy - 20) ** 2) / 40.0)
    fix = np.zeros_like(g, bool)
    fix[rng.integers(15, 25, 10), rng.integers(40, 50, 10)] = True
    good = g + 0.05 * rng.random(g.shape)
    bad = np.exp(-((xx - 10) ** 2 + (yy - 30) ** 2) / 40.0)
    other = np.zeros_like(fix)
    other[rng.integers(0, 48, 30), rng.integers(0, 64, 30)] = True
    assert M.cc(good, g) > M.cc(bad, g)
    assert M.sim(good, g) > M.sim(bad, g)
    assert M.kld(good, g) < M.kld(bad, g)
    assert M.nss(good, fix) > M.nss(bad, fix)
    assert M.auc_judd(good, fix) > M.auc_judd(bad, fix)
    assert M.auc_shuffled(good, fix, other) > M.auc_shuffled(bad, fix, other)
