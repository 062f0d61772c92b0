"""The scheduler: two worker threads own the engine and turn windows into maps.

Two stages, side by side
    The *encode* thread takes ready windows and computes their features (video and audio
    encoders); the *denoise* thread runs the DDIM loop, post-processes and hands each map
    to ``on_result``. They overlap: while one batch denoises, the next one's new frame is
    encoded on the other core. The encode stage runs at most one batch ahead (a hand-off
    of one), so a map is never computed from a window much older than the newest.

Latest wins
    Each stream has a tiny slot (not a queue). A window that is still waiting when a
    newer one of the same stream arrives is dropped and counted, so a map is never
    older than about one compute cycle however slow the engine is. For per-frame
    profiles (``lite``) the slot keeps the newest ``frame_stride`` windows and the
    worker prefers the newest one on the same frame phase as the last window it ran
    (at most ``frame_stride - 1`` frames older): those windows share all but their new
    frames, so falling behind does not make every window re-encode 16 frames.
Feature caches (per-frame profiles)
    Video features are cached per ``(stream, frame index)`` and audio features per
    ``(stream, grid slice)`` (:class:`~salstream.diffsal.features.FeatureCache`); a window
    encodes only what no earlier window did, batched across streams. When compute
    is far behind, a window encodes at most ``max_new_frames`` new frames (the newest)
    and reuses the nearest encoded frame elsewhere, flagged ``approx_frames``: latency
    stays bounded instead of each late window re-encoding the whole window.
Batching
    Windows of different streams that are ready together go through the engine as one
    batch (up to ``max_batch``); when one is ready the worker waits at most
    ``batch_deadline`` seconds for the other active streams. Windows of different modes
    (av / video / audio) run as separate batches.
Latency
    Every map gets per-stage times in ms, measured back to back so they add up to the
    capture→(publish-start) time: ``assemble`` (target frame captured → window ready,
    incl. any audio wait), ``wait`` (slot + batching, and the hand-off between the two
    stages), ``video_encoder``, ``audio_encoder``, ``denoise`` (one entry per DDIM step),
    ``postprocess``; the publisher adds ``publish``. Encoder and step times are those of
    the whole batch. ``MapResult.cpu_ms`` holds the CPU time (thread time) of each stage.
Several draws per window (``samples`` K > 1)
    Each window's features (encoded once) are repeated K times and the K draws of every
    window in the batch go through the DDIM loop together
    (:func:`~salstream.diffsal.inference.predict_samples`); the map is their mean and
    ``MapResult.spread`` their per-pixel standard deviation, both post-processed alike.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from salstream.diffsal.features import FeatureCache, cat_batch
from salstream.diffsal.inference import MAX_SAMPLES, draw_stats, predict_samples
from salstream.diffsal.models.base import stack_time
from salstream.errors import SalstreamError
from salstream.streamer.live.assembler import Window

log = logging.getLogger("salstream.scheduler")


@dataclass
class MapResult:
    """A finished map and everything the publisher needs to describe it."""
    window: Window
    saliency: np.ndarray                 # (h, w) float32 in [0, 1]
    latency_ms: dict[str, Any]
    batch: int
    steps: int
    dropped: int                         # windows of this stream dropped so far (latest wins)
    done_time: float                     # monotonic, after post-processing
    cpu_ms: dict[str, float] = field(default_factory=dict)   # thread CPU time per stage (whole batch)
    extra: dict = field(default_factory=dict)
    spread: Optional[np.ndarray] = None  # (h, w) float32 std of the K draws (samples > 1), else None
    samples: int = 1


@dataclass
class _Encoded:
    """A batch whose features are ready, on its way from the encode stage to the denoise stage."""
    windows: list[Window]
    mode: str
    video: Any
    audio: Any
    t_start: float
    t_video: float
    t_audio: float
    cpu_ms: dict[str, float]


class Scheduler:
    """Runs windows on ``engine`` in two worker threads (encode, denoise); results go to ``on_result``.

    ``steps``: DDIM steps (default: the model's). ``seed``: the noise generator's seed,
    so a run is reproducible. ``postprocess``: ``x0 (B, 1, h, w) -> (B, h, w)`` array
    (default ``diffsal.preprocess.postprocess_map``). ``max_new_frames``: per-frame
    profiles encode at most this many new frames per window (``None``: no cap; see
    :meth:`_limit_new_frames`). ``warm_start``: a timestep (e.g. 250); each window then
    starts from its stream's previous map noised to that time and runs only the steps at
    or below it (``flags["warm_start"]``); ``None`` starts every window from pure noise.
    ``samples``: draws per window (the map is their mean, ``MapResult.spread`` their spread).
    """

    def __init__(self, engine: Any, *, steps: Optional[int] = None, max_batch: int = 4,
                 batch_deadline: float = 0.005, on_result: Optional[Callable[[MapResult], None]] = None,
                 seed: int = 0, postprocess: Optional[Callable] = None, clock: Callable[[], float] = time.monotonic,
                 max_new_frames: Optional[int] = 4, warm_start: Optional[int] = None,
                 cpu_meter: Optional[Any] = None, samples: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be in 1…{MAX_SAMPLES}, got {samples}")
        self.samples = int(samples)
        self.engine = engine
        self.cfg = engine.config
        self.steps = int(steps if steps is not None else self.cfg.default_steps)
        self.max_batch = int(max_batch)
        self.max_new_frames = int(max_new_frames) if max_new_frames else None
        self.warm_start = None if warm_start is None else int(warm_start)
        self._prev_maps: dict[str, torch.Tensor] = {}
        self.batch_deadline = float(batch_deadline)
        self.on_result = on_result
        if postprocess is None:
            from salstream.diffsal.preprocess import postprocess_map as postprocess
        self._postprocess = postprocess
        self._clock = clock
        self._gen = torch.Generator().manual_seed(int(seed))
        self._device = getattr(engine, "device", "cpu")
        self._per_frame = bool(self.cfg.per_frame_video)
        self._slot_len = self.cfg.frame_stride if self._per_frame else 1
        self._slots: dict[str, deque[Window]] = {}
        self._last_target: dict[str, int] = {}
        self._active: set[str] = set()
        self._lossless: set[str] = set()
        self._cond = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._handoff: "queue.Queue[Optional[_Encoded]]" = queue.Queue(maxsize=1)
        self.video_cache = FeatureCache(engine.encode_video)
        self.audio_cache = FeatureCache(engine.encode_audio)
        self.dropped: Counter[str] = Counter()
        self.processed: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self._frames_encoded_full = 0      # per-clip profiles encode every window's frames
        self.cpu_meter = cpu_meter          # gets each batch's CPU time per stage (``CpuMeter.add``)
        self.error: Optional[BaseException] = None

    # ------------------------------------------------------------------ producer side
    def add_stream(self, stream_id: str, lossless: bool = False) -> None:
        """Declare a stream (batching waits only for active streams).

        ``lossless``: for offline inputs read as fast as possible: :meth:`submit` then
        waits for the slot instead of dropping, so every window gets a map.
        """
        with self._cond:
            self._active.add(stream_id)
            self._slots.setdefault(stream_id, deque())
            if lossless:
                self._lossless.add(stream_id)

    def end_stream(self, stream_id: str) -> None:
        with self._cond:
            self._active.discard(stream_id)
            self._cond.notify_all()

    def submit(self, window: Window, block: bool = False) -> None:
        """Hand over a ready window (thread-safe). Latest wins: never blocks unless ``block``
        (or the stream is lossless), in which case it waits until the worker took the last one."""
        sid = window.stream_id
        with self._cond:
            slot = self._slots.setdefault(sid, deque())
            if block or sid in self._lossless:
                while slot and not self._closing and self.error is None:
                    self._cond.wait(0.1)
            if self._closing:
                return
            if len(slot) >= (1 if sid in self._lossless else self._slot_len):
                slot.popleft()
                self.dropped[sid] += 1
            slot.append(window)
            self._cond.notify_all()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Scheduler":
        self._threads = [threading.Thread(target=self._encode_loop, name="salstream-encode", daemon=True),
                         threading.Thread(target=self._denoise_loop, name="salstream-denoise", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def close(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Stop the workers; with ``drain`` the windows already waiting are still computed."""
        with self._cond:
            self._closing = True
            if not drain:
                for sid, slot in self._slots.items():
                    self.dropped[sid] += len(slot)
                    slot.clear()
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ workers
    def _ready_streams(self) -> list[str]:
        return [s for s, slot in self._slots.items() if slot]

    def _take(self) -> list[Window]:
        """Under the lock: one window per ready stream (oldest-ready first), up to max_batch."""
        ready = sorted(self._ready_streams(), key=lambda s: self._slots[s][-1].ready_time)[: self.max_batch]
        batch = []
        for sid in ready:
            slot = self._slots[sid]
            pick = slot[-1]
            last = self._last_target.get(sid)
            if last is not None and self._slot_len > 1:
                same_phase = [w for w in slot if (w.target_index - last) % self._slot_len == 0]
                if same_phase:
                    pick = same_phase[-1]
            self.dropped[sid] += len(slot) - 1
            slot.clear()
            self._last_target[sid] = pick.target_index
            batch.append(pick)
        self._cond.notify_all()         # lossless producers wait for an empty slot
        return batch

    def _next_batch(self) -> Optional[list[Window]]:
        """Wait for ready windows (and, briefly, for the other streams' to batch with); None when closed."""
        with self._cond:
            while not self._ready_streams() and not self._closing and self.error is None:
                self._cond.wait()
            if not self._ready_streams() or self.error is not None:
                return None                     # closing and nothing left, or the other stage failed
            deadline = self._clock() + self.batch_deadline
            while not self._closing:
                if len(self._ready_streams()) >= min(self.max_batch, max(1, len(self._active))):
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take()

    def _fail(self, exc: BaseException) -> None:
        """Record the first error (surfaced by the pipeline, which stops the run) and wake everyone."""
        if self.error is None:
            self.error = exc
            if isinstance(exc, SalstreamError):   # a known problem: the caller reports it in one line
                log.debug("scheduler stopped: %s", exc)
            else:
                log.exception("scheduler stopped by an error", exc_info=exc)
        with self._cond:
            self._cond.notify_all()

    def _encode_loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                by_mode: dict[str, list[Window]] = {}
                for w in batch:
                    by_mode.setdefault(w.mode, []).append(w)
                for mode, group in by_mode.items():
                    job = self._encode(group, mode)
                    while self.error is None:           # the hand-off holds one batch: wait for the denoiser
                        try:
                            self._handoff.put(job, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:
            self._fail(exc)
        finally:
            while True:                                 # always tell the denoiser there is no more
                try:
                    self._handoff.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if self.error is not None and not self._threads[1].is_alive():
                        break

    def _denoise_loop(self) -> None:
        try:
            while (job := self._handoff.get()) is not None:
                if self.error is None:
                    self._denoise(job)
        except BaseException as exc:
            self._fail(exc)
            while self._handoff.get() is not None:      # let the encode stage finish its puts
                pass

    @torch.inference_mode()
    def _encode(self, windows: list[Window], mode: str) -> _Encoded:
        c0 = time.thread_time()
        t_start = self._clock()
        v = a = None
        if mode in ("av", "video"):
            v = self._video_features(windows)
        t_video = self._clock()
        c1 = time.thread_time()
        if mode in ("av", "audio"):
            a = self._audio_features(windows)
        t_audio = self._clock()
        cpu = {"video_encoder": (c1 - c0) * 1000.0, "audio_encoder": (time.thread_time() - c1) * 1000.0}
        return _Encoded(windows, mode, v, a, t_start, t_video, t_audio, cpu)

    @torch.inference_mode()
    def _denoise(self, job: _Encoded) -> None:
        eng, cfg = self.engine, self.cfg
        windows, n = job.windows, len(job.windows)
        c0 = time.thread_time()
        t_begin = self._clock()                     # the hand-off wait ends here
        marks: list[float] = []
        warm = {}
        prev = [self._prev_maps.get(w.stream_id) for w in windows]
        if self.warm_start is not None and all(p is not None for p in prev):
            # Start from each stream's previous map re-noised to warm_start: fewer steps, steadier maps.
            warm = {"warm_start": torch.cat(prev), "warm_start_timestep": self.warm_start}
            for w in windows:
                w.flags["warm_start"] = True
        draws = predict_samples(eng, job.video, job.audio, n, self.samples, self.steps, generator=self._gen,
                                device=self._device, step_callback=lambda t, x: marks.append(self._clock()),
                                **warm)
        x0, std = draw_stats(draws)
        if self.warm_start is not None:
            for i, w in enumerate(windows):
                self._prev_maps[w.stream_id] = x0[i:i + 1].detach()
        c1 = time.thread_time()
        maps = np.asarray(self._postprocess(x0), dtype=np.float32).reshape(n, *cfg.map_size)
        spreads = None if std is None else \
            np.asarray(self._postprocess(std), dtype=np.float32).reshape(n, *cfg.map_size)
        t_post = self._clock()
        cpu = dict(job.cpu_ms, denoise=(c1 - c0) * 1000.0, postprocess=(time.thread_time() - c1) * 1000.0)
        steps_ms, prev = [], t_begin
        for m in marks:
            steps_ms.append((m - prev) * 1000.0)
            prev = m
        handoff = t_begin - job.t_audio
        self.batch_sizes[n] += 1
        if self.cpu_meter is not None:
            for stage, ms in cpu.items():
                self.cpu_meter.add(stage, ms / 1000.0)
        for i, w in enumerate(windows):
            self.processed[w.stream_id] += 1
            lat = {
                "assemble": max(0.0, w.ready_time - w.target_capture) * 1000.0,
                "wait": (max(0.0, job.t_start - w.ready_time) + handoff) * 1000.0,
                "video_encoder": (job.t_video - job.t_start) * 1000.0,
                "audio_encoder": (job.t_audio - job.t_video) * 1000.0,
                "denoise": list(steps_ms),
                "postprocess": (t_post - prev) * 1000.0,
            }
            res = MapResult(window=w, saliency=maps[i], latency_ms=lat, batch=n, steps=len(steps_ms),
                            dropped=self.dropped[w.stream_id], done_time=t_post, cpu_ms=cpu,
                            spread=None if spreads is None else spreads[i], samples=self.samples)
            if self.on_result is not None:
                self.on_result(res)

    @property
    def frames_encoded(self) -> int:
        return self.video_cache.encoded + self._frames_encoded_full

    @property
    def slices_encoded(self) -> int:
        return self.audio_cache.encoded

    # ------------------------------------------------------------------ features
    def _video_features(self, windows: list[Window]):
        if not self._per_frame:
            clips = torch.stack([torch.stack(w.frames, dim=1) for w in windows])   # (B, 3, T, H, W)
            self._frames_encoded_full += sum(len(w.frames) for w in windows)
            return self.engine.encode_video(clips)
        requests = [(w.stream_id, i, x) for w in windows for i, x in zip(w.frame_indices, w.frames)]
        if self.max_new_frames:
            requests = self._limit_new_frames(windows, requests)
        self.video_cache.need(requests, same_input=True)
        out = []
        for w in windows:
            out.append(stack_time(self._window_frame_features(w)))
            # Older frames can never be needed again (windows of a stream only move forward).
            self.video_cache.forget(w.stream_id, before=min(w.frame_indices))
        return cat_batch(out)

    def _audio_features(self, windows: list[Window]):
        if not self._per_frame:
            return self.engine.encode_audio(torch.stack([w.audio for w in windows]))        # (B, 1, S, h, w)
        self.audio_cache.need([(w.stream_id, k, x) for w in windows for k, x in zip(w.slice_indices, w.audio)],
                              same_input=True)
        out = []
        for w in windows:
            out.append(self.audio_cache.stack(w.stream_id, w.slice_indices))
            self.audio_cache.forget(w.stream_id, before=w.slice_indices[0])
        return cat_batch(out)

    def _limit_new_frames(self, windows: list[Window], requests: list) -> list:
        """Encode at most ``max_new_frames`` new frames per window, the newest first.

        Only matters when compute has fallen so far behind that a window shares few
        frames with the last one that ran: without a cap every such window would
        re-encode up to ``frames`` frames, making it slower still. The other positions
        then reuse the nearest encoded frame of the window (``flags["approx_frames"]``).
        """
        missing = {}
        for sid, i, x in requests:
            if self.video_cache.get(sid, i, x) is None:
                missing.setdefault(sid, {})[i] = x
        keep = []
        for sid, items in missing.items():
            for i in sorted(items, reverse=True)[: self.max_new_frames]:
                keep.append((sid, i, items[i]))
        return keep

    def _window_frame_features(self, w: Window) -> list:
        """Per-position features; a position whose frame was not encoded borrows the nearest one that was."""
        have = [self.video_cache.get(w.stream_id, idx, fr) for idx, fr in zip(w.frame_indices, w.frames)]
        missing = [j for j, f in enumerate(have) if f is None]
        if missing:
            ok = [j for j, f in enumerate(have) if f is not None]
            for j in missing:
                have[j] = have[min(ok, key=lambda k: (abs(k - j), -k))]
            w.flags["approx_frames"] = len(missing)
        return have
