"""Real footage without labels: does the map sit on what moves past a static camera?

On a clip from a fixed camera, a per-pixel median over the whole clip is the empty scene;
pixels that differ from it (then cleaned by a morphological opening and closing) are the
*movers*: people or objects passing. No eye-tracking data is needed for the check that
matters in practice (where would a viewer look, where should an encoder spend its bits):

* ``mass ratio``: the share of the map's mass on the movers ÷ their share of the picture's
  area (1 = no better than a flat map; the issue's target is ≥ 3);
* ``NSS on movers``: the map, standardised, averaged over the movers' pixels (0 = chance);

each beside the same figures for a centred Gaussian (σ = ¼ of width and height, the centre
prior of ``salstream eval``). Maps come from the real pipeline through the Python API
(:class:`salstream.Saliency`, every frame, the profile's bundled weights unless
``--checkpoint``), so they are what ``salstream run`` publishes. Frames whose movers cover
less than ``--min-area`` of the picture, and the first window (not yet full), are left out.

Clip: ``benchmarks/media/vtest.mp4`` (OpenCV's pedestrian sample, see
``benchmarks/media/LICENSE.md``). Writes ``real_footage.json`` and ``real_footage.png``
(frames with map and mover outlines, and the per-frame ratio) to ``--out-dir``.

    python -m benchmarks.real_footage --out-dir benchmarks/results/real_footage
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = ROOT / "benchmarks" / "media" / "vtest.mp4"
WORK_WIDTH = 384      # masks and maps are compared at this width (aspect kept)


def read_frames(path: Path, width: int = WORK_WIDTH, max_frames: Optional[int] = None) -> tuple[np.ndarray, float]:
    """All frames (N, h, w, 3) uint8 RGB scaled to ``width``, and the frame rate."""
    import av
    import cv2
    frames = []
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        fps = float(stream.average_rate or 30)
        for frame in box.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            h = int(round(img.shape[0] * width / img.shape[1]))
            frames.append(cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise SystemExit(f"{path}: no video frames could be decoded")
    return np.stack(frames), fps


def motion_masks(frames: np.ndarray, threshold: float = 28.0) -> np.ndarray:
    """(N, h, w) bool: where each frame differs from the clip's per-pixel median (the empty scene)."""
    import cv2
    step = max(1, len(frames) // 120)              # the median of ≤ 120 frames spread over the clip
    background = np.median(frames[::step], axis=0).astype(np.int16)
    kernel3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    kernel7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    masks = np.empty(frames.shape[:3], bool)
    for i, f in enumerate(frames):
        diff = np.abs(f.astype(np.int16) - background).max(axis=2)
        m = (diff > threshold).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel3)     # sensor noise and compression speckle out
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel7)    # a person's parts joined
        masks[i] = m > 0
    return masks


