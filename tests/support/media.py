"""Generate short media files whose content is known exactly, to check decoding and timing.

The clip is dark grey; listed *flash* frames are white, and the soundtrack has a tone
burst starting exactly at each flash frame's display time (silence elsewhere). A block in
the top-left corner encodes the frame index as a grey level, so reordering is visible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from salstream.streamer.live.units import AudioChunk, VideoFrame

DARK, BRIGHT = 40, 235


@dataclass
class ClipTruth:
    path: Path
    fps: int
    n_frames: int
    size: tuple[int, int]           # (width, height)
    flash_frames: tuple[int, ...]
    audio_rate: int | None           # None: no audio track
    burst_seconds: float
    tone_hz: float
    duration: float = field(init=False)

    def __post_init__(self) -> None:
        self.duration = self.n_frames / self.fps

    def flash_times(self) -> list[float]:
        return [i / self.fps for i in self.flash_frames]


def index_level(i: int) -> int:
    """Grey level of the corner block of frame ``i`` (cycles every 24 frames)."""
    return 20 + (i % 24) * 9


def frame_index_from_image(image: np.ndarray) -> int:
    """Inverse of :func:`index_level` modulo 24 (reads the corner block's mean)."""
    h, w = image.shape[:2]
    level = float(image[2:h // 4 - 2, 2:w // 4 - 2].mean())
    return int(round((level - 20) / 9)) % 24


def render_frame(i: int, width: int, height: int, flash: bool) -> np.ndarray:
    img = np.full((height, width, 3), BRIGHT if flash else DARK, np.uint8)
    img[: height // 4, : width // 4] = index_level(i)
    return img


def tone_bursts(truth: ClipTruth, rate: int) -> np.ndarray:
    n = int(round(truth.duration * rate))
    sig = np.zeros(n, np.float32)
    burst = int(round(truth.burst_seconds * rate))
    t = np.arange(burst) / rate
    tone = (0.5 * np.sin(2 * np.pi * truth.tone_hz * t)).astype(np.float32)
    for start_t in truth.flash_times():
        s = int(round(start_t * rate))
        e = min(n, s + burst)
        sig[s:e] = tone[: e - s]
    return sig


def write_test_clip(path: str | Path, *, seconds: float = 2.0, fps: int = 30, size: tuple[int, int] = (160, 120),
                    audio_rate: int | None = 48000, flash_frames: tuple[int, ...] | None = None,
                    burst_seconds: float = 0.08, tone_hz: float = 1000.0, video_codec: str = "libx264",
                    audio_codec: str = "aac", container_format: str | None = None,
                    audio_seconds: float | None = None) -> ClipTruth:
    """Write an H.264 (+ AAC unless ``audio_rate`` is None) clip and return what is in it.

    ``audio_seconds`` shorter than ``seconds`` makes the soundtrack stop early.
    """
    path = Path(path)
    n_frames = int(round(seconds * fps))
    if flash_frames is None:
        flash_frames = tuple(range(fps // 2, n_frames - fps // 4, max(1, fps // 2)))
    truth = ClipTruth(path=path, fps=fps, n_frames=n_frames, size=size, flash_frames=tuple(flash_frames),
                      audio_rate=audio_rate, burst_seconds=burst_seconds, tone_hz=tone_hz)
    width, height = size
    # moov first: the file can then be read over HTTP without seeking to its end.
    opts = {"movflags": "+faststart"} if container_format is None and path.suffix in (".mp4", ".mov") else {}
    out = av.open(str(path), "w", format=container_format, options=opts)
    vs = out.add_stream(video_codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    if video_codec == "libx264":
        # B-frames on purpose: decode order differs from display order, as in real files.
        vs.options = {"preset": "veryfast", "g": str(fps), "bf": "2", "crf": "18"}
    astream = None
    if audio_rate is not None:
        astream = out.add_stream(audio_codec, rate=audio_rate, layout="mono")
        samples = tone_bursts(truth, audio_rate)
        if audio_seconds is not None:
            samples = samples[: int(round(audio_seconds * audio_rate))]
    flashes = set(truth.flash_frames)
    tb = Fraction(1, fps)
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(render_frame(i, width, height, i in flashes), format="rgb24")
        frame.pts, frame.time_base = i, tb
        for pkt in vs.encode(frame):
            out.mux(pkt)
    for pkt in vs.encode(None):
        out.mux(pkt)
    if astream is not None:
        block = 1024
        fmt = astream.codec_context.format.name if astream.codec_context.format else "fltp"
        for s in range(0, len(samples), block):
            chunk = samples[s:s + block]
            if fmt.startswith("s16"):
                arr = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)[None, :]
            else:
                arr = chunk[None, :]
            af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
            af.sample_rate, af.pts, af.time_base = audio_rate, s, Fraction(1, audio_rate)
            for pkt in astream.encode(af):
                out.mux(pkt)
        for pkt in astream.encode(None):
            out.mux(pkt)
    out.close()
    return truth


def burst_onsets(samples: np.ndarray, rate: int, threshold: float = 0.25, min_gap: float = 0.15) -> list[float]:
    """Times (s, from sample 0) where the signal first exceeds ``threshold`` after silence."""
    idx = np.flatnonzero(np.abs(samples) > threshold)
    onsets: list[float] = []
    last = -np.inf
    for i in idx:
        if i - last > min_gap * rate:
            onsets.append(i / rate)
        last = i
    return onsets


def collect(source, limit_s: float = 30.0):
    """Iterate a source to its end: (frames, audio chunks, events, all units in order)."""
    frames, chunks, events = [], [], []
    order = []
    deadline = time.monotonic() + limit_s
    for unit in source:
        order.append(unit)
        if isinstance(unit, VideoFrame):
            frames.append(unit)
        elif isinstance(unit, AudioChunk):
            chunks.append(unit)
        else:
            events.append(unit)
        assert time.monotonic() < deadline, "source did not finish in time"
    return frames, chunks, events, order
