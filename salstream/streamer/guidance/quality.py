"""How a saliency-guided encode turned out: quality inside vs outside the salient region.

:func:`measure_region_quality` decodes an encoded file and reports PSNR inside vs outside
the salient region, saliency-weighted PSNR, the decoded macroblock QPs and an estimate of
the share of bits spent on the salient region (:class:`RegionQuality`);
:func:`encode_matched` encodes at a given file size so two encodes compare at equal rate;
:func:`bd_rate` / :func:`bd_quality` compare two rate–distortion curves (Bjøntegaard deltas).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from salstream.diffsal.maps import normalize_map, resize_map
from salstream.diffsal.metrics import WeightedPsnr, psnr_from_mse
from salstream.errors import SalstreamError
from salstream.streamer.guidance.encoder import (
    MB,
    EncodeSettings,
    EncodeStats,
    GuidedEncoder,
)
from salstream.streamer.guidance.roi import RoiConfig


@dataclass
class RegionQuality:
    """Quality of one encode inside vs outside the salient region (luma, pooled over the clip).

    PSNRs pool the squared error over all frames before the log (one MSE per region).
    ``weighted_psnr`` weights each pixel's squared error by the reference's map, each
    frame's weights summing to 1 (:class:`salstream.diffsal.metrics.WeightedPsnr`; with the
    ground-truth fixation density as the map this is EW-PSNR).
    ``qp_inside``/``qp_outside``: mean decoded macroblock QP of the intra frames (exact,
    from the bitstream; in inter frames skipped macroblocks carry no QP of their own).
    ``bit_share_inside_est``: estimated share of the coded bits spent on salient
    macroblocks — each frame's packet bytes split over its macroblocks in proportion
    to ``complexity × 2^(−QP/6)`` (the usual rate model; complexity = the source
    macroblock's mean absolute deviation from its mean, or from the previous frame
    when smaller). H.264 does not reveal exact per-macroblock bit counts.
    ``area_inside``: share of pixels in the salient region.
    """
    frames: int
    file_bytes: int
    video_bytes: int
    bitrate: float
    psnr: float
    psnr_inside: float
    psnr_outside: float
    weighted_psnr: float
    qp_inside: float
    qp_outside: float
    bit_share_inside_est: float
    area_inside: float
    threshold: float
    per_frame: list[dict[str, float]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_frame")
        # Strict JSON: an empty region (NaN) or a lossless one (inf) has no PSNR to report.
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def rgb_to_luma(image: np.ndarray) -> np.ndarray:
    """The Y plane the encoder sees for an RGB frame (same conversion as :class:`GuidedEncoder`)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
    return frame.to_ndarray()[: image.shape[0]].copy()


