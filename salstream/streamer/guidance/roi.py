"""Saliency → encoder guidance: per-block QP-offset maps and regions of interest.

An encoder spends more bits where people look when each block's quantiser is
lowered there and raised elsewhere. This module turns a saliency map (float32,
any size, values in [0, 1]) into

* a **QP-offset map**: one offset per ``block_size``×``block_size`` block of the
  frame, in QP units (H.264/HEVC quantiser steps; −6 QP ≈ half the quantisation
  step), linear in the block's saliency between ``RoiConfig.salient_offset``
  (saliency 1) and ``RoiConfig.background_offset`` (saliency 0), and temporally
  smoothed (exponential moving average with a time constant, plus a per-update slew
  limit) so block quality does not flicker when maps jitter;
* a **list of regions of interest** in FFmpeg's ``AVRegionOfInterest`` semantics:
  ``top``/``bottom``/``left``/``right`` are pixel distances from the frame's top/left
  edge (bottom/right exclusive), ``qoffset`` a fraction in [−1, 1] where negative
  means better quality, and the first region wins where regions overlap (ours never
  do). For libx264/libx265 at 8 bits FFmpeg multiplies ``qoffset`` by 51, so
  ``qoffset = qp / 51`` and we write it with denominator 51: the numerator *is* the
  QP offset. Blocks with offset 0 get no region.

Both travel on the map socket as ``roi/<stream id>`` messages
(:func:`salstream.streamer.wire.format.encode_roi`, README "Wire format");
:meth:`QpMap.from_message` and :meth:`Region.from_list` turn a received one back into
these types.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Sequence

import numpy as np
import zmq

from salstream.diffsal.maps import normalize_map, resize_map
from salstream.errors import SalstreamError
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.format import RoiMessage

# FFmpeg's libx264/libx265 wrappers scale qoffset ±1 to ±51 QP at 8-bit depth.
QP_RANGE = 51
# Size of one AVRegionOfInterest: self_size (u32), top, bottom, left, right (i32), qoffset num/den (i32).
ROI_STRUCT = np.dtype([("self_size", "<u4"), ("top", "<i4"), ("bottom", "<i4"), ("left", "<i4"),
                       ("right", "<i4"), ("num", "<i4"), ("den", "<i4")])
assert ROI_STRUCT.itemsize == 28


@dataclass(frozen=True)
class RoiConfig:
    """How saliency becomes QP offsets (all offsets in QP units; negative = better quality).

    ``block_size``: pixels per block side (16 = one H.264 macroblock).
    ``salient_offset`` / ``background_offset``: offset at block saliency 1 / 0.
    ``gamma``: block saliency is raised to this power first (>1 concentrates the gain
    on the most salient blocks). ``normalize``: divide each map by its maximum so a
    low-contrast map still spans the whole offset range. ``pooling``: block saliency
    is the ``"mean"`` or ``"max"`` of the map over the block.
    ``time_constant``: seconds of exponential smoothing between maps (0 = none).
    ``max_step``: most QP a block's offset may move per update (0 = unlimited).
    ``quant_step``: region offsets are rounded to multiples of this many QP before
    neighbouring blocks with equal offsets are merged into one region.
    ``max_regions``: most regions in one list; past it ``quant_step`` is doubled until it fits.
    """
    block_size: int = 16
    salient_offset: float = -10.0
    background_offset: float = 6.0
    gamma: float = 1.0
    normalize: bool = True
    pooling: str = "mean"
    time_constant: float = 0.2
    max_step: float = 3.0
    quant_step: float = 1.0
    max_regions: int = 256

    def __post_init__(self) -> None:
        if self.block_size < 4 or self.block_size % 4:
            raise SalstreamError(f"ROI block size {self.block_size}: use a multiple of 4 pixels, "
                                 "e.g. 16 (one H.264 macroblock) or 32")
        for name in ("salient_offset", "background_offset"):
            v = getattr(self, name)
            if not -QP_RANGE <= v <= QP_RANGE:
                raise SalstreamError(f"ROI {name} {v}: must be within ±{QP_RANGE} QP (typical: −10…+6)")
        if self.gamma <= 0:
            raise SalstreamError(f"ROI gamma {self.gamma}: must be > 0 (1 = linear)")
        if self.pooling not in ("mean", "max"):
            raise SalstreamError(f"ROI pooling {self.pooling!r}: choose 'mean' or 'max'")
        if self.time_constant < 0 or self.max_step < 0:
            raise SalstreamError("ROI time_constant and max_step must be ≥ 0 (0 turns that smoothing off)")
        if self.quant_step <= 0:
            raise SalstreamError(f"ROI quant_step {self.quant_step}: must be > 0 QP")
        if self.max_regions < 1:
            raise SalstreamError(f"ROI max_regions {self.max_regions}: must be ≥ 1")


@dataclass(frozen=True)
class Region:
    """One region of interest, FFmpeg ``AVRegionOfInterest`` semantics (see the module docstring)."""
    top: int
    bottom: int
    left: int
    right: int
    qoffset_num: int
    qoffset_den: int = QP_RANGE   # kept as written: num is then the QP offset itself

    @property
    def qoffset(self) -> Fraction:
        return Fraction(self.qoffset_num, self.qoffset_den)

    @property
    def qp(self) -> float:
        """The QP offset libx264 applies at 8 bits."""
        return self.qoffset_num * QP_RANGE / self.qoffset_den

    def as_list(self) -> list[int]:
        return [self.top, self.bottom, self.left, self.right, self.qoffset_num, self.qoffset_den]

    @classmethod
    def from_list(cls, r: Sequence[int]) -> "Region":
        return cls(*[int(v) for v in r])


@dataclass
class QpMap:
    """Per-block QP offsets for a ``width``×``height`` frame (the last row/column may be partial)."""
    offsets: np.ndarray          # (rows, cols) float32, QP units
    block_size: int
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.offsets.shape  # type: ignore[return-value]

    @classmethod
    def from_message(cls, msg: "RoiMessage") -> "QpMap":
        """The QP map of a received ``roi/<stream>`` message."""
        return cls(msg.offsets, msg.block_size, msg.frame_size[1], msg.frame_size[0])

    def fit(self, width: int, height: int) -> "QpMap":
        """These offsets for a ``width``×``height`` frame.

        Blocks are anchored at the top-left corner, so an encoder that cropped an odd
        size by one pixel keeps the same blocks (the grid is cut); any other size (e.g.
        a scaled frame preview) gets the offsets resampled and pooled onto its own grid.
        """
        width, height = int(width), int(height)
        if (width, height) == (self.width, self.height):
            return self
        b = self.block_size
        rows, cols = -(-height // b), -(-width // b)
        if 0 <= self.width - width <= 1 and 0 <= self.height - height <= 1:
            return QpMap(self.offsets[:rows, :cols].copy(), b, width, height)
        pixels = resize_map(self.per_pixel(), (height, width))
        return QpMap(block_pool(pixels, rows, cols, b).astype(np.float32), b, width, height)

    def per_pixel(self) -> np.ndarray:
        """(height, width) float32 offsets, each block's value over its pixels (for overlays)."""
        b = self.block_size
        full = np.repeat(np.repeat(self.offsets, b, axis=0), b, axis=1)
        return full[: self.height, : self.width]

    def regions(self, quant_step: float = 1.0, max_regions: Optional[int] = None) -> list[Region]:
        """Rectangles of equal (rounded) offset covering every block whose offset is not 0.

        Equal runs within a block row are merged first, then identical runs on
        consecutive rows are stacked, which keeps smooth maps to a few dozen regions.
        If there are more than ``max_regions``, the rounding step doubles until they fit.
        """
        step = float(quant_step)
        while True:
            regions = self._merge(step)
            if max_regions is None or len(regions) <= max_regions:
                return regions
            step *= 2.0

    def _merge(self, step: float) -> list[Region]:
        q = np.rint(self.offsets / step) * step
        q = np.clip(np.rint(q), -QP_RANGE, QP_RANGE).astype(np.int32)  # integer QP: den 51 is exact
        b = self.block_size
        open_rects: dict[tuple[int, int, int], list[int]] = {}   # (c0, c1, value) -> [r0, r1]
        done: list[tuple[int, int, int, int, int]] = []
        rows, cols = q.shape
        for r in range(rows):
            row = q[r]
            runs: list[tuple[int, int, int]] = []
            c = 0
            while c < cols:
                v = int(row[c])
                c1 = c + 1
                while c1 < cols and row[c1] == v:
                    c1 += 1
                if v != 0:
                    runs.append((c, c1, v))
                c = c1
            still_open: dict[tuple[int, int, int], list[int]] = {}
            for run in runs:
                rect = open_rects.pop(run, None)
                if rect is not None:
                    rect[1] = r + 1
                    still_open[run] = rect
                else:
                    still_open[run] = [r, r + 1]
            for (c0, c1, v), (r0, r1) in open_rects.items():
                done.append((r0, r1, c0, c1, v))
            open_rects = still_open
        for (c0, c1, v), (r0, r1) in open_rects.items():
            done.append((r0, r1, c0, c1, v))
        done.sort()
        return [Region(top=r0 * b, bottom=min(r1 * b, self.height), left=c0 * b, right=min(c1 * b, self.width),
                       qoffset_num=v)
                for r0, r1, c0, c1, v in done]


