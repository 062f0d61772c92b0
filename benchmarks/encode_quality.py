"""Baseline vs saliency-guided H.264 at the same total size: where do the bits go?

For each clip and bitrate: a baseline libx264 encode (one-pass ABR + 1 s VBV, aq-mode=1)
and a guided one with per-frame regions of interest from the saliency maps, whose
bitrate is corrected (secant method) until its size is within ``--size-tolerance`` of
the baseline's. Both are decoded and compared with the source (luma):

* PSNR inside / outside the salient region (map ≥ ``--threshold`` of its peak),
  saliency-weighted PSNR, overall PSNR, file size;
* mean decoded QP inside / outside (intra frames) and the estimated share of bits
  spent inside (rate-model estimate, see ``salstream.streamer.guidance.quality.RegionQuality``).

Clips: the synthetic benchmark clip with its ground-truth density as the saliency,
and the bundled sample (``salstream/streamer/media/box.mp4``) with maps from the real
pipeline (in process, every frame; the bundled lite weights when present, else an
untrained model, which the JSON records). Writes ``encode_quality.json``, a plot
(``encode_quality.png``) and side-by-side stills (``still_<clip>.png``) to ``--out-dir``.

    python -m benchmarks.encode_quality --out-dir benchmarks/results/encode_quality
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from salstream.streamer.guidance.encoder import EncodeSettings, parse_bitrate  # noqa: E402
from salstream.streamer.guidance.quality import encode_clip, encode_matched, measure_region_quality  # noqa: E402
from salstream.streamer.guidance.roi import RoiConfig  # noqa: E402

Pairs = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def synthetic_clip(seed: int, frames: int) -> tuple[str, list[np.ndarray], list[np.ndarray], float, dict]:
    from salstream.diffsal.datasets.synthetic import SyntheticClip
    clip = SyntheticClip(seed, n_frames=frames)
    images = [clip.frame(i) for i in range(frames)]
    maps = [clip.density(i) for i in range(frames)]
    return "synthetic", images, maps, clip.fps, {"seed": seed, "saliency": "ground-truth density"}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_clip(path: str, frames: int, checkpoint: Optional[str], steps: Optional[int]
                ) -> tuple[str, list[np.ndarray], list[np.ndarray], float, dict]:
    """Frames of ``path`` and the pipeline's map for each of them (run offline, a map per frame)."""
    from salstream.runtime import load_engine
    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    from salstream.streamer.live.sources import open_source

    source = open_source(path, paced=False)
    fps = source.fps
    images: dict[int, np.ndarray] = {}
    maps: dict[int, np.ndarray] = {}

    class Keep:
        """Keeps the frames the pipeline reads and the map of each."""

        def start(self, sources, publisher) -> None:
            pass

        def on_unit(self, unit) -> None:
            img = getattr(unit, "image", None)
            if img is not None and unit.index < frames:
                images[unit.index] = img

        def on_map(self, header, saliency) -> None:
            maps[header.frame_index] = np.array(saliency, np.float32)

        def close(self, failed: bool = False) -> None:
            pass

        def summary(self) -> list[str]:
            return []

    opts = PipelineOptions(sources=[path], steps=steps, paced=False, max_frames=frames,
                           send_frames=False, publish=f"tcp://127.0.0.1:{_free_port()}")
    t0 = time.monotonic()
    engine, weights = load_engine("lite", checkpoint, "torch")
    Pipeline(opts, engine, sources=[source], consumers=[Keep()]).run()
    seconds = time.monotonic() - t0
    n = min(frames, len(images))
    if not maps:
        raise SystemExit(f"{path}: the pipeline produced no maps")
    # Frames before the first full window take the first map (as the live encoder does).
    first = min(maps)
    ordered = []
    last = maps[first]
    for i in range(n):
        last = maps.get(i, last)
        ordered.append(last)
    weights = str(Path(weights).resolve().relative_to(ROOT)) if weights and Path(weights).resolve().is_relative_to(ROOT) else weights
    info = {"path": str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path,
            "saliency": "pipeline maps (lite profile)", "weights": weights or "UNTRAINED (no weights found)",
            "maps": len(maps), "pipeline_seconds": round(seconds, 1)}
    h, w = images[0].shape[:2]
    crop = (h - h % 2, w - w % 2)
    return "sample", [np.ascontiguousarray(images[i][: crop[0], : crop[1]]) for i in range(n)], ordered, fps, info


