"""End-to-end latency of the live pipeline: capture → publish → a subscriber on loopback.

Runs ``streamer.pipeline.Pipeline`` in this process on a paced source (a live feed: the
bundled clip at its native rate by default), with a ZeroMQ subscriber that joins before
the first map. Reports, over all maps: capture→publish and capture→receive latency
percentiles (monotonic clock of this host), maps/s, dropped windows (latest wins) and
the median of every pipeline stage. ``--streams N`` feeds N copies of the source to
exercise batching across streams.

    python -m benchmarks.pipeline_latency                         # bundled clip, 1 stream
    python -m benchmarks.pipeline_latency --streams 2 --seconds 10 --threads 2
    python -m benchmarks.pipeline_latency --source synthetic --steps 1

Writes JSON (default ``benchmarks/results/pipeline_latency.json``). The first
``--warmup`` seconds of maps are left out of the figures (first-call allocations).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from benchmarks.pipeline_bench import run_pipeline  # noqa: E402  (one measuring loop for every pipeline benchmark)
from salstream.runtime import load_engine  # noqa: E402


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

    from salstream.streamer.live.sources import default_demo_source
    src = args.source or default_demo_source()
    engine, _ = load_engine(args.profile, args.checkpoint, args.engine, args.threads)
    r = run_pipeline(engine, streams=args.streams, seconds=args.seconds, warmup_s=args.warmup, steps=args.steps,
                     source=src, max_batch=args.max_batch, batch_deadline_ms=args.batch_deadline_ms, hop=args.hop,
                     send_frames=True, progress=lambda msg: print(msg, file=sys.stderr))
    pick = ("p50", "p95", "p99")
    report = {
        "source": os.path.basename(src) if os.path.exists(src) else src, "streams": args.streams,
        "profile": r["profile"], "engine": args.engine,
        "steps": r["steps"][0] if len(r["steps"]) == 1 else r["steps"], "hop": args.hop, "threads": args.threads,
        "maps": r["maps"], "maps_measured": r["maps_measured"], "missed_by_subscriber": r["missed_by_subscriber"],
        "maps_per_s": round(r["maps_per_s"], 2) if r["maps_per_s"] else None,
        "dropped_windows": r["dropped_windows"], "batch_sizes": r["batch_sizes"],
        "capture_to_publish_ms": {k: r["capture_to_publish_ms"][k] for k in pick},
        "capture_to_receive_ms": {k: r["capture_to_receive_ms"][k] for k in pick},
        "stage_median_ms": r["stage_median_ms"],
        "modes": r["modes"],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    # other work on the machine slows every stage: keep the load with the figures
                    "load_average_start": r["load_average_start"], "load_average_end": r["load_average_end"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
