"""Soak test of the live pipeline: a paced source for minutes, watching for slow leaks and drift.

Runs ``streamer.pipeline.Pipeline`` in this process on a paced source (default: the
``synthetic`` feed at 30 fps) with one subscriber that reads every map and a second one
that joins, reads a little and leaves every few seconds (subscriber churn). Every
``--sample-s`` seconds it records the resident memory (RSS), the process's threads and
open file descriptors. At the end it compares:

* RSS after warm-up (median of the first samples after ``--warmup-s``) with the end
  (median of the last samples): growth must stay under 5 %;
* capture→publish p95 latency of the first third of the run against the last third;
* Python threads, socket descriptors and the number of open descriptors before the run
  and after it has shut down (nothing may be left over); OS threads are reported only
  (PyTorch keeps its thread pool once it has run).

The full run (10 minutes, the default, or any run of 5 minutes or more) asserts the RSS
and latency-drift limits too and exits 1 when one is broken; shorter runs only report
those two (too short for a stable figure) but always check the leak invariants.

    python -m benchmarks.soak                   # 10 min, bundled lite weights
    python -m benchmarks.soak --minutes 1       # CI-sized
    python -m benchmarks.soak --seconds 20 --small --out /tmp/soak   # machinery check

Writes ``soak.json`` and ``soak.png`` under ``--out`` (default ``benchmarks/results/soak``).
Other work on the machine changes the latency figures: the load average is recorded.
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
from typing import Optional

import numpy as np

from salstream.runtime import load_engine  # noqa: E402
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions  # noqa: E402
from salstream.streamer.wire.subscriber import Subscriber  # noqa: E402
from tests.support.process import open_descriptors, settled  # noqa: E402

RSS_GROWTH_LIMIT = 0.05     # after warm-up
P95_DRIFT_LIMIT = 0.25      # last third's p95 at most 25 % above the first third's (plus DRIFT_SLACK_MS)
DRIFT_SLACK_MS = 20.0
FULL_MODE_MINUTES = 5.0


# ---------------------------------------------------------------------- process probes (Linux /proc)
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def os_threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def python_threads() -> set[str]:
    return {f"{t.name}#{t.ident}" for t in threading.enumerate()}


def pct(values: list[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 2) if values else None


# ---------------------------------------------------------------------- the run
class Sampler(threading.Thread):
    def __init__(self, every: float, maps_seen):
        super().__init__(name="soak-sampler", daemon=True)
        self.every, self.maps_seen = every, maps_seen
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            n, sockets = open_descriptors()
            self.samples.append({"t": round(time.monotonic() - self.t0, 2), "rss_mb": round(rss_mb(), 2),
                                 "os_threads": os_threads(), "python_threads": threading.active_count(),
                                 "fds": n, "sockets": len(sockets), "maps": self.maps_seen()})
            if self.stop.wait(self.every):
                return


def churn(endpoint: str, stop: threading.Event, every: float, counts: dict) -> None:
    """A viewer that keeps coming and going: connect, read a few maps, disconnect."""
    while not stop.wait(every):
        with Subscriber(endpoint) as sub:
            got = 0
            deadline = time.monotonic() + 2.0
            while got < 3 and time.monotonic() < deadline and not stop.is_set():
                if sub.recv_map(timeout=0.2) is not None:
                    got += 1
        counts["joins"] += 1
        counts["maps"] += got


def build_engine(args):
    if not args.small:
        return load_engine(args.profile, args.checkpoint, args.engine, args.threads)[0]
    # An untrained lite network at 64×96 input: many maps per second, to exercise the machinery.
    import torch

    from salstream.diffsal.registry import create_model, default_config
    from salstream.engines import create_engine
    torch.manual_seed(0)
    arch = dict(default_config("lite").arch, kv_kernels=[1, 2, 4])
    model = create_model("lite", input_size=(64, 96), map_size=(16, 24), arch=arch)
    return create_engine("torch", model=model, threads=args.threads)


def soak(args) -> dict:
    import zmq
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    warmup = args.warmup_s if args.warmup_s is not None else min(60.0, 0.2 * seconds)
    full = seconds >= FULL_MODE_MINUTES * 60.0 if args.full is None else args.full
    engine = build_engine(args)
    # The shared ZeroMQ context keeps its I/O thread and descriptors for the process's life:
    # start them before the "before" snapshot so that only what a run leaves behind shows.
    zmq.Context.instance().socket(zmq.PUB).close(0)
    time.sleep(0.2)
    load_start = os.getloadavg()
    threads_before, (fds_before, sockets_before) = python_threads(), open_descriptors()
    os_threads_before = os_threads()

    opts = PipelineOptions(sources=[args.source] * args.streams, steps=args.steps,
                           publish="tcp://127.0.0.1:*", duration=seconds, wait_subscriber=60.0,
                           send_frames=True, paced=True)
    pipe = Pipeline(opts, engine=engine)
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = pipe.run()
        except BaseException as exc:  # reported below
            result["error"] = exc
    runner = threading.Thread(target=target, name="soak-pipeline")
    runner.start()
    if not pipe.bound.wait(120):
        raise SystemExit("soak: the publisher did not bind")
    received: list[tuple[float, float]] = []     # (publish time - start, capture→publish ms)
    sampler = Sampler(args.sample_s, lambda: len(received))
    stop_churn = threading.Event()
    churned = {"joins": 0, "maps": 0}
    churner = threading.Thread(target=churn, args=(pipe.endpoint, stop_churn, args.churn_s, churned),
                               name="soak-churn")
    with Subscriber(pipe.endpoint) as sub:
        sampler.start()
        churner.start()
        while True:
            m = sub.recv_map(timeout=1.0)
            if m is None:
                if not runner.is_alive():
                    break
                continue
            h = m.header
            received.append((h["publish_time"] - sampler.t0, (h["publish_time"] - h["capture_time"]) * 1000.0))
        missed = sub.missed
    stop_churn.set()
    churner.join()
    runner.join()
    sampler.stop.set()
    sampler.join()
    if "error" in result:
        raise result["error"]
    summary = result["summary"]
    pipe = result = None              # let the pipeline's objects go before the "after" snapshot

    threads_after = settled(python_threads, threads_before, interval=0.1)
    sockets_after = settled(lambda: open_descriptors()[1], sockets_before, interval=0.1)
    fds_after = settled(lambda: open_descriptors()[0], fds_before, interval=0.1)

    samples = sampler.samples
    after_warmup = [s for s in samples if s["t"] >= warmup] or samples
    k = max(1, min(5, len(after_warmup) // 4))
    rss_start = float(np.median([s["rss_mb"] for s in after_warmup[:k]]))
    rss_end = float(np.median([s["rss_mb"] for s in after_warmup[-k:]]))
    growth = (rss_end - rss_start) / rss_start if rss_start > 0 else float("nan")

    lat = [(t, ms) for t, ms in received if t >= warmup] or received
    thirds = np.array_split(np.array([ms for _, ms in lat]), 3) if len(lat) >= 3 else [np.array([])] * 3
    p95_first, p95_last = pct(list(thirds[0]), 95), pct(list(thirds[2]), 95)
    drift = (p95_last - p95_first) / p95_first if p95_first else None

    checks = {
        "no_python_thread_leak": threads_after == threads_before,
        "no_socket_leak": sockets_after == sockets_before,
        "no_fd_leak": fds_after <= fds_before,
        "maps_flowed": len(received) > 0,
    }
    if full:
        checks["rss_growth_below_5pct"] = bool(growth < RSS_GROWTH_LIMIT)
        checks["p95_no_drift"] = bool(p95_last is not None and p95_first is not None
                                      and p95_last <= p95_first * (1 + P95_DRIFT_LIMIT) + DRIFT_SLACK_MS)
    report = {
        "seconds": seconds, "warmup_s": warmup, "full_mode": full,
        "source": args.source, "streams": args.streams, "small": args.small,
        "profile": engine.config.profile, "engine": getattr(engine, "name", "?"), "steps": args.steps,
        "maps": len(received), "maps_per_s": round(len(received) / seconds, 2),
        "missed_by_subscriber": missed, "dropped_windows": summary.dropped_windows,
        "publisher_send_dropped": summary.send_dropped, "churn_subscribers": churned,
        "rss_mb": {"after_warmup": round(rss_start, 1), "end": round(rss_end, 1),
                   "growth_pct": round(100 * growth, 2), "limit_pct": 100 * RSS_GROWTH_LIMIT,
                   "asserted": full},
        "latency_capture_to_publish_ms": {
            "p50": pct([ms for _, ms in lat], 50), "p95": pct([ms for _, ms in lat], 95),
            "p95_first_third": p95_first, "p95_last_third": p95_last,
            "p95_drift_pct": round(100 * drift, 1) if drift is not None else None, "asserted": full},
        "threads": {"python_before": len(threads_before), "python_after": len(threads_after),
                    "leaked": sorted(threads_after - threads_before),
                    "os_before": os_threads_before, "os_after": os_threads()},
        "fds": {"before": fds_before, "after": fds_after, "sockets_before": len(sockets_before),
                "sockets_after": len(sockets_after)},
        "checks": checks, "ok": all(checks.values()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "samples": samples,
    }
    report["_latency_series"] = received
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    t = [x["t"] for x in s]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot(t, [x["rss_mb"] for x in s], color="tab:blue")
    ax[0].axvline(report["warmup_s"], color="grey", ls="--", lw=0.8)
    ax[0].set_ylabel("RSS (MB)")
    ax[0].set_title(f"soak: {report['seconds'] / 60:.1f} min, {report['maps']} maps, RSS growth after warm-up "
                    f"{report['rss_mb']['growth_pct']:+.1f} %")
    series = report["_latency_series"]
    if series:
        lt, lm = zip(*series)
        ax[1].scatter(lt, lm, s=3, alpha=0.4, color="tab:orange", label="map")
        edges = np.linspace(0, max(lt), 21)
        mids, p95s = [], []
        for a, b in zip(edges, edges[1:]):
            v = [m for x, m in series if a <= x < b]
            if v:
                mids.append((a + b) / 2)
                p95s.append(np.percentile(v, 95))
        ax[1].plot(mids, p95s, color="tab:red", label="p95 per bin")
        ax[1].legend(loc="upper right", fontsize=8)
    ax[1].set_ylabel("capture→publish (ms)")
    ax[2].plot(t, [x["os_threads"] for x in s], label="OS threads")
    ax[2].plot(t, [x["python_threads"] for x in s], label="Python threads")
    ax[2].plot(t, [x["fds"] for x in s], label="open fds")
    ax[2].plot(t, [x["sockets"] for x in s], label="sockets")
    ax[2].set_ylabel("count")
    ax[2].set_xlabel("seconds")
    ax[2].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="run length (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=None, help="run length in seconds (overrides --minutes)")
    ap.add_argument("--source", default="synthetic", help="a paced source spec: synthetic[:SEED] (default) or a "
                    "media file, which plays once: give one at least as long as the run")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--checkpoint", default=None, help="default: the bundled lite weights")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="untrained lite at 64×96 input: checks the machinery fast")
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 20 %% of the run, at most 60 s")
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS/thread/fd samples")
    ap.add_argument("--churn-s", type=float, default=5.0, help="a subscriber joins and leaves this often")
    ap.add_argument("--full", dest="full", action="store_true", default=None,
                    help="assert the RSS and drift limits whatever the length (default: runs of 5 min or more)")
    ap.add_argument("--no-full", dest="full", action="store_false", help="only report RSS growth and drift")
    ap.add_argument("--out", default="benchmarks/results/soak", help="folder for soak.json and soak.png")
    args = ap.parse_args(argv)
    if (args.seconds if args.seconds is not None else args.minutes * 60) <= 0:
        ap.error("the run length must be > 0")

    report = soak(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "soak.png")
    report.pop("_latency_series")
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    brief = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    if not report["ok"]:
        failed = [k for k, v in report["checks"].items() if not v]
        print(f"soak: FAILED {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