def salient_mask(saliency: np.ndarray, width: int, height: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, mask) at frame size: the map normalised to max 1, and ``weights >= threshold``."""
    m = normalize_map(resize_map(np.clip(np.asarray(saliency, np.float32), 0.0, 1.0), (height, width)), "peak")
    return m, m >= threshold


def _add(acc: dict, key: str, total: float, count: float) -> None:
    """Pool a sum and its count (e.g. squared errors and pixels) under ``key``."""
    acc[key][0] += total
    acc[key][1] += count


def _mb_complexity(y: np.ndarray, prev: Optional[np.ndarray], rows: int, cols: int) -> np.ndarray:
    h, w = y.shape
    pad = ((0, rows * MB - h), (0, cols * MB - w))
    cur = np.pad(y.astype(np.float32), pad, mode="edge").reshape(rows, MB, cols, MB)
    spatial = np.abs(cur - cur.mean(axis=(1, 3), keepdims=True)).mean(axis=(1, 3))
    if prev is None:
        return spatial + 1.0
    p = np.pad(prev.astype(np.float32), pad, mode="edge").reshape(rows, MB, cols, MB)
    temporal = np.abs(cur - p).mean(axis=(1, 3))
    return np.minimum(spatial, temporal) + 1.0


def measure_region_quality(encoded: Union[str, os.PathLike], reference: Iterable[tuple[np.ndarray, np.ndarray]],
                           threshold: float = 0.5) -> RegionQuality:
    """Decode ``encoded`` and compare it, frame by frame, with ``reference`` (RGB image, saliency map) pairs.

    The salient region of a frame is where its map (normalised to max 1, resized to
    the frame) is at least ``threshold``.
    """
    path = Path(encoded)
    sizes: dict[int, int] = {}
    with av.open(str(path)) as demux:
        for pkt in demux.demux(demux.streams.video[0]):
            if pkt.size and pkt.pts is not None:
                sizes[int(pkt.pts)] = sizes.get(int(pkt.pts), 0) + pkt.size
    weighted = WeightedPsnr()
    acc = {"in": [0.0, 0], "out": [0.0, 0], "all": [0.0, 0],
           "qp_in": [0.0, 0], "qp_out": [0.0, 0], "bits_in": 0.0, "bits_all": 0.0}
    per_frame: list[dict[str, float]] = []
    area_in = area_all = 0
    prev_y: Optional[np.ndarray] = None
    ref_iter: Iterator[tuple[np.ndarray, np.ndarray]] = iter(reference)
    n = 0
    with av.open(str(path)) as dec:
        vs = dec.streams.video[0]
        vs.codec_context.options = {"export_side_data": "venc_params"}
        for frame in dec.decode(vs):
            try:
                image, saliency = next(ref_iter)
            except StopIteration:
                raise SalstreamError(f"{path}: has more frames than the reference ({n}); measure the same clip") from None
            h, w = image.shape[:2]
            ref_y = rgb_to_luma(image).astype(np.float32)
            dec_y = frame.to_ndarray(format="yuv420p")[:h].astype(np.float32)
            if dec_y.shape != ref_y.shape:
                raise SalstreamError(f"{path}: frame {n} is {dec_y.shape[::-1]}, reference {ref_y.shape[::-1]}")
            weights, mask = salient_mask(saliency, w, h, threshold)
            se = (dec_y - ref_y) ** 2
            s_in, c_in = float(se[mask].sum()), int(mask.sum())
            s_all = float(se.sum())
            _add(acc, "in", s_in, c_in)
            _add(acc, "out", s_all - s_in, se.size - c_in)
            _add(acc, "all", s_all, se.size)
            if weights.max() > 0:
                weighted.add(ref_y, dec_y, weights)
            area_in += c_in
            area_all += se.size
            rec: dict[str, float] = {"index": n, "psnr_inside": psnr_from_mse(s_in / max(c_in, 1)),
                                     "psnr_outside": psnr_from_mse((s_all - s_in) / max(se.size - c_in, 1))}
            encp = frame.side_data.get(SideDataType.VIDEO_ENC_PARAMS)
            if encp is not None:
                qp = encp.qp_map().astype(np.float32)
                rows, cols = qp.shape
                # A macroblock is salient when most of its pixels are.
                mb_mask = np.pad(mask, ((0, rows * MB - h), (0, cols * MB - w))).reshape(rows, MB, cols, MB)
                mb_in = mb_mask.mean(axis=(1, 3)) >= 0.5
                # Skipped inter macroblocks report the previous macroblock's QP, so only
                # intra frames say exactly what each macroblock was quantised with.
                if frame.pict_type == av.video.frame.PictureType.I:
                    if mb_in.any():
                        _add(acc, "qp_in", float(qp[mb_in].sum()), int(mb_in.sum()))
                    if (~mb_in).any():
                        _add(acc, "qp_out", float(qp[~mb_in].sum()), int((~mb_in).sum()))
                nbytes = sizes.get(int(frame.pts), 0) if frame.pts is not None else 0
                est = _mb_complexity(ref_y, prev_y, rows, cols) * np.exp2(-qp / 6.0)
                if nbytes and est.sum() > 0:
                    share = est / est.sum()
                    acc["bits_in"] += 8.0 * nbytes * float(share[mb_in].sum())
                    acc["bits_all"] += 8.0 * nbytes
                rec["qp_mean"] = float(qp.mean())
            per_frame.append(rec)
            prev_y = ref_y
            n += 1
    if n == 0:
        raise SalstreamError(f"{path}: no decodable video frames")
    video_bytes = sum(sizes.values())
    fps = None
    with av.open(str(path)) as probe:
        st = probe.streams.video[0]
        fps = float(st.average_rate) if st.average_rate else None
    seconds = n / fps if fps else 0.0
    return RegionQuality(
        frames=n, file_bytes=path.stat().st_size, video_bytes=video_bytes,
        bitrate=8.0 * video_bytes / seconds if seconds else 0.0,
        psnr=psnr_from_mse(acc["all"][0] / acc["all"][1]),
        psnr_inside=psnr_from_mse(acc["in"][0] / acc["in"][1]) if acc["in"][1] else float("nan"),
        psnr_outside=psnr_from_mse(acc["out"][0] / acc["out"][1]) if acc["out"][1] else float("nan"),
        weighted_psnr=weighted.value if weighted.frames else float("nan"),
        qp_inside=acc["qp_in"][0] / max(acc["qp_in"][1], 1),
        qp_outside=acc["qp_out"][0] / max(acc["qp_out"][1], 1),
        bit_share_inside_est=acc["bits_in"] / acc["bits_all"] if acc["bits_all"] else float("nan"),
        area_inside=area_in / max(area_all, 1), threshold=float(threshold), per_frame=per_frame)


def encode_clip(out: Union[str, os.PathLike], frames: Iterable[tuple[np.ndarray, Optional[np.ndarray]]],
                width: int, height: int, fps: float, settings: EncodeSettings, *, guided: bool,
                roi: Optional[RoiConfig] = None) -> EncodeStats:
    """Encode (RGB image, saliency map) pairs in order; frame ``i`` is shown at ``i / fps``."""
    with GuidedEncoder(out, width, height, fps, settings, guided=guided, roi=roi) as enc:
        for i, (image, saliency) in enumerate(frames):
            enc.write(image, saliency if guided else None, i / fps)
    return enc.stats


def encode_matched(out: Union[str, os.PathLike], frames: Callable[[], Iterable[tuple[np.ndarray, Optional[np.ndarray]]]],
                   width: int, height: int, fps: float, settings: EncodeSettings, target_bytes: int, *,
                   roi: Optional[RoiConfig] = None, tolerance: float = 0.02,
                   max_tries: int = 5) -> tuple[EncodeStats, EncodeSettings]:
    """Guided encode whose video size is within ``tolerance`` of ``target_bytes``.

    Starts at ``settings.bitrate``; ABR normally lands within a few percent, otherwise
    the bitrate is corrected by the secant method on (bitrate, size) pairs.
    Returns the closest attempt (the file at ``out`` is that attempt).
    """
    tried: list[tuple[int, int]] = []
    best: Optional[tuple[float, EncodeStats, EncodeSettings]] = None
    rate = settings.bitrate
    for _ in range(max_tries):
        s = EncodeSettings(**{**asdict(settings), "bitrate": int(rate)})
        tmp = Path(str(out) + f".try{len(tried)}.mp4")
        stats = encode_clip(tmp, frames(), width, height, fps, s, guided=True, roi=roi)
        err = stats.bytes / target_bytes - 1.0
        if best is None or abs(err) < abs(best[0]):
            if best is not None:
                Path(str(out) + ".best.mp4").unlink(missing_ok=True)
            tmp.replace(Path(str(out) + ".best.mp4"))
            best = (err, stats, s)
        else:
            tmp.unlink(missing_ok=True)
        tried.append((int(rate), stats.bytes))
        if abs(err) <= tolerance:
            break
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (r0, b0), (r1, b1) = tried[-2], tried[-1]
            rate = r1 + (target_bytes - b1) * (r1 - r0) / (b1 - b0)
        else:
            rate = rate * target_bytes / max(stats.bytes, 1)
        rate = max(10_000, rate)
    assert best is not None
    Path(str(out) + ".best.mp4").replace(out)
    return best[1], best[2]




def _curve(rates: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(log10 rate, quality) of one RD curve, sorted by rate; refuses curves BD-rate cannot use."""
    r = np.asarray(rates, np.float64)
    q = np.asarray(quality, np.float64)
    if r.shape != q.shape or r.ndim != 1 or r.size < 4:
        raise ValueError(f"{name}: BD-rate needs at least 4 (rate, quality) points of equal count, got "
                         f"{r.size} rates and {q.size} qualities")
    if np.any(r <= 0) or not np.all(np.isfinite(q)):
        raise ValueError(f"{name}: rates must be positive and qualities finite")
    order = np.argsort(r)
    r, q = r[order], q[order]
    if np.any(np.diff(q) <= 0):
        raise ValueError(f"{name}: quality does not rise with the rate ({np.round(q, 3).tolist()}); "
                         "an RD curve must be monotonic (more frames or wider-spaced rates help)")
    return np.log10(r), q