def mover_scores(smap: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mass ratio and NSS of ``smap`` (any size; resized to the mask) on the ``mask`` pixels."""
    from salstream.diffsal import metrics as M
    from salstream.diffsal.maps import resize_map
    m = np.clip(resize_map(np.asarray(smap, np.float32), mask.shape), 0, None).astype(np.float64)
    area = float(mask.mean())
    mass = float(m[mask].sum() / m.sum()) if m.sum() > 0 else area
    return {"mass": mass, "area": area, "ratio": mass / area, "nss": float(M.nss(m, mask))}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    mass = np.array([r["mass"] for r in rows])
    area = np.array([r["area"] for r in rows])
    ratio = np.array([r["ratio"] for r in rows])
    return {"mass_ratio_pooled": float(mass.sum() / area.sum()), "mass_ratio_median": float(np.median(ratio)),
            "mass_ratio_mean": float(ratio.mean()), "nss_mean": float(np.mean([r["nss"] for r in rows])),
            "mass_share_mean": float(mass.mean()), "area_share_mean": float(area.mean())}


def plot(path: Path, frames, masks, maps, picks, per_frame, title: str) -> None:
    import cv2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from salstream.diffsal.maps import normalize_map, resize_map
    fig = plt.figure(figsize=(3.2 * len(picks), 5.6))
    for c, i in enumerate(picks):
        ax = fig.add_subplot(2, len(picks), c + 1)
        ax.imshow(frames[i])
        heat = normalize_map(resize_map(maps[i], masks[i].shape), "minmax")
        ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for cnt in contours:
            pts = cnt[:, 0, :]
            ax.plot(np.r_[pts[:, 0], pts[0, 0]], np.r_[pts[:, 1], pts[0, 1]], color="cyan", lw=0.8)
        ax.set_title(f"frame {i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(2, 1, 2)
    idx = [r["frame"] for r in per_frame]
    ax.plot(idx, [r["model"]["ratio"] for r in per_frame], lw=0.9, label="model map")
    ax.plot(idx, [r["centre"]["ratio"] for r in per_frame], lw=0.9, color="#888888", label="centred Gaussian")
    ax.axhline(3.0, color="C3", ls="--", lw=0.8, label="target 3×")
    ax.axhline(1.0, color="k", ls=":", lw=0.8, label="flat map")
    ax.set_xlabel("frame")
    ax.set_ylabel("mass on movers ÷ their area")
    ax.legend(fontsize=7, ncols=4)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="a static-camera clip (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="weights (default: the profile's bundled weights)")
    p.add_argument("--profile", default="lite")
    p.add_argument("--engine", default="torch", help="engine as for `salstream run` (default torch: no export step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    p.add_argument("--min-area", type=float, default=0.005, help="leave out frames whose movers cover less than this")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "real_footage")
    args = p.parse_args(argv)
    if not args.clip.is_file():
        raise SystemExit(f"--clip {args.clip}: no such file")

    from salstream import Saliency
    from salstream.diffsal.evaluate import centre_prior
    t0 = time.perf_counter()
    frames, fps = read_frames(args.clip, max_frames=args.max_frames)
    masks = motion_masks(frames)
    print(f"{args.clip.name}: {len(frames)} frames at {fps:g} fps, movers cover {masks.mean():.1%} of the picture "
          f"on average", flush=True)
    sal = Saliency(args.profile, engine=args.engine, checkpoint=args.checkpoint, threads=args.threads)
    cfg = sal.engine.config
    warmup = (cfg.frames - 1) * cfg.frame_stride      # the first full window ends here
    maps: dict[int, np.ndarray] = {}
    modes: set[str] = set()
    for pred in sal.predict_file(str(args.clip), max_frames=len(frames)):
        maps[pred.frame_index] = pred.saliency
        modes.add(pred.mode)
        if len(maps) % 100 == 0:
            print(f"  {len(maps)}/{len(frames)} maps", flush=True)
    centre = centre_prior(masks.shape[1:])
    per_frame = []
    for i in sorted(maps):
        if i < warmup or i >= len(masks) or masks[i].mean() < args.min_area:
            continue
        per_frame.append({"frame": i, "model": mover_scores(maps[i], masks[i]),
                          "centre": mover_scores(centre, masks[i])})
    if not per_frame:
        raise SystemExit("no frame had both a full window and movers; lower --min-area")
    result = {
        "clip": args.clip.name, "frames": len(frames), "fps": fps, "scored_frames": len(per_frame),
        "profile": cfg.profile, "engine": args.engine, "threads": args.threads,
        "checkpoint": Path(str(args.checkpoint or sal.weights)).name, "modes": sorted(modes),
        "model": summarise([r["model"] for r in per_frame]),
        "centre_gaussian": summarise([r["centre"] for r in per_frame]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "seconds": round(time.perf_counter() - t0, 1),
        "per_frame": per_frame,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "real_footage.json").write_text(json.dumps(result, indent=1))
    scored = [r["frame"] for r in per_frame]
    picks = [scored[int(k)] for k in np.linspace(0, len(scored) - 1, 4).round()]
    m, c = result["model"], result["centre_gaussian"]
    title = (f"{args.clip.name}: mass on movers ÷ area {m['mass_ratio_pooled']:.2f} (centre Gaussian "
             f"{c['mass_ratio_pooled']:.2f}); NSS on movers {m['nss_mean']:.2f} ({c['nss_mean']:.2f})")
    plot(args.out_dir / "real_footage.png", frames, masks, maps, picks, per_frame, title)
    print(f"| map | mass on movers ÷ their area (pooled) | median per frame | NSS on movers |\n|---|---|---|---|\n"
          f"| {cfg.profile} ({result['checkpoint']}) | {m['mass_ratio_pooled']:.2f} | {m['mass_ratio_median']:.2f} | "
          f"{m['nss_mean']:.2f} |\n| centred Gaussian | {c['mass_ratio_pooled']:.2f} | {c['mass_ratio_median']:.2f} | "
          f"{c['nss_mean']:.2f} |")
    print(f"wrote {args.out_dir / 'real_footage.json'} and real_footage.png ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
