"""Streams × replicas through ``salstream serve`` on this machine: maps/s per stream, latency p95.

For each ``RxS`` in the grid a :class:`~salstream.serve.controller.ClusterController` starts
``R`` replicas on one Ray runtime (started once, sized to this machine) and serves ``S`` paced
streams; a loopback subscriber on the forwarder's address records every map for ``--seconds``
(after ``--warmup``), exactly what a client of the cluster sees. Per run it reports maps/s
per stream, capture→publish and capture→receive p50/p95 (receive includes the forwarder
hop), dropped windows, and the CPU each replica spent per stage, per map: the per-window
costs the capacity model in the README's scale section starts from.

The default source is the bundled demo clip (640×480 H.264 with sound, paced at 30 fps),
so ingest costs what a camera's decode costs; the synthetic scene would charge its drawing
(5–10 ms of CPU per frame) to the replicas.

    python -m benchmarks.serve_bench --grid 1x1,1x2,2x2,1x4,2x4 --seconds 10 --out runs/serve
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .report import load_average, machine_info, new_run_dir, write_json
from .subscribe_bench import collect, summarise

log = logging.getLogger("salstream.bench.serve")


def parse_grid(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        r, _, s = item.strip().lower().partition("x")
        if not (r.isdigit() and s.isdigit() and int(r) >= 1 and int(s) >= 1):
            raise SystemExit(f"--grid {text}: expected REPLICASxSTREAMS items such as 1x2,2x4")
        out.append((int(r), int(s)))
    return out


def run_one(replicas: int, streams: int, *, recipe, source: str, seconds: float, warmup_s: float,
            replica_cpus: float, steps, send_frames: bool) -> dict[str, Any]:
    from salstream.serve.config import StreamSpec
    from salstream.serve.controller import ClusterController
    from salstream.streamer.live.pipeline import PipelineOptions
    from salstream.streamer.wire.subscriber import Subscriber

    specs = [StreamSpec(str(i), source) for i in range(streams)]
    opts = PipelineOptions(publish="tcp://127.0.0.1:*", steps=steps, send_frames=send_frames)
    ctl = ClusterController(opts, recipe, specs, replicas=replicas, replica_cpus=replica_cpus)
    box: dict[str, Any] = {}

    def go():
        try:
            box["summary"] = ctl.run()
        except BaseException as exc:   # reported below
            box["error"] = exc
            ctl.ready.set()

    t = threading.Thread(target=go, daemon=True)
    started = time.monotonic()
    t.start()
    ctl.ready.wait()
    if "error" in box:
        raise box["error"]
    ready_s = time.monotonic() - started
    load_before = load_average()
    with Subscriber(ctl.endpoint, hwm=1024) as sub:
        samples = collect(sub, seconds=seconds + warmup_s, idle_timeout=30.0)
    ctl.stop()
    t.join(120)
    if "error" in box:
        raise box["error"]
    summary = box["summary"]
    figures = summarise(samples, warmup_s=warmup_s)
    per_stream = figures.get("per_stream", {})
    rates = [v["maps_per_s"] for v in per_stream.values() if v.get("maps_per_s")]
    cpu_ms_per_map: dict[str, float] = {}
    maps = 0
    for r in summary.replicas:
        s = r.get("summary") or {}
        maps += s.get("maps", 0)
        for stage, sec in (s.get("cpu_s") or {}).items():
            cpu_ms_per_map[stage] = cpu_ms_per_map.get(stage, 0.0) + sec * 1000.0
    cpu_s = {k: round(v / 1000.0, 3) for k, v in cpu_ms_per_map.items()}
    cpu_ms_per_map = {k: round(v / maps, 2) for k, v in cpu_ms_per_map.items()} if maps else {}
    run_s = max(((r.get("summary") or {}).get("seconds", 0.0) for r in summary.replicas), default=0.0)
    ingest = cpu_s.get("decode", 0.0) + cpu_s.get("preprocess", 0.0)
    return {
        "replicas": replicas, "streams": streams, "replica_cpus": replica_cpus, "ready_s": round(ready_s, 1),
        "maps_per_s_per_stream": round(sum(rates) / len(rates), 2) if rates else None,
        "maps_per_s_per_stream_min": round(min(rates), 2) if rates else None,
        "maps_per_s": round(sum(rates), 2) if rates else None,
        "capture_to_publish_ms": figures.get("capture_to_publish_ms"),
        "capture_to_receive_ms": figures.get("capture_to_receive_ms"),
        "publish_to_receive_ms": figures.get("publish_to_receive_ms"),
        "stage_ms_median": figures.get("stage_median_ms"),
        "batch_sizes": figures.get("batch_sizes"), "missed_by_subscriber": figures.get("missed"),
        "dropped_windows": sum((r.get("summary") or {}).get("dropped_windows", 0) for r in summary.replicas),
        "replica_cpu_ms_per_map": cpu_ms_per_map, "replica_cpu_s": cpu_s, "replica_seconds": round(run_s, 2),
        "replica_maps": maps,
        # decode + preprocess run for every frame whether or not its window is mapped: per stream-second
        "ingest_cpu_pct_per_stream": round(100.0 * ingest / (run_s * streams), 1) if run_s else None,
        "replica_process_cpu_pct": [round(100.0 * (r.get("summary") or {}).get("process_cpu_s", 0.0)
                                          / max((r.get("summary") or {}).get("seconds", 0.0), 1e-9), 1)
                                    for r in summary.replicas],
        "streams_per_replica": [len(r["streams"]) for r in summary.replicas],
        "engine": (summary.replicas[0] or {}).get("engine"),
        "load_average": [load_before, load_average()],
        "per_stream": per_stream,
    }


def forwarder_capacity(messages: int = 20000, preview_bytes: int = 40_000, map_shape=(48, 80)) -> dict[str, Any]:
    """How fast one driver forwards: ``messages`` maps (lite-sized float32) and as many JPEG-sized
    previews pushed through a :class:`~salstream.serve.forwarder.Forwarder` to a loopback subscriber.

    Sender, forwarder and receiver share this one process (and its GIL): a lower bound.
    """
    import numpy as np
    import zmq

    from salstream.serve.forwarder import Forwarder
    from salstream.streamer.wire import format as wire

    fwd = Forwarder("tcp://127.0.0.1:*", ["0"], hwm=4 * messages)
    ctx = zmq.Context.instance()
    rx = ctx.socket(zmq.SUB)
    rx.setsockopt(zmq.RCVHWM, 4 * messages)
    rx.setsockopt(zmq.SUBSCRIBE, b"")
    rx.connect(fwd.endpoint)
    tx = ctx.socket(zmq.PUB)
    tx.setsockopt(zmq.SNDHWM, 4 * messages)
    tx.connect(fwd.start())
    time.sleep(0.5)                                 # both subscriptions in place
    header = wire.MapHeader(stream="0", frame_index=0, pts=0.0, capture_time=0.0)
    parts = wire.encode_map(header, np.zeros(map_shape, np.float32))
    preview = [wire.frame_topic("0"), b"{}", bytes(preview_bytes)]
    got = 0
    nbytes = 0

    def receive():
        nonlocal got, nbytes
        while got < 2 * messages and rx.poll(5000):
            nbytes += sum(len(p) for p in rx.recv_multipart())
            got += 1

    t = threading.Thread(target=receive)
    t.start()
    t0 = time.perf_counter()
    for _ in range(messages):
        tx.send_multipart(preview)
        tx.send_multipart(parts)
    t.join()
    elapsed = time.perf_counter() - t0
    tx.close(0)
    rx.close(0)
    fwd.close()
    return {"messages": got, "sent": 2 * messages, "seconds": round(elapsed, 3),
            "messages_per_s": round(got / elapsed), "mb_per_s": round(nbytes / elapsed / 1e6, 1),
            "maps_with_preview_per_s": round(got / 2 / elapsed), "map_bytes": len(parts[2]),
            "preview_bytes": preview_bytes}


def plot(runs: list[dict], path: Path, note: str = "") -> Path:
    from .plots import _save, plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    if note:
        fig.suptitle(note, fontsize=8)
    for r_count in sorted({r["replicas"] for r in runs}):
        mine = sorted((r for r in runs if r["replicas"] == r_count), key=lambda r: r["streams"])
        n = [r["streams"] for r in mine]
        ax.plot(n, [r["maps_per_s_per_stream"] or 0 for r in mine], marker="o", label=f"{r_count} replica(s)")
        ax2.plot(n, [(r["capture_to_receive_ms"] or {}).get("p95") or 0 for r in mine], marker="s",
                 label=f"{r_count} replica(s)")
    ax.set(xlabel="streams", ylabel="maps/s per stream", title="throughput per stream")
    ax2.set(xlabel="streams", ylabel="ms", title="capture→receive p95")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        a.set_xticks(sorted({r["streams"] for r in runs}))
    return _save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="1x1,1x2,2x2,1x4,2x4",
                   help="REPLICASxSTREAMS runs (default %(default)s; empty: only the forwarder's capacity)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds left out at the start (default %(default)s)")
    p.add_argument("--source", default=None, help="source of every stream (default: the bundled demo clip)")
    p.add_argument("--profile", default="lite")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--engine", default="ort-cpu", help="engine of the replicas (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="engine threads per replica")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                   help="CPUs the local Ray runtime offers; replicas share them (default: this machine's)")
    p.add_argument("--no-frames", action="store_true", help="do not publish JPEG previews")
    p.add_argument("--out", default="runs/serve", help="folder for the dated run (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    import ray

    from salstream.serve.replica import EngineRecipe
    from salstream.streamer.live.sources import default_demo_source

    grid = parse_grid(args.grid) if args.grid else []
    source = args.source or default_demo_source()
    shown = "the bundled demo clip (box.mp4)" if args.source is None else args.source   # no local paths in results
    recipe = EngineRecipe(args.profile, args.checkpoint, args.engine, args.threads)
    run_dir = new_run_dir(args.out, "serve")
    print("[serve_bench] forwarder capacity …", flush=True)
    fwd = forwarder_capacity()
    print(f"[serve_bench]   {fwd}", flush=True)
    runs: list[dict] = []
    result = {"benchmark": "serve", "command": "python -m benchmarks.serve_bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(), "source": shown, "profile": args.profile, "engine": args.engine,
              "seconds": args.seconds, "warmup_s": args.warmup, "forwarder": fwd, "runs": runs}
    write_json(result, run_dir / "serve_bench.json")
    if grid:
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=128 << 20,
                 logging_level=logging.WARNING)
    try:
        for replicas, streams in grid:
            print(f"[serve_bench] {replicas} replica(s) × {streams} stream(s) …", flush=True)
            r = run_one(replicas, streams, recipe=recipe, source=source, seconds=args.seconds,
                        warmup_s=args.warmup, replica_cpus=args.cpus / replicas, steps=args.steps,
                        send_frames=not args.no_frames)
            runs.append(r)
            write_json(result, run_dir / "serve_bench.json")      # after every run: a long grid keeps what it has
            print(f"[serve_bench]   {r['maps_per_s_per_stream']} maps/s per stream, capture→receive p95 "
                  f"{(r['capture_to_receive_ms'] or {}).get('p95')} ms, replica CPU per map "
                  f"{r['replica_cpu_ms_per_map']}", flush=True)
    finally:
        if grid:
            ray.shutdown()
    load = result["machine"].get("load_average")
    note = f"salstream serve, {args.profile} on {args.engine}, {os.cpu_count()} CPUs" + (
        f", load average at start {load[0]:.1f}" if load else "")
    made = plot(runs, run_dir / "serve_scaling.png", note) if runs else None
    print(json.dumps([{k: r[k] for k in ("replicas", "streams", "maps_per_s_per_stream", "dropped_windows")}
                      for r in runs]))
    print(f"[serve_bench] wrote {run_dir / 'serve_bench.json'} and {made}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
