"""The driver of a cluster: starts replicas, pins streams to them, moves streams off lost ones.

Stream affinity
    Each stream is pinned to one replica (the one with the fewest streams when it is
    assigned; replicas are placed with Ray's ``SPREAD`` strategy, so across nodes) and stays
    there while that replica lives: its window history and feature cache never move.
Health
    Every ``health_interval`` the controller asks each replica for its status. A replica
    whose process died (Ray reports the actor dead), whose pipeline stopped with an error,
    or that has not answered for ``health_timeout`` seconds is lost: it is killed if still
    there, and its running streams are pinned to the live replicas with the fewest
    streams. A replacement replica is started ``replace_delay`` seconds later (``replace_lost``;
    at once when a stream found no live replica); it takes streams of
    later moves and any stream that found no live replica, so capacity comes back
    without moving streams off replicas that live. Each moved stream reopens its source there and continues its clocks after the
    last map the forwarder saw (:mod:`salstream.serve.resume`): the first map after the move
    carries ``flags.gap`` and the missing PTS range, and ``seq`` continues.
Sources
    A source that cannot be opened, or that fails while running, ends that stream only
    (reported in the summary, exit status 1), never its replica. The run ends when every
    stream has ended, after ``duration``, or on :meth:`ClusterController.stop` (Ctrl-C).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from salstream.errors import SalstreamError
from salstream.serve.config import StreamSpec
from salstream.serve.forwarder import Forwarder
from salstream.serve.replica import StreamReplica
from salstream.serve.resume import Resume
from salstream.streamer.live.pipeline import PipelineOptions
from salstream.streamer.wire.publisher import is_loopback, refuse_remote

log = logging.getLogger("salstream.serve")

RAY_HINT = "install the serve extra: pip install 'salstream[serve]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise SalstreamError(f"salstream serve runs on Ray, which is not installed; {RAY_HINT}") from None
    return ray


@dataclass
class ReplicaState:
    index: int
    name: str
    actor: Any
    info: dict = field(default_factory=dict)       # ready(): pid, host, engine…
    alive: bool = True
    ready: bool = False                             # engine loaded; streams may be pinned here
    starting: Any = None                            # the ready() call in flight
    pending: Any = None                             # the status call in flight
    pending_since: float = 0.0
    last_status: dict = field(default_factory=dict)
    lost_reason: Optional[str] = None
    summary: Optional[dict] = None


@dataclass
class StreamState:
    spec: StreamSpec
    replica: Optional[int] = None                   # index of the replica it is pinned to
    state: str = "waiting"                          # waiting | starting | running | ended | failed
    error: Optional[str] = None
    resume: Optional[Resume] = None                 # where it continues once a replica takes it


@dataclass
class ClusterSummary:
    seconds: float
    maps: dict[str, int]                            # maps forwarded per stream
    replicas: list[dict]
    streams: dict[str, dict]
    moves: list[dict]
    errors: list[str]

    def format(self) -> str:
        total = sum(self.maps.values())
        rate = total / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{total} maps in {self.seconds:.1f} s ({rate:.1f} maps/s) from {len(self.streams)} stream(s) "
                 f"on {len(self.replicas)} replica(s)"]
        if self.maps and self.seconds > 0:
            lines.append("per stream: " + ", ".join(f"{sid} {n / self.seconds:.1f} maps/s"
                                                    for sid, n in sorted(self.maps.items())))
        for r in self.replicas:
            head = f"replica {r['name']}" + (f" (pid {r['pid']} on {r['host']})" if r.get("pid") else "")
            if r.get("lost"):
                lines.append(f"{head}: lost ({r['lost']})")
            elif r.get("summary"):
                first = r["summary"]["text"].splitlines()
                lines.append(f"{head}: " + first[0])
                lines.extend("    " + line for line in first[1:3])
        for m in self.moves:
            resumed = f", maps again after {m['resumed_s']:.2f} s" if m.get("resumed_s") is not None else ""
            lines.append(f"moved stream {m['stream']}: replica {m['from']} → {m['to']} ({m['reason']}{resumed})")
        lines.extend(self.errors)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "maps": self.maps, "replicas": self.replicas,
                "streams": self.streams, "moves": self.moves, "errors": self.errors}

    def write_json(self, path: str) -> None:
        import json
        import os
        from pathlib import Path
        target = Path(path)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, target)
        except OSError as exc:
            raise SalstreamError(f"--summary-json {path}: cannot write it ({exc})") from None


class ClusterController:
    """Runs one cluster session (see the module docstring); ``run()`` blocks, ``stop()`` ends it.

    ``engine``: a zero-argument factory each replica calls (e.g. :class:`~salstream.serve.replica.EngineRecipe`);
    it is pickled to the replicas. ``ray_address``: join that cluster; ``None``: use the
    Ray runtime this process is already connected to, else start a local one sized for
    the replicas (dashboard off, small object store).
    """

    def __init__(self, opts: PipelineOptions, engine: Any, streams: list[StreamSpec], *, replicas: int = 2,
                 ray_address: Optional[str] = None, replica_cpus: float = 1.0, replica_gpus: float = 0.0,
                 object_store_mb: int = 128, health_interval: float = 0.5, health_timeout: float = 10.0,
                 ready_timeout: float = 600.0, log_level: Optional[str] = None, replace_lost: bool = True,
                 max_replacements: Optional[int] = None, replace_delay: float = 5.0, roi: Any = None):
        opts.validate()
        if replicas < 1:
            raise SalstreamError(f"--replicas {replicas}: must be >= 1")
        if replica_cpus <= 0 or replica_gpus < 0:
            raise SalstreamError(f"--replica-cpus {replica_cpus} / --replica-gpus {replica_gpus}: CPUs must be "
                                 "> 0 and GPUs >= 0 (fractions share a device, e.g. 0.5)")
        if not streams:
            raise SalstreamError("no streams: give --source SPEC (repeatable) or --config streams.yaml")
        self.opts, self.engine = opts, engine
        self.roi = roi                       # a RoiConfig: every replica also publishes roi/<stream>
        self.n_replicas, self.ray_address = int(replicas), ray_address
        self.replica_cpus, self.replica_gpus = float(replica_cpus), float(replica_gpus)
        self.object_store_mb = int(object_store_mb)
        self.health_interval, self.health_timeout = float(health_interval), float(health_timeout)
        self.ready_timeout = float(ready_timeout)
        self.log_level = log_level
        self.replace_lost = bool(replace_lost)
        # A replica that keeps dying (a broken node, an engine that cannot load) must not loop forever.
        self.max_replacements = 2 * self.n_replicas if max_replacements is None else int(max_replacements)
        self.replacements = 0
        self.replace_delay = float(replace_delay)
        self._replacing: list[tuple[float, str]] = []     # (when, lost replica's name) to start
        self._actor_cls = None
        self.streams = {s.stream_id: StreamState(s) for s in streams}
        self.replicas: list[ReplicaState] = []
        self.moves: list[dict] = []
        self.errors: list[str] = []
        self.forwarder: Optional[Forwarder] = None
        self.endpoint: Optional[str] = None
        self._adds: dict[Any, tuple[str, int, Optional[Resume]]] = {}   # add_stream call -> (stream, replica, resume)
        self._stop = threading.Event()
        self._started_ray = False
        self.ready = threading.Event()       # replicas loaded, streams being assigned

    def stop(self) -> None:
        """End the session (thread- and signal-safe): replicas finish their maps, then everything shuts down."""
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self) -> ClusterSummary:
        o = self.opts
        self.forwarder = Forwarder(o.publish, self.streams, allow_remote=o.allow_remote, hwm=o.hwm,
                                   payload_dtype=o.payload_dtype)
        self.endpoint = self.forwarder.endpoint
        ray = None
        t0 = time.monotonic()
        try:
            ray = self._connect()
            self.forwarder.start(self._listen_host(ray))
            self._start_replicas(ray)
            if o.wait_subscriber > 0:
                log.info("waiting up to %.0f s for a subscriber on %s", o.wait_subscriber, self.endpoint)
                if not self.forwarder.out.wait_for_subscriber(o.wait_subscriber, stop=self._stop) \
                        and not self._stop.is_set():
                    log.warning("no subscriber after %.0f s; starting anyway", o.wait_subscriber)
            log.info("publishing the maps of %d stream(s) on %s", len(self.streams), self.endpoint)
            self.ready.set()
            t0 = time.monotonic()
            for sid in self.streams:
                self._assign(ray, sid)
            while not self._stop.is_set():
                tick = time.monotonic()
                self._check(ray)
                if o.duration is not None and time.monotonic() - t0 >= o.duration:
                    break
                if all(s.state in ("ended", "failed") for s in self.streams.values()):
                    break
                self._stop.wait(max(0.0, self.health_interval - (time.monotonic() - tick)))
            seconds = time.monotonic() - t0
        finally:
            self._stop.set()
            self.ready.set()
            try:
                if ray is not None:
                    self._shutdown(ray)
            finally:
                self.forwarder.close()
                if self._started_ray:
                    ray.shutdown()
        return self._summary(seconds)

    def _connect(self):
        ray = import_ray()
        if self.ray_address is not None:
            log.info("joining the Ray cluster at %s", self.ray_address)
            try:
                ray.init(address=self.ray_address, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise SalstreamError(f"--ray-address {self.ray_address}: cannot join that Ray cluster ({exc}); "
                                     "give the address `ray start --head` printed, e.g. 10.0.0.5:6379, and when "
                                     "the cluster uses token authentication (Ray's default) set RAY_AUTH_MODE=token "
                                     "with its token (~/.ray/auth_token)") from None
            self._started_ray = True
        elif not ray.is_initialized():
            cpus = max(1, math.ceil(self.n_replicas * self.replica_cpus))
            log.info("starting a local Ray runtime (%d CPUs for %d replica(s))", cpus, self.n_replicas)
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=self.object_store_mb << 20,
                     logging_level=logging.WARNING)
            self._started_ray = True
        return ray

    def _listen_host(self, ray) -> str:
        """Loopback when every node is this machine; else this node's cluster address (needs --allow-remote)."""
        here = ray.util.get_node_ip_address()
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        if nodes <= {here} or all(is_loopback(n) for n in nodes):
            return "127.0.0.1"
        refuse_remote(here, "replicas on other machines send maps to this driver", "one machine's cluster",
                      self.opts.allow_remote)
        return here

    def _spawn(self, ray) -> ReplicaState:
        """Start one more replica (asynchronously: ``starting`` holds its ready() call)."""
        if self._actor_cls is None:
            self._actor_cls = ray.remote(StreamReplica).options(
                num_cpus=self.replica_cpus, num_gpus=self.replica_gpus, max_concurrency=4, max_restarts=0,
                scheduling_strategy="SPREAD")
        r = ReplicaState(len(self.replicas), f"r{len(self.replicas)}", None)
        r.actor = self._actor_cls.remote(r.name, self.opts, self.engine, self.forwarder.address, self.log_level,
                                         roi=self.roi)
        r.starting, r.pending_since = r.actor.ready.remote(self.ready_timeout), time.monotonic()
        self.replicas.append(r)
        return r

    def _started(self, ray, r: ReplicaState) -> None:
        """Take the answer of a replica's ready() call (it must be done)."""
        ref, r.starting = r.starting, None
        try:
            r.info = ray.get(ref)
        except Exception as exc:
            self._lost(ray, r, f"did not start: {_cause(exc)}")
            return
        r.ready = True
        log.info("replica %s ready: pid %s on %s, %s engine", r.name, r.info.get("pid"), r.info.get("host"),
                 r.info.get("engine"))

    def _start_replicas(self, ray) -> None:
        log.info("starting %d replica(s); each loads the model (the first run may export it once)", self.n_replicas)
        for _ in range(self.n_replicas):
            self._spawn(ray)
        deadline = time.monotonic() + self.ready_timeout
        while not self._stop.is_set():
            waiting = [r.starting for r in self.replicas if r.starting is not None]
            if not waiting:
                break
            ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
            for r in self.replicas:
                if r.starting is not None and ray.wait([r.starting], timeout=0)[0]:
                    self._started(ray, r)
            if time.monotonic() > deadline:
                raise SalstreamError(f"the replicas did not load the model within {self.ready_timeout:.0f} s")
        if self._stop.is_set():
            raise KeyboardInterrupt
        if not any(r.ready for r in self.replicas):
            raise SalstreamError(f"no replica started: {self.replicas[0].lost_reason}")

    # ------------------------------------------------------------------ placement
    def _load(self, r: ReplicaState) -> int:
        return sum(1 for s in self.streams.values() if s.replica == r.index and s.state in ("starting", "running"))

    def _assign(self, ray, sid: str, resume: Optional[Resume] = None) -> None:
        live = [r for r in self.replicas if r.alive and r.ready]
        st = self.streams[sid]
        if not live:
            if any(r.alive for r in self.replicas) or self._replacing:   # a replacement will take it
                st.state, st.replica, st.resume = "waiting", None, resume
                log.warning("stream %s: no live replica; waiting for one to start", sid)
            else:
                st.state, st.replica, st.error = "failed", None, "no live replica left"
                self.errors.append(f"stream {sid}: no live replica left")
            return
        target = min(live, key=lambda r: (self._load(r), r.index))
        st.replica, st.state, st.resume = target.index, "starting", None
        for m in reversed(self.moves):                    # a move that waited for a replica ends here
            if m["stream"] == sid and m["to"] is None:
                m["to"] = target.name
                break
        ref = target.actor.add_stream.remote(sid, st.spec.source, resume)
        self._adds[ref] = (sid, target.index, resume)

    def _move(self, ray, sid: str, lost: ReplicaState) -> None:
        last = self.forwarder.last_map(sid)
        resume = None
        if last is not None:
            header, age = last
            resume = Resume(after_pts=header.pts, after_index=header.frame_index, next_seq=header.seq + 1,
                            lost_for=age, reason=f"replica {lost.name} lost")
        self._assign(ray, sid, resume)
        st = self.streams[sid]
        to = self.replicas[st.replica].name if st.replica is not None else None
        self.moves.append({"stream": sid, "from": lost.name, "to": to, "reason": lost.lost_reason,
                           "at": time.monotonic(), "after_pts": None if resume is None else resume.after_pts,
                           "resumed_s": None})
        log.warning("stream %s: replica %s lost (%s); moved to %s", sid, lost.name, lost.lost_reason, to)

    def _lost(self, ray, r: ReplicaState, reason: str) -> None:
        if not r.alive:
            return
        r.alive, r.ready, r.lost_reason, r.pending, r.starting = False, False, reason, None, None
        log.error("replica %s lost: %s", r.name, reason)
        try:
            ray.kill(r.actor, no_restart=True)
        except Exception:   # already gone
            pass
        if self.replace_lost and self.replacements < self.max_replacements:
            # Not at once: a new process loading the model would compete for CPU with the moved
            # streams starting on the survivors (seconds on a small node).
            self.replacements += 1
            self._replacing.append((time.monotonic() + self.replace_delay, r.name))
        for sid, st in self.streams.items():
            if st.replica == r.index and st.state in ("starting", "running"):
                self._move(ray, sid, r)

    # ------------------------------------------------------------------ health
    def _check(self, ray) -> None:
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        now = time.monotonic()
        # Streams being opened: done, failed (bad source: that stream only), or their replica died.
        if self._adds:
            done, _ = ray.wait(list(self._adds), num_returns=len(self._adds), timeout=0)
            for ref in done:
                sid, index, resume = self._adds.pop(ref)
                st = self.streams[sid]
                if st.replica != index:
                    continue                                  # moved meanwhile
                try:
                    ray.get(ref)
                    st.state = "running"
                except RayActorError:
                    pass                                      # the replica's loss moves it
                except Exception as exc:
                    st.state, st.error = "failed", _cause(exc)
                    self.errors.append(f"stream {sid}: {st.error}")
                    log.error("stream %s: %s", sid, st.error)
        # Replacements: start the due ones; those that finished starting take streams that found no replica.
        for due, lost in list(self._replacing):
            no_replica = any(st.state == "waiting" for st in self.streams.values())
            if now >= due or no_replica:
                self._replacing.remove((due, lost))
                new = self._spawn(ray)
                log.info("starting replica %s in place of %s", new.name, lost)
        for r in list(self.replicas):
            if r.starting is not None and ray.wait([r.starting], timeout=0)[0]:
                self._started(ray, r)
            elif r.starting is not None and now - r.pending_since > self.ready_timeout:
                self._lost(ray, r, f"did not load the model within {self.ready_timeout:.0f} s")
        if any(r.ready for r in self.replicas):
            for sid, st in self.streams.items():
                if st.state == "waiting":
                    self._assign(ray, sid, st.resume)
        # Status of every live replica (one call in flight each).
        for r in self.replicas:
            if r.ready and r.pending is None:
                r.pending, r.pending_since = r.actor.status.remote(), now
        pending = [r.pending for r in self.replicas if r.ready]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=min(self.health_interval, 0.5))
        for r in list(self.replicas):
            if not r.ready:
                continue
            try:
                status = ray.get(r.pending, timeout=0)
            except GetTimeoutError:
                if time.monotonic() - r.pending_since > self.health_timeout:
                    self._lost(ray, r, f"no answer for {self.health_timeout:.0f} s")
                continue
            except ActorUnavailableError:
                r.pending = None                              # unreachable for now: ask again
                continue
            except RayActorError as exc:
                self._lost(ray, r, f"process died ({_cause(exc)})")
                continue
            except Exception as exc:                          # status() itself failed: the replica is broken
                self._lost(ray, r, f"status failed ({_cause(exc)})")
                continue
            r.pending, r.last_status = None, status
            if status.get("error"):
                self._lost(ray, r, f"pipeline stopped: {status['error']}")
                continue
            for sid in status.get("ended", ()):
                st = self.streams.get(sid)
                if st is not None and st.replica == r.index and st.state == "running":
                    errors = [e for e in status.get("source_errors", ()) if e.startswith(f"stream {sid}:")]
                    st.state = "failed" if errors else "ended"
                    st.error = errors[-1] if errors else None
                    if errors:
                        self.errors.append(errors[-1])
        # When did each moved stream's maps come back?
        for m in self.moves:
            if m["resumed_s"] is None:
                got = self.forwarder.last_received(m["stream"])
                if got is not None and got > m["at"]:
                    m["resumed_s"] = got - m["at"]

    # ------------------------------------------------------------------ end
    def _shutdown(self, ray) -> None:
        live = [r for r in self.replicas if r.ready]
        refs = {r.index: r.actor.stop.remote() for r in live}
        for r in live:
            try:
                r.summary = ray.get(refs[r.index], timeout=60)
            except Exception as exc:
                log.warning("replica %s did not stop cleanly: %s", r.name, _cause(exc))
        for r in self.replicas:
            try:
                ray.kill(r.actor, no_restart=True)
            except Exception:
                pass

    def _summary(self, seconds: float) -> ClusterSummary:
        replicas = []
        for r in self.replicas:
            replicas.append({"name": r.name, "pid": r.info.get("pid"), "host": r.info.get("host"),
                             "engine": r.info.get("engine"), "lost": r.lost_reason, "summary": r.summary,
                             "streams": sorted(sid for sid, s in self.streams.items() if s.replica == r.index)})
        from salstream.redact import redact  # never a URL's password in a summary
        streams = {sid: {"source": redact(s.spec.source),
                         "replica": None if s.replica is None else self.replicas[s.replica].name,
                         "state": s.state, "error": s.error} for sid, s in self.streams.items()}
        moves = [{k: v for k, v in m.items() if k != "at"} for m in self.moves]
        return ClusterSummary(seconds=seconds, maps=dict(self.forwarder.maps), replicas=replicas, streams=streams,
                              moves=moves, errors=list(self.errors))

    # ------------------------------------------------------------------ for tests and tools
    def replica_of(self, stream_id: str) -> Optional[str]:
        st = self.streams[stream_id]
        return None if st.replica is None else self.replicas[st.replica].name


def _cause(exc: BaseException) -> str:
    """The message of the error a remote call raised (Ray wraps it), without Ray's troubleshooting advice."""
    cause = getattr(exc, "cause", None)
    if cause is not None and cause is not exc:
        return str(cause)
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    line = line.split(" Worker exit detail:")[0].split(" Some common causes")[0]
    return line if len(line) <= 200 else line[:199] + "…"
