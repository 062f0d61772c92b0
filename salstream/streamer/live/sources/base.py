"""The one interface every live input implements, plus the clock helpers they share.

A :class:`Source` is iterated once. It yields :class:`~streamer.media.VideoFrame`,
:class:`~streamer.media.AudioChunk` and :class:`~streamer.media.StreamEvent` units in
capture order and always finishes with ``StreamEvent("end")``. ``close()`` may be
called from any other thread; iteration then ends promptly (for network inputs at the
latest after the read timeout).

Timing contract (what the window assembler relies on):

* ``pts`` is in seconds on the stream's media clock, which starts near 0 (file: the
  container start; live input: its first unit). Video PTS strictly increase.
* Audio is mono float32 at ``sample_rate``. For every chunk
  ``pts == sample_index / sample_rate`` exactly, so the audio sample that belongs to a
  frame with PTS ``p`` is ``round(p * sample_rate)``. Consecutive chunks are contiguous
  (``next.sample_index == prev.sample_index + len(prev.samples)``) except right after a
  ``gap`` event, where ``sample_index`` may jump forward (never backward).
* ``capture_time`` is ``time.monotonic()`` when the unit became available (for a paced
  file: when it was released at its native rate).
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np

from salstream.redact import redact_value
from salstream.streamer.live.units import AudioChunk, StreamEvent, Unit

log = logging.getLogger("salstream.sources")



class Source(ABC):
    """Base class: holds the identity attributes and the stop flag."""

    stream_id: str
    fps: float
    has_audio: bool
    description: str

    def __init__(self, stream_id: str = "0", *, fps: float = 30.0, has_audio: bool = False,
                 description: str = "", sample_rate: int = 16000):
        self.stream_id = str(stream_id)
        self.fps = float(fps)
        self.has_audio = bool(has_audio)
        self.description = description
        self.sample_rate = int(sample_rate)
        self._stop = threading.Event()
        self._iterated = False
        self._released = False            # freed by close() before any iteration
        self._state = threading.Lock()
        self.status = "live"               # or "reconnecting" while a network source is down

    # ------------------------------------------------------------------ public API
    def __iter__(self) -> Iterator[Unit]:
        with self._state:
            if self._iterated:
                raise RuntimeError(f"{self.description or type(self).__name__}: a source can be iterated only once")
            self._iterated = True
            released = self._released
        if not released:
            try:
                yield from self._units()
            except Exception as exc:  # a source never takes the pipeline down: report, then end
                log.exception("%s: stopped by an unexpected error", self.description)
                yield self.event("error", message=f"{self.description}: {type(exc).__name__}: {exc}")
            finally:
                self._release()
        yield self.event("end")

    def close(self) -> None:
        """Ask the iteration to stop (thread-safe, returns at once).

        A source that was never iterated frees its device or connection here, since no
        iteration will (e.g. a run that failed after opening its inputs).
        """
        self._stop.set()
        with self._state:
            unused = not self._iterated and not self._released
            self._released = True if unused else self._released
        if unused:
            self._release()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description!r} stream={self.stream_id} fps={self.fps:.3f} audio={self.has_audio}>"

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _units(self) -> Iterator[Unit]:
        """Yield frames, audio chunks and events (not the final ``end``)."""

    def _release(self) -> None:  # noqa: B027 (an optional hook: most sources hold nothing to free)
        """Free devices/containers; called once when iteration stops for any reason."""

    def event(self, kind: str, pts: float | None = None, **detail: object) -> StreamEvent:
        # Events become log lines, run summaries and gap reasons on the wire: no credentials in them.
        return StreamEvent(kind=kind, pts=pts, capture_time=time.monotonic(), detail=redact_value(dict(detail)),
                           stream_id=self.stream_id)

    def wait(self, seconds: float) -> bool:
        """Sleep that ``close()`` interrupts; True when the source was closed meanwhile."""
        if seconds > 0:
            return self._stop.wait(seconds)
        return self._stop.is_set()


class Pacer:
    """Releases units at the media clock's rate, anchored at the first unit released.

    If the consumer fell behind by more than ``max_lag`` seconds the anchor moves
    forward instead of bursting to catch up: a live feed does not replay the past fast.
    """

    def __init__(self, source: Source, max_lag: float = 0.5):
        self._source = source
        self._max_lag = max_lag
        self._anchor: tuple[float, float] | None = None  # (wall, pts)
        self._newest = -float("inf")                     # largest PTS released so far

    def release_at(self, pts: float) -> bool:
        """Wait until ``pts`` is due; True when the source was closed while waiting."""
        now = time.monotonic()
        if self._anchor is None:
            self._anchor, self._newest = (now, pts), pts
            return self._source.closed
        if pts < self._newest:
            return self._source.closed  # a straggler (e.g. a flushed audio tail): never re-anchor on it
        self._newest = pts
        wall0, pts0 = self._anchor
        due = wall0 + (pts - pts0)
        if now - due > self._max_lag:
            self._anchor = (now, pts)
            return self._source.closed
        return self._source.wait(due - now)


class AudioClock:
    """Turns resampled audio blocks into contiguous :class:`AudioChunk` units.

    The first block fixes ``sample_index = round(pts * rate)``; later blocks continue the
    count, so the index never drifts. A block that starts well after the running count
    (a hole in the track) is preceded by silence; one that overlaps is trimmed.
    ``restart()`` after a reconnect lets the next block jump forward.
    """

    def __init__(self, source: Source, rate: int, tolerance: int | None = None):
        self._source = source
        self.rate = int(rate)
        self.tolerance = int(tolerance if tolerance is not None else rate // 100)  # 10 ms
        self.next_index: int | None = None

    def restart(self) -> None:
        self.next_index = None

    def chunk(self, samples: np.ndarray, pts: float | None, capture_time: float) -> AudioChunk | None:
        samples = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if pts is None:
            start = self.next_index if self.next_index is not None else 0
        else:
            start = int(round(pts * self.rate))
        if self.next_index is None:
            if start < 0:  # audio that began before the media clock's origin
                samples, start = samples[-start:], 0
        else:
            offset = start - self.next_index
            if offset > self.tolerance:
                samples = np.concatenate([np.zeros(offset, np.float32), samples])
            elif offset < -self.tolerance:
                samples = samples[-offset:]
            start = self.next_index
        if samples.size == 0:
            return None
        self.next_index = start + samples.size
        return AudioChunk(samples=samples, pts=start / self.rate, capture_time=capture_time,
                          sample_index=start, sample_rate=self.rate, stream_id=self._source.stream_id)
