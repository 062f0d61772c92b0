"""Saliency-guided H.264: libx264 through PyAV with per-frame regions of interest.

PyAV has no call that attaches side data to a frame, so every frame goes through a
small filter graph ``buffer → addroi × capacity → buffersink``: each ``addroi``
appends one placeholder ``AVRegionOfInterest``, and we then overwrite the whole
array in place with this frame's regions (:func:`streamer.roi.regions_to_struct`;
unused slots become empty rectangles). libx264 reads the array and adds each
region's offset to its macroblocks' quantiser. libx264 ignores regions when
adaptive quantisation is off (``preset=ultrafast`` turns it off), so both the
baseline and the guided encoder run with ``aq-mode=1``: the only difference between
them is the regions.

Rate control is one-pass ABR with a VBV buffer (``vbv-maxrate`` = the bitrate,
``vbv-bufsize`` = one second), the usual live setting: both encoders spend the same
total bitrate, guided ones just move bits from the background to the salient blocks.

:class:`GuidedEncoder` consumes (frame, saliency map) pairs. Live maps arrive after
their frames (inference latency); :class:`FrameMapAligner` holds frames up to a
bounded delay until the map for them (or a later one) is known, so wiring it to the
pipeline is one ``add_map`` call per published map and one ``add_frame`` per frame.

The quality meter (:func:`measure_region_quality`) decodes an encoded file and
reports PSNR inside vs outside the salient region, saliency-weighted PSNR, the
decoded macroblock QPs and an estimate of the share of bits spent on the salient
region (see :class:`RegionQuality`).
"""
from __future__ import annotations

import ctypes
import logging
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, Sequence, Union

import av
import cv2
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from salstream.errors import SalstreamError

from .media import VideoFrame
from .roi import QpMap, QpMapper, Region, RoiConfig, regions_to_struct

log = logging.getLogger("salstream.encode")

MB = 16  # H.264 macroblock side


