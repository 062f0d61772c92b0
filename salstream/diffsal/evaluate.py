"""``salstream eval``: the six saliency metrics per dataset and per mode, plus a centre prior.

For every evaluated frame the model predicts a map through the same path as streaming
(:func:`diffsal.inference.encode_window` semantics and the one DDIM loop,
:func:`diffsal.inference.predict_from_features`); per-frame profiles encode each frame
and each audio slice once per video and reuse the features across overlapping windows,
exactly like the live cache. Scores are averaged per video, then over videos (spec §6.3).

Modes: ``av`` (audio + video), ``video`` (audio features withheld), ``audio`` (video
features withheld). ``centre`` is a fixed anisotropic Gaussian at the image centre
(σ = ¼ of width and height), the usual "centre bias" baseline; it needs no model.
Generated datasets add their own references computed from the ground truth
(:meth:`Video.references`), e.g. ``equal-blob``: the centre bias plus an equal blob on
every moving object, the best a model that ignores the sound can do.

``--data cross-style`` scores domain-randomised clips (:mod:`diffsal.datasets.randomized`)
in three splits: ``in-style`` (style families a model may be trained on),
``held-out-style`` (families never trained on) and ``off-screen`` (held-out styles, the
sound comes from no visible object: the map should fall back to video saliency).

Several draws per window (``--samples K``): the K draws of a window run as one batched
call and the scored map is their mean (what ``salstream run --samples K`` publishes). The
report then also gives, per mode, the metrics of the mean of the first k draws for
k = 1, 2, 4, … K (quality vs K), and the calibration of the spread (per-pixel standard
deviation of the K draws): does it predict the error? Per frame, the Spearman rank
correlation between spread and |map − ground truth| over pixels (both min-max scaled, at
model resolution), and the CC of the windows split into thirds by their mean spread.

Outputs in ``--out``: ``metrics.json`` (everything, with per-video scores),
``metrics.md`` (tables), ``metrics.png`` (bar chart), ``cc.png`` (CC of every mode and
reference per dataset), ``examples.png`` (frames with ground truth and each mode's map);
with K > 1 also ``samples.png`` (quality vs K and calibration).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from salstream.cli.numbers import COUNT, SEED, THREADS, number
from salstream.diffsal import metrics as M
from salstream.diffsal.config import MODES
from salstream.diffsal.datasets.layout import Video
from salstream.diffsal.datasets.windows import (
    WindowSource,
    first_full_target,
    last_full_target,
    lite_slice_indices,
    window_frame_indices,
)
from salstream.diffsal.features import FeatureCache, cat_batch
from salstream.errors import SalstreamError

METRIC_NAMES = ("cc", "sim", "kld", "nss", "auc_judd", "auc_shuffled")
BASELINE = "centre"


def centre_prior(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-0.5 * (((xx - (w - 1) / 2) / (w / 4)) ** 2 + ((yy - (h - 1) / 2) / (h / 4)) ** 2))


def frame_scores(pred: np.ndarray, density: np.ndarray, fixations: np.ndarray,
                 other: Optional[np.ndarray], seed: int = 0) -> dict[str, float]:
    out = {"cc": M.cc(pred, density), "sim": M.sim(pred, density), "kld": M.kld(pred, density)}
    if fixations.any():
        out["nss"] = M.nss(pred, fixations)
        out["auc_judd"] = M.auc_judd(pred, fixations)
        if other is not None and other.any():
            out["auc_shuffled"] = M.auc_shuffled(pred, fixations, other, n_splits=20, seed=seed)
    return out


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def sample_counts(samples: int) -> list[int]:
    """The draw counts k scored for K samples: 1, 2, 4, … up to K, and K itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


def spread_error_spearman(mean_map: np.ndarray, spread: np.ndarray, density: np.ndarray) -> Optional[float]:
    """Spearman correlation over pixels between the spread and |map − ground truth| (both maps
    min-max scaled at the map's resolution); ``None`` when either is constant (no ranking)."""
    from scipy.stats import spearmanr

    from salstream.diffsal.maps import normalize_map
    gt = normalize_map(M.resize_to(np.asarray(density, np.float64), mean_map.shape))
    err = np.abs(normalize_map(mean_map) - gt).ravel()
    s = np.asarray(spread, np.float64).ravel()
    if np.ptp(err) == 0 or np.ptp(s) == 0:
        return None
    return float(spearmanr(s, err).statistic)


