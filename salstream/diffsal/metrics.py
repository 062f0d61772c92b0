"""The six standard saliency metrics (numpy in, float out).

Definitions follow the MIT/Tuebingen saliency benchmark (Bylinskii et al., "What do
different evaluation metrics tell us about saliency models?", TPAMI 2019, and its
reference code) as used by the DHF1K and audio-visual saliency evaluations (STAViS,
DiffSal; spec §6.3):

========  =============================================================================
``cc``    Pearson correlation of the two maps, each standardised with the population std.
``sim``   histogram intersection Σ min(P, G) of the maps, each min-max scaled then
          divided by its sum.
``kld``   Σ G·log(ε + G/(P + ε)) of the sum-normalised maps, ε = 2.2204e-16 (MATLAB eps).
``nss``   mean of the standardised prediction over fixated pixels.
``auc_judd``  ROC area with the prediction's values at fixations as thresholds; true
          positives = fixated pixels above threshold, false positives = all other pixels.
``auc_shuffled``  Borji's shuffled AUC: negatives are the prediction's values at
          fixations of *other* frames (removes centre bias), thresholds 0:0.1:max on the
          min-max scaled prediction, averaged over ``n_splits`` random draws.
========  =============================================================================

Conventions: the prediction is resized (bilinear) to the ground truth's shape when they
differ. ``gt_density`` must be finite, non-negative and not all zero; ``fixations`` a
binary map with at least one fixation: anything else raises :class:`ValueError` naming the
input. A *constant prediction* carries no information and gets the value of a uniform
map: CC 0, NSS 0, AUC 0.5, SIM and KLD computed against the uniform distribution.
For coded video, :class:`WeightedPsnr` / :func:`weighted_psnr` give the eye-tracking-weighted
PSNR (EW-PSNR) that saliency-guided coding is judged by: each pixel's squared error weighted
by the fixation density.

Deviation from the MIT code: ties in AUC-Judd are counted exactly (all pixels at or
above a threshold) instead of being broken by a random 1e-7 jitter, so the value is
deterministic and a constant map scores exactly 0.5.
"""
from __future__ import annotations

import numpy as np

from salstream.diffsal.maps import normalize_map, resize_map

EPS = 2.2204e-16  # MATLAB eps, the benchmark's KLD regulariser

__all__ = ["cc", "sim", "kld", "nss", "auc_judd", "auc_shuffled", "METRICS", "resize_to", "WeightedPsnr",
           "weighted_psnr", "psnr_from_mse"]


