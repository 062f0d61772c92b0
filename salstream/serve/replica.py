"""One replica of a cluster: a keep-open live pipeline serving the streams pinned to it.

:class:`StreamReplica` is plain Python; the controller runs it as a Ray actor. It builds
the engine once, then opens, runs and closes streams on request. Everything per stream
(source decode, window assembly, feature caches, the scheduler's batching across the
streams it holds) is the single-process :class:`~salstream.streamer.live.pipeline.Pipeline`;
its maps go to the driver's forwarder through a publisher that connects instead of binding.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from salstream.errors import SalstreamError
from salstream.serve.resume import ContinuedSource, Resume
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.wire.publisher import Publisher

log = logging.getLogger("salstream.serve.replica")


@dataclass(frozen=True)
class EngineRecipe:
    """How each replica loads its engine (picklable, so it travels to the replica's machine).

    The checkpoint (and artifacts) path must exist on every node; the bundled weights do.
    """
    profile: str = "lite"
    checkpoint: Optional[str] = None
    engine: str = "auto"
    threads: Optional[int] = None
    artifacts: Optional[str] = None

    def __call__(self):
        from salstream.runtime import load_engine
        return load_engine(self.profile, self.checkpoint, self.engine, self.threads, self.artifacts)[0]


def _log_to_stderr(name: str, level: Optional[str]) -> None:
    """Replica processes start with logging unconfigured: say salstream's messages, named by replica."""
    logger = logging.getLogger("salstream")
    if level:
        logger.setLevel(level)
    if not any(getattr(h, "_salstream_replica", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"salstream[{name}]: %(message)s"))
        handler._salstream_replica = True
        logger.addHandler(handler)
        logger.propagate = False


def _ray_node() -> Optional[str]:
    """The id of the Ray node this replica runs on (None outside Ray)."""
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:
        return None


class StreamReplica:
    """Serves the streams the controller pins to it (see the module docstring).

    ``opts``: the live options (sources, publish and duration are the controller's business
    and ignored here). ``engine``: an engine or a zero-argument factory (:class:`EngineRecipe`).
    ``forward_to``: the driver's forwarder address, which this replica connects to.
    ``roi``: also publish ``roi/<stream>`` for every map (``serve --roi``; a
    :class:`~salstream.streamer.guidance.roi.RoiConfig`), as ``salstream run --roi`` does.
    """

    def __init__(self, name: str, opts: PipelineOptions, engine: Any, forward_to: str,
                 log_level: Optional[str] = None, subscribe_timeout: float = 10.0, roi: Any = None):
        _log_to_stderr(name, log_level)
        self.name = name
        self.opts = dataclasses.replace(opts, sources=[], publish=None, duration=None, wait_subscriber=0.0)
        self.publisher = Publisher(forward_to, connect=True, hwm=opts.hwm, payload_dtype=opts.payload_dtype)
        # The forwarder subscribes to every topic; until that subscription has arrived here a
        # PUB socket drops what it sends, so the first maps of a moved stream would be lost.
        if not self.publisher.wait_for_subscriber(subscribe_timeout):
            self.publisher.close()
            raise SalstreamError(f"replica {name}: no connection to the driver's forwarder {forward_to} "
                                 f"after {subscribe_timeout:.0f} s; check that this node can reach it")
        consumers = []
        if roi is not None:        # per-stream smoothing restarts on a moved stream's first map (its gap flag)
            from salstream.streamer.guidance.roi import RoiFeed
            consumers.append(RoiFeed(roi))
        self.pipe = Pipeline(self.opts, engine, sources=[], publisher=self.publisher, keep_open=True,
                             consumers=consumers)
        self._lock = threading.Lock()
        self.streams: dict[str, dict[str, Any]] = {}     # stream id -> what status() says about it
        self.summary = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=f"salstream-replica-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.pipe.run()
        except BaseException as exc:   # reported by ready() and status(); the controller moves the streams
            self.error = exc
            log.error("replica %s stopped: %s", self.name, exc)
        finally:
            self.pipe.ready.set()

    # ------------------------------------------------------------------ controller calls
    def ready(self, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until the engine is loaded; who and where this replica is."""
        if not self.pipe.ready.wait(timeout):
            raise SalstreamError(f"replica {self.name}: the engine did not load within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        eng = self.pipe.engine
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), "node": _ray_node(),
                "engine": getattr(eng, "name", type(eng).__name__), "profile": eng.config.profile,
                "steps": self.pipe.scheduler.steps}

    def add_stream(self, stream_id: str, spec: str, resume: Optional[Resume] = None) -> dict[str, Any]:
        """Open ``spec`` and start serving it as ``stream_id``; with ``resume``, continue a moved stream.

        A source that cannot be opened raises :class:`SalstreamError` for this call only.
        """
        from salstream.streamer.live.sources import open_source

        if self.error is not None:
            raise SalstreamError(f"replica {self.name} has stopped: {self.error}")
        source = open_source(spec, stream_id=stream_id, paced=self.opts.paced)
        try:
            if resume is not None:
                self.publisher.continue_seq(stream_id, resume.next_seq)
                source = ContinuedSource(source, resume)
            self.pipe.add_source(source)
        except BaseException:
            source.close()
            raise
        info = {"source": source.description, "since": time.time(), "resumed": resume is not None}
        with self._lock:
            self.streams[stream_id] = info
        if resume is not None:        # (the pipeline has logged the stream itself)
            log.info("stream %s moved here; it continues after PTS %.3f", stream_id, resume.after_pts)
        return dict(info, stream=stream_id)

    def remove_stream(self, stream_id: str) -> bool:
        return self.pipe.remove_stream(stream_id)

    def status(self) -> dict[str, Any]:
        """What runs here: live streams, ended ones, maps per stream, source errors, a fatal error."""
        running = set(self.pipe.running_streams)
        with self._lock:
            known = dict(self.streams)
        return {"name": self.name, "pid": os.getpid(), "running": sorted(running),
                "ended": sorted(set(known) - running), "maps": dict(self.pipe.stats.per_stream),
                "source_errors": self.pipe.source_errors, "dropped": int(sum(
                    self.pipe.scheduler.dropped.values())) if self.pipe.scheduler else 0,
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}

    def stop(self, timeout: float = 30.0) -> Optional[dict[str, Any]]:
        """Close every stream, finish the maps in flight; this replica's run summary (``to_dict``)."""
        self.pipe.stop()
        self._thread.join(timeout)
        if self.summary is None:
            return None
        return dict(self.summary.to_dict(), replica=self.name, text=self.summary.format())
