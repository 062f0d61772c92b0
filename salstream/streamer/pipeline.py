"""The live pipeline: sources → window assembly → scheduler → ZeroMQ (+ overlay recording).

One reader thread per source pushes its units into that stream's
:class:`~streamer.buffer.WindowAssembler` and hands ready windows to the shared
:class:`~streamer.scheduler.Scheduler`; the scheduler's worker publishes each map
(frame preview first, then the map) and queues it for the overlay recorder, which
encodes in its own thread so recording never adds to map latency.

Paced sources (live, or files at their native rate) are lossy: latest wins. With
``paced=False`` (``--as-fast-as-possible``) the readers wait for the scheduler
instead, so an offline run gets a map for every window.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from salstream.errors import SalstreamError

from . import wire
from .buffer import MODE_CHOICES, WindowAssembler
from .media import AudioChunk, StreamEvent, VideoFrame
from .publish import DEFAULT_ADDRESS, Publisher
from .scheduler import MapResult, Scheduler

log = logging.getLogger("salstream.pipeline")

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "diffsal" / "weights" / "lite_synthetic.safetensors"
MAX_STEPS = 1000


@dataclass
class PipelineOptions:
    sources: list[str] = field(default_factory=list)    # empty: the bundled demo clip
    mic: Optional[str] = None
    profile: str = "lite"
    checkpoint: Optional[str] = None
    engine: str = "torch"
    artifacts: Optional[str] = None  # exported graphs for the ort-* engines (default: export and cache)
    steps: Optional[int] = None
    hop: int = 1
    publish: str = DEFAULT_ADDRESS
    allow_remote: bool = False
    record: Optional[str] = None
    paced: bool = True
    max_batch: int = 4
    batch_deadline_ms: float = 5.0
    duration: Optional[float] = None
    max_frames: Optional[int] = None
    payload_dtype: str = "float32"
    send_frames: bool = True
    audio_wait_ms: float = 100.0
    mode: str = "auto"
    seed: int = 0
    threads: Optional[int] = None
    hwm: int = 16
    wait_subscriber: float = 0.0     # seconds to wait for a first subscriber before reading sources
    max_new_frames: int = 4          # per-frame profiles: new frames encoded per window at most (0: no cap)
    warm_start: Optional[int] = None  # DDIM warm start from the previous map at this timestep (None: off)

    def validate(self) -> None:
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise SalstreamError(f"--steps {self.steps}: must be between 1 and {MAX_STEPS} (fewer is faster)")
        if not 1 <= self.hop <= 10000:
            raise SalstreamError(f"--hop {self.hop}: must be >= 1 (1 = a map for every frame, N = every Nth)")
        if self.max_batch < 1:
            raise SalstreamError(f"--max-batch {self.max_batch}: must be >= 1")
        if self.batch_deadline_ms < 0:
            raise SalstreamError(f"--batch-deadline-ms {self.batch_deadline_ms}: must be >= 0")
        if self.duration is not None and self.duration <= 0:
            raise SalstreamError(f"--duration {self.duration}: must be > 0 seconds")
        if self.max_frames is not None and self.max_frames < 1:
            raise SalstreamError(f"--max-frames {self.max_frames}: must be >= 1")
        if self.audio_wait_ms < 0:
            raise SalstreamError(f"--audio-wait-ms {self.audio_wait_ms}: must be >= 0")
        if self.mode not in MODE_CHOICES:
            raise SalstreamError(f"--mode {self.mode}: choose one of {', '.join(MODE_CHOICES)}")
        if self.warm_start is not None and not 0 <= self.warm_start < 1000:
            raise SalstreamError(f"--warm-start {self.warm_start}: must be a timestep in 0…999 (e.g. 250)")
        if self.max_new_frames < 0:
            raise SalstreamError(f"--max-new-frames {self.max_new_frames}: must be >= 0 (0 = no cap)")
        if self.wait_subscriber < 0:
            raise SalstreamError(f"--wait-subscriber {self.wait_subscriber}: must be >= 0 seconds")
        if self.record is not None and Path(self.record).suffix.lower() not in (".mp4", ".mov", ".mkv"):
            raise SalstreamError(f"--record {self.record}: use a .mp4 (or .mkv/.mov) file name")
        if self.payload_dtype not in wire.PAYLOAD_DTYPES:
            raise SalstreamError(f"--payload {self.payload_dtype}: choose one of {', '.join(wire.PAYLOAD_DTYPES)}")


def load_engine(profile: str, checkpoint: Optional[str], engine: str, threads: Optional[int] = None,
                artifacts: Optional[str] = None):
    """The engine for ``profile``: the given checkpoint, else the bundled lite weights, else untrained.

    ``artifacts``: a ``salstream export`` directory for the exported-graph engines; they
    refuse graphs of another checkpoint, profile or set of weights.
    """
    from salstream.diffsal.checkpoint import load_model
    from salstream.diffsal.registry import available_profiles, create_model
    from salstream.engines import available_engines, create_engine

    if profile not in available_profiles():
        raise SalstreamError(f"--profile {profile}: choose one of {', '.join(available_profiles())}")
    if engine not in available_engines():
        raise SalstreamError(f"--engine {engine}: choose one of {', '.join(available_engines())}")
    if artifacts is not None and engine in ("torch", "torch-cuda"):
        raise SalstreamError(f"--artifacts {artifacts}: exported graphs run on an exported-graph engine; "
                             "add --engine ort-cpu (or another ort-*/tensorrt engine), or drop --artifacts")
    if artifacts is not None and not Path(artifacts).is_dir():
        raise SalstreamError(f"--artifacts {artifacts}: no such directory; give the folder `salstream export` "
                             "wrote, or drop --artifacts to export on the fly")
    path = checkpoint
    if path is None and profile == "lite" and DEFAULT_CHECKPOINT.is_file():
        path = str(DEFAULT_CHECKPOINT)
    if path is not None:
        model = load_model(path, profile=profile)
        log.info("weights: %s", path)
    else:
        model = create_model(profile)
        log.warning("no trained weights for the %s profile (pass --checkpoint): running an UNTRAINED model, "
                    "so the maps are noise until trained weights are present", profile)
    extra = {"artifacts": artifacts, "profile": profile} if artifacts is not None else {}
    eng = create_engine(engine, model=model, checkpoint=path, threads=threads, **extra)
    return eng, path


@dataclass
class RunSummary:
    maps: int
    seconds: float
    latencies_ms: list[float]
    stage_ms: dict[str, list[float]]
    dropped_windows: int
    send_dropped: int
    overlay_dropped: int
    modes: dict[str, int]
    lagging_windows: int
    batch_sizes: dict[int, int]
    per_stream: dict[str, int]
    record: Optional[str] = None
    overlay_frames: int = 0
    source_errors: list[str] = field(default_factory=list)   # streams that ended because their input failed
    gaps: int = 0                                             # source outages (reconnects) over all streams

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def maps_per_second(self) -> float:
        return self.maps / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [f"{self.maps} maps in {self.seconds:.1f} s ({self.maps_per_second:.1f} maps/s) from "
                 f"{len(self.per_stream)} stream(s); dropped windows: {self.dropped_windows} (latest wins), "
                 f"publisher drops: {self.send_dropped}"]
        if self.latencies_ms:
            lines.append(f"capture→publish latency: p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms, "
                         f"p99 {self.percentile(99):.1f} ms (max {max(self.latencies_ms):.1f} ms)")
            parts = []
            for k in wire.LATENCY_STAGES:
                vals = self.stage_ms.get(k)
                if vals:
                    parts.append(f"{k} {np.median(vals):.1f}")
            lines.append("median per stage (ms): " + ", ".join(parts)
                         + "  [denoise = all steps of one map]")
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in sorted(self.modes.items()))
                     + (f" (video-only because audio lagged: {self.lagging_windows})" if self.lagging_windows else "")
                     + "; batch sizes: " + ", ".join(f"{b}×{n}" for b, n in sorted(self.batch_sizes.items())))
        if self.gaps:
            lines.append(f"source outages: {self.gaps} (maps after each are marked with flags.gap)")
        if self.record:
            if self.overlay_frames:
                lines.append(f"overlay: {self.record} ({self.overlay_frames} frames"
                             + (f", {self.overlay_dropped} skipped" if self.overlay_dropped else "") + ")")
            else:
                lines.append(f"overlay: nothing recorded (no frames), {self.record} not written")
        return "\n".join(lines)


class _RecorderThread:
    """Records every frame of one stream with the newest map at or before it (sample and hold).

    Frames wait (bounded) until a map for them or a later frame arrives, so the video
    runs at the source's frame rate whatever the map rate: a frame whose window was
    dropped shows the previous map, as a live viewer would have seen. Blending and
    encoding run in this thread, off the scheduler's; overflow is counted, not blocked on.
    """

    def __init__(self, recorder, max_pending: int = 90, maxsize: int = 512):
        self.recorder = recorder
        self.max_pending = max_pending
        self.dropped = 0
        self.maps = 0          # maps handed over (frames can be recorded without any)
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="salstream-recorder", daemon=True)
        self._thread.start()

    def frame(self, index: int, pts: float, image: np.ndarray) -> None:
        self._put(("frame", index, pts, image))

    def map(self, index: int, saliency: np.ndarray) -> None:
        self.maps += 1
        self._put(("map", index, saliency))

    def _put(self, item: tuple) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        from collections import deque

        from .overlay import blend
        pending: deque = deque()          # (index, pts, image) waiting for their map
        held: Optional[np.ndarray] = None  # the newest map so far

        def write(pts: float, image: np.ndarray, saliency: Optional[np.ndarray]) -> None:
            try:
                self.recorder.add_frame(image if saliency is None else blend(image, saliency), pts)
            except Exception:  # a recording problem must not stop the maps
                log.exception("overlay recording failed")

        while True:
            item = self._q.get()
            if item is None:
                break
            if item[0] == "frame":
                pending.append(item[1:])
                while len(pending) > self.max_pending:     # maps far behind: do not hoard frames
                    _, pts, image = pending.popleft()
                    write(pts, image, held)
                continue
            _, index, saliency = item
            while pending and pending[0][0] <= index:
                i, pts, image = pending.popleft()
                write(pts, image, saliency if i == index else held)
            held = saliency
        for _, pts, image in pending:
            write(pts, image, held)

    def close(self, discard: bool = False) -> None:
        self._q.put(None)
        self._thread.join()
        self.recorder.close(discard=discard)


class Pipeline:
    """Runs one live session. ``engine`` / ``sources`` may be given directly (tests, embedding);
    otherwise they are built from ``opts``. ``run()`` blocks until the sources end, ``stop()`` is
    called (from any thread or a signal handler), or the duration / frame limit is reached.
    """

    def __init__(self, opts: PipelineOptions, *, engine: Any = None, sources: Optional[list] = None,
                 on_map: Optional[Callable[[dict, np.ndarray], None]] = None):
        opts.validate()
        self.opts = opts
        self._engine = engine
        self._sources = sources
        self._on_map = on_map
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.publisher: Optional[Publisher] = None
        self.scheduler: Optional[Scheduler] = None
        self.assemblers: dict[str, WindowAssembler] = {}
        self._recorder: Optional[_RecorderThread] = None
        self._record_stream: Optional[str] = None
        self._latencies: list[float] = []
        self._stages: dict[str, list[float]] = {k: [] for k in wire.LATENCY_STAGES}
        self._modes: dict[str, int] = {}
        self._per_stream: dict[str, int] = {}
        self._first_publish: Optional[float] = None
        self._source_errors: list[str] = []
        self._gaps_reported: dict[str, int] = {}   # per stream: outages already marked on a published map
        self._last_publish: Optional[float] = None
        self.endpoint: Optional[str] = None
        self.bound = threading.Event()     # set once the socket is bound (``endpoint`` is known)
        self.ready = threading.Event()     # set once sources are open and maps are about to flow

    # ------------------------------------------------------------------ setup
    def _open_sources(self) -> list:
        if self._sources is not None:
            return self._sources
        from .sources import default_demo_source, open_source
        specs = self.opts.sources or [default_demo_source()]
        out = []
        try:
            for i, spec in enumerate(specs):
                out.append(open_source(spec, stream_id=str(i), paced=self.opts.paced,
                                       mic=self.opts.mic if i == 0 else None))
        except BaseException:
            for s in out:
                s.close()
            raise
        return out

    def stop(self) -> None:
        """Ask the run to end (thread- and signal-safe): sources close, pending maps are finished."""
        self._stop.set()
        for s in self._sources or []:
            s.close()

    # ------------------------------------------------------------------ run
    def run(self) -> RunSummary:
        o = self.opts
        failed = False
        # Bind first: a busy address fails at once, before seconds of model loading.
        self.publisher = Publisher(o.publish, allow_remote=o.allow_remote, hwm=o.hwm, payload_dtype=o.payload_dtype)
        self.endpoint = self.publisher.endpoint
        self.bound.set()
        try:
            # Sources next: a mistyped input fails before the model loads too.
            self._sources = self._open_sources()
            if self._engine is None:
                self._engine, _ = load_engine(o.profile, o.checkpoint, o.engine, o.threads, o.artifacts)
            engine = self._engine
            ids = [s.stream_id for s in self._sources]
            if len(set(ids)) != len(ids):
                raise SalstreamError(f"sources share a stream id ({ids}); give each a distinct stream_id")
            for s in self._sources:
                wire.check_stream_id(s.stream_id)
            self.scheduler = Scheduler(engine, steps=o.steps, max_batch=o.max_batch,
                                       batch_deadline=o.batch_deadline_ms / 1000.0, on_result=self._on_result,
                                       seed=o.seed, max_new_frames=o.max_new_frames or None,
                                       warm_start=o.warm_start)
            for s in self._sources:
                self.assemblers[s.stream_id] = WindowAssembler(
                    engine.config, s.stream_id, hop=o.hop, has_audio=s.has_audio,
                    audio_wait=o.audio_wait_ms / 1000.0, mode=o.mode)
                self.scheduler.add_stream(s.stream_id, lossless=not o.paced)
                log.info("stream %s: %s", s.stream_id, s.description or s)
            if o.record:
                from .overlay import OverlayRecorder
                first = self._sources[0]
                rec = OverlayRecorder(o.record, fps=first.fps, audio_rate=16000 if first.has_audio else None)
                self._recorder = _RecorderThread(rec)
                self._record_stream = first.stream_id
            log.info("publishing %s maps on %s (profile %s, engine %s, %d steps)", engine.config.profile,
                     self.endpoint, engine.config.profile, getattr(engine, "name", "?"), self.scheduler.steps)
            if o.wait_subscriber > 0:
                log.info("waiting up to %.0f s for a subscriber on %s", o.wait_subscriber, self.endpoint)
                if not self.publisher.wait_for_subscriber(o.wait_subscriber, stop=self._stop) and not self._stop.is_set():
                    log.warning("no subscriber after %.0f s; starting anyway", o.wait_subscriber)
            self.scheduler.start()
            self.ready.set()
            t_start = time.monotonic()
            readers = [threading.Thread(target=self._read, args=(s,), name=f"salstream-source-{s.stream_id}",
                                        daemon=True) for s in self._sources]
            for r in readers:
                r.start()
            while any(r.is_alive() for r in readers):
                if self.scheduler.error is not None:
                    self.stop()
                if o.duration is not None and time.monotonic() - t_start >= o.duration:
                    self.stop()
                for r in readers:
                    r.join(0.05)    # short joins keep the main thread responsive to signals
            self.scheduler.close(drain=True)
            if self.scheduler.error is not None:
                raise self.scheduler.error
            seconds = time.monotonic() - t_start
        except BaseException:
            failed = True
            raise
        finally:
            self._stop.set()
            for s in self._sources or []:
                s.close()
            if self.scheduler is not None:
                self.scheduler.close(drain=False, timeout=10)
            if self._recorder is not None:
                # A run that failed before any map reached the recording leaves no file behind.
                self._recorder.close(discard=failed and self._recorder.maps == 0)
            self.publisher.close()
        return self._summary(seconds)

    def _read(self, source) -> None:
        sid = source.stream_id
        asm = self.assemblers[sid]
        sched = self.scheduler
        lossless = not self.opts.paced
        frames = 0
        it = iter(source)
        try:
            for unit in it:
                if self._stop.is_set():
                    break
                if isinstance(unit, VideoFrame):
                    frames += 1
                    if self.opts.max_frames is not None and frames > self.opts.max_frames:
                        break
                    if self._recorder is not None and sid == self._record_stream:
                        self._recorder.frame(unit.index, unit.pts, unit.image)
                elif isinstance(unit, AudioChunk):
                    if self._recorder is not None and sid == self._record_stream:
                        self._recorder.recorder.add_audio(unit.samples, unit.sample_index)
                elif isinstance(unit, StreamEvent):
                    self._log_event(unit)
                    if unit.kind == "end":
                        continue        # flushed below, once, however the loop ends
                for w in asm.push(unit):
                    sched.submit(w, block=lossless)
        finally:
            it.close()
            source.close()
            for w in asm.push(StreamEvent("end", stream_id=sid)):
                sched.submit(w, block=lossless)
            sched.end_stream(sid)

    def _log_event(self, e: StreamEvent) -> None:
        if e.kind == "error":
            message = str(e.detail.get("message", e.detail))
            with self._lock:
                self._source_errors.append(f"stream {e.stream_id}: {message}")
            log.error("stream %s: %s", e.stream_id, message)
        elif e.kind in ("gap", "audio_lost", "audio_back"):
            log.warning("stream %s: %s %s", e.stream_id, e.kind, e.detail or "")

    # ------------------------------------------------------------------ results (scheduler thread)
    def _on_result(self, res: MapResult) -> None:
        w = res.window
        o = self.opts
        pub = self.publisher
        started = res.done_time
        if o.send_frames:
            pub.send_frame(w.stream_id, w.target_index, w.target_pts, w.target_capture, w.image)
        flags = {k: v for k, v in w.flags.items() if v}
        # The first map published after a source outage carries it (its window's own may
        # have been dropped): flags.gap plus each missing PTS range, exclusive at both ends.
        reported = self._gaps_reported.get(w.stream_id, 0)
        new_gaps = [dict(g) for g in w.gaps[reported:]]
        if new_gaps:
            flags["gap"] = True
            self._gaps_reported[w.stream_id] = len(w.gaps)
        header = {
            "stream": w.stream_id, "frame_index": w.target_index, "pts": w.target_pts,
            "capture_time": w.target_capture, "mode": w.mode, "latency_ms": res.latency_ms,
            "dropped": res.dropped, "profile": self._engine.config.profile,
            "engine": getattr(self._engine, "name", type(self._engine).__name__), "steps": res.steps,
            "batch": res.batch, "flags": flags, "source_shape": list(w.image.shape[:2]),
            "window": {"frames": len(w.frame_indices), "first_frame": w.frame_indices[0],
                       "audio_end_pts": w.audio_end_pts},
        }
        if new_gaps:
            header["gaps"] = new_gaps
        h = pub.publish_map(header, res.saliency, started=started)
        total = (h["publish_time"] - w.target_capture) * 1000.0
        with self._lock:
            self._latencies.append(total)
            lat = h["latency_ms"]
            for k in wire.LATENCY_STAGES:
                v = lat.get(k)
                if v is not None:
                    self._stages[k].append(sum(v) if isinstance(v, list) else v)
            self._modes[w.mode] = self._modes.get(w.mode, 0) + 1
            self._per_stream[w.stream_id] = self._per_stream.get(w.stream_id, 0) + 1
            if self._first_publish is None:
                self._first_publish = h["publish_time"]
            self._last_publish = h["publish_time"]
        if self._recorder is not None and w.stream_id == self._record_stream:
            self._recorder.map(w.target_index, res.saliency)
        if self._on_map is not None:
            self._on_map(h, res.saliency)

    def _summary(self, seconds: float) -> RunSummary:
        sched = self.scheduler
        return RunSummary(
            maps=len(self._latencies), seconds=seconds, latencies_ms=list(self._latencies),
            stage_ms={k: v for k, v in self._stages.items() if v},
            dropped_windows=sum(sched.dropped.values()), send_dropped=self.publisher.send_dropped,
            overlay_dropped=self._recorder.dropped if self._recorder else 0, modes=dict(self._modes),
            lagging_windows=sum(a.lagged_windows for a in self.assemblers.values()),
            batch_sizes=dict(sched.batch_sizes), per_stream=dict(self._per_stream),
            record=self.opts.record, overlay_frames=self._recorder.recorder.frames if self._recorder else 0,
            source_errors=list(self._source_errors), gaps=sum(len(a.gaps) for a in self.assemblers.values()))
