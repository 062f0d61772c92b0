"""Saliency-guided H.264 (libx264; HEVC with libx265) through PyAV with per-frame regions of interest.

PyAV has no call that attaches side data to a frame, so every frame goes through a
small filter graph ``buffer → addroi × capacity → buffersink``: each ``addroi``
appends one placeholder ``AVRegionOfInterest``, and we then overwrite the whole
array in place with this frame's regions (:func:`salstream.streamer.guidance.roi.regions_to_struct`;
unused slots become empty rectangles). libx264 (and libx265, per 16×16 block) reads the
array and adds each region's offset to its macroblocks' quantiser. libx264 ignores regions when
adaptive quantisation is off (``preset=ultrafast`` turns it off), so both the
baseline and the guided encoder run with ``aq-mode=1``: the only difference between
them is the regions.

Rate control is one-pass ABR with a VBV buffer (``vbv-maxrate`` = the bitrate,
``vbv-bufsize`` = one second), the usual live setting: both encoders spend the same
total bitrate, guided ones just move bits from the background to the salient blocks.

:class:`GuidedEncoder` consumes (frame, saliency map) pairs; in a live run
:class:`salstream.streamer.guidance.session.LiveEncodeSession` pairs frames with maps
that arrive later and feeds it. :mod:`salstream.streamer.guidance.quality` measures the
result.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional, Sequence, Union

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from salstream.errors import SalstreamError
from salstream.streamer.guidance.roi import QpMap, QpMapper, Region, RoiConfig, regions_to_struct
from salstream.streamer.live.units import VideoFrame

log = logging.getLogger("salstream.encode")

MB = 16  # H.264 macroblock side


CODECS = ("libx264", "libx265")   # FFmpeg encoders that read regions of interest as QP offsets


@dataclass(frozen=True)
class EncodeSettings:
    """Encoder settings shared by baseline and guided encodes (see the module docstring).

    ``codec``: ``libx264`` (H.264) or ``libx265`` (HEVC, when PyAV's FFmpeg has it).
    ``bitrate`` in bits per second; ``preset``/``tune`` as for x264/x265 (``tune=zerolatency``
    for the lowest encoder delay); ``keyint`` in frames (0 = two seconds);
    ``vbv_seconds``: VBV buffer length (0 = plain ABR without VBV). ``crf``: constant
    rate factor instead of ABR (``bitrate`` and VBV then unused): a quality target, so a
    region's offset changes its quality and what it costs, and the total rate follows.
    ``extra_x264_params``: more ``key=value`` pairs for the codec's own parameter list
    (x264-params or x265-params).
    """
    bitrate: int = 1_000_000
    preset: str = "veryfast"
    tune: Optional[str] = None
    keyint: int = 0
    vbv_seconds: float = 1.0
    threads: int = 0
    extra_x264_params: str = ""
    codec: str = "libx264"
    crf: Optional[float] = None

    def __post_init__(self) -> None:
        if self.bitrate < 10_000:
            raise SalstreamError(f"--bitrate {self.bitrate}: too low for H.264; use at least 10k (e.g. 500k or 2M)")
        if self.vbv_seconds < 0:
            raise SalstreamError(f"VBV buffer {self.vbv_seconds} s: must be ≥ 0")
        if self.codec not in CODECS:
            raise SalstreamError(f"codec {self.codec!r}: choose one of {', '.join(CODECS)}")
        if self.codec not in av.codecs_available:
            raise SalstreamError(f"codec {self.codec}: this PyAV's FFmpeg has no such encoder; use libx264")
        if self.crf is not None and not 0 <= self.crf <= 51:
            raise SalstreamError(f"CRF {self.crf}: must be within 0…51 (lower = better quality, e.g. 23)")

    def x264_params(self) -> str:
        """The codec's parameter list (x264-params, or x265-params for libx265)."""
        kbps = max(1, self.bitrate // 1000)
        params = ["aq-mode=1"]  # regions are ignored without adaptive quantisation
        if self.vbv_seconds > 0 and self.crf is None:
            params += [f"vbv-maxrate={kbps}", f"vbv-bufsize={max(1, int(kbps * self.vbv_seconds))}"]
        if self.codec == "libx265":
            params.append("log-level=error")
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


def add_source_audio(out: Union[str, os.PathLike], source: str, seconds: Optional[float] = None) -> bool:
    """Copy ``source``'s first audio track, packets unchanged, into the encoded file ``out``.

    The encoder writes video only (frames arrive through the live pipeline, whose audio is
    resampled for the model); this restores the original sound beside it, cut at ``seconds``
    (the encoded duration). Returns False when the source has no audio or it cannot be copied
    (the video-only file is then kept as it is, with a warning)."""
    import heapq
    import logging
    log = logging.getLogger("salstream.encode")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.audio{out.suffix}")
    try:
        with av.open(str(source)) as src:
            audio = next(iter(src.streams.audio), None)
            if audio is None:
                return False
            with av.open(str(out)) as video_in, av.open(str(tmp), "w") as dst:   # format: from the suffix
                v_out = dst.add_stream_from_template(video_in.streams.video[0])
                a_out = dst.add_stream_from_template(audio)

                def packets(container, stream, target, limit: Optional[float]):
                    for p in container.demux(stream):
                        if p.dts is None:            # the demuxer's flush packet
                            continue
                        if limit is not None and p.pts is not None and float(p.pts * p.time_base) >= limit:
                            return
                        p.stream = target
                        yield p
                merged = heapq.merge(packets(video_in, video_in.streams.video[0], v_out, None),
                                     packets(src, audio, a_out, seconds),
                                     key=lambda p: float(p.dts * p.time_base))
                for p in merged:
                    dst.mux(p)
        os.replace(tmp, out)
        return True
    except (OSError, av.error.FFmpegError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        log.warning("%s: could not copy the source's audio (%s); the file has video only", out, exc)
        return False


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
        self._stream = self._container.add_stream(s.codec, rate=rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        if s.crf is None:
            self._stream.bit_rate = s.bitrate
        self._stream.time_base = self.time_base
        self._stream.codec_context.time_base = self.time_base
        self._stream.gop_size = s.keyint or max(1, int(round(2 * fps)))
        opts = {"preset": s.preset, ("x265-params" if s.codec == "libx265" else "x264-params"): s.x264_params()}
        if s.crf is not None:
            opts["crf"] = f"{s.crf:g}"
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

    def write(self, image: np.ndarray, saliency: Optional[np.ndarray] = None, pts: Optional[float] = None, *,
              qp_map: Optional[QpMap] = None) -> None:
        """Encode one frame. ``qp_map``: offsets made elsewhere (e.g. received on ``roi/<stream>``),
        applied as they are instead of mapping ``saliency`` (no second smoothing)."""
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
            if qp_map is not None:
                qp_map = qp_map.fit(self.width, self.height)
                self._regions = qp_map.regions(self.mapper.config.quant_step, self._tagger.capacity)
            elif saliency is not None:
                qp_map = self.mapper.update(saliency, None if pts is None else float(pts))
                self._regions = self.mapper.regions(qp_map)
            if qp_map is not None and self.on_qp_map is not None:
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
