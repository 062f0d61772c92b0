"""Frames wait for their map: the one pairing of a stream's frames with maps that arrive later.

Used by everything that shows or encodes frames with their maps (the overlay recording,
the saliency-guided encoder, the viewer). Maps are computed in frame order, possibly
skipping frames (latest wins), and arrive after their frames.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, Optional, TypeVar

import numpy as np

from salstream.errors import SalstreamError

F = TypeVar("F")


class FrameMapAligner(Generic[F]):
    """Pairs frames with maps that arrive later, within a bounded delay.

    A frame is released once a map for it *or a later frame* has arrived (maps come in
    frame order, so no better one can follow), or once more than ``max_delay`` frames
    wait (nothing may stall when inference falls behind). A released frame gets the map
    of the nearest frame index at or before it when one is known (sample and hold: what a
    live viewer saw), else the nearest later one, else ``None``. ``index`` tells a
    frame's index (default: its ``index`` attribute).
    """

    def __init__(self, max_delay: int = 15, keep_maps: int = 64,
                 index: Callable[[F], int] = lambda f: f.index):  # type: ignore[attr-defined]
        if max_delay < 0:
            raise SalstreamError(f"max delay {max_delay}: must be ≥ 0 frames")
        self.max_delay = int(max_delay)
        self._index = index
        self._frames: deque[F] = deque()
        self._maps: dict[int, np.ndarray] = {}
        self._keep = int(keep_maps)
        self._newest_map = -1
        self.late_frames = 0   # released without their own map (delay bound hit or map skipped)

    def add_frame(self, frame: F) -> list[tuple[F, Optional[np.ndarray]]]:
        self._frames.append(frame)
        return self._release()

    def add_map(self, frame_index: int, saliency: np.ndarray) -> list[tuple[F, Optional[np.ndarray]]]:
        self._maps[int(frame_index)] = saliency
        self._newest_map = max(self._newest_map, int(frame_index))
        if len(self._maps) > self._keep:
            for k in sorted(self._maps)[: len(self._maps) - self._keep]:
                del self._maps[k]
        return self._release()

    def reset(self) -> None:
        """Forget the maps (after a gap the frame indices of a stream may start over)."""
        self._maps.clear()
        self._newest_map = -1

    def flush(self) -> list[tuple[F, Optional[np.ndarray]]]:
        out = []
        while self._frames:
            out.append(self._pop())
        return out

    @property
    def pending(self) -> int:
        return len(self._frames)

    def _release(self) -> list[tuple[F, Optional[np.ndarray]]]:
        out = []
        while self._frames and (self._index(self._frames[0]) <= self._newest_map
                                or len(self._frames) > self.max_delay):
            out.append(self._pop())
        return out

    def _pop(self) -> tuple[F, Optional[np.ndarray]]:
        frame = self._frames.popleft()
        i = self._index(frame)
        if i in self._maps:
            return frame, self._maps[i]
        self.late_frames += 1
        before = [k for k in self._maps if k <= i]
        if before:
            return frame, self._maps[max(before)]
        if self._maps:
            return frame, self._maps[min(self._maps)]
        return frame, None


class PairedConsumer:
    """A pipeline consumer that pairs one stream's frames with their maps in its own thread.

    The pipeline's threads only enqueue (never wait on encoding); the worker hands each
    frame with its map to :meth:`write` in frame order, audio chunks to
    :meth:`write_audio`, and calls :meth:`on_gap` after a source outage. ``lossless``:
    producers wait for queue space (an encode that must hold every frame); otherwise a
    full queue drops the item and counts it in ``dropped`` (a live recording must never
    slow the maps). Subclasses implement ``write`` and ``finish``.
    """

    name = "consumer"

    def __init__(self, stream_id: str = "0", *, max_delay: int = 90, lossless: bool = False,
                 queue_size: int = 512):
        import queue
        self.stream_id = str(stream_id)
        self.aligner: FrameMapAligner = FrameMapAligner(max_delay=max_delay)
        self.lossless = lossless
        self._q: "queue.Queue[tuple]" = queue.Queue(maxsize=queue_size)
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        self.frames_in = 0
        self.maps_in = 0
        self.dropped = 0
        self.cpu_seconds = 0.0      # thread time of this consumer's worker (pairing and writing)

    # ------------------------------------------------------------------ pipeline side
    def start(self, sources=(), publisher=None) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"salstream-{self.name}", daemon=True)
            self._thread.start()

    def on_unit(self, unit) -> None:
        from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame
        if getattr(unit, "stream_id", None) != self.stream_id:
            return
        if isinstance(unit, VideoFrame):
            self._put(("frame", unit))
        elif isinstance(unit, AudioChunk):
            self._put(("audio", unit))
        elif isinstance(unit, StreamEvent) and unit.kind == "gap":
            self._put(("gap",))

    def on_map(self, header, saliency: np.ndarray) -> None:
        if header.stream == self.stream_id:
            self.add_map(header.frame_index, saliency)

    def add_map(self, frame_index: int, saliency: np.ndarray) -> None:
        self._put(("map", int(frame_index), np.asarray(saliency, np.float32)))

    def close(self, failed: bool = False) -> None:
        """Pair and write what is still held back, then :meth:`finish`; re-raises a worker error."""
        self.start()
        self._q.put(("end", failed))
        self._thread.join()
        if self.error is not None:
            raise self.error

    def summary(self) -> list[str]:
        return []

    def _put(self, item: tuple) -> None:
        import queue
        self.start()
        if self.lossless:
            self._q.put(item)
            return
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        failed = ended = False
        start = time.thread_time()
        try:
            while True:
                item = self._q.get()
                kind = item[0]
                if kind == "frame":
                    self.frames_in += 1
                    self._write(self.aligner.add_frame(item[1]))
                elif kind == "map":
                    self.maps_in += 1
                    self._write(self.aligner.add_map(item[1], item[2]))
                elif kind == "audio":
                    self.write_audio(item[1])
                elif kind == "gap":
                    self._write(self.aligner.flush())
                    self.aligner.reset()
                    self.on_gap()
                else:
                    failed, ended = item[1], True
                    break
            self._write(self.aligner.flush())
        except BaseException as exc:  # surfaced by close()
            self.error = exc
            while not ended:              # keep draining so producers never block on a dead worker
                ended = self._q.get()[0] == "end"
        finally:
            try:
                self.finish(failed or self.error is not None)
            except BaseException as exc:
                self.error = self.error or exc
            self.cpu_seconds = time.thread_time() - start

    def _write(self, pairs: list) -> None:
        for frame, saliency in pairs:
            self.write(frame, saliency)

    # ------------------------------------------------------------------ for subclasses
    def write(self, frame, saliency: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def write_audio(self, chunk) -> None:
        """Audio of the stream, in order (default: ignored)."""

    def on_gap(self) -> None:
        """The source had an outage; state tied to the old frames is stale (default: nothing)."""

    def finish(self, failed: bool) -> None:
        """Called once in the worker after the last write."""