@dataclass(frozen=True)
class EncodeSettings:
    """libx264 settings shared by baseline and guided encodes (see the module docstring).

    ``bitrate`` in bits per second; ``preset``/``tune`` as for x264 (``tune=zerolatency``
    for the lowest encoder delay); ``keyint`` in frames (0 = two seconds);
    ``vbv_seconds``: VBV buffer length (0 = plain ABR without VBV).
    """
    bitrate: int = 1_000_000
    preset: str = "veryfast"
    tune: Optional[str] = None
    keyint: int = 0
    vbv_seconds: float = 1.0
    threads: int = 0
    extra_x264_params: str = ""

    def __post_init__(self) -> None:
        if self.bitrate < 10_000:
            raise SalstreamError(f"--bitrate {self.bitrate}: too low for H.264; use at least 10k (e.g. 500k or 2M)")
        if self.vbv_seconds < 0:
            raise SalstreamError(f"VBV buffer {self.vbv_seconds} s: must be ≥ 0")

    def x264_params(self) -> str:
        kbps = max(1, self.bitrate // 1000)
        params = ["aq-mode=1"]  # regions are ignored without adaptive quantisation
        if self.vbv_seconds > 0:
            params += [f"vbv-maxrate={kbps}", f"vbv-bufsize={max(1, int(kbps * self.vbv_seconds))}"]
        if self.extra_x264_params:
            params.append(self.extra_x264_params)
        return ":".join(params)


def parse_bitrate(text: str) -> int:
    """``"500k"``, ``"2M"``, ``"800000"`` → bits per second."""
    t = str(text).strip().lower()
    scale = 1
    if t.endswith("k"):
        scale, t = 1000, t[:-1]
    elif t.endswith("m"):
        scale, t = 1_000_000, t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise SalstreamError(f"--bitrate {text!r}: expected bits per second such as 500k, 2M or 800000") from None
    if value <= 0:
        raise SalstreamError(f"--bitrate {text!r}: must be positive")
    return int(value)


class RoiTagger:
    """Attaches a region-of-interest list to frames (``capacity`` slots, fixed when built)."""

    def __init__(self, width: int, height: int, capacity: int, time_base: Fraction):
        if capacity < 1:
            raise ValueError("capacity must be ≥ 1")
        self.capacity = int(capacity)
        self.width, self.height = int(width), int(height)
        self._graph = av.filter.Graph()
        src = self._graph.add_buffer(width=width, height=height, format="yuv420p", time_base=time_base)
        last = src
        for _ in range(self.capacity):
            node = self._graph.add("addroi", "x=0:y=0:w=16:h=16:qoffset=0")
            last.link_to(node)
            last = node
        sink = self._graph.add("buffersink")
        last.link_to(sink)
        self._graph.configure()

    def tag(self, frame: av.VideoFrame, regions: Sequence[Region]) -> av.VideoFrame:
        self._graph.push(frame)
        out = self._graph.pull()
        sd = out.side_data.get(SideDataType.REGIONS_OF_INTEREST)
        arr = regions_to_struct(regions, self.capacity)
        if sd is None or sd.buffer_size != arr.nbytes:
            raise RuntimeError(f"addroi produced {None if sd is None else sd.buffer_size} bytes of regions, "
                               f"expected {arr.nbytes}")
        # PyAV marks side data read-only, but addroi allocated this buffer for this frame
        # alone, so overwriting it in place is safe.
        ctypes.memmove(sd.buffer_ptr, arr.ctypes.data, arr.nbytes)
        return out


@dataclass
class EncodeStats:
    frames: int = 0
    guided_frames: int = 0       # frames that carried regions
    bytes: int = 0               # payload bytes of all video packets
    seconds: float = 0.0         # media duration
    regions_max: int = 0

    @property
    def bitrate(self) -> float:
        return 8.0 * self.bytes / self.seconds if self.seconds > 0 else 0.0


class GuidedEncoder:
    """H.264 writer for RGB frames, optionally steered by saliency maps.

    ``write(image, saliency, pts)`` encodes one frame; with ``guided=True`` the map
    (any size, [0, 1]) is turned into smoothed QP offsets and regions for that frame.
    A frame written with ``saliency=None`` reuses the last regions (maps may be
    sparser than frames). ``close()`` flushes and returns :class:`EncodeStats`.
    ``on_qp_map(n, pts, qp_map, regions)`` is called whenever a new map is applied
    (e.g. to publish the regions actually used).
    """

    def __init__(self, out: Union[str, os.PathLike, BinaryIO], width: int, height: int, fps: float,
                 settings: Optional[EncodeSettings] = None, *, guided: bool = True,
                 roi: Optional[RoiConfig] = None, container_format: Optional[str] = None,
                 on_qp_map: Optional[Callable[[int, float, QpMap, list[Region]], None]] = None):
        if width % 2 or height % 2:
            raise SalstreamError(f"frame size {width}x{height}: H.264 4:2:0 needs even width and height; "
                                 "crop or scale the source by one pixel")
        if fps <= 0:
            raise SalstreamError(f"frame rate {fps}: must be positive")
        self.settings = settings or EncodeSettings()
        self.guided = bool(guided)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.on_qp_map = on_qp_map
        self.mapper = QpMapper(width, height, roi) if guided else None
        self._regions: list[Region] = []
        rate = Fraction(fps).limit_denominator(1001)
        self.time_base = Fraction(1, 90000)  # the usual MP4 video clock; PTS come from the source
        if isinstance(out, (str, os.PathLike)):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            fmt = container_format
        else:
            fmt = container_format or "mp4"
        try:
            self._container = av.open(out, "w", format=fmt)
        except (av.error.FFmpegError, ValueError) as exc:
            raise SalstreamError(f"--out {out}: cannot open for writing ({exc}); use a writable path ending "
                                 "in .mp4 or .mkv") from None
        s = self.settings
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.bit_rate = s.bitrate
        self._stream.time_base = self.time_base
        self._stream.codec_context.time_base = self.time_base
        self._stream.gop_size = s.keyint or max(1, int(round(2 * fps)))
        opts = {"preset": s.preset, "x264-params": s.x264_params()}
        if s.tune:
            opts["tune"] = s.tune
        if s.threads:
            opts["threads"] = str(s.threads)
        self._stream.options = opts
        self._tagger: Optional[RoiTagger] = None
        if guided:
            assert self.mapper is not None
            cap = min(self.mapper.rows * self.mapper.cols, self.mapper.config.max_regions)
            self._tagger = RoiTagger(width, height, cap, self.time_base)
        self.stats = EncodeStats()
        self._last_pts: Optional[int] = None
        self._closed = False

    def _pts_ticks(self, pts: Optional[float]) -> int:
        if pts is None:
            ticks = 0 if self._last_pts is None else self._last_pts + int(round(1 / (self.fps * self.time_base)))
        else:
            ticks = int(round(pts / self.time_base))
        if self._last_pts is not None and ticks <= self._last_pts:
            ticks = self._last_pts + 1  # the muxer needs strictly increasing timestamps
        self._last_pts = ticks
        return ticks

    def write(self, image: np.ndarray, saliency: Optional[np.ndarray] = None, pts: Optional[float] = None) -> None:
        if self._closed:
            raise RuntimeError("encoder is closed")
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise SalstreamError(f"frame of shape {image.shape} {image.dtype}: this encoder takes "
                                 f"({self.height}, {self.width}, 3) uint8 RGB; resize the source first")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = self._pts_ticks(pts)
        frame.time_base = self.time_base
        if self.guided:
            assert self.mapper is not None and self._tagger is not None
            if saliency is not None:
                qp_map = self.mapper.update(saliency, None if pts is None else float(pts))
                self._regions = self.mapper.regions(qp_map)
                if self.on_qp_map is not None:
                    self.on_qp_map(self.stats.frames, float(frame.pts * self.time_base), qp_map, self._regions)
            frame = self._tagger.tag(frame, self._regions)
            if self._regions:
                self.stats.guided_frames += 1
            self.stats.regions_max = max(self.stats.regions_max, len(self._regions))
        self._mux(self._stream.encode(frame))
        self.stats.frames += 1

    def write_frame(self, frame: VideoFrame, saliency: Optional[np.ndarray]) -> None:
        """Pipeline form: a :class:`~streamer.media.VideoFrame` and its map (or ``None``)."""
        self.write(frame.image, saliency, frame.pts)

    def _mux(self, packets: Iterable[av.Packet]) -> None:
        for p in packets:
            self.stats.bytes += p.size
            self._container.mux(p)

    def close(self) -> EncodeStats:
        if not self._closed:
            self._closed = True
            self._mux(self._stream.encode(None))
            self._container.close()
            self.stats.seconds = self.stats.frames / self.fps
        return self.stats

    def __enter__(self) -> "GuidedEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameMapAligner:
    """Pairs live frames with maps that arrive later, within a bounded delay.

    A frame is released once a map for it *or a later frame* has arrived (maps come
    in frame order, so no better one can follow), or once more than ``max_delay``
    frames wait (the encoder must not stall if inference falls behind). A released
    frame gets the map of the nearest frame index at or before it when one is known,
    else the nearest later one, else ``None`` (the encoder then keeps its last regions).
    """

    def __init__(self, max_delay: int = 15, keep_maps: int = 64):
        if max_delay < 0:
            raise SalstreamError(f"max delay {max_delay}: must be ≥ 0 frames")
        self.max_delay = int(max_delay)
        self._frames: deque[VideoFrame] = deque()
        self._maps: dict[int, np.ndarray] = {}
        self._keep = int(keep_maps)
        self._newest_map = -1
        self.late_frames = 0   # released without their own map (delay bound hit or map skipped)

    def add_frame(self, frame: VideoFrame) -> list[tuple[VideoFrame, Optional[np.ndarray]]]:
        self._frames.append(frame)
        return self._release()

    def add_map(self, frame_index: int, saliency: np.ndarray) -> list[tuple[VideoFrame, Optional[np.ndarray]]]:
        self._maps[int(frame_index)] = saliency
        self._newest_map = max(self._newest_map, int(frame_index))
        if len(self._maps) > self._keep:
            for k in sorted(self._maps)[: len(self._maps) - self._keep]:
                del self._maps[k]
        return self._release()

    def flush(self) -> list[tuple[VideoFrame, Optional[np.ndarray]]]:
        out = []
        while self._frames:
            out.append(self._pop())
        return out

    @property
    def pending(self) -> int:
        return len(self._frames)

    def _release(self) -> list[tuple[VideoFrame, Optional[np.ndarray]]]:
        out = []
        while self._frames and (self._frames[0].index <= self._newest_map or len(self._frames) > self.max_delay):
            out.append(self._pop())
        return out

    def _pop(self) -> tuple[VideoFrame, Optional[np.ndarray]]:
        frame = self._frames.popleft()
        if frame.index in self._maps:
            return frame, self._maps[frame.index]
        self.late_frames += 1
        before = [k for k in self._maps if k <= frame.index]
        if before:
            return frame, self._maps[max(before)]
        if self._maps:
            return frame, self._maps[min(self._maps)]
        return frame, None


# ------------------------------------------------------------------------------ measurement
@dataclass
class RegionQuality:
    """Quality of one encode inside vs outside the salient region (luma, pooled over the clip).

    PSNRs pool the squared error over all frames before the log (one MSE per region).
    ``weighted_psnr`` weights each pixel's squared error by the saliency map.
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


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))


def rgb_to_luma(image: np.ndarray) -> np.ndarray:
    """The Y plane the encoder sees for an RGB frame (same conversion as :class:`GuidedEncoder`)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
    return frame.to_ndarray()[: image.shape[0]].copy()


def salient_mask(saliency: np.ndarray, width: int, height: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, mask) at frame size: the map normalised to max 1, and ``weights >= threshold``."""
    m = np.clip(np.asarray(saliency, np.float32), 0.0, 1.0)
    if m.shape != (height, width):
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
    peak = float(m.max())
    if peak > 1e-6:
        m = m / peak
    return m, m >= threshold


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
    acc = {"in": [0.0, 0], "out": [0.0, 0], "all": [0.0, 0], "w": [0.0, 0.0],
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
            acc["in"][0] += s_in; acc["in"][1] += c_in
            acc["out"][0] += s_all - s_in; acc["out"][1] += se.size - c_in
            acc["all"][0] += s_all; acc["all"][1] += se.size
            acc["w"][0] += float((se * weights).sum()); acc["w"][1] += float(weights.sum())
            area_in += c_in; area_all += se.size
            rec: dict[str, float] = {"index": n, "psnr_inside": _psnr(s_in / max(c_in, 1)),
                                     "psnr_outside": _psnr((s_all - s_in) / max(se.size - c_in, 1))}
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
                        acc["qp_in"][0] += float(qp[mb_in].sum()); acc["qp_in"][1] += int(mb_in.sum())
                    if (~mb_in).any():
                        acc["qp_out"][0] += float(qp[~mb_in].sum()); acc["qp_out"][1] += int((~mb_in).sum())
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
        psnr=_psnr(acc["all"][0] / acc["all"][1]),
        psnr_inside=_psnr(acc["in"][0] / acc["in"][1]) if acc["in"][1] else float("nan"),
        psnr_outside=_psnr(acc["out"][0] / acc["out"][1]) if acc["out"][1] else float("nan"),
        weighted_psnr=_psnr(acc["w"][0] / max(acc["w"][1], 1e-9)),
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


# ------------------------------------------------------------------------------ live driver
class LiveEncodeSession:
    """Thread-safe consumer of live frames and maps: the glue between the pipeline and the encoder.

    ``add_frame(VideoFrame)`` from the source reader, ``add_map(frame_index, saliency)``
    (or ``on_map(header, saliency)``, the pipeline's per-map hook) from wherever maps
    arrive. One worker thread pairs them (:class:`FrameMapAligner`) and encodes, so
    neither the reader nor the map publisher ever waits for x264. The encoder is built
    by ``make_encoder(width, height)`` at the first frame (odd sizes lose one pixel).
    """

    def __init__(self, make_encoder: Callable[[int, int], GuidedEncoder], *, stream_id: str = "0",
                 max_delay: int = 15, queue_size: int = 256):
        import queue
        import threading

        self._make = make_encoder
        self.stream_id = str(stream_id)
        self.aligner = FrameMapAligner(max_delay=max_delay)
        self.encoder: Optional[GuidedEncoder] = None
        self._q: "queue.Queue[tuple]" = queue.Queue(maxsize=queue_size)
        self._crop = (0, 0)
        self.error: Optional[BaseException] = None
        self.frames_in = 0
        self.maps_in = 0
        self._thread = threading.Thread(target=self._run, name="salstream-encode", daemon=True)
        self._thread.start()

    def add_frame(self, frame: VideoFrame) -> None:
        if frame.stream_id == self.stream_id:
            self._q.put(("frame", frame))

    def add_map(self, frame_index: int, saliency: np.ndarray) -> None:
        self._q.put(("map", int(frame_index), np.asarray(saliency, np.float32)))

    def on_map(self, header: dict, saliency: np.ndarray) -> None:
        """Pipeline hook: ``Pipeline(..., on_map=session.on_map)``."""
        if str(header.get("stream")) == self.stream_id:
            self.add_map(int(header["frame_index"]), saliency)

    def reset_smoothing(self) -> None:
        self._q.put(("reset",))

    def close(self, timeout: float = 60.0) -> Optional[EncodeStats]:
        """Encode what is still held back, finish the file; re-raises a worker error."""
        self._q.put(("end",))
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return None if self.encoder is None else self.encoder.stats

    def _emit(self, pairs: list[tuple[VideoFrame, Optional[np.ndarray]]]) -> None:
        for frame, sal in pairs:
            if self.encoder is None:
                h, w = frame.image.shape[:2]
                self._crop = (h - h % 2, w - w % 2)
                self.encoder = self._make(self._crop[1], self._crop[0])
            img = np.ascontiguousarray(frame.image[: self._crop[0], : self._crop[1]])
            self.encoder.write(img, sal, frame.pts)

    def _run(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item[0] == "frame":
                    self.frames_in += 1
                    self._emit(self.aligner.add_frame(item[1]))
                elif item[0] == "map":
                    self.maps_in += 1
                    self._emit(self.aligner.add_map(item[1], item[2]))
                elif item[0] == "reset":
                    if self.encoder is not None and self.encoder.mapper is not None:
                        self.encoder.mapper.reset()
                else:
                    self._emit(self.aligner.flush())
                    if self.encoder is not None:
                        self.encoder.close()
                    return
        except BaseException as exc:  # surfaced by close()
            self.error = exc
            while True:   # keep draining so producers never block on a dead worker
                if self._q.get()[0] == "end":
                    return


class TeeSource:
    """Wraps a source so every unit it yields is also shown to ``on_unit`` (e.g. the encoder session).

    The pipeline reads the wrapped source as usual; the encoder sees the very same frames.
    """

    def __init__(self, source: Any, on_unit: Callable[[Any], None]):
        self._source = source
        self._on_unit = on_unit

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._source)
        try:
            for unit in it:
                self._on_unit(unit)
                yield unit
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()   # the wrapped source releases its device/container now, not at GC

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)
