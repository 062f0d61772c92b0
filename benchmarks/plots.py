"""PNG plots of a benchmark run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_ORDER = ("assemble", "wait", "video_encoder", "audio_encoder", "denoise", "postprocess", "publish", "receive")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_vs_steps(model: dict, path: Path) -> Optional[Path]:
    profiles = {k: v for k, v in model.get("profiles", {}).items() if "engines" in v}
    if not profiles:
        return None
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4), squeeze=False)
    for ax, (prof, p) in zip(axes[0], profiles.items()):
        series = {n: e["per_map"] for n, e in p["engines"].items() if "per_map" in e}
        if "official_style" in p:
            series["official-style eager"] = p["official_style"]["per_map"]
        for name, per in series.items():
            steps = sorted(int(s) for s in per)
            p50 = [per[str(s)]["p50"] for s in steps]
            p95 = [per[str(s)]["p95"] for s in steps]
            ax.plot(steps, p50, marker="o", label=f"{name} p50")
            ax.fill_between(steps, p50, p95, alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({int(s) for per in series.values() for s in per}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("DDIM steps")
        ax.set_ylabel("ms per map (band: p50–p95)")
        ax.set_title(f"{prof} ({'×'.join(map(str, p['input_size']))} input)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def graph_latency(model: dict, path: Path) -> Optional[Path]:
    rows = []
    for prof, p in model.get("profiles", {}).items():
        for eng, e in p.get("engines", {}).items():
            for g, s in e.get("graphs", {}).items():
                if s.get("p50") is not None:
                    rows.append((f"{prof}/{eng}\n{g}", s["p50"], s["p95"], s["p99"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    x = np.arange(len(rows))
    for i, (q, lab) in enumerate(((1, "p50"), (2, "p95"), (3, "p99"))):
        ax.bar(x + (i - 1) * 0.27, [r[q] for r in rows], width=0.27, label=lab)
    ax.set_xticks(x, [r[0] for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (log)")
    ax.set_title("per-graph latency (encoders: per frame/slice for lite, per window for full)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def latency_cdf(runs: list[dict], path: Path, title: str = "capture → publish latency") -> Optional[Path]:
    runs = [r for r in runs if r.get("cdf_ms", {}).get("capture_to_publish")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        v = np.asarray(r["cdf_ms"]["capture_to_publish"])
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{r.get('streams', 1)} stream(s) → publish")
        if r["cdf_ms"].get("capture_to_receive"):
            w = np.asarray(r["cdf_ms"]["capture_to_receive"])
            ax.plot(w, np.arange(1, len(w) + 1) / len(w), linestyle=":", alpha=0.7,
                    label=f"{r.get('streams', 1)} stream(s) → receive")
    ax.axvline(100, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of maps")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def stage_breakdown(runs: list[dict], path: Path) -> Optional[Path]:
    runs = [r for r in runs if r.get("stage_median_ms")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(runs) + 2), 4.5))
    labels = [f"{r.get('streams', '?')} stream(s)" for r in runs]
    bottom = np.zeros(len(runs))
    for k in STAGE_ORDER:
        vals = np.array([r["stage_median_ms"].get(k) or 0.0 for r in runs])
        if vals.any():
            ax.bar(labels, vals, bottom=bottom, label=k)
            bottom += vals
    ax.set_ylabel("median ms per map")
    ax.set_title("where the time goes (median per stage)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def resources(runs: list[dict], path: Path) -> Optional[Path]:
    runs = [r for r in runs if r.get("resources", {}).get("timeline")]
    if not runs:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for r in runs:
        t = np.asarray(r["resources"]["timeline"])
        lab = f"{r.get('streams', 1)} stream(s)"
        a1.plot(t[:, 0], t[:, 1], label=lab)
        a2.plot(t[:, 0], t[:, 2], label=lab)
    a1.set_ylabel("CPU % (100 = 1 core)")
    a2.set_ylabel("RSS MiB")
    a2.set_xlabel("seconds")
    a1.set_title("process CPU and memory over the run")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return _save(fig, path)


def scaling(runs: list[dict], path: Path) -> Optional[Path]:
    runs = [r for r in runs if "skipped" not in r and r.get("maps_per_s")]
    if len(runs) < 2:
        return None
    n = [r["streams"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["maps_per_s"] for r in runs], marker="o", label="maps/s, all streams")
    ax.plot(n, [r["maps_per_s_per_stream"] for r in runs], marker="s", label="maps/s per stream")
    ax2 = ax.twinx()
    ax2.plot(n, [r["capture_to_publish_ms"]["p95"] for r in runs], color="tab:red", marker="^",
             label="p95 capture→publish ms")
    ax2.set_ylabel("p95 ms", color="tab:red")
    ax.set_xticks(n)
    ax.set_xlabel("streams")
    ax.set_ylabel("maps/s")
    ax.set_title("multi-stream scaling")
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    return _save(fig, path)


def samples_cost(model: dict, path: Path) -> Optional[Path]:
    """Per map of K draws: one batched call vs K separate calls (p50, whiskers to p95)."""
    series = [(f"{prof}/{eng}", e) for prof, p in model.get("profiles", {}).items()
              for eng, e in (p.get("samples") or {}).items() if "per_k" in e]
    if not series:
        return None
    # One engine thread: process CPU time per map is what it costs an idle core, whatever else runs.
    cpu = model.get("threads") == 1
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4), squeeze=False)
    for ax, (name, e) in zip(axes[0], series):
        ks = sorted(int(k) for k in e["per_k"])
        x = np.arange(len(ks))
        for i, (key, label) in enumerate((("batched", "K draws in one batched call"),
                                          ("separate", "K separate single-draw calls"))):
            entries = [e["per_k"][str(k)][key] for k in ks]
            if cpu and all(en.get("cpu_ms") for en in entries):
                entries = [en["cpu_ms"] for en in entries]
            p50 = [en["p50"] for en in entries]
            p95 = [en["p95"] for en in entries]
            ax.bar(x + (i - 0.5) * 0.38, p50, 0.38, label=label, color=f"C{i}",
                   yerr=[[0] * len(ks), [b - a for a, b in zip(p50, p95)]], capsize=3)
        ax.set_xticks(x, [f"K = {k}" for k in ks])
        ax.set_ylabel(f"{'process CPU' if cpu else 'wall'} ms per map (p50, whisker p95)")
        ax.set_title(f"{name}: a map of K draws, {e['steps']} DDIM step(s)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_plots(result: dict, run_dir: Path) -> list[str]:
    made = []
    model = result.get("model")
    if model:
        made += [latency_vs_steps(model, run_dir / "model_latency_vs_steps.png"),
                 graph_latency(model, run_dir / "model_graph_latency.png"),
                 samples_cost(model, run_dir / "model_samples_cost.png")]
    pipe = result.get("pipeline")
    if pipe:
        runs = pipe.get("runs", [])
        made += [latency_cdf(runs, run_dir / "pipeline_latency_cdf.png"),
                 stage_breakdown(runs, run_dir / "pipeline_stages.png"),
                 resources(runs, run_dir / "pipeline_resources.png"),
                 scaling(runs, run_dir / "pipeline_scaling.png")]
    sub = result.get("subscribe")
    if sub:
        r = dict(sub, cdf_ms=sub.get("cdf_ms", {}), streams=len(sub.get("per_stream", {})))
        made += [latency_cdf([r], run_dir / "subscribe_latency_cdf.png",
                             f"latency seen by a subscriber of {sub.get('address')}"),
                 stage_breakdown([r], run_dir / "subscribe_stages.png")]
    return [str(p) for p in made if p is not None]