def block_pool(values: np.ndarray, rows: int, cols: int, block: int, how: str = "mean") -> np.ndarray:
    """(rows, cols) mean (or max) of a frame-sized array over each block; partial last blocks are
    padded with edge values, not diluted by zeros."""
    h, w = values.shape
    ph, pw = rows * block, cols * block
    if (ph, pw) != (h, w):
        values = np.pad(values, ((0, ph - h), (0, pw - w)), mode="edge")
    blocks = values.reshape(rows, block, cols, block)
    return blocks.max(axis=(1, 3)) if how == "max" else blocks.mean(axis=(1, 3))


def regions_to_struct(regions: Sequence[Region], capacity: Optional[int] = None) -> np.ndarray:
    """The regions as the packed ``AVRegionOfInterest`` array FFmpeg reads from frame side data.

    With ``capacity`` the array has exactly that many entries; unused ones are empty
    rectangles (top = bottom = 0) with offset 0, which encoders skip.
    """
    n = len(regions) if capacity is None else int(capacity)
    if len(regions) > n:
        raise ValueError(f"{len(regions)} regions do not fit in {n} slots; raise RoiConfig.max_regions")
    arr = np.zeros(n, dtype=ROI_STRUCT)
    arr["self_size"] = ROI_STRUCT.itemsize
    arr["den"] = 1
    for i, reg in enumerate(regions):
        arr[i] = (ROI_STRUCT.itemsize, reg.top, reg.bottom, reg.left, reg.right, reg.qoffset_num, reg.qoffset_den)
    return arr


