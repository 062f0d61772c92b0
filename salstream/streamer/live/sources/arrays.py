"""Frames (and a waveform) already in memory, as a live source: the Python API's numpy input.

The frames go through the same pipeline as a file's: frame ``i`` has PTS ``i / fps``, and
the audio that covers its display interval arrives with it. The waveform is resampled to
the features' rate by the same resampler the file sources use (FFmpeg's, through PyAV);
several channels are mixed down. When the waveform ends before the frames the stream
reports ``audio_lost`` and goes on video-only, like a file whose audio track ends early.
"""
from __future__ import annotations

import time
from typing import Iterator, Optional, Sequence, Union

import av
import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.live.sources.base import AudioClock, Pacer, Source, Unit
from salstream.streamer.live.units import VideoFrame

Frames = Union[np.ndarray, Sequence[np.ndarray]]


class ArraySource(Source):
    """``frames``: ``(N, H, W, 3)`` uint8 RGB (an array, or a sequence of ``(H, W, 3)`` arrays).
    ``audio``: optional waveform, ``(samples,)`` or ``(samples, channels)``, float in [-1, 1]
    or int16 PCM, at ``sample_rate``. ``paced``: release frames at ``fps`` like a camera
    (default: as fast as the pipeline takes them).
    """

    def __init__(self, frames: Frames, fps: float = 30.0, audio: Optional[np.ndarray] = None,
                 sample_rate: int = 16000, *, stream_id: str = "0", paced: bool = False, audio_rate: int = 16000):
        if not isinstance(fps, (int, float)) or not 1.0 <= float(fps) <= 480.0:
            raise SalstreamError(f"fps {fps!r}: give the frames' rate in frames per second (1–480), e.g. fps=30")
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise SalstreamError(f"frames of shape {frames.shape}: expected (N, H, W, 3) uint8 RGB "
                                 "(stack single frames with np.stack)")
        if len(frames) == 0:
            raise SalstreamError("frames: no frames given; pass at least one (H, W, 3) uint8 RGB frame")
        _check_frame(frames[0], "frames[0]")     # a wrong layout fails before any model work
        self.frames = frames
        samples = None if audio is None else _mono_16k(audio, sample_rate, audio_rate)
        super().__init__(stream_id, fps=float(fps), has_audio=samples is not None and samples.size > 0,
                         sample_rate=audio_rate, description=f"{len(frames)} frames in memory"
                         + (f" with {len(audio) / sample_rate:.2f} s of audio" if audio is not None else ""))
        self.paced = bool(paced)
        self._samples = samples
        self.audio_clock = AudioClock(self, audio_rate)

    def _units(self) -> Iterator[Unit]:
        pacer = Pacer(self)
        audio_ended = False
        for i, image in enumerate(self.frames):
            if self.closed:
                return
            pts = i / self.fps
            if self.paced and pacer.release_at(pts):
                return
            now = time.monotonic()
            if self._samples is not None and not audio_ended:
                a, b = round(i * self.sample_rate / self.fps), round((i + 1) * self.sample_rate / self.fps)
                if a >= self._samples.size:
                    audio_ended = True
                    yield self.event("audio_lost", pts, reason="the waveform ended before the frames")
                else:
                    chunk = self.audio_clock.chunk(self._samples[a:b], a / self.sample_rate, now)
                    if chunk is not None:
                        yield chunk
            yield VideoFrame(image=_check_frame(image, f"frames[{i}]"), pts=pts, capture_time=now, index=i,
                             stream_id=self.stream_id)


def _check_frame(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise SalstreamError(f"{name} has shape {image.shape}: expected (H, W, 3) RGB")
    if image.dtype != np.uint8:
        raise SalstreamError(f"{name} has dtype {image.dtype}: expected uint8 0–255 RGB "
                             "(for floats in [0, 1]: (frames * 255).round().astype(np.uint8))")
    return np.ascontiguousarray(image)


def _mono_16k(audio: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """The waveform as mono float32 at ``out_rate``, resampled by FFmpeg (as file audio is)."""
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] > 8:
        raise SalstreamError(f"audio of shape {np.shape(audio)}: expected (samples,) or (samples, channels)")
    if not isinstance(rate, (int, np.integer)) or not 1000 <= int(rate) <= 384000:
        raise SalstreamError(f"sample_rate {rate!r}: give the waveform's rate in Hz, e.g. sample_rate=48000")
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif not np.issubdtype(x.dtype, np.floating):
        raise SalstreamError(f"audio of dtype {x.dtype}: expected float samples in [-1, 1] or int16 PCM")
    x = np.ascontiguousarray(np.clip(x, -1.0, 1.0).T, dtype=np.float32)     # (channels, samples), planar
    if x.shape[1] == 0:
        return np.zeros(0, np.float32)
    layout = {1: "mono", 2: "stereo"}.get(x.shape[0], f"{x.shape[0]}c")
    frame = av.AudioFrame.from_ndarray(x, format="fltp", layout=layout)
    frame.sample_rate, frame.pts = int(rate), 0
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=int(out_rate))
    out = [f.to_ndarray()[0] for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
