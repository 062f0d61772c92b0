"""Pipeline-level latency: paced 30 fps sources through the whole live pipeline to a subscriber.

``streamer.pipeline.Pipeline`` runs in this process (sources → window assembly →
scheduler → engine → ZeroMQ), a subscriber on loopback records every map with
:mod:`benchmarks.subscribe_bench`, and a sampler records this process's CPU use and
resident memory over time. Runs with 1, 2, 4 streams show how batching scales.

The default source is the synthetic scene, **pre-rendered** (a 3 s loop drawn before
the clock starts): drawing it costs ~5–10 ms of CPU per frame, which a camera does not
cost, and would otherwise be charged to the pipeline. Any other source spec
(file, rtsp://, webcam:N) can be given instead.
"""
from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .report import load_average, stats
from .subscribe_bench import collect, summarise

FRAME_BUDGET_NOTE = "one map per frame at {fps:.0f} fps leaves {ms:.1f} ms per map"


class ResourceSampler:
    """This process's CPU % (100 = one core busy) and RSS (MiB), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []   # (seconds since start, cpu %, rss MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    @staticmethod
    def _cpu_seconds() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def _rss_mib(self) -> float:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page / 2**20
        except (OSError, IndexError, ValueError):  # no procfs: peak RSS is the best available
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def _run(self) -> None:
        t0 = last_t = time.monotonic()
        last_cpu = self._cpu_seconds()
        while not self._stop.wait(self.interval):
            now, cpu = time.monotonic(), self._cpu_seconds()
            self.samples.append((round(now - t0, 3), round(100.0 * (cpu - last_cpu) / max(now - last_t, 1e-6), 1),
                                 round(self._rss_mib(), 1)))
            last_t, last_cpu = now, cpu

    def __enter__(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, skip_s: float = 0.0) -> dict[str, Any]:
        kept = [s for s in self.samples if s[0] >= skip_s] or self.samples
        cpu = [s[1] for s in kept]
        rss = [s[2] for s in kept]
        return {"cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                "cpu_percent_p95": stats(cpu)["p95"], "rss_mib_max": max(rss) if rss else None,
                "rss_mib_start": rss[0] if rss else None, "rss_mib_end": rss[-1] if rss else None,
                "interval_s": self.interval,
                "timeline": [list(s) for s in self.samples]}


def open_sources(spec: str, streams: int, *, frame_size: Optional[tuple[int, int]] = None, loop_frames: int = 90):
    """``streams`` paced sources; the synthetic scene is pre-rendered (see module doc)."""
    from salstream.streamer.live.sources import open_source
    out = []
    for i in range(streams):
        if spec.lower().startswith("synthetic"):
            seed = int(spec.partition(":")[2] or 0) + i
            opts: dict[str, Any] = {"n_frames": loop_frames}
            if frame_size is not None:
                opts.update(height=frame_size[0], width=frame_size[1])
            src = open_source(f"synthetic:{seed}", stream_id=str(i), paced=True, **opts)
            frames = [src.clip.frame(k) for k in range(src.clip.n_frames)]
            src.clip.frame = lambda k, _f=frames: _f[k % len(_f)]   # drawn once, replayed from memory
        else:
            src = open_source(spec, stream_id=str(i), paced=True)
        out.append(src)
    return out


def run_pipeline(engine: Any, *, streams: int = 1, seconds: Optional[float] = 10.0, warmup_s: float = 2.0,
                 steps: Optional[int] = None, source: str = "synthetic", frame_size: Optional[tuple[int, int]] = None,
                 max_batch: int = 4, batch_deadline_ms: float = 5.0, hop: int = 1, send_frames: bool = True,
                 record: bool = False, label: Optional[str] = None, samples: int = 1,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """One paced run of ``seconds`` (``None``: until the sources end) through the live pipeline on
    ``engine``; returns its figures. ``send_frames`` publishes frame previews and ``record`` records
    the overlay of the first stream (to a temporary file), as ``salstream run`` does."""
    import tempfile

    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    from salstream.streamer.overlay.recording import OverlayRecording
    from salstream.streamer.wire.subscriber import Subscriber

    sources = open_sources(source, streams, frame_size=frame_size)
    fps = sources[0].fps or 30.0
    opts = PipelineOptions(sources=[source] * streams, steps=steps, hop=hop, publish="tcp://127.0.0.1:*",
                           duration=seconds, max_batch=max_batch, batch_deadline_ms=batch_deadline_ms,
                           wait_subscriber=30.0, send_frames=send_frames, samples=samples)
    tmp = tempfile.TemporaryDirectory(prefix="bench-record-") if record else None
    consumers = [OverlayRecording(Path(tmp.name) / "overlay.mp4")] if tmp is not None else []
    pipe = Pipeline(opts, engine=engine, sources=sources, consumers=consumers)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["summary"] = pipe.run()
        except BaseException as exc:  # surfaced below in this thread
            box["error"] = exc

    load_start = load_average()
    with ResourceSampler() as sampler:
        th = threading.Thread(target=target, name="bench-pipeline", daemon=True)
        th.start()
        if not pipe.bound.wait(60):
            pipe.stop()
            raise RuntimeError("the pipeline's publisher did not bind within 60 s")
        with Subscriber(pipe.endpoint) as sub:
            received = collect(sub, keep_going=th.is_alive, progress=progress)
        th.join()
    if tmp is not None:
        tmp.cleanup()
    if "error" in box:
        raise box["error"]
    summary = box["summary"]
    res = summarise(received, warmup_s)
    # Windows dropped after warm-up: frames of the measured span that got no map (one per frame wanted).
    spanned = sum(v["frames_spanned"] for v in res["per_stream"].values())
    wanted = -(-spanned // hop) if spanned else 0
    dropped_share = (1.0 - res["maps_measured"] / wanted) if wanted else None
    cdf = res.pop("cdf_ms")
    maps_total = res["maps_per_s"] or 0.0
    out = {
        "label": label or f"{streams} stream(s)", "record": record,
        "profile": engine.config.profile, "engine": getattr(engine, "name", "?"), "streams": streams,
        # A file by its name: results are committed and must not carry this machine's paths.
        "source": (source + " (pre-rendered loop)") if source.startswith("synthetic") else
        (os.path.basename(source) if os.path.isfile(source) else source), "fps": fps,
        "seconds": seconds, "warmup_s": warmup_s, "steps": res["steps"], "samples": samples, "hop": hop,
        "max_batch": max_batch,
        "frame_previews": send_frames, "threads": getattr(engine, "threads", None),
        "maps_per_s": maps_total, "maps_per_s_per_stream": maps_total / streams if maps_total else None,
        "maps_per_frame": (maps_total / streams / fps) if maps_total else None,
        "capture_to_publish_ms": res["capture_to_publish_ms"], "capture_to_receive_ms": res["capture_to_receive_ms"],
        "publish_to_receive_ms": res["publish_to_receive_ms"], "stage_median_ms": res["stage_median_ms"],
        "per_stream": res["per_stream"], "maps": res["maps"], "maps_measured": res["maps_measured"],
        "missed_by_subscriber": res["missed"],
        "dropped_windows": summary.dropped_windows, "publisher_drops": summary.send_dropped,
        "dropped_share_after_warmup": None if dropped_share is None else round(max(0.0, dropped_share), 4),
        "cpu_percent_by_stage": {k: round(100.0 * v / summary.seconds, 1) for k, v in summary.cpu_s.items()}
        if summary.seconds else {},
        "process_cpu_percent": round(100.0 * summary.process_cpu_s / summary.seconds, 1) if summary.seconds else None,
        "batch_sizes": {str(k): v for k, v in summary.batch_sizes.items()},
        "modes": summary.modes, "lagging_windows": summary.lagging_windows,
        "resources": sampler.summary(warmup_s), "load_average_start": load_start, "load_average_end": load_average(),
        "cdf_ms": cdf,
    }
    return out


def explain_goal(run: dict[str, Any], goal_maps_per_s: float = 30.0, goal_p95_ms: float = 100.0) -> dict[str, Any]:
    """Whether a one-stream run met the live goal, and if not, where the time goes."""
    per_stream = run.get("maps_per_s_per_stream") or 0.0
    p95 = run["capture_to_publish_ms"]["p95"]
    met_rate = per_stream >= goal_maps_per_s * 0.97       # a paced 29.97 fps file counts as 30
    met_lat = p95 is not None and p95 <= goal_p95_ms
    st = run.get("stage_median_ms", {})
    compute = sum(st.get(k) or 0.0 for k in ("video_encoder", "audio_encoder", "denoise", "postprocess"))
    budget = 1000.0 / run["fps"]
    parts = sorted(((k, v) for k, v in st.items() if v), key=lambda kv: -kv[1])
    where = ", ".join(f"{k} {v:.1f} ms" for k, v in parts)
    text = (f"{per_stream:.1f} maps/s per stream ({(run.get('maps_per_frame') or 0) * 100:.0f}% of frames), "
            f"capture→publish p95 {p95 if p95 is None else round(p95, 1)} ms. ")
    if not (met_rate and met_lat):
        cpu = run["resources"].get("cpu_percent_mean")
        text += (f"Median per map: {where}. Engine compute per map (encoders + {'/'.join(map(str, run['steps']))} step(s) + "
                 f"post-processing) is {compute:.1f} ms against a {budget:.1f} ms frame interval"
                 + (" — compute alone exceeds the budget, so the scheduler drops windows (latest wins)"
                    if compute > budget else " — compute fits; the rest is waiting/assembly")
                 + f". Process CPU {cpu}% (200% = both cores); machine load average "
                   f"{run.get('load_average_start')} → {run.get('load_average_end')}"
                 + (" (other work shared the cores: figures are pessimistic)"
                    if (run.get("load_average_start") or [0])[0] > (os.cpu_count() or 1) * 0.5 else "") + ".")
    return {"goal": f">= {goal_maps_per_s:.0f} maps/s with one map per frame and p95 capture→publish <= "
                    f"{goal_p95_ms:.0f} ms ({run['profile']} on {run['engine']}, 1 stream)",
            "met": bool(met_rate and met_lat), "maps_per_s_ok": met_rate, "p95_ok": met_lat,
            "explanation": text.strip()}


def _describe(r: dict[str, Any]) -> str:
    share = r.get("dropped_share_after_warmup")
    return (f"{r['maps_per_s_per_stream'] or 0:.1f} maps/s per stream, capture→publish p50 "
            f"{r['capture_to_publish_ms']['p50']} ms p95 {r['capture_to_publish_ms']['p95']} ms, dropped "
            f"{r['dropped_windows']}" + ("" if share is None else f" ({100 * share:.1f} % after warm-up)")
            + f", process CPU {r.get('process_cpu_percent')} %")


def run_pipeline_bench(engine_factory: Callable[[], Any], *, stream_counts: Sequence[int] = (1, 2, 4),
                       seconds: float = 15.0, scaling_seconds: float = 10.0, warmup_s: float = 2.0,
                       steps: Optional[int] = None, source: str = "synthetic", samples: int = 1,
                       frame_size: Optional[tuple[int, int]] = None, max_batch: int = 4, send_frames: bool = True,
                       demo_source: Optional[str] = None,
                       progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every stream count in turn on one engine (built once); the 1-stream run also gets the goal check.

    With ``demo_source`` (the bundled clip) the run starts with the demo configuration — that
    clip, previews and the overlay recording on, as ``./dev demo`` runs — and the same without
    recording, so the cost of recording shows."""
    engine = engine_factory()
    plan: list[dict[str, Any]] = []
    if demo_source:
        plan += [dict(streams=1, source=demo_source, seconds=None, record=True, send_frames=True,
                      label="demo (recording + previews)"),
                 dict(streams=1, source=demo_source, seconds=None, record=False, send_frames=True,
                      label="demo without recording")]
    plan += [dict(streams=n, source=source, seconds=seconds if n == 1 else scaling_seconds, record=False,
                  send_frames=send_frames, label=f"{n} stream(s)") for n in stream_counts]
    if 2 in stream_counts:
        # Two 30 fps streams cannot each get a map per frame on 2 cores; one every second frame
        # (--hop 2) is the configuration the two-stream goal is about.
        plan.append(dict(streams=2, source=source, seconds=scaling_seconds, record=False, send_frames=send_frames,
                         hop=2, label="2 stream(s), hop 2"))
    runs = []
    for job in plan:
        t0 = time.perf_counter()
        try:
            r = run_pipeline(engine, warmup_s=warmup_s, steps=steps, frame_size=None if job["source"] == demo_source
                             else frame_size, max_batch=max_batch, samples=samples, progress=progress, **job)
        except Exception as exc:  # one failed run must not lose the others
            runs.append({"streams": job["streams"], "label": job["label"],
                         "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            progress(f"pipeline {job['label']}: failed: {exc}")
            continue
        runs.append(r)
        progress(f"pipeline {job['label']}: {_describe(r)} ({time.perf_counter() - t0:.0f} s)")
    out: dict[str, Any] = {"runs": runs}
    one = next((r for r in runs if r.get("streams") == 1 and "skipped" not in r), None)
    if one is not None:
        out["goal"] = explain_goal(one)
    out["goals"] = headroom_goals(runs)
    return out


def headroom_goals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live goals for 2 cores: the demo keeps up with recording on; headroom without; two streams."""
    by = {r.get("label"): r for r in runs if "skipped" not in r}
    goals = []
    demo, bare = by.get("demo (recording + previews)"), by.get("demo without recording")
    two = by.get("2 stream(s), hop 2") or by.get("2 stream(s)")
    if demo:
        rate, share, p95 = demo["maps_per_s_per_stream"] or 0.0, demo["dropped_share_after_warmup"], \
            demo["capture_to_publish_ms"]["p95"]
        goals.append({"goal": "demo (recording + previews): >= 29.5 maps/s, <= 2 % dropped after warm-up, p95 <= 80 ms",
                      "met": rate >= 29.5 and share is not None and share <= 0.02 and p95 is not None and p95 <= 80,
                      "figures": f"{rate:.1f} maps/s, {100 * (share or 0):.1f} % dropped, p95 {p95} ms"})
    if bare:
        p95, cpu = bare["capture_to_publish_ms"]["p95"], bare.get("process_cpu_percent")
        idle = None if cpu is None else 200.0 - cpu
        goals.append({"goal": "without recording: p95 <= 60 ms and >= 25 % of one core idle",
                      "met": p95 is not None and p95 <= 60 and idle is not None and idle >= 25,
                      "figures": f"p95 {p95} ms, process CPU {cpu} % of 200 % (idle {idle if idle is None else round(idle)} %)"})
    if two:
        per = [v["maps_per_s"] or 0.0 for v in two["per_stream"].values()]
        p95 = two["capture_to_publish_ms"]["p95"]
        # At hop 2 a 30 fps source offers exactly 15 windows/s, and a rate measured between the
        # first and last map of a 15 s span reads 14.99-15.01: allow that 1 % of measurement.
        goals.append({"goal": f"two 30 fps streams (hop {two.get('hop', 1)}): >= 15 maps/s each, p95 <= 150 ms",
                      "met": bool(per) and min(per) >= 15 * 0.99 and p95 is not None and p95 <= 150,
                      "figures": ", ".join(f"{v:.1f}" for v in per) + f" maps/s, p95 {p95} ms"})
    return goals