class QpMapper:
    """Stateful saliency → smoothed :class:`QpMap` for one stream of ``width``×``height`` frames."""

    def __init__(self, width: int, height: int, config: Optional[RoiConfig] = None):
        if width <= 0 or height <= 0:
            raise SalstreamError(f"frame size {width}x{height}: width and height must be positive")
        self.config = config or RoiConfig()
        self.width, self.height = int(width), int(height)
        b = self.config.block_size
        self.cols = -(-self.width // b)
        self.rows = -(-self.height // b)
        self._state: Optional[np.ndarray] = None
        self._last_t: Optional[float] = None

    def reset(self) -> None:
        """Forget the smoothing state (after a stream gap)."""
        self._state = None
        self._last_t = None

    def block_saliency(self, saliency: np.ndarray) -> np.ndarray:
        """(rows, cols) saliency of each block, in [0, 1]."""
        m = np.asarray(saliency, dtype=np.float32)
        if m.ndim != 2 or m.size == 0:
            raise SalstreamError(f"saliency map must be a 2-D (H, W) array, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise SalstreamError("saliency map contains NaN or infinity; check the engine output")
        m = normalize_map(m, "peak") if self.config.normalize else np.clip(m, 0.0, 1.0)
        # Resample the map onto the frame, then pool each block exactly.
        m = resize_map(m, (self.height, self.width))
        pooled = block_pool(m, self.rows, self.cols, self.config.block_size, self.config.pooling)
        return np.clip(pooled, 0.0, 1.0).astype(np.float32)

    def target(self, saliency: np.ndarray) -> np.ndarray:
        """Unsmoothed offsets (rows, cols) for one map."""
        c = self.config
        s = self.block_saliency(saliency) ** c.gamma
        return (c.background_offset + (c.salient_offset - c.background_offset) * s).astype(np.float32)

    def update(self, saliency: np.ndarray, t: Optional[float] = None) -> QpMap:
        """Smoothed offsets after the map for media time ``t`` (seconds; ``None``: one 30 fps frame later)."""
        target = self.target(saliency)
        c = self.config
        if self._state is None:
            state = target
        else:
            dt = 1.0 / 30.0 if t is None or self._last_t is None else max(0.0, t - self._last_t)
            alpha = 1.0 if c.time_constant == 0 else 1.0 - math.exp(-dt / c.time_constant)
            step = alpha * (target - self._state)
            if c.max_step > 0:
                step = np.clip(step, -c.max_step, c.max_step)
            state = self._state + step
        self._state = state.astype(np.float32)
        if t is not None:
            self._last_t = float(t)
        elif self._last_t is not None:
            self._last_t += 1.0 / 30.0
        return QpMap(self._state.copy(), c.block_size, self.width, self.height)

    def regions(self, qp_map: QpMap) -> list[Region]:
        return qp_map.regions(self.config.quant_step, self.config.max_regions)


class RoiPublisher:
    """Publishes ROI messages for one or more streams on an existing map :class:`~streamer.publish.Publisher`.

    Messages go out on the publisher's socket (same endpoint as the maps) under
    ``roi/<stream>``, never blocking: a refused send is counted in ``send_dropped``.
    """

    def __init__(self, publisher: Any, width: int, height: int, config: Optional[RoiConfig] = None):
        self.publisher = publisher
        self.width, self.height = int(width), int(height)   # frame size when a call gives none
        self.config = config or RoiConfig()
        self._mappers: dict[str, QpMapper] = {}   # smoothing state is per stream
        self._seq: dict[str, int] = {}
        self.sent = 0
        self.send_dropped = 0
        self.closed = False

    def publish(self, stream: str, qp_map: QpMap, regions: Sequence[Region], frame_index: int, pts: float,
                capture_time: float) -> bool:
        """Send one ROI message; returns False when ZeroMQ refused it (counted in ``send_dropped``)."""
        seq = self._seq.get(stream, 0)
        self._seq[stream] = seq + 1
        header = {"stream": stream, "seq": seq, "frame_index": int(frame_index), "pts": float(pts),
                  "capture_time": float(capture_time), "publish_time": time.monotonic(),
                  "publish_wall": time.time()}
        parts = wire.encode_roi(header, qp_map.offsets, qp_map.block_size, (qp_map.height, qp_map.width),
                                [r.as_list() for r in regions], QP_RANGE)
        if self._send(parts):
            self.sent += 1
            return True
        self.send_dropped += 1
        return False

    def publish_saliency(self, stream: str, saliency: np.ndarray, frame_index: int, pts: float,
                         capture_time: float, frame_size: Optional[tuple[int, int]] = None
                         ) -> tuple[QpMap, list[Region]]:
        """Map a published saliency map (e.g. from the pipeline's per-map hook) and send its ROI message.

        ``frame_size``: (height, width) of the stream's frames (default: the size given at
        construction); a stream whose size changes starts its smoothing over.
        """
        h, w = frame_size if frame_size is not None else (self.height, self.width)
        mapper = self._mappers.get(stream)
        if mapper is None or (mapper.height, mapper.width) != (int(h), int(w)):
            mapper = self._mappers[stream] = QpMapper(int(w), int(h), self.config)
        qp_map = mapper.update(saliency, pts)
        regions = mapper.regions(qp_map)
        self.publish(stream, qp_map, regions, frame_index, pts, capture_time)
        return qp_map, regions

    def reset(self, stream: str) -> None:
        """Forget a stream's smoothing state (after a source outage)."""
        mapper = self._mappers.get(stream)
        if mapper is not None:
            mapper.reset()

    def _send(self, parts: list[bytes]) -> bool:
        if self.closed:
            return False
        try:
            return bool(self.publisher.send_parts(parts))
        except zmq.ZMQError:
            # The map publisher was closed (its session ended): later messages have nowhere to go.
            self.closed = True
            return False


class RoiFeed:
    """Pipeline consumer (``salstream run --roi``): every published map also goes out as ``roi/<stream>``.

    The QP offsets are those ``salstream encode`` applies (the same :class:`QpMapper`),
    for the stream's source frame size (the map header's ``source_shape``), smoothed over
    time per stream; the first map after a source outage starts the smoothing over. It
    runs in the scheduler's thread right after the map is sent, and never blocks.
    """

    name = "roi"

    def __init__(self, config: Optional[RoiConfig] = None):
        self.config = config or RoiConfig()
        self.publisher: Optional[RoiPublisher] = None

    def start(self, sources: Sequence[Any], publisher: Any) -> None:
        self.publisher = RoiPublisher(publisher, 0, 0, self.config)

    def on_unit(self, unit: Any) -> None:
        pass

    def on_map(self, header: Any, saliency: np.ndarray) -> None:
        if self.publisher is None:
            return
        if header.flags.get("gap"):
            self.publisher.reset(header.stream)
        h, w = header.source_shape or np.shape(saliency)
        self.publisher.publish_saliency(header.stream, saliency, header.frame_index, header.pts,
                                        header.capture_time, frame_size=(int(h), int(w)))

    def close(self, failed: bool = False) -> None:
        pass

    def summary(self) -> list[str]:
        if self.publisher is None:
            return []
        p = self.publisher
        return [f"roi: {p.sent} roi/<stream> messages sent" + (f", {p.send_dropped} refused" if p.send_dropped else "")]
