"""What a run did: maps, latency per stage, drops, modes — collected from the published headers."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.wire.format import LATENCY_STAGES, MapHeader


@dataclass
class RunSummary:
    maps: int
    seconds: float
    latencies_ms: list[float]
    stage_ms: dict[str, list[float]]
    dropped_windows: int
    send_dropped: int
    modes: dict[str, int]
    lagging_windows: int
    batch_sizes: dict[int, int]
    per_stream: dict[str, int]
    source_errors: list[str] = field(default_factory=list)   # streams that ended because their input failed
    gaps: int = 0                                             # source outages (reconnects) over all streams
    notes: list[str] = field(default_factory=list)            # lines from the consumers (recording, …)
    cpu_s: dict[str, float] = field(default_factory=dict)     # CPU seconds per stage (thread time)
    process_cpu_s: float = 0.0                                # CPU seconds of the whole process meanwhile

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def maps_per_second(self) -> float:
        return self.maps / self.seconds if self.seconds > 0 else 0.0

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` (under a temporary name first: never half a file)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, target)
        except OSError as exc:
            raise SalstreamError(f"--summary-json {path}: cannot write it ({exc})") from None

    def format(self) -> str:
        lines = [f"{self.maps} maps in {self.seconds:.1f} s ({self.maps_per_second:.1f} maps/s) from "
                 f"{len(self.per_stream)} stream(s); dropped windows: {self.dropped_windows} (latest wins), "
                 f"publisher drops: {self.send_dropped}"]
        if len(self.per_stream) > 1 and self.seconds > 0:
            lines.append("per stream: " + ", ".join(f"{sid} {n / self.seconds:.1f} maps/s"
                                                    for sid, n in sorted(self.per_stream.items())))
        if self.latencies_ms:
            lines.append(f"capture→publish latency: p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms, "
                         f"p99 {self.percentile(99):.1f} ms (max {max(self.latencies_ms):.1f} ms)")
            parts = [f"{k} {np.median(self.stage_ms[k]):.1f}" for k in LATENCY_STAGES if self.stage_ms.get(k)]
            lines.append("median per stage (ms): " + ", ".join(parts) + "  [denoise = all steps of one map]")
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in sorted(self.modes.items()))
                     + (f" (video-only because audio lagged: {self.lagging_windows})" if self.lagging_windows else "")
                     + "; batch sizes: " + ", ".join(f"{b}×{n}" for b, n in sorted(self.batch_sizes.items())))
        if self.gaps:
            lines.append(f"source outages: {self.gaps} (maps after each are marked with flags.gap)")
        if self.cpu_s and self.seconds > 0:
            share = {k: 100.0 * v / self.seconds for k, v in self.cpu_s.items()}
            lines.append("CPU by stage (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in share.items() if v >= 0.5)
                         + f"; whole process {100.0 * self.process_cpu_s / self.seconds:.0f}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (``--summary-json``, benchmarks)."""
        return {"maps": self.maps, "seconds": round(self.seconds, 3), "maps_per_second": round(self.maps_per_second, 3),
                "latency_ms": {f"p{q}": round(self.percentile(q), 3) for q in (50, 95, 99)} if self.latencies_ms else {},
                "stage_ms_median": {k: round(float(np.median(v)), 3) for k, v in self.stage_ms.items()},
                "dropped_windows": self.dropped_windows, "send_dropped": self.send_dropped, "modes": self.modes,
                "lagging_windows": self.lagging_windows, "batch_sizes": {str(k): v for k, v in self.batch_sizes.items()},
                "per_stream": self.per_stream, "source_errors": self.source_errors, "gaps": self.gaps,
                "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()}, "process_cpu_s": round(self.process_cpu_s, 3),
                "notes": self.notes}


class CpuMeter:
    """CPU time (``time.thread_time``) spent per stage, summed over the threads that report it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class MapStats:
    """Accumulates the per-map figures of a run from the headers that went out (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.stages: dict[str, list[float]] = {k: [] for k in LATENCY_STAGES}
        self.modes: dict[str, int] = {}
        self.per_stream: dict[str, int] = {}
        self.first_publish: Optional[float] = None
        self.last_publish: Optional[float] = None

    def add(self, h: MapHeader) -> None:
        with self._lock:
            self.latencies.append((h.publish_time - h.capture_time) * 1000.0)
            for k in LATENCY_STAGES:
                v = h.latency_ms.get(k)
                if v is not None:
                    self.stages[k].append(sum(v) if isinstance(v, list) else v)
            self.modes[h.mode] = self.modes.get(h.mode, 0) + 1
            self.per_stream[h.stream] = self.per_stream.get(h.stream, 0) + 1
            if self.first_publish is None:
                self.first_publish = h.publish_time
            self.last_publish = h.publish_time
