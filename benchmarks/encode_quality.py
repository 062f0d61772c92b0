"""Saliency-guided vs plain encoding, measured as the field measures it: RD curves and BD-rate.

For each synthetic test clip (whose eye-tracking density is known) and each codec
(libx264, and libx265 when PyAV's FFmpeg has it): a plain and a saliency-guided encode at
each of ≥ 4 rates, the same settings for both (ABR + 1 s VBV, or CRF with ``--rate-control
crf``; aq-mode=1). The guided encodes take regions of interest from the **bundled model's
maps** (the live pipeline's lite profile, a map per frame); the ground truth only scores:

* quality where people look: luma PSNR weighted by the ground-truth fixation density
  (EW-PSNR, ``salstream.diffsal.metrics.WeightedPsnr``);
* full-frame luma PSNR, so the cost outside the salient region is visible;
* BD-rate (Bjøntegaard, PCHIP; ``salstream.streamer.guidance.quality.bd_rate``) of guided
  vs plain on EW-PSNR, and the full-frame BD-PSNR (mean PSNR change at equal rate).

Two controls (libx264) show the metric tells good maps from bad ones: the same encoder
guided by a fixed centre prior (no model) and by the ground truth itself (the most a
perfect map could give). A sweep of the guidance strength (the default QP offsets −10/+6
scaled by a factor) and of the temporal smoothing (time constant) over the same clips
justifies the defaults.
Writes ``encode_quality.json``, an RD plot per clip (``rd_<clip>.png``) and ``sweep.png``
to ``--out-dir``.

    nice -n 10 python -m benchmarks.encode_quality --out-dir benchmarks/results/encode_quality
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from salstream.streamer.guidance.encoder import CODECS, EncodeSettings, parse_bitrate  # noqa: E402
from salstream.streamer.guidance.quality import bd_quality, bd_rate, encode_clip, measure_region_quality  # noqa: E402
from salstream.streamer.guidance.roi import RoiConfig  # noqa: E402

TEST_SEED = 2_000_000          # first clip of the synthetic benchmark's test split


@dataclasses.dataclass
class Clip:
    name: str
    seed: int
    images: list[np.ndarray]
    truth: list[np.ndarray]      # ground-truth fixation density per frame (scores only)
    maps: list[np.ndarray]       # the model's map per frame (guides the encoder)
    fps: float
    info: dict


def model_maps(clip, engine: str, checkpoint: Optional[str], cache_dir: Path) -> tuple[list[np.ndarray], dict]:
    """The bundled model's map for every frame of ``clip`` (audio-visual, offline: a map per frame), cached."""
    from salstream import Saliency

    sal = Saliency("lite", engine=engine, checkpoint=checkpoint)
    weights = Path(str(sal.weights)) if sal.weights else None
    # keyed by the weights' content: a re-trained checkpoint keeps its path and, often, its size
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights else "untrained"
    tag = hashlib.sha256(f"{clip.seed}:{clip.n_frames}:{digest}:{sal.engine.name}".encode()).hexdigest()[:16]
    cached = cache_dir / f"maps-{tag}.npz"
    info = {"weights": weights.name if weights else "UNTRAINED (no weights found)", "engine": sal.engine.name}
    if cached.exists():
        with np.load(cached) as z:
            return list(z["maps"]), {**info, "cached": True}
    frames = np.stack([clip.frame(i) for i in range(clip.n_frames)])
    got: dict[int, np.ndarray] = {}
    t0 = time.monotonic()
    for p in sal.predict_frames(frames, clip.fps, clip.audio(), clip.sample_rate):
        got[p.frame_index] = np.asarray(p.saliency, np.float32)
    if not got:
        raise SystemExit(f"synthetic:{clip.seed}: the model produced no maps")
    first = got[min(got)]
    maps, last = [], first                      # a frame without its own map keeps the newest earlier one
    for i in range(clip.n_frames):
        last = got.get(i, last)
        maps.append(last)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cached, maps=np.stack(maps))
    return maps, {**info, "maps": len(got), "seconds": round(time.monotonic() - t0, 1)}


def load_clip(k: int, frames: int, engine: str, checkpoint: Optional[str], cache_dir: Path) -> Clip:
    from salstream.diffsal.datasets.synthetic import SyntheticClip

    seed = TEST_SEED + k
    clip = SyntheticClip(seed, n_frames=frames)
    maps, info = model_maps(clip, engine, checkpoint, cache_dir)
    from salstream.diffsal.metrics import cc
    truth = [clip.density(i) for i in range(frames)]
    info["map_cc_to_truth"] = round(float(np.mean([cc(m, t) for m, t in zip(maps, truth)])), 3)
    return Clip(f"synthetic{seed}", seed, [clip.frame(i) for i in range(frames)], truth, maps, clip.fps,
                {"seed": seed, "frames": frames, "size": [clip.width, clip.height], "fps": clip.fps, **info})


