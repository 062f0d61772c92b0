"""Window assembly: per-stream ring buffers of preprocessed frames and audio samples.

:class:`WindowAssembler` is fed the units of one source in capture order
(:meth:`WindowAssembler.push`) and returns the model windows that became ready.

Video
    Each frame is preprocessed once on arrival (``diffsal.preprocess.preprocess_frame``)
    and kept in a ring of ``(frames - 1) * frame_stride + 1`` frames plus slack. A window
    holds ``cfg.frames`` frames ``frame_stride`` apart; its target (the frame its map
    belongs to) is window frame ``cfg.target_index``: the newest for ``lite`` (causal),
    frame 8 of 16 for ``full`` (7 frames of look-ahead, so the window is due when the
    7th frame after the target arrives). A window is emitted for every target whose
    index is a multiple of ``hop``. At the start of a stream the frames before the first
    one are filled with the first frame (``flags["warmup"]``) so maps start at once.

Audio (16 kHz mono, addressed by ``sample_index``; by the source contract the sample
that belongs to a frame with PTS ``p`` is ``round(p * 16000)``)
    ``lite``: the ``n_slices`` newest slices of the causal grid of :mod:`diffsal.audio`
    complete at the target frame's PTS (so the newest slice ends within one slice hop,
    0.11 s, of the frame). Each slice's log-mel is computed once and reused by every
    later window. ``full``: the spec's 1.6 s buffer centred half a frame before the
    target with real audio only inside the window's 16 / fps seconds.

Audio lag
    A window whose audio has not arrived waits at most ``audio_wait`` seconds (of the
    monotonic clock, from the moment it became due); then it is emitted video-only with
    ``flags["audio_lagging"]``. Windows go back to AV as soon as their audio is there.
    Once no audio at all has arrived for ``audio_stall`` seconds while windows fall back
    (a soundtrack that stopped), new windows stop waiting and go video-only at once, so
    map latency does not carry the wait; the first audio to arrive ends that.
    Waiting windows are released by the next unit that arrives (a frame or audio chunk
    every few tens of ms on a live source) or by :meth:`WindowAssembler.poll`. A source
    without audio (``has_audio=False``) or after ``audio_lost`` gives video-only windows
    without waiting.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from salstream.diffsal import audio as afeat
from salstream.diffsal.config import ModelConfig
from salstream.errors import SalstreamError
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame

log = logging.getLogger("salstream.buffer")

AUDIO_RATE = afeat.SAMPLE_RATE
MODE_CHOICES = ("auto", "video", "audio")


@dataclass
class Window:
    """One model input: the frames (preprocessed), the audio, and the target frame's identity."""
    stream_id: str
    target_index: int
    target_pts: float
    target_capture: float               # monotonic time the target frame was captured
    image: np.ndarray                   # target frame, RGB uint8 (for overlays / frame previews)
    frame_indices: list[int]            # source frame index of each window frame (oldest first)
    frame_pts: list[float]
    frames: list[torch.Tensor]          # (3, H, W) each, preprocessed once on arrival
    mode: str                           # "av" | "video" | "audio"
    slice_indices: Optional[list[int]] = None      # lite: grid slice per audio position
    audio: Optional[list[torch.Tensor] | torch.Tensor] = None  # lite: (1, h, w) per slice; full: (1, S, h, w)
    audio_span: Optional[tuple[int, int]] = None   # stream samples [start, end) the audio covers
    audio_clip: Optional[tuple[int, int]] = field(default=None, repr=False)  # full: (centre, length) in samples
    due_time: float = 0.0               # monotonic time all its frames had arrived
    ready_time: float = 0.0             # monotonic time it was emitted (after any audio wait)
    flags: dict = field(default_factory=dict)
    # Every source outage of this stream before the window's frames (oldest first), each
    # {"from_pts": last PTS before it, "to_pts": first PTS after it, "reason": …}: the
    # publisher marks the first map it sends after one (a window may be dropped).
    gaps: tuple = ()

    @property
    def audio_end_pts(self) -> Optional[float]:
        return None if self.audio_span is None else self.audio_span[1] / AUDIO_RATE


@dataclass
class _Frame:
    index: int
    pts: float
    capture: float
    tensor: torch.Tensor
    image: np.ndarray


