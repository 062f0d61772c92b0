"""Saliency-guided encoding of a live stream: frames wait for their maps, then go to the encoder.

:class:`LiveEncodeSession` pairs frames with their guidance (a saliency map, or the QP
offsets a ``salstream run --roi`` published) and feeds :class:`GuidedEncoder`;
:func:`follow_publisher` feeds it from another process's socket (``salstream encode --connect``).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.align import PairedConsumer
from salstream.streamer.guidance.encoder import EncodeStats, GuidedEncoder
from salstream.streamer.guidance.roi import QpMap

log = logging.getLogger("salstream.encode")


class LiveEncodeSession(PairedConsumer):
    """Pipeline consumer (or a standalone one fed by :meth:`add_frame` / :meth:`add_map`) that
    encodes one stream, each frame with the regions of its map.

    Frames wait (up to ``max_delay`` frames) for their map in this consumer's own thread, so
    neither the source reader nor the map publisher ever waits for x264; nothing is dropped.
    The encoder is built by ``make_encoder(width, height)`` at the first frame (odd sizes
    lose one pixel); after a source outage its smoothing state starts over.
    """

    name = "encoder"

    def __init__(self, make_encoder: Callable[[int, int], GuidedEncoder], *, stream_id: str = "0",
                 max_delay: int = 15, queue_size: int = 256):
        super().__init__(stream_id, max_delay=max_delay, lossless=True, queue_size=queue_size)
        self._make = make_encoder
        self.encoder: Optional[GuidedEncoder] = None
        self.stats: Optional[EncodeStats] = None
        self._crop = (0, 0)

    def add_frame(self, frame) -> None:
        self.on_unit(frame)

    def add_qp_map(self, frame_index: int, qp_map: QpMap) -> None:
        """Offsets computed elsewhere (an ``roi/<stream>`` message) for one frame, used as they are."""
        self._put(("map", int(frame_index), qp_map))

    def write(self, frame, guide: Union[np.ndarray, QpMap, None]) -> None:
        if self.encoder is None:
            h, w = frame.image.shape[:2]
            self._crop = (h - h % 2, w - w % 2)
            self.encoder = self._make(self._crop[1], self._crop[0])
        img = np.ascontiguousarray(frame.image[: self._crop[0], : self._crop[1]])
        if isinstance(guide, QpMap):
            self.encoder.write(img, pts=frame.pts, qp_map=guide)
        else:
            self.encoder.write(img, guide, frame.pts)

    def on_gap(self) -> None:
        if self.encoder is not None and self.encoder.mapper is not None:
            self.encoder.mapper.reset()   # the old smoothing state belongs to frames before the outage

    def finish(self, failed: bool) -> None:
        if self.encoder is not None:
            self.stats = self.encoder.close()

    def close(self, failed: bool = False) -> Optional[EncodeStats]:
        """Encode what is still held back and finish the file; re-raises a worker error."""
        super().close(failed)
        return self.stats


@dataclass
class FollowStats:
    """What :func:`follow_publisher` received. ``ended``: ``"frames"`` (the limit), ``"idle"``
    (nothing for ``idle_timeout``: the run ended or stalled), ``"stopped"`` or ``"interrupted"``."""
    frames: int = 0
    guides: int = 0
    bad_frames: int = 0
    gaps: int = 0
    ended: str = ""


def follow_publisher(address: str, session: LiveEncodeSession, *, guide: str = "roi",
                     max_frames: Optional[int] = None, idle_timeout: float = 10.0, first_timeout: float = 60.0,
                     stop: Optional[threading.Event] = None) -> FollowStats:
    """Feed ``session`` from a running ``salstream run``: its frame previews (``frame/<stream>``),
    each with the ``roi/<stream>`` offsets (``guide="roi"``, needs ``run --roi``) or the map
    (``guide="maps"``; the session's encoder then makes the offsets itself).

    Returns when ``max_frames`` frames were taken (after waiting briefly for the last one's
    guidance), when nothing arrived for ``idle_timeout`` s, on ``stop`` or Ctrl-C. No frame
    within ``first_timeout`` s is an error naming the likely cause.
    """
    from salstream.streamer.wire import format as wire
    from salstream.streamer.wire.subscriber import Subscriber

    if guide not in ("roi", "maps"):
        raise SalstreamError(f"--guide {guide!r}: choose roi (offsets of `salstream run --roi`) or maps")
    kind = wire.ROI if guide == "roi" else wire.MAP
    stream = session.stream_id
    stats = FollowStats()
    stop = stop or threading.Event()
    last_index = -1
    newest_guide = -1
    last_message = time.monotonic()
    finishing_since: Optional[float] = None
    with Subscriber(address, [stream], kinds={wire.FRAME, kind}) as sub:
        try:
            while not stop.is_set():
                msg = sub.recv(timeout=0.1)
                now = time.monotonic()
                if msg is not None:
                    last_message = now
                    if isinstance(msg, wire.FrameMessage):
                        if finishing_since is None:
                            last_index = _take_frame(msg, session, stats, last_index)
                            if max_frames is not None and stats.frames >= max_frames:
                                finishing_since = now
                    else:
                        stats.guides += 1
                        newest_guide = max(newest_guide, msg.frame_index)
                        if isinstance(msg, wire.RoiMessage):
                            session.add_qp_map(msg.frame_index, QpMap.from_message(msg))
                        else:
                            session.add_map(msg.frame_index, msg.saliency)
                if finishing_since is not None:
                    # The last frame's guidance follows it on the socket: wait for it briefly.
                    if newest_guide >= last_index or now - finishing_since > 2.0:
                        stats.ended = "frames"
                        break
                elif msg is None and stats.frames == 0 and now - last_message >= first_timeout:
                    raise SalstreamError(
                        f"--connect {address}: no frame previews of stream {stream} within {first_timeout:.0f} s; "
                        "start `salstream run` there (without --no-frames"
                        + (", with --roi" if guide == "roi" else "") + ") or check --stream")
                elif msg is None and stats.frames and now - last_message >= idle_timeout:
                    stats.ended = "idle"
                    break
            else:
                stats.ended = "stopped"
        except KeyboardInterrupt:
            stats.ended = "interrupted"              # Ctrl-C: finish the file, it stays playable
    if stats.frames and stats.guides == 0:
        log.warning("stream %s: no %s messages arrived, so the file is not saliency-guided%s", stream,
                    "roi/" + stream if guide == "roi" else "map",
                    "; start `salstream run` with --roi (or use --guide maps)" if guide == "roi" else "")
    return stats


def _take_frame(msg, session: LiveEncodeSession, stats: FollowStats, last_index: int) -> int:
    """Hand one frame preview to ``session``; returns the newest frame index taken."""
    from salstream.streamer.live.units import StreamEvent, VideoFrame
    from salstream.streamer.wire.format import WireError

    try:
        image = msg.image()
    except WireError as exc:
        stats.bad_frames += 1
        log.debug("skipped a frame preview: %s", exc)
        return last_index
    if msg.frame_index <= last_index:              # the run's source started its count over
        stats.gaps += 1
        session.on_unit(StreamEvent("gap", stream_id=session.stream_id))
    session.add_frame(VideoFrame(image=image, pts=msg.pts, capture_time=float(msg.header["capture_time"]),
                                 index=msg.frame_index, stream_id=session.stream_id))
    stats.frames += 1
    return msg.frame_index