def calibration(windows: list[tuple[float, float, Optional[float]]], bins: int = 3) -> dict[str, Any]:
    """``windows``: (mean spread, CC, spread/error Spearman) per scored window. The CC of the
    windows split into ``bins`` equal parts by mean spread (low → high), and the Spearman's mean."""
    spread = np.array([w[0] for w in windows])
    ccs = np.array([w[1] for w in windows])
    rho = [w[2] for w in windows if w[2] is not None]
    order = np.argsort(spread, kind="stable")
    parts = [p for p in np.array_split(order, bins) if len(p)]
    return {"windows": len(windows), "spearman_mean": float(np.mean(rho)) if rho else None,
            "spearman_median": float(np.median(rho)) if rho else None,
            "mean_spread": float(spread.mean()) if len(spread) else None,
            "spread_bins": [[float(spread[p].min()), float(spread[p].max())] for p in parts],
            "cc_by_spread_bin": [float(ccs[p].mean()) for p in parts],
            "windows_per_bin": [int(len(p)) for p in parts]}


# --------------------------------------------------------------------------- features
class VideoFeatures:
    """One video's per-frame and per-slice feature caches (per-frame profiles), as the live scheduler keeps them."""

    def __init__(self, runner: Any, src: WindowSource, batch: int = 8):
        self.src = src
        self.video = FeatureCache(runner.encode_video, batch_size=batch)
        self.audio = FeatureCache(runner.encode_audio, batch_size=batch)

    def frames(self, idx: Sequence[int]):
        self.video.need([(0, i, lambda i=i: self.src.frame_tensor(i)) for i in idx])
        return self.video.stack(0, idx)

    def slices(self, idx: Sequence[int]):
        from salstream.diffsal.audio import grid_slices
        todo = sorted({k for k in idx if self.audio.get(0, k) is None})
        if todo:   # the log-mel of every missing slice in one call, then their features in batches
            mel = grid_slices(torch.from_numpy(self.src.audio_16k()), todo, self.src.cfg.audio)[0]   # (K, h, w)
            self.audio.need([(0, k, mel[j:j + 1]) for j, k in enumerate(todo)])
        return self.audio.stack(0, idx)


@torch.inference_mode()
def window_features(runner: Any, src: WindowSource, targets: Sequence[int], cache: Optional[VideoFeatures],
                    need_video: bool, need_audio: bool):
    """Batched (video, audio) features for the windows ending/centred at ``targets``."""
    from salstream.diffsal.inference import encode_window
    cfg = runner.config
    vids, auds = [], []
    for t in targets:
        if cfg.per_frame_video:
            v = a = None
            if need_video:
                v = cache.frames(window_frame_indices(cfg, t, src.video.n_frames))
            if need_audio:
                a = cache.slices(lite_slice_indices(cfg, t, src.video.fps))
        else:
            mode = "av" if need_video and need_audio else ("video" if need_video else "audio")
            video = src.video_input(t).unsqueeze(0) if need_video else None
            audio = src.audio_input(t).unsqueeze(0) if need_audio else None
            v, a = encode_window(runner, video, audio, mode)
        vids.append(v)
        auds.append(a)
    return (cat_batch(vids) if vids[0] is not None else None), (cat_batch(auds) if auds[0] is not None else None)


# --------------------------------------------------------------------------- evaluation
def eval_targets(runner: Any, video: Video, frame_step: int, max_windows: Optional[int]) -> list[int]:
    cfg = runner.config
    lo, hi = first_full_target(cfg), last_full_target(cfg, video.n_frames)
    if hi < lo:
        lo = hi = min(max(0, cfg.target_index), video.n_frames - 1)  # too short: one clamped window
    targets = list(range(lo, hi + 1, max(1, frame_step)))
    if max_windows is not None and len(targets) > max_windows:
        pick = np.linspace(0, len(targets) - 1, max_windows).round().astype(int)
        targets = [targets[i] for i in pick]
    return targets