def bd_rate(rates_a: Sequence[float], quality_a: Sequence[float], rates_b: Sequence[float],
            quality_b: Sequence[float]) -> float:
    """Bjøntegaard delta rate of curve B against curve A, in percent.

    The average rate difference at equal quality over the quality range both curves
    cover: log10 rate as a piecewise cubic (PCHIP, monotone, no overshoot; what current
    BD-rate tools use instead of the original cubic fit) of quality, each integrated over
    the common range; ``10^(mean difference) − 1``. Negative: B needs fewer bits.
    """
    from scipy.interpolate import PchipInterpolator

    la, qa = _curve(rates_a, quality_a, "curve A")
    lb, qb = _curve(rates_b, quality_b, "curve B")
    lo, hi = max(qa[0], qb[0]), min(qa[-1], qb[-1])
    if hi <= lo:
        raise ValueError(f"the curves share no quality range (A {qa[0]:.2f}…{qa[-1]:.2f}, "
                         f"B {qb[0]:.2f}…{qb[-1]:.2f}); pick rates that overlap")
    ia = PchipInterpolator(qa, la).integrate(lo, hi)
    ib = PchipInterpolator(qb, lb).integrate(lo, hi)
    return float((10.0 ** ((ib - ia) / (hi - lo)) - 1.0) * 100.0)


def bd_quality(rates_a: Sequence[float], quality_a: Sequence[float], rates_b: Sequence[float],
               quality_b: Sequence[float]) -> float:
    """Bjøntegaard delta quality (e.g. BD-PSNR, dB) of B against A: mean quality difference at equal rate
    over the common log-rate range (PCHIP of quality over log10 rate). Negative: B is worse."""
    from scipy.interpolate import PchipInterpolator

    la, qa = _curve(rates_a, quality_a, "curve A")
    lb, qb = _curve(rates_b, quality_b, "curve B")
    lo, hi = max(la[0], lb[0]), min(la[-1], lb[-1])
    if hi <= lo:
        raise ValueError("the curves share no rate range; pick rates that overlap")
    ia = PchipInterpolator(la, qa).integrate(lo, hi)
    ib = PchipInterpolator(lb, qb).integrate(lo, hi)
    return float((ib - ia) / (hi - lo))