def run_clip(name: str, images: list[np.ndarray], maps: list[np.ndarray], fps: float, bitrates: list[int],
             out_dir: Path, args: argparse.Namespace, roi: RoiConfig) -> list[dict]:
    h, w = images[0].shape[:2]
    pairs: Pairs = lambda: zip(images, maps)  # noqa: E731
    rows = []
    for br in bitrates:
        settings = EncodeSettings(bitrate=br, preset=args.preset)
        base_path = out_dir / f"{name}_{br // 1000}k_baseline.mp4"
        guided_path = out_dir / f"{name}_{br // 1000}k_guided.mp4"
        t0 = time.perf_counter()
        base = encode_clip(base_path, pairs(), w, h, fps, settings, guided=False)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        guided, used = encode_matched(guided_path, pairs, w, h, fps, settings, base.bytes, roi=roi,
                                      tolerance=args.size_tolerance)
        t_guided = time.perf_counter() - t0
        qb = measure_region_quality(base_path, pairs(), args.threshold).summary()
        qg = measure_region_quality(guided_path, pairs(), args.threshold).summary()
        row = {"clip": name, "target_bitrate": br, "guided_bitrate_setting": used.bitrate,
               "size_ratio": qg["video_bytes"] / qb["video_bytes"], "baseline": qb, "guided": qg,
               "encode_seconds": {"baseline": round(t_base, 2), "guided_all_tries": round(t_guided, 2)},
               "files": [base_path.name, guided_path.name]}
        rows.append(row)
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{name} {br // 1000}k: size ratio {row['size_ratio']:.3f} | PSNR inside {fmt(qb['psnr_inside'])} → "
              f"{fmt(qg['psnr_inside'])} dB, outside {fmt(qb['psnr_outside'])} → {fmt(qg['psnr_outside'])} dB, "
              f"weighted {fmt(qb['weighted_psnr'])} → {fmt(qg['weighted_psnr'])} dB, bit share inside (est.) "
              f"{qb['bit_share_inside_est']:.3f} → {qg['bit_share_inside_est']:.3f}", flush=True)
    if rows:
        still(name, images, maps, out_dir, rows[0], args.threshold)
    if not args.keep_videos:
        for row in rows:
            for f in row["files"]:
                (out_dir / f).unlink(missing_ok=True)
    return rows


def _decode_frame(path: Path, index: int) -> np.ndarray:
    import av
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise ValueError(f"{path} has no frame {index}")


