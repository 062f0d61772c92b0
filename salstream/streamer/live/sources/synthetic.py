"""``synthetic[:SEED]``: the training set's generated audio-visual scene as an endless live feed.

The clip (:class:`diffsal.datasets.synthetic.SyntheticClip`) is looped: frame ``i`` of the
feed shows clip frame ``i mod n_frames``; the audio loops with the same period, so
picture and sound stay in sync across the seam.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from salstream.diffsal.datasets.synthetic import SyntheticClip
from salstream.errors import SalstreamError
from salstream.streamer.live.sources.base import AudioClock, Pacer, Source, Unit
from salstream.streamer.live.units import VideoFrame


class SyntheticSource(Source):
    def __init__(self, seed: int = 0, *, stream_id: str = "0", paced: bool = True, sample_rate: int = 16000,
                 width: int = 384, height: int = 224, fps: float = 30.0, n_frames: int = 300,
                 max_frames: int | None = None, with_audio: bool = True):
        try:
            self.clip = SyntheticClip(seed, width=width, height=height, fps=fps, sample_rate=sample_rate,
                                      n_frames=n_frames)
        except ValueError as exc:
            raise SalstreamError(f"synthetic source: {exc}") from exc
        super().__init__(stream_id, fps=fps, has_audio=with_audio, sample_rate=sample_rate,
                         description=f"synthetic:{seed}")
        self.paced = bool(paced)
        self.max_frames = max_frames  # None: endless
        # One loop of audio, rendered once; its length is the video loop's exact duration in samples.
        self._loop_audio = self.clip.audio_between(0.0, n_frames / fps) if with_audio else None
        self.audio_clock = AudioClock(self, sample_rate)

    def _sample_at(self, i: int) -> int:
        """First audio sample belonging to feed frame ``i`` (exact integer grid)."""
        return int(round(i * self.sample_rate / self.fps))

    def _units(self) -> Iterator[Unit]:
        pacer = Pacer(self)
        n = self.clip.n_frames
        i = 0
        while not self.closed and (self.max_frames is None or i < self.max_frames):
            pts = i / self.fps
            image = self.clip.frame(i % n)
            if self.paced and pacer.release_at(pts):
                return
            now = time.monotonic()
            # The audio covering this frame's display interval arrives with it, like a capture card.
            if self._loop_audio is not None:
                a, b = self._sample_at(i), self._sample_at(i + 1)
                idx = np.arange(a, b) % len(self._loop_audio)
                chunk = self.audio_clock.chunk(self._loop_audio[idx], a / self.sample_rate, now)
                if chunk is not None:
                    yield chunk
            yield VideoFrame(image=image, pts=pts, capture_time=now, index=i, stream_id=self.stream_id)
            i += 1
