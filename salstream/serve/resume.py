"""A stream taken over from a lost replica: its source reopened here, its clocks continued.

The new replica reopens the stream's source, whose media clock starts again near 0. So
that subscribers see one stream, :class:`ContinuedSource` shifts it: the first unit lands
as far after the last published map as the outage lasted (wall time), frame indices
continue the same way, and audio sample indices move by the same whole number of
samples (``pts == sample_index / rate`` stays exact). Before the first unit it reports a
``gap`` event from the last published PTS, which the window assembler turns into
``flags.gap`` and the missing PTS range on the first map after the move, as for a
reconnect of the source itself.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from salstream.streamer.live.sources.base import Source
from salstream.streamer.live.units import AudioChunk, StreamEvent, Unit, VideoFrame


@dataclass(frozen=True)
class Resume:
    """Where a moved stream left off, as its subscribers last saw it."""
    after_pts: float              # PTS of the last map published before the move
    after_index: int              # its frame index
    next_seq: int                 # the ``seq`` the next map carries
    lost_for: float               # seconds since that map went out, when the move was ordered
    reason: str = "replica lost"


class ContinuedSource(Source):
    """``inner``'s units with PTS, frame and sample indices moved to continue after ``resume``."""

    def __init__(self, inner: Source, resume: Resume):
        super().__init__(inner.stream_id, fps=inner.fps, has_audio=inner.has_audio,
                         description=inner.description, sample_rate=inner.sample_rate)
        self.inner = inner
        self.resume = resume
        self._lost_at = time.monotonic() - max(0.0, resume.lost_for)   # on this host's clock
        self._shift: Optional[float] = None      # seconds added to every PTS
        self._samples = 0                        # samples added to every sample index
        self._index: Optional[int] = None        # frames added to every frame index

    def _units(self) -> Iterator[Unit]:
        r = self.resume
        yield self.event("gap", r.after_pts, from_pts=r.after_pts, reason=r.reason)
        for unit in self.inner:
            if self.closed:
                return
            if isinstance(unit, StreamEvent) and unit.kind == "end":
                continue                                  # ours follows
            yield self._moved(unit)

    def _moved(self, unit: Unit) -> Unit:
        r = self.resume
        if self._shift is None and unit.pts is not None:
            lost = max(1.0 / self.fps, time.monotonic() - self._lost_at)
            # Whole samples, so moved audio keeps pts == sample_index / rate exactly.
            self._samples = round((r.after_pts + lost - unit.pts) * self.sample_rate)
            self._shift = self._samples / self.sample_rate
        shift = self._shift or 0.0
        if isinstance(unit, VideoFrame):
            if self._index is None:
                self._index = r.after_index + max(1, round((time.monotonic() - self._lost_at) * self.fps)) - unit.index
            return dataclasses.replace(unit, pts=unit.pts + shift, index=unit.index + self._index)
        if isinstance(unit, AudioChunk):
            return dataclasses.replace(unit, pts=(unit.sample_index + self._samples) / unit.sample_rate,
                                       sample_index=unit.sample_index + self._samples)
        detail = dict(unit.detail)
        if detail.get("from_pts") is not None:
            detail["from_pts"] = detail["from_pts"] + shift
        return dataclasses.replace(unit, pts=None if unit.pts is None else unit.pts + shift, detail=detail)

    def close(self) -> None:
        super().close()
        self.inner.close()

    def _release(self) -> None:
        self.inner.close()
