"""Does the timing pathway's evidence point at the sounding object? A probe of lite (v4 and later).

The timing pathway (:class:`~salstream.diffsal.models.lite.TimingPathway`) correlates, per
position of the stride-16 grid, how much the picture changes with when the sound gets
louder, over the window's 16 frames (about one second). This script scores that fixed
evidence (the positive part of the sum of its covariance channels) directly, without the
network that reads it, on cross-style clips (:mod:`salstream.diffsal.datasets.randomized`):
for every object, the mean evidence inside its disk; the window counts as *found* when the
sounding object has the most. Three ways to read the same evidence:

* ``now``: at each object's position in the newest frame (what the map needs);
* ``path``: over the union of the object's disks in all window frames (where its events
  happened); an upper bound for ``now``: moving objects leave their evidence along the way;
* ``carried``: each frame's evidence carried to the newest frame by appearance (every
  newest-frame position takes a softmax-weighted average, over the positions of the older
  frame, of that frame's evidence, weighted by the cosine similarity of the frozen
  backbone's features at temperature ``--tau``), i.e. a fixed, untrained way to bring an
  event to where its object is now;
* ``tracked``: carried as the pathway's optional tracked input does it
  (:meth:`TimingPathway.tracked`, ``--arch timing_tracked=true``): frame to frame, each step
  matching only the cells around a position in the frame before (an object moves little in
  one frame step), on keys from the pathway's own features, so the evidence follows its
  object through the window at a fraction of the cost.

Chance is the mean of 1 / objects.

``--fusion B1,B2,…`` also asks what the evidence would be worth as an untrained boost: the
model's audio-visual and video-only maps (one DDIM step, as ``salstream run``) multiplied by
``exp(β · E / max E)`` (E: ``now``, ``carried`` or ``tracked`` evidence, upsampled to the map), scored by CC
against the ground truth at map size on the in-style, held-out-style and off-screen splits
(β = 0 is the model itself).

Writes ``timing_evidence.json`` and ``README.md`` to ``--out-dir``.

    python -m benchmarks.timing_evidence --clips 24 --fusion 0.5,1,2 --out-dir benchmarks/results/timing_evidence
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

READS = ("now", "path", "carried", "tracked")
TARGETS = (40, 47, 53, 59)            # window targets in each 60-frame clip (full windows start at 30)


def object_scores(evidence: np.ndarray, disks: Sequence[Sequence[tuple[float, float, float]]],
                  size: tuple[int, int]) -> np.ndarray:
    """Mean ``evidence`` (h, w) inside each object's disks.

    ``disks[k]``: (x, y, radius) in pixels of a ``size`` = (width, height) picture, one per
    time the object is looked at; the union of its disks is its region (at least the grid
    cell it sits in)."""
    h, w = evidence.shape
    width, height = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for object_disks in disks:
        region = np.zeros((h, w), bool)
        for x, y, r in object_disks:
            gx, gy = (x + 0.5) / width * w - 0.5, (y + 0.5) / height * h - 0.5
            gr = max(r / width * w, 0.75)
            region |= (xx - gx) ** 2 + (yy - gy) ** 2 <= (gr + 0.5) ** 2
        out.append(float(evidence[region].mean()) if region.any() else 0.0)
    return np.asarray(out)


def found(scores: np.ndarray, source: int) -> tuple[float, float]:
    """(1 if the source scores highest else 0, the source's share of the objects' total)."""
    return float(np.argmax(scores) == source), float(scores[source] / (scores.sum() + 1e-9))


def _evidence(timing, video, rise, keys=None, tau: float = 0.03, track: bool = False):
    """Evidence (h, w) of one window: the positive part of the summed covariance terms.

    ``keys`` (1, C, T, h, w): each frame's terms are first carried to the newest frame by
    appearance, in one match over the whole picture. ``track``: carried instead as the
    model does it (:meth:`TimingPathway.tracked`, frame to frame among neighbouring cells,
    on keys from the same features ``video``)."""
    import torch
    import torch.nn.functional as F
    per_frame = timing.per_frame_evidence(video, timing.loudness(rise)[0])
    h, w = video.shape[-2:]
    if track:
        return F.relu(timing.tracked(video, per_frame))[0]
    per_frame = per_frame[0].flatten(1)
    if keys is None:
        return F.relu(per_frame.sum(0)).reshape(h, w)
    k = F.normalize(keys[0], dim=0)
    newest = k[:, -1].flatten(1)
    total = torch.zeros(h * w)
    for f in range(k.shape[1]):
        att = torch.softmax(newest.t() @ k[:, f].flatten(1) / tau, dim=1)
        total += att @ per_frame[f]
    return F.relu(total).reshape(h, w)


def fused_cc(pred: np.ndarray, evidence: np.ndarray, beta: float, density: np.ndarray) -> float:
    """CC of ``pred`` × exp(β · evidence / its max), evidence resized to the map, with ``density``."""
    import cv2

    from salstream.diffsal.metrics import cc
    e = cv2.resize(evidence.astype(np.float32), pred.shape[::-1], interpolation=cv2.INTER_LINEAR)
    e = np.maximum(e, 0.0) / (float(e.max()) + 1e-6)
    return cc(pred * np.exp(beta * e), density)


def run(clips: int, tau: float, threads: int, checkpoint: Optional[str], betas: Sequence[float] = ()) -> dict:
    import torch

    from salstream.diffsal.checkpoint import load_model
    from salstream.diffsal.datasets.randomized import cross_style_clip
    from salstream.diffsal.datasets.windows import resize_map, window_audio, window_frame_indices
    from salstream.diffsal.inference import predict_window
    from salstream.diffsal.models.lite import loudness_rise
    from salstream.diffsal.preprocess import preprocess_frame
    from salstream.diffsal.registry import bundled_weights

    torch.set_num_threads(threads)
    path = checkpoint or bundled_weights("lite")
    model = load_model(path).eval()
    timing, cfg = model.timing, model.config
    if timing is None:
        raise SystemExit(f"{path}: this checkpoint has no timing pathway (lite v4 or later has one)")
    level = model.sync_level
    rows = {key: defaultdict(list) for key in READS}
    fusion: dict[str, list[float]] = defaultdict(list)
    betas = sorted({0.0, *betas}) if betas else []
    splits = ("in-style", "held-out-style") + (("off-screen",) if betas else ())
    t0 = time.time()
    for split in splits:
        for ci in range(clips):
            clip = cross_style_clip(split, ci, n_frames=60)
            feats, frames = {}, {}
            for target in TARGETS:
                idx = window_frame_indices(cfg, target, clip.n_frames)
                with torch.no_grad():
                    for i in idx:
                        if i not in feats:
                            frames[i] = preprocess_frame(clip.frame(i), cfg)
                            raw = model.backbone_features(frames[i][None])
                            feats[i] = (raw[level], model.project_video(raw)[level])
                    video = torch.stack([feats[i][1] for i in idx], dim=2)
                    keys = torch.stack([feats[i][0] for i in idx], dim=2)
                    slices = window_audio(cfg, clip.audio(), target, clip.fps)
                    per = timing.rows // slices.shape[1]
                    rise = torch.cat([loudness_rise(slices[:, s:s + 1], per) for s in range(slices.shape[1])], 1)
                    plain = _evidence(timing, video, rise).numpy()
                    carried = _evidence(timing, video, rise, keys, tau).numpy()
                    tracked = _evidence(timing, video, rise, track=True).numpy()
                    if betas:
                        clip_in = torch.stack([frames[i] for i in idx], dim=1)[None]
                        density = resize_map(clip.density(target), cfg.map_size)[0].numpy()
                        for mode in ("av", "video"):
                            noise = torch.Generator().manual_seed(target)     # same draw for every β
                            pred = predict_window(model, clip_in, slices[:, None], mode=mode, generator=noise)
                            pred = pred[0, 0].numpy()
                            for name, ev in (("now", plain), ("carried", carried), ("tracked", tracked)):
                                for beta in betas:
                                    fusion[f"{split} | {mode} | {name} | {beta:g}"].append(
                                        fused_cc(pred, ev, beta, density))
                if clip.source_index is None:
                    continue                                   # off-screen: nothing to find
                n_obj = len(clip.objects)
                now = [[clip.object_state(k, target / clip.fps)[:3]] for k in range(n_obj)]
                along = [[clip.object_state(k, i / clip.fps)[:3] for i in idx] for k in range(n_obj)]
                size = (clip.width, clip.height)
                for read, ev, disks in (("now", plain, now), ("path", plain, along), ("carried", carried, now),
                                        ("tracked", tracked, now)):
                    hit, share = found(object_scores(ev, disks, size), clip.source_index)
                    for group in (split, f"{split} / {clip.styles['event']}"):
                        rows[read][group].append((hit, share, 1.0 / n_obj))
        print(f"{split}: {clips} clips × {len(TARGETS)} windows ({time.time() - t0:.0f} s)", flush=True)
    table = {read: {g: {"windows": len(v), "found": float(np.mean([r[0] for r in v])),
                        "source_share": float(np.mean([r[1] for r in v])),
                        "chance": float(np.mean([r[2] for r in v]))} for g, v in sorted(groups.items())}
             for read, groups in rows.items()}
    return {"clips_per_split": clips, "windows_per_clip": len(TARGETS), "tau": tau, "threads": threads,
            "checkpoint": "bundled lite" if checkpoint is None else Path(checkpoint).name,
            "machine": f"{platform.machine()}, {platform.python_version()}", "seconds": round(time.time() - t0, 1),
            "reads": table,
            "fusion_cc": {k: {"windows": len(v), "cc": float(np.mean(v))} for k, v in sorted(fusion.items())}}


def markdown(result: dict) -> str:
    lines = ["| split / event | windows | chance | " + " | ".join(f"found: {k}" for k in READS) + " | "
             + " | ".join(f"share: {k}" for k in READS) + " |", "|---|---|---|" + "---|" * (2 * len(READS))]
    reads = result["reads"]
    for group, row in reads["now"].items():
        r = {k: reads[k][group] for k in READS}
        lines.append(f"| {group} | {row['windows']} | {row['chance']:.2f} | "
                     + " | ".join(f"{r[k]['found']:.2f}" for k in READS) + " | "
                     + " | ".join(f"{r[k]['source_share']:.2f}" for k in READS) + " |")
    fusion = result.get("fusion_cc") or {}
    if fusion:
        betas = sorted({float(k.split(" | ")[3]) for k in fusion})
        lines += ["", "CC of map × exp(β · evidence / max) (β = 0: the model alone)", "",
                  "| split | map | evidence | " + " | ".join(f"β = {b:g}" for b in betas) + " |",
                  "|---|---|---|" + "---|" * len(betas)]
        groups = sorted({tuple(k.split(" | ")[:3]) for k in fusion})
        for split, mode, name in groups:
            cells = [fusion.get(f"{split} | {mode} | {name} | {b:g}", {}).get("cc") for b in betas]
            lines.append(f"| {split} | {mode} | {name} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timing_evidence",
                                description="Score the timing pathway's fixed evidence on cross-style clips: does "
                                            "the sounding object get the most, now, along its path, or once carried "
                                            "to its newest position by appearance?")
    p.add_argument("--clips", type=int, default=24, help="clips per split (4 windows each; default 24)")
    p.add_argument("--tau", type=float, default=0.03, help="softmax temperature of the appearance match (default 0.03)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--fusion", default="", metavar="B1,B2,…",
                   help="also score the model's maps boosted by exp(β · evidence) for these β (adds the off-screen "
                        "split; about 3× slower)")
    p.add_argument("--checkpoint", default=None, help="a lite checkpoint with a timing pathway (default: bundled)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/timing_evidence"))
    args = p.parse_args(argv)
    if args.clips < 1 or args.tau <= 0:
        p.error("--clips must be ≥ 1 and --tau > 0")
    try:
        betas = [float(b) for b in args.fusion.split(",") if b.strip()]
    except ValueError:
        p.error(f"--fusion {args.fusion!r}: give numbers separated by commas, e.g. 0.5,1,2")
    if any(not np.isfinite(b) or b < 0 for b in betas):
        p.error(f"--fusion {args.fusion!r}: every β must be a finite number ≥ 0")
    result = run(args.clips, args.tau, args.threads, args.checkpoint, betas)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "timing_evidence.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out_dir / "README.md").write_text(
        f"# Timing evidence probe ({result['checkpoint']})\n\n"
        f"`python -m benchmarks.timing_evidence --clips {args.clips} --tau {args.tau}"
        + (f" --fusion {args.fusion}" if betas else "") + "` "
        f"({result['seconds']:.0f} s, {result['machine']}). See the module docstring for what is scored.\n\n"
        + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