def still(name: str, images: list[np.ndarray], maps: list[np.ndarray], out_dir: Path, row: dict,
          threshold: float) -> None:
    """Source | baseline | guided, full frame and a 2× crop around the map's peak, at the lowest bitrate."""
    import cv2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(images) // 2
    h, w = images[k].shape[:2]
    base = _decode_frame(out_dir / row["files"][0], k)
    guided = _decode_frame(out_dir / row["files"][1], k)
    sal = cv2.resize(maps[k], (w, h))
    cy, cx = np.unravel_index(int(np.argmax(sal)), sal.shape)
    ch, cw = h // 3, w // 3
    y0 = int(np.clip(cy - ch // 2, 0, h - ch))
    x0 = int(np.clip(cx - cw // 2, 0, w - cw))
    fig, ax = plt.subplots(2, 3, figsize=(12, 6.2))
    for j, (img, title) in enumerate([(images[k], "source"), (base, "baseline"), (guided, "saliency-guided")]):
        ax[0, j].imshow(img)
        if j == 0:
            ax[0, j].contour(sal >= threshold * sal.max(), levels=[0.5], colors="yellow", linewidths=1)
        ax[0, j].add_patch(plt.Rectangle((x0, y0), cw, ch, fill=False, color="red", lw=1))
        ax[0, j].set_title(title)
        ax[1, j].imshow(img[y0:y0 + ch, x0:x0 + cw], interpolation="nearest")
        ax[1, j].set_title(f"{title}, crop")
    for a in ax.ravel():
        a.axis("off")
    fig.suptitle(f"{name}, frame {k}, {row['target_bitrate'] // 1000} kb/s, equal size "
                 f"(ratio {row['size_ratio']:.3f}); yellow: salient region")
    fig.tight_layout()
    fig.savefig(out_dir / f"still_{name}.png", dpi=80)
    plt.close(fig)


def plot(rows: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = sorted({r["clip"] for r in rows})
    fig, axes = plt.subplots(1, len(clips), figsize=(6 * len(clips), 4.2), squeeze=False)
    for ax, clip in zip(axes[0], clips):
        rs = [r for r in rows if r["clip"] == clip]
        kb = [r["baseline"]["bitrate"] / 1000 for r in rs]
        for key, color in (("psnr_inside", "tab:red"), ("psnr_outside", "tab:blue"), ("weighted_psnr", "tab:green")):
            ax.plot(kb, [r["baseline"][key] for r in rs], "--o", color=color, label=f"baseline {key}")
            ax.plot(kb, [r["guided"][key] for r in rs], "-s", color=color, label=f"guided {key}")
        ax.set_xlabel("video bitrate (kb/s, both encodes)")
        ax.set_ylabel("luma PSNR (dB)")
        ax.set_title(clip)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "encode_quality.png", dpi=100)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="benchmarks/results/encode_quality")
    p.add_argument("--bitrates", default="100k,200k,400k", help="synthetic clip bitrates (comma-separated)")
    p.add_argument("--sample-bitrates", default="250k,500k,1M", help="bundled sample bitrates")
    p.add_argument("--seed", type=int, default=2_000_000, help="synthetic clip seed (test split)")
    p.add_argument("--frames", type=int, default=150, help="synthetic clip frames")
    p.add_argument("--sample", default=str(ROOT / "salstream" / "streamer" / "media" / "box.mp4"), help="'' to skip")
    p.add_argument("--sample-frames", type=int, default=150)
    p.add_argument("--checkpoint", default=None, help="weights for the sample's pipeline maps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.5, help="salient region: map ≥ this × its peak")
    p.add_argument("--size-tolerance", type=float, default=0.02)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--keep-videos", action="store_true")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roi = RoiConfig()
    rows: list[dict] = []
    clips: dict[str, dict] = {}
    name, images, maps, fps, info = synthetic_clip(args.seed, args.frames)
    clips[name] = {**info, "frames": len(images), "size": list(images[0].shape[:2][::-1]), "fps": fps}
    rows += run_clip(name, images, maps, fps, [parse_bitrate(b) for b in args.bitrates.split(",")], out_dir, args, roi)
    if args.sample:
        name, images, maps, fps, info = sample_clip(args.sample, args.sample_frames, args.checkpoint, args.steps)
        clips[name] = {**info, "frames": len(images), "size": list(images[0].shape[:2][::-1]), "fps": fps}
        rows += run_clip(name, images, maps, fps, [parse_bitrate(b) for b in args.sample_bitrates.split(",")],
                         out_dir, args, roi)
    plot(rows, out_dir)
    report = {
        "what": "baseline vs saliency-guided libx264 at equal size",
        "rate_control": "one-pass ABR + VBV (maxrate = bitrate, 1 s buffer), aq-mode=1 for both; guided bitrate "
                        f"corrected by the secant method until its size is within {args.size_tolerance:.0%} of "
                        "the baseline's",
        "roi": {k: getattr(roi, k) for k in ("block_size", "salient_offset", "background_offset", "gamma",
                                             "normalize", "pooling", "time_constant", "max_step")},
        "threshold": args.threshold, "preset": args.preset, "clips": clips, "results": rows,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    (out_dir / "encode_quality.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    print(f"wrote {out_dir / 'encode_quality.json'}, encode_quality.png, still_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