def rd_points(clip: Clip, settings_list: list[EncodeSettings], roi: Optional[RoiConfig], work: Path,
              maps: Optional[list[np.ndarray]] = None) -> list[dict]:
    """One encode per settings (guided by ``maps``, default the model's, when ``roi`` is given), scored
    against the ground truth."""
    h, w = clip.images[0].shape[:2]
    maps = clip.maps if maps is None else maps
    out = []
    for s in settings_list:
        path = work / f"{clip.name}-{s.codec}.mp4"
        t0 = time.perf_counter()
        encode_clip(path, zip(clip.images, maps), w, h, clip.fps, s, guided=roi is not None, roi=roi)
        seconds = time.perf_counter() - t0
        q = measure_region_quality(path, zip(clip.images, clip.truth))
        out.append({"setting": s.crf if s.crf is not None else s.bitrate, "bitrate": q.bitrate,
                    "ew_psnr": q.weighted_psnr, "psnr": q.psnr, "encode_seconds": round(seconds, 2)})
        path.unlink(missing_ok=True)
    return out


def compare(plain: list[dict], guided: list[dict]) -> dict:
    """BD-rate on EW-PSNR and BD-PSNR on full-frame PSNR of guided vs plain (None where a curve is unusable)."""
    def safe(fn, key):
        try:
            return round(fn([p["bitrate"] for p in plain], [p[key] for p in plain],
                            [g["bitrate"] for g in guided], [g[key] for g in guided]), 3)
        except ValueError as exc:
            print(f"  ({fn.__name__} on {key}: {exc})", flush=True)
            return None
    return {"bd_rate_ew_psnr_pct": safe(bd_rate, "ew_psnr"), "bd_psnr_full_db": safe(bd_quality, "psnr"),
            "bd_ew_psnr_db": safe(bd_quality, "ew_psnr")}


def roi_config(base: RoiConfig, strength: float, smooth: float) -> RoiConfig:
    return dataclasses.replace(base, salient_offset=base.salient_offset * strength,
                               background_offset=base.background_offset * strength, time_constant=smooth)


CONTROLS = {"centre": "guided by a fixed centre prior (no model)", "truth": "guided by the ground truth (oracle)"}


def control_maps(clip: Clip, kind: str) -> list[np.ndarray]:
    if kind == "truth":
        return clip.truth
    from salstream.diffsal.evaluate import centre_prior
    prior = centre_prior(clip.images[0].shape[:2]).astype(np.float32)
    return [prior] * len(clip.images)