def _other_fixations(videos: list[Video], vi: int, target: int, rng: np.random.Generator,
                     shape: tuple[int, int], n: int = 10) -> Optional[np.ndarray]:
    # Shuffled-AUC negatives: fixations of random frames of *other* videos of the dataset
    # (of other, distant frames of the same video when the dataset has only one).
    pool = [(j, v) for j, v in enumerate(videos) if j != vi] or [(vi, videos[vi])]
    acc = np.zeros(shape, bool)
    for _ in range(n):
        j, v = pool[int(rng.integers(len(pool)))]
        i = int(rng.integers(v.n_frames))
        if j == vi and abs(i - target) < v.fps:
            continue
        f = v.fixations(i)
        if f.shape != shape:
            f = M.resize_to(f.astype(np.float64), shape) > 0.5
        acc |= f
    return acc if acc.any() else None


def evaluate(runner: Any, datasets: dict[str, list[Video]], modes: Sequence[str] = MODES,
             steps: Optional[int] = None, frame_step: int = 6, max_windows: Optional[int] = None,
             batch: int = 8, seed: int = 0, n_examples: int = 4, progress: bool = True,
             samples: int = 1) -> dict:
    """Score ``runner`` (model or engine) on ``datasets`` = {name: videos}. Returns a JSON-able dict.

    ``samples`` K > 1: each window's map is the mean of K draws (one batched call), and the
    result has a ``samples`` part (quality vs k draws, calibration of the spread)."""
    from salstream.diffsal.inference import MAX_SAMPLES, check_mode, draw_stats, predict_samples
    from salstream.diffsal.preprocess import postprocess_map
    for m in modes:
        check_mode(m)
    if not 1 <= samples <= MAX_SAMPLES:
        raise SalstreamError(f"--samples {samples}: must be between 1 and {MAX_SAMPLES}")
    cfg = runner.config
    ks = sample_counts(samples) if samples > 1 else []
    result: dict[str, Any] = {"profile": cfg.profile, "steps": steps if steps is not None else cfg.default_steps,
                              "frame_step": frame_step, "seed": seed, "samples": samples, "datasets": {}}
    if ks:
        result["sampling"] = {"samples": samples, "k": ks, "datasets": {}}
    examples: list[dict] = []
    per_ds_examples = max(1, math.ceil(n_examples / max(1, len(datasets)))) if n_examples > 0 else 0
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        total = sum(len(eval_targets(runner, v, frame_step, max_windows)) for vs in datasets.values() for v in vs)
        bar = tqdm(total=total, desc="eval", unit="win")
    for ds_name, videos in datasets.items():
        rng = np.random.default_rng(seed)
        per_video: dict[str, dict[str, dict[str, float]]] = {}
        ds_modes = [m for m in modes if m == "video" or all(v.has_audio for v in videos)]
        ds_examples = 0
        per_video_k: dict[str, dict[str, dict[int, dict[str, float]]]] = {m: {} for m in ds_modes}
        calib: dict[str, list[tuple[float, float, Optional[float]]]] = {m: [] for m in ds_modes}
        for vi, video in enumerate(videos):
            src = WindowSource(video, cfg)
            cache = VideoFeatures(runner, src, batch) if cfg.per_frame_video else None
            targets = eval_targets(runner, video, frame_step, max_windows)
            rows: dict[str, list[dict[str, float]]] = {m: [] for m in (*ds_modes, BASELINE)}
            rows_k: dict[str, dict[int, list[dict[str, float]]]] = {m: {k: [] for k in ks} for m in ds_modes}
            for b0 in range(0, len(targets), batch):
                tb = targets[b0:b0 + batch]
                dens = [video.density(t) for t in tb]
                fixs = [video.fixations(t) for t in tb]
                others = [_other_fixations(videos, vi, t, rng, f.shape) for t, f in zip(tb, fixs)]
                preds: dict[str, np.ndarray] = {}
                by_k: dict[str, dict[int, np.ndarray]] = {}
                spreads: dict[str, np.ndarray] = {}
                # Encoders once per window; each mode just withholds one modality's features.
                v_all, a_all = window_features(runner, src, tb, cache, any(m in ("av", "video") for m in ds_modes),
                                               any(m in ("av", "audio") for m in ds_modes))
                for mode in ds_modes:
                    v = v_all if mode in ("av", "video") else None
                    a = a_all if mode in ("av", "audio") else None
                    g = torch.Generator().manual_seed(seed * 1_000_003 + vi * 10_007 + b0)
                    draws = predict_samples(runner, v, a, len(tb), samples, steps, generator=g)
                    x0, std = draw_stats(draws)
                    preds[mode] = postprocess_map(x0)
                    if ks:   # the mean of the first k draws (draws are independent: any k of them will do)
                        by_k[mode] = {k: postprocess_map(draws[:, :k].mean(dim=1)) for k in ks}
                        spreads[mode] = postprocess_map(std)
                for k in range(len(tb)):
                    if dens[k].sum() <= 0:
                        continue  # an empty ground-truth map has nothing to score (official code skips it)
                    for mode in ds_modes:
                        rows[mode].append(frame_scores(preds[mode][k], dens[k], fixs[k], others[k], seed))
                        if ks:
                            for kk in ks:
                                rows_k[mode][kk].append(rows[mode][-1] if kk == samples else
                                                        frame_scores(by_k[mode][kk][k], dens[k], fixs[k], others[k],
                                                                     seed))
                            calib[mode].append((float(spreads[mode][k].mean()), rows[mode][-1]["cc"],
                                                spread_error_spearman(preds[mode][k], spreads[mode][k], dens[k])))
                    rows[BASELINE].append(frame_scores(centre_prior(dens[k].shape), dens[k], fixs[k], others[k], seed))
                    for name, ref in video.references(tb[k]).items():
                        rows.setdefault(name, []).append(frame_scores(ref, dens[k], fixs[k], others[k], seed))
                if ds_examples < per_ds_examples and b0 == 0:
                    ds_examples += 1
                    examples.append({"dataset": ds_name, "video": video.name, "frame": tb[0],
                                     "image": video.frame(tb[0]), "gt": dens[0],
                                     "preds": {m: preds[m][0] for m in ds_modes}})
                if bar is not None:
                    bar.update(len(tb))
            per_video[video.name] = {m: _mean_dicts(r) for m, r in rows.items() if r}
            for m in ds_modes:
                if rows_k[m] and rows_k[m][ks[0]]:
                    per_video_k[m][video.name] = {k: _mean_dicts(r) for k, r in rows_k[m].items()}
        summary = {}
        for m in dict.fromkeys(m for pv in per_video.values() for m in pv):   # modes, centre, references
            vals = [pv[m] for pv in per_video.values() if m in pv]
            if vals:
                summary[m] = _mean_dicts(vals)
        result["datasets"][ds_name] = {"n_videos": len(videos), "modes": summary, "per_video": per_video}
        if ks:
            result["sampling"]["datasets"][ds_name] = {
                m: {"by_k": {str(k): _mean_dicts([pv[k] for pv in per_video_k[m].values()]) for k in ks},
                    "calibration": calibration(calib[m])}
                for m in ds_modes if per_video_k[m]}
    if bar is not None:
        bar.close()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["_examples"] = examples
    return result


