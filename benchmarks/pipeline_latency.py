"""End-to-end latency of the live pipeline: capture → publish → a subscriber on loopback.

Runs ``streamer.pipeline.Pipeline`` in this process on a paced source (a live feed: the
bundled clip at its native rate by default), with a ZeroMQ subscriber that joins before
the first map. Reports, over all maps: capture→publish and capture→receive latency
percentiles (monotonic clock of this host), maps/s, dropped windows (latest wins) and
the median of every pipeline stage. ``--streams N`` feeds N copies of the source to
exercise batching across streams.

    .venv/bin/python benchmarks/pipeline_latency.py                         # bundled clip, 1 stream
    .venv/bin/python benchmarks/pipeline_latency.py --streams 2 --seconds 10 --threads 2
    .venv/bin/python benchmarks/pipeline_latency.py --source synthetic --steps 1

Writes JSON (default ``benchmarks/results/pipeline_latency.json``). The first
``--warmup`` seconds of maps are left out of the figures (first-call allocations).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer import wire  # noqa: E402
from streamer.pipeline import Pipeline, PipelineOptions  # noqa: E402
from streamer.subscriber import Subscriber  # noqa: E402


def pct(values, q):
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=None, help="source spec (default: the bundled demo clip)")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--hop", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: source end)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--batch-deadline-ms", type=float, default=5.0)
    ap.add_argument("--out", default="benchmarks/results/pipeline_latency.json")
    args = ap.parse_args(argv)

    from streamer.sources import default_demo_source
    src = args.source or default_demo_source()
    opts = PipelineOptions(sources=[src] * args.streams, profile=args.profile, checkpoint=args.checkpoint,
                           engine=args.engine, steps=args.steps, hop=args.hop, threads=args.threads,
                           publish="tcp://127.0.0.1:*", duration=args.seconds, max_batch=args.max_batch,
                           batch_deadline_ms=args.batch_deadline_ms, wait_subscriber=60.0, send_frames=True)
    load_start = os.getloadavg()
    pipe = Pipeline(opts)
    result: dict = {}
    th = threading.Thread(target=lambda: result.setdefault("summary", pipe.run()), daemon=True)
    th.start()
    if not pipe.bound.wait(60):
        print("publisher did not bind", file=sys.stderr)
        return 1
    received = []
    with Subscriber(pipe.endpoint) as sub:
        while True:
            m = sub.recv_map(timeout=1.0)
            if m is None:
                if not th.is_alive():
                    break
                continue
            received.append((time.monotonic(), m.header))
        missed = sub.missed
    th.join()
    summary = result["summary"]
    t0 = received[0][1]["capture_time"] if received else 0.0
    keep = [(t, h) for t, h in received if h["capture_time"] - t0 >= args.warmup]
    pub_lat = [(h["publish_time"] - h["capture_time"]) * 1000 for _, h in keep]
    recv_lat = [(t - h["capture_time"]) * 1000 for t, h in keep]
    stages = {}
    for k in wire.LATENCY_STAGES:
        vals = [sum(h["latency_ms"][k]) if isinstance(h["latency_ms"][k], list) else h["latency_ms"][k]
                for _, h in keep if k in h["latency_ms"]]
        stages[k] = pct(vals, 50)
    span = (keep[-1][1]["publish_time"] - keep[0][1]["publish_time"]) if len(keep) > 1 else 0.0
    report = {
        "source": os.path.basename(src) if os.path.exists(src) else src, "streams": args.streams,
        "profile": pipe._engine.config.profile, "engine": args.engine,
        "steps": keep[0][1]["steps"] if keep else None, "hop": args.hop, "threads": args.threads,
        "maps": len(received), "maps_measured": len(keep), "missed_by_subscriber": missed,
        "maps_per_s": round((len(keep) - 1) / span, 2) if span > 0 else None,
        "dropped_windows": summary.dropped_windows, "batch_sizes": summary.batch_sizes,
        "capture_to_publish_ms": {"p50": pct(pub_lat, 50), "p95": pct(pub_lat, 95), "p99": pct(pub_lat, 99)},
        "capture_to_receive_ms": {"p50": pct(recv_lat, 50), "p95": pct(recv_lat, 95), "p99": pct(recv_lat, 99)},
        "stage_median_ms": stages,
        "modes": summary.modes,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    # other work on the machine slows every stage: keep the load with the figures
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
