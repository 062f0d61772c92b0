"""The live pipeline: sources → window assembly → scheduler → ZeroMQ, plus map consumers.

:class:`Pipeline` only composes. One reader thread per source pushes its units into that
stream's :class:`~salstream.streamer.live.assembler.WindowAssembler` and hands ready
windows to the shared :class:`~salstream.streamer.live.scheduler.Scheduler`; the
scheduler's worker publishes each map (frame preview first, then the map). Consumers
(:class:`MapConsumer`: the overlay recording, the guided encoder, ROI publishing…) see
every unit the readers take and every map that goes out; they must never block.

Paced sources (live, or files at their native rate) are lossy: latest wins. With
``paced=False`` (``--as-fast-as-possible``) the readers wait for the scheduler
instead, so an offline run gets a map for every window.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np

from salstream.diffsal.inference import MAX_SAMPLES
from salstream.errors import SalstreamError
from salstream.redact import redact
from salstream.streamer.live.assembler import MODE_CHOICES, WindowAssembler
from salstream.streamer.live.scheduler import MapResult, Scheduler
from salstream.streamer.live.summary import CpuMeter, MapStats, RunSummary
from salstream.streamer.live.units import StreamEvent, Unit, VideoFrame
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import DEFAULT_ADDRESS, Publisher

log = logging.getLogger("salstream.pipeline")

MAX_STEPS = 1000
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")    # sources that reconnect (see sources.pyav)


@dataclass
class PipelineOptions:
    """How the live flow runs (what model runs where is the engine's business)."""
    sources: list[str] = field(default_factory=list)    # empty: the bundled demo clip
    mic: Optional[str] = None
    steps: Optional[int] = None
    hop: int = 1
    publish: Optional[str] = DEFAULT_ADDRESS   # None: no socket; the consumers still get every map
    allow_remote: bool = False
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
    hwm: int = 16
    wait_subscriber: float = 0.0     # seconds to wait for a first subscriber before reading sources
    max_new_frames: int = 4          # per-frame profiles: new frames encoded per window at most (0: no cap)
    warm_start: Optional[int] = None  # DDIM warm start from the previous map at this timestep (None: off)
    reconnect_attempts: Optional[int] = 400   # network sources: reconnect attempts per outage (None: forever)
    reconnect_max_delay: float = 0.25         # s, cap of the doubling wait between attempts
    stall_frames: float = 30.0        # live sources: no frame for this many frame intervals marks a gap (0: off)
    heartbeat_s: float = 1.0          # status/<stream> heartbeat period
    samples: int = 1                 # draws per window: map = their mean, conf/<stream> = their spread

    def validate(self) -> None:
        for name in ("batch_deadline_ms", "audio_wait_ms", "wait_subscriber", "duration", "reconnect_max_delay",
                     "stall_frames", "heartbeat_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise SalstreamError(f"--{name.replace('_', '-')} {v!r}: must be a finite number")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise SalstreamError(f"--steps {self.steps}: must be between 1 and {MAX_STEPS} (fewer is faster)")
        if not 1 <= self.hop <= 10000:
            raise SalstreamError(f"--hop {self.hop}: must be >= 1 (1 = a map for every frame, N = every Nth)")
        if not 1 <= self.max_batch <= 256:
            raise SalstreamError(f"--max-batch {self.max_batch}: must be 1…256")
        if not 0 <= self.batch_deadline_ms <= 600_000:
            raise SalstreamError(f"--batch-deadline-ms {self.batch_deadline_ms}: must be >= 0 (and under ten minutes)")
        if self.duration is not None and not 0 < self.duration <= 1e7:
            raise SalstreamError(f"--duration {self.duration}: must be > 0 seconds")
        if self.max_frames is not None and not 1 <= self.max_frames <= 10 ** 12:
            raise SalstreamError(f"--max-frames {self.max_frames}: must be >= 1")
        if not 0 <= self.audio_wait_ms <= 600_000:
            raise SalstreamError(f"--audio-wait-ms {self.audio_wait_ms}: must be >= 0 (and under ten minutes)")
        if not 0 <= self.seed < 2 ** 63:
            raise SalstreamError(f"--seed {self.seed}: must be 0 or a positive integer")
        if self.mode not in MODE_CHOICES:
            raise SalstreamError(f"--mode {self.mode}: choose one of {', '.join(MODE_CHOICES)}")
        if self.warm_start is not None and not 0 <= self.warm_start < 1000:
            raise SalstreamError(f"--warm-start {self.warm_start}: must be a timestep in 0…999 (e.g. 250)")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise SalstreamError(f"--samples {self.samples}: must be between 1 and {MAX_SAMPLES} (draws per map; "
                                 "1 = one draw, no spread)")
        if not 0 <= self.max_new_frames <= 10_000:
            raise SalstreamError(f"--max-new-frames {self.max_new_frames}: must be >= 0 (0 = no cap)")
        if not 0 <= self.wait_subscriber <= 86_400:
            raise SalstreamError(f"--wait-subscriber {self.wait_subscriber}: must be >= 0 seconds (at most a day)")
        if self.reconnect_attempts is not None and not 0 <= self.reconnect_attempts <= 10 ** 9:
            raise SalstreamError(f"--reconnect {self.reconnect_attempts}: a number of attempts >= 0, or forever")
        if not 0 < self.reconnect_max_delay <= 3600:
            raise SalstreamError(f"--reconnect-max-delay {self.reconnect_max_delay}: must be 0…3600 seconds")
        if not (self.stall_frames == 0 or 2 <= self.stall_frames <= 100_000):
            raise SalstreamError(f"--stall-frames {self.stall_frames}: 2…100000 frame intervals, or 0 for off")
        if not 0 < self.heartbeat_s <= 3600:
            raise SalstreamError(f"heartbeat period {self.heartbeat_s}: must be 0…3600 seconds")
        if self.payload_dtype not in wire.PAYLOAD_DTYPES:
            raise SalstreamError(f"--payload {self.payload_dtype}: choose one of {', '.join(wire.PAYLOAD_DTYPES)}")


class MapConsumer(Protocol):
    """Something that takes a run's units and maps (recording, guided encoding, ROI publishing…).

    ``start`` is called once the sources are open (before any unit), ``on_unit`` from the
    reader threads for every unit the pipeline takes, ``on_map`` from the scheduler's
    thread after each map went out; neither may block. ``close(failed)`` ends it; the
    lines of ``summary()`` join the run summary. A consumer that defines
    ``on_spread(header, spread)`` also gets each map's per-pixel spread (``samples`` > 1),
    just before ``on_map`` of the same map.
    """

    def start(self, sources: Sequence[Any], publisher: Publisher) -> None: ...

    def on_unit(self, unit: Unit) -> None: ...

    def on_map(self, header: wire.MapHeader, saliency: np.ndarray) -> None: ...

    def close(self, failed: bool = False) -> None: ...

    def summary(self) -> list[str]: ...


EngineOrFactory = Union[Any, Callable[[], Any]]


class Pipeline:
    """Runs one live session.

    ``engine``: an engine, or a zero-argument callable that builds one (called after the
    socket is bound and the sources are open, so a busy address or a mistyped source fails
    before seconds of model loading). ``sources``: opened sources (default: opened from
    ``opts.sources``). ``run()`` blocks until the sources end, ``stop()`` is called (from any
    thread or a signal handler), or the duration / frame limit is reached.

    ``publisher``: send through this publisher instead of binding ``opts.publish`` (e.g. one
    that connects to a cluster's forwarder); the pipeline closes it at the end.
    ``keep_open``: run until ``stop()`` even with no source left, and take streams in and out
    while running (:meth:`add_source`, :meth:`remove_stream`): a cluster replica's pipeline.
    """

    def __init__(self, opts: PipelineOptions, engine: EngineOrFactory, *, sources: Optional[list] = None,
                 consumers: Sequence[MapConsumer] = (), publisher: Optional[Publisher] = None,
                 keep_open: bool = False):
        opts.validate()
        self.opts = opts
        self._engine_arg = engine
        self.engine: Any = None
        self._sources = sources
        self._publisher_arg = publisher
        self.keep_open = bool(keep_open)
        self._readers: dict[str, threading.Thread] = {}
        self._warm_modes: set[str] = set()   # mode graphs the engine has already run once
        self.consumers = list(consumers)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.publisher: Optional[Publisher] = None
        self.scheduler: Optional[Scheduler] = None
        self.assemblers: dict[str, WindowAssembler] = {}
        self.stats = MapStats()
        self.cpu = CpuMeter()
        self._process_cpu = 0.0
        self._source_errors: list[str] = []
        self._gaps_reported: dict[str, int] = {}   # per stream: outages already marked on a published map
        self._last_frame: dict[str, tuple[float, float]] = {}   # per stream: (pts, arrival) of the newest frame
        self.endpoint: Optional[str] = None
        self.bound = threading.Event()     # set once the socket is bound (``endpoint`` is known)
        self.ready = threading.Event()     # set once sources are open and maps are about to flow

    # ------------------------------------------------------------------ setup
    def _open_sources(self) -> list:
        if self._sources is not None:
            return self._sources
        from salstream.streamer.live.sources import default_demo_source, open_source
        specs = self.opts.sources or [default_demo_source()]
        out = []
        try:
            for i, spec in enumerate(specs):
                extra = {}
                if str(spec).partition("://")[0].lower() in NETWORK_SCHEMES:
                    extra = {"reconnect_attempts": self.opts.reconnect_attempts,
                             "reconnect_max_delay": self.opts.reconnect_max_delay}
                out.append(open_source(spec, stream_id=str(i), paced=self.opts.paced,
                                       mic=self.opts.mic if i == 0 else None, **extra))
        except BaseException:
            for s in out:
                s.close()
            raise
        return out

    def _warm_up(self, engine, sources) -> None:
        """Let an engine that can (ONNX Runtime) start the sessions ``sources`` will use now, not
        inside their first windows; modes already warm are not run again."""
        warmup = getattr(engine, "warmup", None)
        if not callable(warmup):
            return
        if self.opts.mode != "auto":
            wanted = [self.opts.mode]
        else:   # a stream with audio still maps video-only until its first slice is in
            wanted = ["av", "video"] if any(s.has_audio for s in sources) else ["video"]
        modes = [m for m in wanted if m not in self._warm_modes]
        if not modes:
            return
        t0 = time.monotonic()
        warmup(modes)
        self._warm_modes.update(modes)
        log.info("engine warmed up (%s) in %.1f s", ", ".join(modes), time.monotonic() - t0)

    def _build_engine(self) -> Any:
        e = self._engine_arg
        return e() if callable(e) and not hasattr(e, "denoise") else e

    def stop(self) -> None:
        """Ask the run to end (thread- and signal-safe): sources close, pending maps are finished."""
        self._stop.set()
        for s in list(self._sources or []):
            s.close()

    def add_source(self, source) -> None:
        """Bring an opened source into a running ``keep_open`` pipeline (thread-safe).

        Its stream id must not be running here already; a stream that ended (or was removed)
        may come back: it starts afresh (new window history, its next outage reported again).
        """
        if not self.keep_open:
            raise RuntimeError("add_source needs a pipeline built with keep_open=True")
        if not self.ready.is_set() or self._stop.is_set():
            raise SalstreamError(f"stream {source.stream_id}: this pipeline is not running")
        self._check_source(source)
        # A replica that so far mapped only silent streams has not started its audio-visual
        # session: start it here, in the caller's thread, not inside the scheduler's next batch.
        self._warm_up(self.engine, [source])
        with self._lock:
            reader = self._readers.get(source.stream_id)
            if reader is not None and reader.is_alive():
                raise SalstreamError(f"stream {source.stream_id} is already running here; remove it first")
            self._sources.append(source)
            self._gaps_reported.pop(source.stream_id, None)
            self._add_stream(source)
            self._start_reader(source)

    def remove_stream(self, stream_id: str) -> bool:
        """Close one stream's source (its pending windows are still mapped); False if it is not running."""
        with self._lock:
            reader = self._readers.get(stream_id)
            sources = [s for s in self._sources or [] if s.stream_id == stream_id]
        for s in sources:
            s.close()
        return reader is not None and reader.is_alive()

    @property
    def running_streams(self) -> list[str]:
        """Ids of the streams whose source is still being read."""
        with self._lock:
            return [sid for sid, r in self._readers.items() if r.is_alive()]

    @property
    def source_errors(self) -> list[str]:
        """One line per stream that ended because its input failed."""
        with self._lock:
            return list(self._source_errors)

    def _check_source(self, s) -> None:
        wire.check_stream_id(s.stream_id)
        if self.opts.mode == "audio" and not s.has_audio:   # before seconds of model loading, not after
            raise SalstreamError(f"stream {s.stream_id}: audio-only mode needs a source with audio "
                                 "(add --mic or use a source with an audio track)")

    def _add_stream(self, s) -> None:
        o = self.opts
        self.assemblers[s.stream_id] = WindowAssembler(
            self.engine.config, s.stream_id, hop=o.hop, has_audio=s.has_audio,
            audio_wait=o.audio_wait_ms / 1000.0, mode=o.mode,
            # Live network sources only: a paced file "stalls" only when this machine is slow.
            stall_after=(o.stall_frames / s.fps if o.paced and o.stall_frames and s.fps > 0
                         and getattr(s, "live", False) else None))
        self.scheduler.add_stream(s.stream_id, lossless=not o.paced)
        log.info("stream %s: %s", s.stream_id, s.description or s)

    def _start_reader(self, s) -> None:
        r = threading.Thread(target=self._read, args=(s,), name=f"salstream-source-{s.stream_id}", daemon=True)
        self._readers[s.stream_id] = r
        r.start()

    def _alive_readers(self) -> list[threading.Thread]:
        with self._lock:
            return [r for r in self._readers.values() if r.is_alive()]

    def _reader_states(self) -> list[tuple[Any, bool]]:
        """(newest source, reader alive) per stream, for the heartbeats."""
        with self._lock:
            newest = {s.stream_id: s for s in self._sources}
            return [(newest[sid], r.is_alive()) for sid, r in self._readers.items() if sid in newest]

    # ------------------------------------------------------------------ run
    def run(self) -> RunSummary:
        o = self.opts
        failed = False
        started: list[MapConsumer] = []
        seconds = 0.0
        # Bind first: a busy address fails at once, before seconds of model loading.
        self.publisher = self._publisher_arg or Publisher(o.publish, allow_remote=o.allow_remote, hwm=o.hwm,
                                                          payload_dtype=o.payload_dtype)
        self.endpoint = self.publisher.endpoint
        self.bound.set()
        try:
            # Sources next: a mistyped input fails before the model loads too.
            self._sources = list(self._open_sources())
            ids = [s.stream_id for s in self._sources]
            if len(set(ids)) != len(ids):
                raise SalstreamError(f"sources share a stream id ({ids}); give each a distinct stream_id")
            for s in self._sources:
                self._check_source(s)
            self.engine = engine = self._build_engine()
            self._warm_up(engine, self._sources)
            self.scheduler = Scheduler(engine, steps=o.steps, max_batch=o.max_batch,
                                       batch_deadline=o.batch_deadline_ms / 1000.0, on_result=self._on_result,
                                       seed=o.seed, max_new_frames=o.max_new_frames or None,
                                       warm_start=o.warm_start, cpu_meter=self.cpu, samples=o.samples)
            for s in self._sources:
                self._add_stream(s)
            for c in self.consumers:
                c.start(self._sources, self.publisher)
                started.append(c)
            log.info("%s %s maps%s (engine %s, %d steps%s)", "publishing" if self.endpoint else "computing",
                     engine.config.profile, f" on {self.endpoint}" if self.endpoint else "",
                     getattr(engine, "name", "?"), self.scheduler.steps,
                     f", mean of {o.samples} draws, spread on conf/<stream>" if o.samples > 1 else "")
            if o.wait_subscriber > 0 and self.endpoint:
                log.info("waiting up to %.0f s for a subscriber on %s", o.wait_subscriber, self.endpoint)
                if not self.publisher.wait_for_subscriber(o.wait_subscriber, stop=self._stop) and not self._stop.is_set():
                    log.warning("no subscriber after %.0f s; starting anyway", o.wait_subscriber)
            self.scheduler.start()
            t_start, cpu_start = time.monotonic(), time.process_time()
            with self._lock:
                for s in self._sources:
                    self._start_reader(s)
            self.ready.set()
            states: dict[str, tuple[str, float]] = {}
            while (readers := self._alive_readers()) or (self.keep_open and not self._stop.is_set()):
                if self.scheduler.error is not None:
                    self.stop()
                if o.duration is not None and time.monotonic() - t_start >= o.duration:
                    self.stop()
                for s, alive in self._reader_states():
                    self._heartbeat(s, s.status if alive else "ended", states)
                for r in readers:
                    r.join(0.05)    # short joins keep the main thread responsive to signals
                if not readers:
                    self._stop.wait(0.05)
            self.scheduler.close(drain=True)
            if self.scheduler.error is not None:
                raise self.scheduler.error
            seconds = time.monotonic() - t_start
            self._process_cpu = time.process_time() - cpu_start
        except BaseException:
            failed = True
            raise
        finally:
            self._stop.set()
            for s in self._sources or []:
                s.close()
            if self.scheduler is not None:
                self.scheduler.close(drain=False, timeout=10)
            # Every consumer is closed and the socket too, whatever one of them raises; the first
            # error (a recording that could not be written) then ends the run as a failure.
            close_error: Optional[BaseException] = None
            for c in started:
                try:
                    c.close(failed=failed)
                except Exception as exc:
                    if failed:
                        log.error("closing %s failed: %s", type(c).__name__, exc)
                    close_error = close_error or exc
            for s in (self._sources or []) if self.ready.is_set() else []:
                self._heartbeat(s, "ended", {})
            self.publisher.close()
            if close_error is not None and not failed:
                raise close_error
        return self._summary(seconds)

    def _heartbeat(self, source, state: str, sent: dict[str, tuple[str, float]]) -> None:
        """``status/<stream>`` at once when the state changes, else every ``heartbeat_s``: subscribers
        tell a stream that is down from one that is merely quiet."""
        sid, now = source.stream_id, time.monotonic()
        previous = sent.get(sid)
        if previous is not None and previous[0] == state and now - previous[1] < self.opts.heartbeat_s:
            return
        sent[sid] = (state, now)
        last = self._last_frame.get(sid)
        try:
            self.publisher.send_status(sid, state, last_pts=None if last is None else last[0],
                                       frame_age_s=None if last is None else round(now - last[1], 3),
                                       reconnects=int(getattr(source, "reconnects", 0)))
        except Exception:           # a heartbeat must never take the run down
            log.debug("status heartbeat failed", exc_info=True)

    def _read(self, source) -> None:
        sid = source.stream_id
        asm = self.assemblers[sid]
        sched = self.scheduler
        lossless = not self.opts.paced
        frames = 0
        it = iter(source)
        clock = time.thread_time
        decode = preprocess = 0.0
        try:
            c0 = clock()
            for unit in it:
                c1 = clock()
                decode += c1 - c0
                if self._stop.is_set():
                    break
                if isinstance(unit, VideoFrame):
                    frames += 1
                    if self.opts.max_frames is not None and frames > self.opts.max_frames:
                        break
                    self._last_frame[sid] = (float(unit.pts), time.monotonic())
                elif isinstance(unit, StreamEvent):
                    self._log_event(unit)
                    if unit.kind == "end":
                        continue        # flushed below, once, however the loop ends
                for c in self.consumers:
                    c.on_unit(unit)
                for w in asm.push(unit):
                    sched.submit(w, block=lossless)
                c0 = clock()
                preprocess += c0 - c1
        except Exception as exc:
            # Input the model cannot take (a degenerate picture, …): end this stream with one clear
            # line and a failed exit, never a thread traceback and a run that "succeeded" with 0 maps.
            message = redact(f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._source_errors.append(f"stream {sid}: {message}")
            log.error("stream %s: stopped: %s", sid, message)
            log.debug("stream %s: reader failure", sid, exc_info=True)
        finally:
            self.cpu.add("decode", decode)          # reading and decoding the source (PyAV, camera, …)
            self.cpu.add("preprocess", preprocess)  # frame resize/normalise and log-mel slices, on arrival
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
    def map_header(self, res: MapResult) -> wire.MapHeader:
        """The header of one finished map (the publisher fills in what only it knows)."""
        w = res.window
        flags = {k: v for k, v in w.flags.items() if v}
        # The first map published after a source outage carries it (its window's own may
        # have been dropped): flags.gap plus each missing PTS range, exclusive at both ends.
        reported = self._gaps_reported.get(w.stream_id, 0)
        new_gaps = [dict(g) for g in w.gaps[reported:]]
        if new_gaps:
            flags["gap"] = True
            self._gaps_reported[w.stream_id] = len(w.gaps)
        return wire.MapHeader(
            stream=w.stream_id, frame_index=w.target_index, pts=w.target_pts, capture_time=w.target_capture,
            mode=w.mode, latency_ms=res.latency_ms, dropped=res.dropped, profile=self.engine.config.profile,
            engine=getattr(self.engine, "name", type(self.engine).__name__), steps=res.steps, batch=res.batch,
            flags=flags, source_shape=list(w.image.shape[:2]), gaps=new_gaps or None,
            window={"frames": len(w.frame_indices), "first_frame": w.frame_indices[0],
                    "audio_end_pts": w.audio_end_pts},
            extra={"samples": res.samples} if res.samples > 1 else {})

    def _on_result(self, res: MapResult) -> None:
        w = res.window
        c0 = time.thread_time()
        if self.opts.send_frames:
            self.publisher.send_frame(w.stream_id, w.target_index, w.target_pts, w.target_capture, w.image)
        c1 = time.thread_time()
        h = self.publisher.publish_map(self.map_header(res), res.saliency, started=res.done_time)
        if res.spread is not None:                      # right after its map, under the same header
            self.publisher.publish_conf(h, res.spread)
        self.cpu.add("preview", c1 - c0)                # JPEG of the frame for remote overlays
        self.cpu.add("publish", time.thread_time() - c1)
        self.stats.add(h)
        for c in self.consumers:
            if res.spread is not None and hasattr(c, "on_spread"):
                c.on_spread(h, res.spread)
            c.on_map(h, res.saliency)

    def _summary(self, seconds: float) -> RunSummary:
        sched, st = self.scheduler, self.stats
        notes = [line for c in self.consumers for line in c.summary()]
        cpu = dict(self.cpu.seconds)
        for c in self.consumers:                        # consumers that work in their own thread say how much
            if getattr(c, "cpu_seconds", 0.0):
                cpu[getattr(c, "name", type(c).__name__)] = c.cpu_seconds
        return RunSummary(
            maps=len(st.latencies), seconds=seconds, latencies_ms=list(st.latencies),
            stage_ms={k: v for k, v in st.stages.items() if v},
            dropped_windows=sum(sched.dropped.values()) if sched else 0, send_dropped=self.publisher.send_dropped,
            modes=dict(st.modes), lagging_windows=sum(a.lagged_windows for a in self.assemblers.values()),
            batch_sizes=dict(sched.batch_sizes) if sched else {}, per_stream=dict(st.per_stream),
            source_errors=list(self._source_errors), gaps=sum(len(a.gaps) for a in self.assemblers.values()),
            notes=notes, cpu_s=cpu, process_cpu_s=self._process_cpu)
