"""``webcam:N``: a camera through OpenCV's ``VideoCapture``.

Frames are read by a small thread so that a stalled camera cannot hang the pipeline: the
iterator waits at most ``read_timeout`` for each frame. Failed reads are retried a few
times; after that the source reports a ``StreamEvent("error")`` and ends. PTS come from
the capture clock (seconds since the first frame), which a microphone can share.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Iterator

import cv2
import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.live.sources.base import Source, Unit
from salstream.streamer.live.units import VideoFrame

log = logging.getLogger("salstream.sources.webcam")


class WebcamSource(Source):
    """A camera (``device`` = index), or any other argument ``cv2.VideoCapture`` accepts."""

    def __init__(self, device: int | str = 0, *, stream_id: str = "0", open_timeout: float = 5.0,
                 read_timeout: float = 5.0, retries: int = 5, retry_delay: float = 0.05,
                 width: int | None = None, height: int | None = None, fps: float | None = None,
                 queue_seconds: float = 2.0):
        self.device = device
        self.retries = int(retries)
        self.retry_delay = float(retry_delay)
        self.read_timeout = float(read_timeout)
        name = f"webcam:{device}" if isinstance(device, int) else f"capture {device}"
        cap = _open_capture(device, open_timeout, name)
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        reported = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        super().__init__(stream_id, fps=reported if 1.0 <= reported <= 480.0 else 30.0, has_audio=False,
                         description=name)
        self._cap = cap
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, int(self.fps * queue_seconds)))
        self.dropped = 0  # frames dropped because the consumer fell more than the queue behind
        self._reader: threading.Thread | None = None

    def _read_loop(self) -> None:
        failures = 0
        while not self.closed:
            ok, bgr = self._cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                failures += 1
                if failures > self.retries:
                    self._put(("fail", f"{self.description}: the camera stopped delivering frames "
                                       f"({failures} failed reads in a row); check the cable/device and restart"))
                    return
                if self.wait(self.retry_delay * failures):
                    return
                continue
            failures = 0
            self._put(("frame", bgr, now))

    def _put(self, item: tuple) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # keep the newest frames: the oldest is the one to lose
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _units(self) -> Iterator[Unit]:
        self._reader = threading.Thread(target=self._read_loop, name=f"webcam-{self.stream_id}", daemon=True)
        self._reader.start()
        t0: float | None = None
        last_pts = -1.0
        index = 0
        last_arrival = time.monotonic()
        while not self.closed:
            try:
                item = self._queue.get(timeout=min(0.1, self.read_timeout))
            except queue.Empty:
                waited = time.monotonic() - last_arrival
                if waited >= self.read_timeout:
                    yield self.event("error", last_pts if index else None,
                                     message=f"{self.description}: no frame for {waited:.1f} s; "
                                             "is the camera in use by another program?")
                    return
                continue
            if item[0] == "fail":
                yield self.event("error", last_pts if index else None, message=item[1])
                return
            _, bgr, captured = item
            last_arrival = time.monotonic()
            if t0 is None:
                t0 = captured
            pts = max(captured - t0, last_pts + 1e-6)
            last_pts = pts
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else np.repeat(bgr[..., None], 3, axis=2)
            yield VideoFrame(image=rgb, pts=pts, capture_time=captured, index=index, stream_id=self.stream_id)
            index += 1

    def _release(self) -> None:
        self.close()
        reader = self._reader
        if reader is not None:
            reader.join(timeout=self.read_timeout)
        if reader is None or not reader.is_alive():
            self._cap.release()  # never release under a read that is still running


def _open_capture(device: int | str, timeout: float, name: str) -> cv2.VideoCapture:
    """Open the capture in a helper thread so a stuck driver cannot block for ever."""
    result: list[cv2.VideoCapture] = []
    opener = threading.Thread(target=lambda: result.append(cv2.VideoCapture(device)), daemon=True)
    opener.start()
    opener.join(timeout)
    if not result:
        raise SalstreamError(f"{name}: the camera did not open within {timeout:g} s; check that it is "
                             "connected and not used by another program")
    cap = result[0]
    if not cap.isOpened():
        cap.release()
        hint = ("no camera at that index (list them with `v4l2-ctl --list-devices`); "
                "try another index or use a file/URL source") if isinstance(device, int) else "OpenCV cannot open it"
        raise SalstreamError(f"{name}: cannot open: {hint}")
    return cap
