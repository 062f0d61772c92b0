"""ZeroMQ → web: the newest frame and map of every stream, and each stream's live figures.

:class:`MapBridge` subscribes to a publisher (maps and frame previews; other kinds, and
side channels it does not know, are skipped by the subscriber) in its own thread and
keeps only the **newest** map of each stream with its frame: browsers and MJPEG clients
read that state when they are ready for more, so a slow client skips maps instead of
growing a queue. When the publisher restarts, ZeroMQ reconnects and maps flow again.
A map sampled K times (``samples`` in its header) waits for its spread (``conf/<stream>``,
sent right after it) so both reach the page together; if the spread never comes, the map
goes on alone at the next message or after a short wait.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from salstream.streamer.wire import format as wire
from salstream.streamer.wire.format import ConfMessage, FrameMessage, MapMessage, WireError

log = logging.getLogger("salstream.web")

STATS_SECONDS = 5.0       # maps/s and latency percentiles over this much recent time…
STATS_MIN_MAPS = 10       # …or over the last maps, for streams slower than that


@dataclass(frozen=True)
class Latest:
    """One stream's newest map (uint8, model resolution) and the preview of its frame."""
    stream: str
    version: int                       # increases with every map the bridge receives (any stream)
    map_u8: bytes                      # rows × cols, round(255 · value), C order
    map_info: dict                     # what the page shows: frame_index, pts, mode, flags, latency…
    frame_jpeg: Optional[bytes]        # the newest preview at or before the map's frame (None: --no-frames)
    frame_info: Optional[dict]
    # With --samples K: the per-pixel spread of the draws, rows × cols, round(255 · min(1, 2 · std))
    # (the std of values in [0, 1] is at most 0.5), else None.
    spread_u8: Optional[bytes] = None


