"""Latency of any running publisher, measured from the map headers (``salstream bench --subscribe``).

Each map header carries its frame's capture time and its publish time (both on the
publisher's monotonic clock) and ``publish_wall`` (Unix time). So a subscriber can split
the latency it sees into

* capture → publish: ``publish_time - capture_time`` (one clock, exact), with the
  publisher's own per-stage breakdown (``latency_ms``);
* publish → receive: ``receive wall time - publish_wall``: exact on the same host, and
  as good as the two hosts' clock synchronisation (NTP/PTP) across hosts;
* capture → receive: the sum.

The pipeline benchmark uses the same collector on loopback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np

from .report import stats

STAGES = ("assemble", "wait", "video_encoder", "audio_encoder", "denoise", "postprocess", "publish")


@dataclass
class Sample:
    stream: str
    seq: Optional[int]
    frame_index: int
    capture_time: float
    publish_time: float
    publish_wall: float
    recv_wall: float
    recv_mono: float
    stages_ms: dict[str, float]
    batch: Optional[int]
    steps: Optional[int]
    engine: Optional[str]
    profile: Optional[str]
    dropped: Optional[int]
    mode: Optional[str]

    @property
    def capture_to_publish_ms(self) -> float:
        return (self.publish_time - self.capture_time) * 1000.0

    @property
    def publish_to_receive_ms(self) -> float:
        return (self.recv_wall - self.publish_wall) * 1000.0


def sample_from(header: dict[str, Any], recv_wall: float, recv_mono: float) -> Sample:
    lat = header.get("latency_ms") or {}
    stages = {}
    for k, v in lat.items():
        if isinstance(v, list):
            v = sum(v)
        if isinstance(v, (int, float)):
            stages[k] = float(v)
    return Sample(stream=str(header["stream"]), seq=header.get("seq"), frame_index=int(header.get("frame_index", -1)),
                  capture_time=float(header["capture_time"]), publish_time=float(header["publish_time"]),
                  publish_wall=float(header.get("publish_wall", recv_wall)), recv_wall=recv_wall,
                  recv_mono=recv_mono, stages_ms=stages, batch=header.get("batch"), steps=header.get("steps"),
                  engine=header.get("engine"), profile=header.get("profile"), dropped=header.get("dropped"),
                  mode=header.get("mode"))


def collect(sub, *, seconds: Optional[float] = None, maps: Optional[int] = None,
            keep_going: Optional[Callable[[], bool]] = None, idle_timeout: Optional[float] = None,
            progress: Optional[Callable[[str], None]] = None) -> list[Sample]:
    """Receive maps from ``sub`` (a :class:`streamer.subscriber.Subscriber`) until ``seconds`` have
    passed since the first map, ``maps`` maps arrived, ``keep_going()`` turns false with nothing
    queued, or no map came for ``idle_timeout`` seconds."""
    samples: list[Sample] = []
    first: Optional[float] = None
    last_rx = time.monotonic()
    next_note = time.monotonic() + 5.0
    while True:
        msg = sub.recv_map(timeout=0.2)
        now = time.monotonic()
        if msg is None:
            if keep_going is not None and not keep_going():
                break
            if idle_timeout is not None and now - last_rx > idle_timeout:
                break
            if first is not None and seconds is not None and now - first >= seconds:
                break
            continue
        last_rx = now
        samples.append(sample_from(msg.header, time.time(), now))
        if first is None:
            first = now
        if maps is not None and len(samples) >= maps:
            break
        if seconds is not None and now - first >= seconds:
            break
        if progress is not None and now >= next_note:
            progress(f"received {len(samples)} maps")
            next_note = now + 5.0
    return samples


def _rate(times: list[float]) -> Optional[float]:
    return (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 and max(times) > min(times) else None


def summarise(samples: Iterable[Sample], warmup_s: float = 0.0) -> dict[str, Any]:
    """Latency percentiles, rates and stage medians over ``samples``, leaving out the first
    ``warmup_s`` seconds of capture time (first-call allocations, session start-up)."""
    samples = list(samples)
    t0 = min((s.capture_time for s in samples), default=0.0)
    kept = [s for s in samples if s.capture_time - t0 >= warmup_s]
    c2p = [s.capture_to_publish_ms for s in kept]
    p2r = [s.publish_to_receive_ms for s in kept]
    c2r = [a + b for a, b in zip(c2p, p2r)]
    per_stream: dict[str, dict[str, Any]] = {}
    for sid in sorted({s.stream for s in kept}):
        mine = [s for s in kept if s.stream == sid]
        seqs = [s.seq for s in mine if isinstance(s.seq, int)]
        gaps = sum(max(0, b - a - 1) for a, b in zip(seqs, seqs[1:]))
        frames = [s.frame_index for s in mine]
        per_stream[sid] = {
            "maps": len(mine), "maps_per_s": _rate([s.publish_time for s in mine]),
            "capture_to_publish_ms": stats(s.capture_to_publish_ms for s in mine),
            "missed_by_subscriber": gaps,
            "frames_spanned": (max(frames) - min(frames) + 1) if frames else 0,
            "dropped_windows_reported": max((s.dropped or 0 for s in mine), default=0)
            - min((s.dropped or 0 for s in mine), default=0),
        }
    stages = {}
    for k in STAGES:
        vals = [s.stages_ms[k] for s in kept if k in s.stages_ms]
        if vals:
            stages[k] = round(float(np.median(vals)), 3)
    stages["receive"] = round(float(np.median(p2r)), 3) if p2r else None
    return {
        "maps": len(samples), "maps_measured": len(kept), "warmup_s": warmup_s,
        "maps_per_s": _rate([s.publish_time for s in kept]),
        "capture_to_publish_ms": stats(c2p), "publish_to_receive_ms": stats(p2r),
        "capture_to_receive_ms": stats(c2r),
        "stage_median_ms": stages,
        "per_stream": per_stream,
        "missed": sum(v["missed_by_subscriber"] for v in per_stream.values()),
        "engines": sorted({s.engine for s in kept if s.engine}),
        "profiles": sorted({s.profile for s in kept if s.profile}),
        "steps": sorted({s.steps for s in kept if s.steps is not None}),
        "batch_sizes": {str(b): n for b, n in zip(*np.unique([s.batch or 1 for s in kept], return_counts=True))}
        if kept else {},
        "cdf_ms": {"capture_to_publish": sorted(round(x, 3) for x in c2p),
                   "capture_to_receive": sorted(round(x, 3) for x in c2r)},
    }


def run_subscribe(address: str, *, seconds: Optional[float] = 30.0, maps: Optional[int] = None,
                  streams: Optional[list[str]] = None, warmup_s: float = 0.0, connect_timeout: float = 30.0,
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Subscribe to ``address`` and measure; a publisher that sends nothing within
    ``connect_timeout`` seconds is an error naming the address."""
    from salstream.errors import SalstreamError
    from salstream.streamer.wire.subscriber import Subscriber

    with Subscriber(address, streams=streams) as sub:
        progress(f"subscribed to {address}; waiting for maps")
        first = sub.recv_map(timeout=connect_timeout)
        if first is None:
            raise SalstreamError(f"no map from {address} within {connect_timeout:.0f} s; check that a publisher "
                                 "runs there (salstream run --publish ADDR) and the address/port match")
        samples = [sample_from(first.header, time.time(), time.monotonic())]
        samples += collect(sub, seconds=seconds, maps=None if maps is None else maps - 1, idle_timeout=10.0,
                           progress=progress)
        bad, last_error = sub.bad_messages, sub.last_error
    out = summarise(samples, warmup_s)
    out.update(address=address, bad_messages=bad, last_error=last_error,
               clock_note="capture->publish uses the publisher's monotonic clock; publish->receive compares "
                          "publish_wall with this host's time.time() (exact on one host; across hosts it "
                          "includes the clock offset)")
    return out