def _as_map(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D map (H, W), got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; fix the map before scoring")
    return a


def resize_to(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D map at ``shape`` = (H, W) (:func:`salstream.diffsal.maps.resize_map`)."""
    return resize_map(pred.astype(np.float64), shape)


def _pred(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_to(_as_map(pred, "pred"), shape)


def _density(gt: np.ndarray) -> np.ndarray:
    g = _as_map(gt, "gt_density")
    if g.min() < 0:
        raise ValueError("gt_density has negative values; a density map must be ≥ 0")
    if g.sum() <= 0:
        raise ValueError("gt_density is all zero: there is nothing to compare against (skip this frame)")
    return g


def _fixations(fix: np.ndarray, name: str = "fixations") -> np.ndarray:
    f = _as_map(fix, name)
    f = f > 0.5
    if not f.any():
        raise ValueError(f"{name} has no fixated pixel (binary map with values > 0.5 expected)")
    return f


def _standardise(x: np.ndarray) -> np.ndarray | None:
    s = x.std()
    return None if s == 0 else (x - x.mean()) / s


def _to_distribution(x: np.ndarray, minmax: bool) -> np.ndarray:
    # A map that cannot be normalised (constant, or zero sum) means "no preference": uniform.
    if minmax:
        rng = x.max() - x.min()
        x = (x - x.min()) / rng if rng > 0 else np.ones_like(x)
    total = x.sum()
    return x / total if total > 0 else np.full_like(x, 1.0 / x.size)


def _minmax(x: np.ndarray) -> np.ndarray:
    return normalize_map(x, "minmax", dtype=np.float64)


def cc(pred: np.ndarray, gt_density: np.ndarray) -> float:
    """Pearson linear correlation coefficient (MIT ``CC``); 0 for a constant prediction."""
    g = _density(gt_density)
    p = _pred(pred, g.shape)
    ps, gs = _standardise(p), _standardise(g)
    if ps is None or gs is None:
        return 0.0  # a constant map is uncorrelated with anything
    return float(np.mean(ps * gs))


def sim(pred: np.ndarray, gt_density: np.ndarray) -> float:
    """Similarity / histogram intersection (MIT ``similarity``), in [0, 1]."""
    g = _density(gt_density)
    p = _pred(pred, g.shape)
    return float(np.minimum(_to_distribution(p, True), _to_distribution(g, True)).sum())


def kld(pred: np.ndarray, gt_density: np.ndarray) -> float:
    """KL divergence of the prediction from the ground truth (MIT ``KLdiv``), ≥ 0.

    The prediction must be non-negative (a probability-like map); an all-zero
    prediction is treated as uniform.
    """
    g = _density(gt_density)
    p = _pred(pred, g.shape)
    if p.min() < 0:
        raise ValueError("pred has negative values; KLD needs a non-negative saliency map")
    P, G = _to_distribution(p, False), _to_distribution(g, False)
    return float(np.sum(G * np.log(EPS + G / (P + EPS))))


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
    """Normalised scanpath saliency (MIT ``NSS``); 0 for a constant prediction."""
    f = _fixations(fixations)
    p = _pred(pred, f.shape)
    ps = _standardise(p)
    return 0.0 if ps is None else float(ps[f].mean())


def auc_judd(pred: np.ndarray, fixations: np.ndarray) -> float:
    """AUC-Judd (MIT ``AUC_Judd``), in [0, 1]; 0.5 for a constant prediction."""
    f = _fixations(fixations)
    p = _minmax(_pred(pred, f.shape))
    n_fix, n_pix = int(f.sum()), f.size
    if n_fix == n_pix:
        raise ValueError("fixations cover every pixel: no negatives, AUC is undefined")
    # Descending distinct thresholds taken at fixated values; count everything ≥ threshold.
    thr = np.unique(p[f])[::-1]
    all_sorted = np.sort(p.ravel())
    fix_sorted = np.sort(p[f])
    above_all = n_pix - np.searchsorted(all_sorted, thr, side="left")
    above_fix = n_fix - np.searchsorted(fix_sorted, thr, side="left")
    tp = np.concatenate([[0.0], above_fix / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above_all - above_fix) / (n_pix - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp))


def auc_shuffled(pred: np.ndarray, fixations: np.ndarray, other_fixations: np.ndarray,
                 n_splits: int = 100, seed: int = 0, step: float = 0.1) -> float:
    """Shuffled AUC (MIT ``AUC_shuffled``, Borji): negatives from other frames' fixations.

    Each split draws min(#fixations, #other fixations) distinct pixels of
    ``other_fixations`` (seeded: same inputs, same value).
    """
    f = _fixations(fixations)
    o = _fixations(other_fixations, "other_fixations")
    if o.shape != f.shape:
        raise ValueError(f"other_fixations shape {o.shape} differs from fixations shape {f.shape}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be ≥ 1, got {n_splits}")
    p = _minmax(_pred(pred, f.shape))
    pos = p[f]
    other = p[o]
    n = min(pos.size, other.size)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_splits):
        neg = other[rng.permutation(other.size)[:n]]
        top = max(pos.max(), neg.max())
        thr = np.arange(0.0, top + 1e-12, step)[::-1]
        tp = np.concatenate([[0.0], (pos[None, :] >= thr[:, None]).mean(1), [1.0]])
        fp = np.concatenate([[0.0], (neg[None, :] >= thr[:, None]).mean(1), [1.0]])
        aucs.append(np.trapezoid(tp, fp))
    return float(np.mean(aucs))


# name -> (function, which ground truth it takes, higher is better)
METRICS = {
    "cc": (cc, "density", True),
    "sim": (sim, "density", True),
    "kld": (kld, "density", False),
    "nss": (nss, "fixations", True),
    "auc_judd": (auc_judd, "fixations", True),
    "auc_shuffled": (auc_shuffled, "fixations+other", True),
}


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """10·log10(peak² / MSE) in dB; ``inf`` for a lossless (MSE 0) result."""
    return float("inf") if mse <= 0 else 10.0 * float(np.log10(peak * peak / mse))


class WeightedPsnr:
    """Eye-tracking-weighted PSNR (EW-PSNR) of a clip, accumulated one frame at a time.

    ``add(reference, distorted, weights)`` takes one frame (2-D arrays, e.g. luma) and its
    fixation density (any non-negative map; resized to the frame when its size differs;
    ``None`` = every pixel alike, which gives plain PSNR). Each frame's weights are
    normalised to sum 1, so the frame's weighted MSE is Σ w·(ref − dist)² and every frame
    counts equally; the clip's MSE is the mean over frames, and ``value`` its PSNR (one
    log over the pooled error, like the usual sequence PSNR of equal-size frames).
    """

    def __init__(self, peak: float = 255.0):
        self.peak = float(peak)
        self._sum = 0.0
        self.frames = 0

    def add(self, reference: np.ndarray, distorted: np.ndarray, weights: np.ndarray | None = None) -> float:
        """Add one frame; returns its weighted MSE."""
        ref = _as_map(reference, "reference")
        dist = _as_map(distorted, "distorted")
        if ref.shape != dist.shape:
            raise ValueError(f"distorted frame shape {dist.shape} differs from the reference's {ref.shape}")
        se = (ref - dist) ** 2
        if weights is None:
            mse = float(se.mean())
        else:
            w = resize_to(_density(weights), ref.shape)
            mse = float((se * w).sum() / w.sum())
        self._sum += mse
        self.frames += 1
        return mse

    @property
    def mse(self) -> float:
        if self.frames == 0:
            raise ValueError("no frames added: nothing to measure")
        return self._sum / self.frames

    @property
    def value(self) -> float:
        return psnr_from_mse(self.mse, self.peak)


def weighted_psnr(reference: np.ndarray, distorted: np.ndarray, weights: np.ndarray | None,
                  peak: float = 255.0) -> float:
    """EW-PSNR (:class:`WeightedPsnr`) of one frame (H, W) or a clip (T, H, W) with its density (same leading shape)."""
    ref, dist = np.asarray(reference), np.asarray(distorted)
    acc = WeightedPsnr(peak)
    if ref.ndim == 2:
        acc.add(ref, dist, weights)
    else:
        for i in range(ref.shape[0]):
            acc.add(ref[i], dist[i], None if weights is None else np.asarray(weights)[i])
    return acc.value