class MapBridge:
    """Subscribes to ``address`` and keeps each stream's :class:`Latest` plus its figures.

    ``on_change(stream)`` is called from the bridge thread after every map (it must not block).
    """

    def __init__(self, address: str, *, on_change: Optional[Callable[[str], None]] = None,
                 stats_seconds: float = STATS_SECONDS):
        self.address = address
        self.on_change = on_change
        self.stats_seconds = float(stats_seconds)
        self._lock = threading.Lock()
        self._latest: dict[str, Latest] = {}
        self._frames: dict[str, FrameMessage] = {}          # newest preview per stream
        self._recent: dict[str, deque] = {}                 # (arrival, latency ms) per stream
        self._arrival: dict[str, float] = {}                # newest map's arrival per stream
        self._overlays: dict[str, tuple[int, bytes]] = {}   # server-side overlay JPEG per version
        self._versions = itertools.count(1)
        self._waiting: dict[str, MapMessage] = {}           # a map whose spread should follow
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.maps = 0
        self.missed = 0
        self.bad_messages = 0     # skipped: failed the wire checks, or could not be shown
        self.own_errors = 0
        self.last_map_time: Optional[float] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "MapBridge":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="salstream-web-bridge", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        from salstream.streamer.wire.subscriber import Subscriber
        with Subscriber(self.address, kinds={wire.MAP, wire.FRAME, wire.CONF}) as sub:
            while not self._stop.is_set():
                msg = sub.recv(timeout=0.2 if not self._waiting else 0.05)
                self.missed = sub.missed
                try:
                    if msg is None or (not isinstance(msg, ConfMessage) and msg.stream in self._waiting):
                        for stream in [s for s in self._waiting if msg is None or s == msg.stream]:
                            self._show(self._waiting.pop(stream))       # its spread did not come
                    if isinstance(msg, FrameMessage):
                        with self._lock:
                            self._frames[msg.stream] = msg
                    elif isinstance(msg, MapMessage):
                        samples = msg.header.extra.get("samples")
                        if isinstance(samples, int) and not isinstance(samples, bool) and samples > 1:
                            self._waiting[msg.stream] = msg
                        else:
                            self._show(msg)
                    elif isinstance(msg, ConfMessage):
                        waiting = self._waiting.get(msg.stream)
                        if waiting is not None and waiting.header.seq == msg.seq and \
                                waiting.saliency.shape == msg.spread.shape:
                            self._show(self._waiting.pop(msg.stream), msg.spread)
                except Exception:      # one message the viewer cannot show must not end the viewer
                    self.own_errors += 1
                    log.exception("stream %s: skipped a message the viewer could not use",
                                  getattr(msg, "stream", "?"))
                self.bad_messages = sub.bad_messages + self.own_errors

    def _show(self, msg: MapMessage, spread: Optional[np.ndarray] = None) -> None:
        self._add_map(msg, spread)
        if self.on_change is not None:
            self.on_change(msg.stream)

    def _add_map(self, msg: MapMessage, spread: Optional[np.ndarray] = None) -> None:
        h = msg.header
        latency = (h.publish_time - h.capture_time) * 1000.0
        info = {"stream": msg.stream, "seq": h.seq, "frame_index": h.frame_index, "pts": h.pts, "mode": h.mode,
                "flags": h.flags, "latency_ms": round(latency, 2), "shape": list(msg.saliency.shape),
                "source_shape": h.source_shape, "dropped": h.dropped, "profile": h.profile, "engine": h.engine,
                "steps": h.steps}
        payload = wire.encode_map_payload(msg.saliency, "uint8")
        spread_u8 = None
        if spread is not None:
            info["samples"] = msg.header.extra["samples"]
            spread_u8 = wire.encode_map_payload(np.minimum(1.0, 2.0 * spread), "uint8")
        now = time.monotonic()
        with self._lock:
            frame = self._frames.get(msg.stream)
            if frame is not None and frame.frame_index > h.frame_index:
                frame = None          # a preview newer than the map (e.g. after a publisher restart)
            frame_info = None if frame is None else {"stream": msg.stream, "frame_index": frame.frame_index,
                                                     "pts": frame.pts}
            self._latest[msg.stream] = Latest(msg.stream, next(self._versions), payload, info,
                                              None if frame is None else frame.jpeg, frame_info, spread_u8)
            recent = self._recent.setdefault(msg.stream, deque())
            recent.append((now, latency))
            self._prune(recent, now)
            self._arrival[msg.stream] = now
            self.maps += 1
            self.last_map_time = now

    # ------------------------------------------------------------------ readers (any thread)
    def streams(self) -> list[str]:
        with self._lock:
            return sorted(self._latest, key=lambda s: (len(s), s))

    def latest(self, stream: str) -> Optional[Latest]:
        with self._lock:
            return self._latest.get(stream)

    def stats(self) -> dict[str, dict]:
        """Per stream: maps/s and p50/p95 capture→publish latency over the last seconds, and the
        age of its newest map."""
        now = time.monotonic()
        out = {}
        with self._lock:
            for sid, recent in self._recent.items():
                self._prune(recent, now)
                lat = [x for _, x in recent]
                age = now - self._arrival[sid]
                # Rate up to now (it falls when maps stop); stale once the usual gap is clearly exceeded.
                rate = (len(recent) - 1) / max(now - recent[0][0], 1e-3) if len(recent) > 1 else 0.0
                gap = (recent[-1][0] - recent[0][0]) / (len(recent) - 1) if len(recent) > 1 else 1.0
                newest = self._latest[sid]
                out[sid] = {"maps_per_s": round(rate, 2),
                            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
                            "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat else None,
                            "age_s": round(age, 2), "stale": age > max(3.0, 3.0 * gap),
                            "frame_index": newest.map_info["frame_index"], "mode": newest.map_info["mode"]}
        return out

    def _prune(self, recent: deque, now: float) -> None:
        while len(recent) > STATS_MIN_MAPS and now - recent[0][0] > self.stats_seconds:
            recent.popleft()

    def overlay_jpeg(self, stream: str, alpha: float = 0.6, quality: int = 80) -> Optional[bytes]:
        """The newest map of ``stream`` blended over its frame (server side, for clients without
        JavaScript), cached per map."""
        latest = self.latest(stream)
        if latest is None:
            return None
        with self._lock:
            cached = self._overlays.get(stream)
        if cached is not None and cached[0] == latest.version:
            return cached[1]
        import cv2

        from salstream.streamer.overlay.render import blend
        rows, cols = latest.map_info["shape"]
        saliency = np.frombuffer(latest.map_u8, np.uint8).reshape(rows, cols).astype(np.float32) / 255.0
        image = None
        if latest.frame_jpeg is not None:
            try:
                image = FrameMessage(stream, dict(latest.frame_info), latest.frame_jpeg).image()
            except WireError as exc:
                log.warning("stream %s: skipping a frame preview: %s", stream, exc)
        if image is None:             # no previews (--no-frames): the heatmap on black, source aspect
            sh = latest.map_info.get("source_shape") or [rows, cols]
            scale = min(1.0, 640 / max(sh[0], sh[1]))
            image = np.zeros((max(1, round(sh[0] * scale)), max(1, round(sh[1] * scale)), 3), np.uint8)
        overlay = blend(image, saliency, alpha)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        data = jpeg.tobytes() if ok else b""
        with self._lock:
            self._overlays[stream] = (latest.version, data)
        return data