class AudioRing:
    """Fixed-capacity ring of 16 kHz samples addressed by stream sample index.

    Samples never received (before the first chunk, in holes, or already overwritten)
    read as zeros: digital silence, like the padding used in training.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, np.float32)
        self.first: Optional[int] = None     # first sample index ever written
        self.end = 0                          # one past the newest sample written

    def write(self, start: int, samples: np.ndarray) -> None:
        n = int(samples.size)
        if n == 0:
            return
        if self.first is None:
            self.first = start
            self.end = start
        if start > self.end:                  # a hole: silence, not stale ring content
            self._put(self.end, np.zeros(min(start - self.end, self.capacity), np.float32))
        if n > self.capacity:
            samples, start = samples[-self.capacity:], start + n - self.capacity
        self._put(start, samples)
        self.end = max(self.end, start + samples.size)

    def _put(self, start: int, samples: np.ndarray) -> None:
        i = start % self.capacity
        k = min(samples.size, self.capacity - i)
        self._buf[i:i + k] = samples[:k]
        if k < samples.size:
            self._buf[:samples.size - k] = samples[k:]

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)``; anything not held is zero."""
        out = np.zeros(end - start, np.float32)
        if self.first is None:
            return out
        lo = max(start, self.first, self.end - self.capacity)
        hi = min(end, self.end)
        for s in range(lo, hi, self.capacity):   # at most two pieces because of the wrap
            e = min(hi, s + self.capacity)
            i = s % self.capacity
            k = min(e - s, self.capacity - i)
            out[s - start:s - start + k] = self._buf[i:i + k]
            if k < e - s:
                out[s - start + k:e - start] = self._buf[:e - s - k]
        return out