def plot_rd(clip: Clip, rows: list[dict], out_dir: Path, controls: dict[str, list[dict]]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 4.0), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for key, color, label in (("ew_psnr", "tab:red", "EW-PSNR (where people look)"),
                                  ("psnr", "tab:blue", "full-frame PSNR")):
            for variant, style in (("plain", "--o"), ("guided", "-s")):
                pts = row[variant]
                ax.plot([p["bitrate"] / 1000 for p in pts], [p[key] for p in pts], style, color=color,
                        label=f"{variant}: {label}", ms=4)
        if row["codec"] == "libx264":
            for (kind, pts), color in zip(controls.items(), ("tab:gray", "tab:green")):
                ax.plot([p["bitrate"] / 1000 for p in pts], [p["ew_psnr"] for p in pts], ":^", color=color, ms=3,
                        label=f"EW-PSNR, {CONTROLS[kind]}")
        c = row["compare"]
        bd = "n/a" if c["bd_rate_ew_psnr_pct"] is None else f"{c['bd_rate_ew_psnr_pct']:+.1f} %"
        full = "n/a" if c["bd_psnr_full_db"] is None else f"{c['bd_psnr_full_db']:+.2f} dB"
        ax.set_title(f"{row['codec']}: BD-rate (EW-PSNR) {bd}, full-frame {full}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("bitrate (kb/s)")
        ax.set_ylabel("luma PSNR (dB)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{clip.name} ({clip.info['size'][0]}×{clip.info['size'][1]}, {len(clip.images)} frames): "
                 "plain vs saliency-guided, guided by the bundled model's maps", fontsize=10)
    fig.tight_layout()
    path = out_dir / f"rd_{clip.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_sweep(sweep: dict, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in ((axes[0], "strength", "guidance strength (× the −10/+6 QP offsets)"),
                            (axes[1], "smooth", "smoothing time constant (s)")):
        pts = sweep.get(key, [])
        if not pts:
            ax.set_visible(False)
            continue
        xs = [p["value"] for p in pts]
        ax.plot(xs, [p["mean_bd_rate_ew_psnr_pct"] for p in pts], "-o", color="tab:red", label="BD-rate, EW-PSNR (%)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("BD-rate on EW-PSNR (%)", color="tab:red")
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(xs, [p["mean_bd_psnr_full_db"] for p in pts], "--s", color="tab:blue")
        ax2.set_ylabel("full-frame BD-PSNR (dB)", color="tab:blue")
    fig.suptitle("libx264 sweep, mean over the clips (lower BD-rate = fewer bits for the same quality where "
                 "people look)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "sweep.png", dpi=90)
    plt.close(fig)


def _mean(values: list[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 3) if v else None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out-dir", default="benchmarks/results/encode_quality")
    p.add_argument("--clips", type=int, default=3, help="synthetic test clips (seeds 2000000, 2000001, …)")
    p.add_argument("--frames", type=int, default=150, help="frames per clip (5 s at 30 fps)")
    p.add_argument("--codecs", default=",".join(c for c in CODECS if _available(c)),
                   help="comma-separated: libx264, libx265")
    p.add_argument("--rate-control", choices=("abr", "crf"), default="abr",
                   help="abr: one-pass ABR + 1 s VBV at --rates (the live setting); crf: constant rate factor --crfs")
    p.add_argument("--rates", default="100k,200k,400k,800k", help="ABR bitrates (≥ 4)")
    p.add_argument("--crfs", default="24,28,32,36", help="CRF values with --rate-control crf (≥ 4)")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--encoder-threads", type=int, default=1,
                   help="threads per encode (default 1: with x264's automatic threading the same encode "
                        "differs from run to run, which moved BD-rates by a few %%; 0 = the codec's choice)")
    p.add_argument("--strength", type=float, default=1.0, help="scale of the default QP offsets (−10 salient, +6 background)")
    p.add_argument("--smooth", type=float, default=RoiConfig().time_constant, help="QP smoothing time constant (s)")
    p.add_argument("--block-size", type=int, default=RoiConfig().block_size)
    p.add_argument("--gamma", type=float, default=RoiConfig().gamma, help="block saliency exponent (>1: sharper)")
    p.add_argument("--sweep-strengths", default="0.5,1,1.5,2", help="'' to skip the strength sweep")
    p.add_argument("--sweep-smooth", default="0,0.2,0.5,1", help="'' to skip the smoothing sweep")
    p.add_argument("--controls", default="centre,truth",
                   help="libx264 controls: guided by a centre prior and/or the ground truth ('' for none)")
    p.add_argument("--engine", default="torch", help="engine for the model's maps")
    p.add_argument("--checkpoint", default=None, help="weights for the maps (default: the bundled lite weights)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "salstream-encode-quality"),
                   help="where the model's maps are cached between runs")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="encq-"))
    codecs = [c for c in args.codecs.split(",") if c]
    for c in codecs:
        if not _available(c):
            raise SystemExit(f"--codecs {c}: this PyAV's FFmpeg has no such encoder")
    if args.rate_control == "abr":
        points = [parse_bitrate(b) for b in args.rates.split(",")]
    else:
        points = [float(c) for c in args.crfs.split(",")]
    if args.encoder_threads < 0:
        raise SystemExit(f"--encoder-threads {args.encoder_threads}: must be >= 0 (0 = the codec's choice)")
    if len(points) < 4:
        raise SystemExit("BD-rate needs at least 4 rates (--rates / --crfs)")

    def settings(codec: str) -> list[EncodeSettings]:
        if args.rate_control == "abr":
            return [EncodeSettings(bitrate=b, preset=args.preset, codec=codec, threads=args.encoder_threads)
                    for b in points]
        return [EncodeSettings(crf=c, preset=args.preset, codec=codec, threads=args.encoder_threads) for c in points]

    base = dataclasses.replace(RoiConfig(), block_size=args.block_size, gamma=args.gamma)
    roi = roi_config(base, args.strength, args.smooth)
    clips = [load_clip(k, args.frames, args.engine, args.checkpoint, Path(args.cache)) for k in range(args.clips)]
    results: list[dict] = []
    controls: list[dict] = []
    plain_x264: dict[str, list[dict]] = {}
    t_start = time.monotonic()
    for clip in clips:
        print(f"{clip.name}: model maps CC to the ground truth {clip.info['map_cc_to_truth']}", flush=True)
        rows = []
        for codec in codecs:
            plain = rd_points(clip, settings(codec), None, work)
            guided = rd_points(clip, settings(codec), roi, work)
            if codec == "libx264":
                plain_x264[clip.name] = plain
            row = {"clip": clip.name, "codec": codec, "plain": plain, "guided": guided, "compare": compare(plain, guided)}
            print(f"  {codec}: {row['compare']}", flush=True)
            rows.append(row)
        results += rows
        ctrl_points: dict[str, list[dict]] = {}
        if "libx264" in codecs:
            for kind in [k for k in args.controls.split(",") if k]:
                ctrl_points[kind] = pts = rd_points(clip, settings("libx264"), roi, work, control_maps(clip, kind))
                c = compare(plain_x264[clip.name], pts)
                controls.append({"clip": clip.name, "codec": "libx264", "guide": kind, "guided": pts, "compare": c})
                print(f"  libx264 {CONTROLS[kind]}: {c}", flush=True)
        plot_rd(clip, rows, out_dir, ctrl_points)
    # The sweep: libx264, every clip, one parameter varied at a time around the chosen setting.
    sweep: dict[str, list[dict]] = {}
    for key, values in (("strength", args.sweep_strengths), ("smooth", args.sweep_smooth)):
        if not values or "libx264" not in codecs:
            continue
        for v in [float(x) for x in values.split(",")]:
            cfg = roi_config(base, v if key == "strength" else args.strength, v if key == "smooth" else args.smooth)
            per_clip = []
            for clip in clips:
                same = cfg == roi
                guided = (next(r["guided"] for r in results if r["clip"] == clip.name and r["codec"] == "libx264")
                          if same else rd_points(clip, settings("libx264"), cfg, work))
                per_clip.append(compare(plain_x264[clip.name], guided))
            entry = {"value": v, "per_clip": per_clip,
                     "mean_bd_rate_ew_psnr_pct": _mean([c["bd_rate_ew_psnr_pct"] for c in per_clip]),
                     "mean_bd_psnr_full_db": _mean([c["bd_psnr_full_db"] for c in per_clip])}
            print(f"sweep {key}={v}: BD-rate {entry['mean_bd_rate_ew_psnr_pct']} %, full-frame "
                  f"{entry['mean_bd_psnr_full_db']} dB", flush=True)
            sweep.setdefault(key, []).append(entry)
    plot_sweep(sweep, out_dir)
    summary = {codec: {"mean_bd_rate_ew_psnr_pct": _mean([r["compare"]["bd_rate_ew_psnr_pct"] for r in results
                                                          if r["codec"] == codec]),
                       "mean_bd_psnr_full_db": _mean([r["compare"]["bd_psnr_full_db"] for r in results
                                                      if r["codec"] == codec])} for codec in codecs}
    for kind in {c["guide"] for c in controls}:
        summary[f"libx264, {CONTROLS[kind]}"] = {
            "mean_bd_rate_ew_psnr_pct": _mean([c["compare"]["bd_rate_ew_psnr_pct"] for c in controls if c["guide"] == kind]),
            "mean_bd_psnr_full_db": _mean([c["compare"]["bd_psnr_full_db"] for c in controls if c["guide"] == kind])}
    report = {
        "what": "plain vs saliency-guided encoding: BD-rate on ground-truth EW-PSNR, full-frame BD-PSNR",
        "command": "python -m benchmarks.encode_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rate_control": ("one-pass ABR + VBV (maxrate = bitrate, 1 s buffer)" if args.rate_control == "abr"
                         else "CRF") + ", aq-mode=1, the same settings for plain and guided",
        "points": points, "preset": args.preset, "codecs": codecs,
        "roi": {**dataclasses.asdict(roi), "strength": args.strength},
        "guidance": "maps of the bundled lite model (audio-visual, one per frame); ground truth only scores",
        "quality": "EW-PSNR: luma PSNR weighted by the ground-truth fixation density, each frame's weights "
                   "summing to 1, MSE pooled over frames; psnr: full-frame luma PSNR",
        "clips": {c.name: c.info for c in clips}, "summary": summary, "results": results, "controls": controls, "sweep": sweep,
        "seconds": round(time.monotonic() - t_start, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "note": "a shared 2-core machine: timings are pessimistic; quality figures do not depend on it"},
    }
    (out_dir / "encode_quality.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    print(json.dumps(summary))
    print(f"wrote {out_dir / 'encode_quality.json'}, rd_*.png, sweep.png")
    return 0


def _available(codec: str) -> bool:
    import av
    return codec in av.codecs_available


if __name__ == "__main__":
    sys.exit(main())