# --------------------------------------------------------------------------- report
def is_reference(name: str) -> bool:
    """A row computed from the ground truth (centre prior or a dataset's reference), not by the model."""
    return name not in MODES


def label(name: str) -> str:
    return "centre prior" if name == BASELINE else (f"{name} (reference)" if is_reference(name) else name)


def cc_table(result: dict) -> str:
    """CC of every mode and reference, one row per dataset (the cross-style summary)."""
    cols = list(dict.fromkeys(m for d in result["datasets"].values() for m in d["modes"]))
    lines = ["| dataset (CC) | " + " | ".join(label(c) for c in cols) + " | AV − video |",
             "|" + "---|" * (len(cols) + 2)]
    for ds, d in result["datasets"].items():
        m = d["modes"]
        cells = [f"{m[c]['cc']:.3f}" if c in m else "—" for c in cols]
        gap = f"{m['av']['cc'] - m['video']['cc']:+.3f}" if "av" in m and "video" in m else "—"
        lines.append(f"| {ds} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines) + "\n"


def markdown_table(result: dict) -> str:
    lines = []
    head = "| dataset | mode | " + " | ".join(n.upper().replace("_", "-") for n in METRIC_NAMES) + " |"
    lines += [head, "|" + "---|" * (2 + len(METRIC_NAMES))]
    for ds, d in result["datasets"].items():
        for mode, vals in d["modes"].items():
            cells = [f"{vals[n]:.3f}" if n in vals else "—" for n in METRIC_NAMES]
            lines.append(f"| {ds} | {label(mode)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("KLD: lower is better; all others: higher is better.")
    if len(result["datasets"]) > 1 or any(is_reference(m) and m != BASELINE
                                          for d in result["datasets"].values() for m in d["modes"]):
        lines += ["", cc_table(result).rstrip("\n")]
    if result.get("sampling"):
        lines += ["", sampling_table(result)]
    return "\n".join(lines) + "\n"


def sampling_table(result: dict) -> str:
    """Quality of the mean of k draws, and the calibration of the spread, per dataset and mode."""
    smp = result["sampling"]
    ks = smp["k"]
    lines = [f"Mean of k of {smp['samples']} draws per window (CC / NSS), and whether the spread predicts the "
             "error: Spearman(spread, |map − GT|) per frame (mean), CC of the windows in the lowest / middle / "
             "highest third of mean spread.", "",
             "| dataset | mode | " + " | ".join(f"k={k} CC / NSS" for k in ks)
             + " | Spearman | CC by spread (low / mid / high) |",
             "|" + "---|" * (4 + len(ks))]
    for ds, modes in smp["datasets"].items():
        for mode, d in modes.items():
            cells = [f"{d['by_k'][str(k)].get('cc', float('nan')):.3f} / {d['by_k'][str(k)].get('nss', float('nan')):.3f}"
                     for k in ks]
            c = d["calibration"]
            rho = "—" if c["spearman_mean"] is None else f"{c['spearman_mean']:.3f}"
            bins = " / ".join(f"{v:.3f}" for v in c["cc_by_spread_bin"])
            lines.append(f"| {ds} | {mode} | " + " | ".join(cells) + f" | {rho} | {bins} |")
    return "\n".join(lines)


def sampling_chart(result: dict, path: Path) -> None:
    """Per dataset: CC and NSS of the mean of k draws vs k, and CC per spread third (calibration)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    smp = result["sampling"]
    dsets = list(smp["datasets"])
    fig, axes = plt.subplots(len(dsets), 3, figsize=(13, 3.4 * len(dsets)), squeeze=False)
    for r, ds in enumerate(dsets):
        modes = smp["datasets"][ds]
        for c, metric in enumerate(("cc", "nss")):
            ax = axes[r][c]
            for i, (mode, d) in enumerate(modes.items()):
                ax.plot(smp["k"], [d["by_k"][str(k)].get(metric, np.nan) for k in smp["k"]], "o-", color=f"C{i}",
                        label=mode)
            ax.set_xscale("log", base=2)
            ax.set_xticks(smp["k"], [str(k) for k in smp["k"]])
            ax.set_xlabel("draws averaged (k)")
            ax.set_title(f"{ds}: {metric.upper()} of the mean map", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax = axes[r][2]
        width = 0.8 / max(1, len(modes))
        for i, (mode, d) in enumerate(modes.items()):
            cal = d["calibration"]
            vals = cal["cc_by_spread_bin"]
            rho = "n/a" if cal["spearman_mean"] is None else f"{cal['spearman_mean']:.2f}"
            ax.bar(np.arange(len(vals)) + (i - (len(modes) - 1) / 2) * width, vals, width, color=f"C{i}",
                   label=f"{mode} (Spearman spread~error {rho})")
        names = ["low", "mid", "high"] if all(len(d["calibration"]["cc_by_spread_bin"]) == 3
                                               for d in modes.values()) else None
        if names:
            ax.set_xticks(range(3), [f"{n} spread" for n in names])
        ax.set_ylabel("CC")
        ax.set_title(f"{ds}: CC of windows by mean spread (K = {smp['samples']})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bar_chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dsets = list(result["datasets"])
    fig, axes = plt.subplots(len(dsets), len(METRIC_NAMES), figsize=(3 * len(METRIC_NAMES), 2.8 * len(dsets)),
                             squeeze=False)
    for r, ds in enumerate(dsets):
        modes = result["datasets"][ds]["modes"]
        names = list(modes)
        for c, metric in enumerate(METRIC_NAMES):
            ax = axes[r][c]
            vals = [modes[m].get(metric, np.nan) for m in names]
            colors = ["#888888" if is_reference(m) else f"C{i}" for i, m in enumerate(names)]
            ax.bar(range(len(names)), vals, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
            ax.set_title(f"{ds}: {metric.upper().replace('_', '-')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def cc_chart(result: dict, path: Path) -> None:
    """Grouped bars: CC of each mode (colour) and reference (grey shades) per dataset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dsets = list(result["datasets"])
    cols = list(dict.fromkeys(m for d in result["datasets"].values() for m in d["modes"]))
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(dsets) + 1.5), 3.4))
    greys = iter(("#555555", "#999999", "#cccccc", "#777777"))
    for j, c in enumerate(cols):
        vals = [result["datasets"][ds]["modes"].get(c, {}).get("cc", np.nan) for ds in dsets]
        color = next(greys, "#aaaaaa") if is_reference(c) else f"C{MODES.index(c)}"
        bars = ax.bar(np.arange(len(dsets)) + (j - (len(cols) - 1) / 2) * width, vals, width, label=label(c),
                      color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(dsets)), dsets)
    ax.set_ylabel("CC (higher is better)")
    ax.set_ylim(min(0.0, np.nanmin([d["modes"][c]["cc"] for d in result["datasets"].values() for c in d["modes"]])),
                1.05)
    ax.legend(fontsize=7, ncols=min(len(cols), 3), loc="upper right")
    ax.set_title(f"{result.get('checkpoint', 'model')}: CC per dataset", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def example_grid(examples: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not examples:
        return
    modes = list(examples[0]["preds"])
    cols = 2 + len(modes)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.6 * cols, 1.7 * len(examples)), squeeze=False)
    for r, ex in enumerate(examples):
        panels = [("frame", ex["image"], None), ("ground truth", ex["gt"], "gray")]
        panels += [(m, ex["preds"][m], "gray") for m in modes]
        for c, (title, img, cmap) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r][0].set_ylabel(f"{ex['video']}\n#{ex['frame']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(result: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples = result.pop("_examples", [])
    paths = {"json": out / "metrics.json", "md": out / "metrics.md", "chart": out / "metrics.png",
             "cc": out / "cc.png", "examples": out / "examples.png"}
    paths["json"].write_text(json.dumps(result, indent=1, sort_keys=True))
    paths["md"].write_text(markdown_table(result))
    bar_chart(result, paths["chart"])
    cc_chart(result, paths["cc"])
    example_grid(examples, paths["examples"])
    if result.get("sampling"):
        paths["samples"] = out / "samples.png"
        sampling_chart(result, paths["samples"])
    return paths


# --------------------------------------------------------------------------- data + CLI
def default_data_root() -> Path:
    return Path(os.environ.get("SALSTREAM_DATA", Path.home() / ".cache" / "salstream"))


def resolve_data(data: str, split: str, n_clips: int, fold: int = 1, n_frames: int = 150,
                 cache_root: Optional[Path] = None) -> dict[str, list[Video]]:
    """``synthetic`` (written on first use under the data cache), ``cross-style`` (rendered in
    memory: ``n_clips`` per split; ``split`` one of its splits, or ``test`` / ``all`` for every
    one) or a dataset directory."""
    from salstream.diffsal.datasets.layout import ClipVideo, load_videos
    from salstream.diffsal.datasets.synthetic import synthetic_root, write_synthetic
    if data == "cross-style":
        from salstream.diffsal.datasets.randomized import CROSS_STYLE_SEEDS, cross_style_clip
        if split not in ("test", "all", *CROSS_STYLE_SEEDS):
            raise SalstreamError(f"--split {split!r}: cross-style splits are {', '.join(CROSS_STYLE_SEEDS)} "
                                 "(or 'all', the default, for every one)")
        chosen = [split] if split in CROSS_STYLE_SEEDS else list(CROSS_STYLE_SEEDS)
        return {s: [ClipVideo(cross_style_clip(s, k, n_frames=n_frames), s, f"{s}_{k:04d}") for k in range(n_clips)]
                for s in chosen}
    if data == "synthetic":
        root = synthetic_root(cache_root or default_data_root(), n_frames=n_frames)
        write_synthetic(root, {split: n_clips}, n_frames=n_frames, progress=True)
        vids = load_videos(root, split, datasets=["Synthetic"])
        return {"Synthetic": vids["Synthetic"][:n_clips]}
    if not Path(data).is_dir():
        raise SalstreamError(f"--data {data!r}: not 'synthetic' and not a directory (choose 'synthetic', 'cross-style' or a dataset directory)")
    return load_videos(data, split, fold)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="score a checkpoint: six metrics per dataset and mode, plus a centre prior",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None,
                   help="salstream .safetensors checkpoint (default: the bundled lite model)")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the benchmark), 'cross-style' (domain-randomised clips: in-style, "
                   "held-out-style and off-screen splits, with an equal-blob reference) or a dataset directory "
                   "(AV or DHF1K layout)")
    p.add_argument("--split", default="test", help="split to score (synthetic: test or val; AV: test; "
                   "cross-style: in-style, held-out-style or off-screen, default all three)")
    p.add_argument("--fold", type=number(int, 1, 3), default=1, help="AV datasets: fold 1-3")
    p.add_argument("--clips", type=COUNT, default=40, help="synthetic: number of clips; cross-style: clips per "
                   "split (default 40)")
    p.add_argument("--frames", type=number(int, 1, 100_000), default=150, help="synthetic and cross-style: frames per clip at 30 fps "
                   "(default 150)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of av,video,audio")
    p.add_argument("--steps", type=number(int, 1, 1000), default=None, help="DDIM steps (default: the profile's)")
    p.add_argument("--frame-step", type=number(int, 1, 10_000), default=6, help="score every N-th frame (default 6: even, so lite's "
                   "stride-2 windows only ever need the even frames)")
    p.add_argument("--max-windows", type=COUNT, default=None, help="at most this many frames per video")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="draws per window (one batched call); the scored map is their mean, and with K > 1 the "
                        "report adds the metrics of the mean of k = 1, 2, 4 … K draws and whether the per-pixel "
                        "spread predicts the error (samples.png); default %(default)s")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--data-root", type=Path, default=None, help="where synthetic data is written "
                   "(default $SALSTREAM_DATA or ~/.cache/salstream)")
    p.add_argument("--out", type=Path, default=Path("eval_report"), help="report folder (default ./eval_report)")
    p.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from salstream.diffsal.checkpoint import load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clips < 1 or args.frames < 1:
        raise SalstreamError(f"--clips ({args.clips}) and --frames ({args.frames}) must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SalstreamError(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    from salstream.diffsal.inference import MAX_SAMPLES
    if not 1 <= args.samples <= MAX_SAMPLES:       # before the model and the data load
        raise SalstreamError(f"--samples {args.samples}: must be between 1 and {MAX_SAMPLES} (draws per window)")
    from salstream.diffsal.registry import bundled_weights
    ckpt = Path(args.checkpoint) if args.checkpoint else bundled_weights("lite")
    if ckpt is None or not ckpt.is_file():
        raise SalstreamError(f"--checkpoint {ckpt}: no such file; train one with `salstream train` "
                             "or pass the path of an existing .safetensors checkpoint")
    model = load_model(ckpt)
    data = resolve_data(args.data, args.split, args.clips, args.fold, n_frames=args.frames, cache_root=args.data_root)
    result = evaluate(model, data, modes, steps=args.steps, frame_step=args.frame_step,
                      max_windows=args.max_windows, seed=args.seed, samples=args.samples)
    result["checkpoint"] = ckpt.name
    result["data"] = args.data if args.data == "synthetic" else Path(args.data).name
    result["split"] = args.split
    paths = write_report(result, args.out)
    print(markdown_table(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