class WindowAssembler:
    """Turns one stream's units into model windows (see the module docstring).

    ``hop``: a window for every ``hop``-th target frame. ``audio_wait``: seconds a window
    may wait for its audio. ``mode``: ``"auto"`` (AV when the stream has audio),
    ``"video"`` or ``"audio"`` (forced). ``preprocess``: ``(rgb, cfg) -> (3, H, W)``,
    by default ``diffsal.preprocess.preprocess_frame``. ``clock``: monotonic seconds.
    ``stall_after``: seconds without a frame (by capture time) after which the next frame
    records a gap (``reason`` "stall: …") even though the source never disconnected
    (``None``: off, e.g. for unpaced offline reads).
    """

    def __init__(self, cfg: ModelConfig, stream_id: str = "0", *, hop: int = 1, has_audio: bool = True,
                 audio_wait: float = 0.1, mode: str = "auto",
                 preprocess: Optional[Callable[[np.ndarray, ModelConfig], torch.Tensor]] = None,
                 clock: Callable[[], float] = time.monotonic, audio_seconds: float = 8.0,
                 audio_stall: float = 1.0, stall_after: Optional[float] = None):
        if hop < 1:
            raise SalstreamError(f"--hop {hop}: must be >= 1 (1 = a map for every frame)")
        if mode not in MODE_CHOICES:
            raise SalstreamError(f"mode {mode!r}: choose one of {', '.join(MODE_CHOICES)}")
        if mode == "audio" and not has_audio:
            raise SalstreamError(f"stream {stream_id}: audio-only mode needs a source with audio "
                                 "(add --mic or use a source with an audio track)")
        if cfg.audio.sample_rate != AUDIO_RATE:
            raise SalstreamError(f"model audio rate {cfg.audio.sample_rate} Hz: the stream delivers {AUDIO_RATE} Hz")
        if preprocess is None:
            from salstream.diffsal.preprocess import preprocess_frame as preprocess
        self.cfg = cfg
        self.stream_id = stream_id
        self.hop = int(hop)
        self.has_audio = bool(has_audio)
        self.audio_wait = float(audio_wait)
        self.audio_stall = float(audio_stall)
        self.mode = mode
        self._preprocess = preprocess
        self._clock = clock
        self.span = (cfg.frames - 1) * cfg.frame_stride       # frames between oldest and newest
        self.lookahead = (cfg.frames - 1 - cfg.target_index) * cfg.frame_stride
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._capacity = self.span + 1 + 2 * max(self.hop, cfg.frame_stride)
        self._first_index: Optional[int] = None
        self._ring = AudioRing(int(audio_seconds * AUDIO_RATE))
        self._slices: OrderedDict[int, torch.Tensor] = OrderedDict()   # grid slice -> log-mel (1, h, w)
        self._audio_live = self.has_audio
        self._pending: list[Window] = []
        self.lagging = False          # last emitted window fell back to video-only because audio lagged
        self._lag_since = 0.0         # clock when lagging began
        self._last_audio = -float("inf")   # clock when the last audio chunk arrived
        self.gaps: tuple = ()         # outages so far (see Window.gaps); replaced, never mutated
        self._open_gap: Optional[dict] = None   # reported by the source, waiting for its first frame
        self.stall_after = stall_after
        self._last_frame: Optional[tuple[float, float]] = None   # (pts, capture time) of the newest frame
        self.stalls = 0
        self.emitted = 0
        self.lagged_windows = 0
        self.ended = False

    # ------------------------------------------------------------------ input
    def push(self, unit: VideoFrame | AudioChunk | StreamEvent) -> list[Window]:
        """Take one unit; return the windows it made ready (oldest first)."""
        if isinstance(unit, VideoFrame):
            self._add_frame(unit)
        elif isinstance(unit, AudioChunk):
            self._add_audio(unit)
        elif isinstance(unit, StreamEvent):
            self._event(unit)
        else:
            raise TypeError(f"unexpected unit {type(unit).__name__}")
        return self.poll()

    def poll(self) -> list[Window]:
        """Release waiting windows whose audio arrived or whose wait bound passed."""
        out: list[Window] = []
        now = self._clock()
        while self._pending:
            w = self._pending[0]
            if w.mode == "av" and not self._audio_ready(w):
                if (self._audio_live and not self.ended and now - w.due_time < self.audio_wait
                        and not self._audio_stalled(now)):
                    break                          # keep order: later windows wait behind it
                self._fall_back(w)
            else:
                self._fill_audio(w)
            self._pending.pop(0)
            w.ready_time = self._clock()
            self.emitted += 1
            out.append(w)
        return out

    def _add_frame(self, f: VideoFrame) -> None:
        last, self._last_frame = self._last_frame, (float(f.pts), float(f.capture_time))
        if self._open_gap is not None:        # the first frame after an outage closes its PTS range
            self.gaps = self.gaps + (dict(self._open_gap, to_pts=float(f.pts)),)
            self._open_gap = None
        elif (self.stall_after is not None and last is not None
              and f.capture_time - last[1] > self.stall_after):
            # No disconnect, but no frame either (a server or camera that hung): still an outage.
            self.stalls += 1
            self.gaps = self.gaps + ({"from_pts": last[0], "to_pts": float(f.pts),
                                      "reason": f"stall: no frame for {f.capture_time - last[1]:.1f} s"},)
        if self._first_index is None:
            self._first_index = f.index
        tensor = self._preprocess(f.image, self.cfg)
        self._frames[f.index] = _Frame(f.index, float(f.pts), float(f.capture_time), tensor, f.image)
        while len(self._frames) > self._capacity:
            self._frames.popitem(last=False)
        target = f.index - self.lookahead
        if target >= self._first_index and target % self.hop == 0 and target in self._frames:
            self._pending.append(self._make_window(target))

    def _audio_stalled(self, now: float) -> bool:
        return self.lagging and now - max(self._lag_since, self._last_audio) >= self.audio_stall

    def _add_audio(self, c: AudioChunk) -> None:
        if c.sample_rate != AUDIO_RATE:
            raise SalstreamError(f"stream {self.stream_id}: audio chunk at {c.sample_rate} Hz; sources must "
                                 f"resample to {AUDIO_RATE} Hz")
        self._ring.write(int(c.sample_index), np.asarray(c.samples, np.float32).reshape(-1))
        self._last_audio = self._clock()

    def _event(self, e: StreamEvent) -> None:
        if e.kind == "audio_lost":
            self._audio_live = False
        elif e.kind == "audio_back":
            self._audio_live = True
        elif e.kind == "gap":
            # A reconnect: history from before it must not leak into new windows.
            if self._open_gap is None:
                self._open_gap = {"from_pts": e.detail.get("from_pts", e.pts), "reason": e.detail.get("reason")}
            self._frames.clear()
            self._slices.clear()
            self._first_index = None
        elif e.kind == "end":
            self.ended = True

    # ------------------------------------------------------------------ windows
    def _mode_for_new_window(self) -> str:
        if self.mode == "video" or not self._audio_live:
            return "video"
        return "audio" if self.mode == "audio" else "av"

    def _make_window(self, target: int) -> Window:
        cfg = self.cfg
        tf = self._frames[target]
        indices, frames, pts = [], [], []
        warmup = False
        oldest = next(iter(self._frames))
        for j in range(cfg.frames):
            want = target + (j - cfg.target_index) * cfg.frame_stride
            idx = want
            if idx < oldest:                       # before the stream (or ring) began: repeat the first
                idx, warmup = oldest, True
            while idx not in self._frames:         # a skipped index: nearest earlier frame
                idx -= 1
            fr = self._frames[idx]
            indices.append(idx)
            frames.append(fr.tensor)
            pts.append(fr.pts)
        now = self._clock()
        w = Window(stream_id=self.stream_id, target_index=target, target_pts=tf.pts, target_capture=tf.capture,
                   image=tf.image, frame_indices=indices, frame_pts=pts, frames=frames,
                   mode=self._mode_for_new_window(), due_time=now, gaps=self.gaps)
        if warmup:
            w.flags["warmup"] = True
        if w.mode == "video" and self.mode == "auto" and self.has_audio:
            w.flags["audio_lost"] = True
        if w.mode != "video":
            self._plan_audio(w)
        return w

    def _plan_audio(self, w: Window) -> None:
        cfg = self.cfg
        target_sample = int(round(w.target_pts * AUDIO_RATE))
        if cfg.per_frame_video:
            w.slice_indices = afeat.latest_slices(target_sample, cfg.audio.n_slices, cfg.audio)
            first, _ = afeat.slice_span(w.slice_indices[0], cfg.audio)
            _, last = afeat.slice_span(w.slice_indices[-1], cfg.audio)
            w.audio_span = (first, last)
        else:
            fps = self._fps_estimate()
            centre = int(round((w.target_pts - 0.5 / fps) * AUDIO_RATE))
            half = afeat.FULL_BUFFER_SAMPLES // 2
            clip = int(round(cfg.frames / fps * AUDIO_RATE))
            w.audio_span = (centre - half, centre + half)
            w.audio_clip = (centre, clip)

    def _fps_estimate(self) -> float:
        fr = list(self._frames.values())
        if len(fr) >= 2 and fr[-1].pts > fr[0].pts:
            return (fr[-1].index - fr[0].index) / (fr[-1].pts - fr[0].pts)
        return 30.0

    def _audio_ready(self, w: Window) -> bool:
        if self.cfg.per_frame_video:
            return self._ring.end >= w.audio_span[1]
        centre, clip = w.audio_clip
        return self._ring.end >= centre + (clip - clip // 2)   # the real-audio part only

    def _fall_back(self, w: Window) -> None:
        if w.mode == "audio":
            w.flags["audio_lagging"] = True   # audio-only keeps its mode: fill what is there
            self._fill_audio(w)
            return
        w.mode = "video"
        w.slice_indices = w.audio = w.audio_span = w.audio_clip = None
        w.flags["audio_lagging"] = True
        self.lagged_windows += 1
        if not self.lagging:
            self.lagging = True
            self._lag_since = self._clock()
            log.info("stream %s: audio is late; windows go video-only until it catches up", self.stream_id)

    def _fill_audio(self, w: Window) -> None:
        if w.mode == "video":
            return
        cfg = self.cfg
        if self.lagging and w.mode == "av":
            self.lagging = False
            log.info("stream %s: audio caught up; back to audio-visual windows", self.stream_id)
        if cfg.per_frame_video:
            w.audio = [self._slice(k) for k in w.slice_indices]
            self._evict_slices(w.slice_indices[0])
        else:
            centre, clip = w.audio_clip
            lo, hi = w.audio_span
            samples = self._ring.read(lo, hi)
            w.audio = afeat.full_window_slices(torch.from_numpy(samples), centre / AUDIO_RATE, clip / AUDIO_RATE,
                                               cfg.audio, start_sample=lo)

    def _slice(self, k: int) -> torch.Tensor:
        feat = self._slices.get(k)
        if feat is None:
            lo, hi = afeat.slice_span(k, self.cfg.audio)
            feat = afeat.slice_log_mel(torch.from_numpy(self._ring.read(lo, hi)), self.cfg.audio.slice_size)
            self._slices[k] = feat
        return feat

    def _evict_slices(self, oldest_needed: int) -> None:
        while self._slices and next(iter(self._slices)) < oldest_needed - 2:
            self._slices.popitem(last=False)

    @property
    def pending(self) -> int:
        return len(self._pending)
