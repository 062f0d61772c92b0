"""Machine description, summary statistics and the written outputs of a benchmark run.

Every run writes ``bench.json`` (all figures plus the machine they were taken on),
``summary.md`` and PNG plots into its own directory; the README's performance table
is regenerated from the newest full run (``README-performance.md``).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
README_TABLE = RESULTS_DIR / "README-performance.md"
SCHEMA = "salstream-bench/1"


# ---------------------------------------------------------------------- statistics

def stats(values_ms: Iterable[float]) -> dict[str, Any]:
    """p50/p95/p99/mean/min/max of a list of milliseconds (``None``s when empty)."""
    v = np.asarray([x for x in values_ms if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "min": None, "max": None}
    r = lambda x: round(float(x), 3)  # noqa: E731
    return {"n": int(v.size), "p50": r(np.percentile(v, 50)), "p95": r(np.percentile(v, 95)),
            "p99": r(np.percentile(v, 99)), "mean": r(v.mean()), "min": r(v.min()), "max": r(v.max())}


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------- machine

def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def _git_commit() -> Optional[dict[str, Any]]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> Optional[str]:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "present"))
    except Exception as exc:  # a runtime that is installed but cannot load (no GPU driver, …)
        return f"unloadable ({type(exc).__name__})"


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to judge a figure: CPU, cores, RAM, GPU, library versions, load, commit."""
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        from salstream.engines.onnxruntime_engine import physical_cores
        physical = physical_cores()
    except ImportError:
        physical = None
    gpu: Optional[dict[str, Any]] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    try:
        import onnxruntime
        ort_version, ort_providers = onnxruntime.__version__, onnxruntime.get_available_providers()
    except ImportError:
        ort_version, ort_providers = None, []
    return {
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
        "physical_cores": physical, "ram_gib": _ram_gib(), "gpu": gpu,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort_version, "numpy": np.__version__,
                     "tensorrt": _version("tensorrt"), "torch_tensorrt": _version("torch_tensorrt")},
        "onnxruntime_providers": ort_providers,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "git": _git_commit(),
    }


# ---------------------------------------------------------------------- outputs

def new_run_dir(root: Path | str, label: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / (stamp + (f"-{label}" if label else ""))
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}{'-' + label if label else ''}-{n}"
    path.mkdir(parents=True)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: they become ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(result: dict, path: Path) -> Path:
    path.write_text(json.dumps(_clean(result), indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _f(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def machine_line(m: dict) -> str:
    gpu = m.get("gpu")
    cores = f"{m.get('cpu_affinity') or m.get('cpu_count')} CPUs usable"
    if m.get("physical_cores"):
        cores += f" ({m['physical_cores']} physical cores)"
    load = m.get("load_average")
    git = m.get("git") or {}
    return (f"{m.get('cpu_model') or 'unknown CPU'}, {cores}, {_f(m.get('ram_gib'))} GiB RAM, "
            f"GPU: {gpu['name'] if gpu else 'none'}; torch {m['versions']['torch']}, onnxruntime "
            f"{m['versions']['onnxruntime']}; load average at start {load}; commit "
            f"{(git.get('commit') or '?')[:10]}{' (+local changes)' if git.get('dirty') else ''}")


def model_rows(model: dict) -> list[list[Any]]:
    """One row per (profile, engine): per-map latency at the profile's default steps."""
    rows = []
    for prof, p in (model or {}).get("profiles", {}).items():
        measured = [int(x) for x in p.get("steps", [])]
        if not measured:
            continue
        # the profile's own step count when it was measured, else the nearest measured one
        steps = min(measured, key=lambda s: (abs(s - p.get("default_steps", 4)), -s))
        for eng, e in p.get("engines", {}).items():
            if "skipped" in e:
                continue
            m = e.get("per_map", {}).get(str(steps)) or {}
            rows.append([prof, eng, steps, _f(m.get("p50")), _f(m.get("p95")), _f(m.get("maps_per_s"), 1)])
        off = p.get("official_style")
        if off and "per_map" in off:
            m = off["per_map"].get(str(steps)) or {}
            rows.append([prof, "official-style eager", steps, _f(m.get("p50")), _f(m.get("p95")),
                         _f(m.get("maps_per_s"), 2)])
    return rows


def markdown_summary(result: dict) -> str:
    lines = [f"# salstream bench — {result.get('started', '')}", "",
             f"Configuration: {result.get('configuration')}; threads {result.get('threads')}.", "",
             f"Machine: {machine_line(result['machine'])}.", ""]
    model = result.get("model")
    if model:
        lines += ["## Model level (per map: what the live pipeline pays for one new map, ms)", ""]
        lines += _table(["profile", "engine", "steps", "p50", "p95", "maps/s"], model_rows(model))
        for prof, p in model.get("profiles", {}).items():
            lines += ["", f"### {prof}: per graph (ms), {p.get('note', '')}", ""]
            rows = []
            for eng, e in p.get("engines", {}).items():
                if "skipped" in e:
                    rows.append([eng, "skipped: " + e["skipped"], "", "", ""])
                    continue
                for g, s in e.get("graphs", {}).items():
                    rows.append([eng, g, _f(s.get("p50"), 2), _f(s.get("p95"), 2), _f(s.get("p99"), 2)])
            lines += _table(["engine", "graph", "p50", "p95", "p99"], rows)
            rows = []
            series = [(eng, e.get("per_map", {})) for eng, e in p.get("engines", {}).items()]
            off = p.get("official_style")
            if off and "per_map" in off:
                series.append(("official-style eager", off["per_map"]))
            for eng, per in series:
                for s, m in per.items():
                    rows.append([eng, s, _f(m.get("p50")), _f(m.get("p95")), _f(m.get("maps_per_s"), 2),
                                 _f((m.get("cpu_ms") or {}).get("p50"))])
            if rows:
                lines += ["", f"{prof}: latency vs DDIM steps (wall; CPU = process CPU time per map)", ""]
                lines += _table(["engine", "steps", "p50 ms", "p95 ms", "maps/s", "CPU p50 ms"], rows)
            comp = (off or {}).get("comparison")
            if comp:
                lines += ["", f"{prof}, {comp['steps']}-step window ({comp.get('clock_note', 'wall time')}): ours "
                          f"({comp['ours_engine']}) p50 {_f(comp['ours_p50_ms'])} ms vs official-style eager sampler "
                          f"{_f(comp['official_p50_ms'])} ms = {_f(comp['speedup'], 2)}× (goal: {comp['goal']}); "
                          f"max |Δmap| over the step counts {comp['max_abs_diff']:.2e}"]
            for eng, smp in (p.get("samples") or {}).items():
                if "skipped" in smp:
                    lines += ["", f"{prof}/{eng}: several draws per map skipped: {smp['skipped']}"]
                    continue
                lines += ["", f"{prof}/{eng}: a map of K draws ({smp['steps']} step(s); `run --samples K`), one "
                          "batched call vs K separate calls, ms per map (new frame encoded once in both)", ""]
                lines += _table(["K", "batched p50", "batched p95", "separate p50", "separate p95",
                                 "batched / separate", "batched / K=1", "CPU p50 batched / separate"],
                                [[k, _f(e["batched"]["p50"]), _f(e["batched"]["p95"]), _f(e["separate"]["p50"]),
                                  _f(e["separate"]["p95"]), _f(e["batched_vs_separate"], 2),
                                  _f(e.get("batched_vs_one_draw"), 2),
                                  f"{_f((e['batched'].get('cpu_ms') or {}).get('p50'))} / "
                                  f"{_f((e['separate'].get('cpu_ms') or {}).get('p50'))}"]
                                 for k, e in smp["per_k"].items()])
            ws = p.get("warm_start")
            if ws and "skipped" not in ws:
                lines += ["", f"{prof}: warm start ({ws['steps_run']} of {ws['steps']} steps) p50 "
                          f"{_f(ws['warm_ms']['p50'])} ms vs cold {_f(ws['cold_ms']['p50'])} ms; CC(warm, cold) "
                          f"mean {_f(ws['cc_mean'], 3)}, min {_f(ws['cc_min'], 3)} over {ws['windows']} windows"]
        gpu = model.get("gpu", {})
        lines += ["", "## GPU", "", ("skipped: " + gpu["skipped"]) if "skipped" in gpu else
                  "```\n" + json.dumps(gpu, indent=1)[:4000] + "\n```"]
    pipe = result.get("pipeline")
    if pipe:
        lines += ["", "## Pipeline level (paced 30 fps source → publish → loopback subscriber)", ""]
        lines += pipeline_lines(pipe)
    sub = result.get("subscribe")
    if sub:
        lines += ["", "## Subscriber", ""]
        lines += _table(["leg", "p50 ms", "p95 ms", "p99 ms"],
                        [[k, _f(sub[k]["p50"]), _f(sub[k]["p95"]), _f(sub[k]["p99"])]
                         for k in ("capture_to_publish_ms", "publish_to_receive_ms", "capture_to_receive_ms")])
        lines += ["", f"{sub['maps']} maps from {len(sub['per_stream'])} stream(s), {_f(sub['maps_per_s'])} maps/s, "
                  f"missed {sub['missed']}"]
    if result.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in result["plots"])]
    return "\n".join(lines) + "\n"


STAGE_ORDER = ("decode", "preprocess", "video_encoder", "audio_encoder", "denoise", "postprocess", "preview",
               "publish", "recorder")


def pipeline_lines(pipe: dict) -> list[str]:
    """The pipeline table, the CPU-by-stage table and the goals, as markdown lines."""
    rows, cpu_rows = [], []
    for r in pipe.get("runs", []):
        label = r.get("label") or f"{r.get('streams')} stream(s)"
        if "skipped" in r:
            rows.append([label, "skipped: " + r["skipped"], "", "", "", "", "", ""])
            continue
        c2p = r["capture_to_publish_ms"]
        share = r.get("dropped_share_after_warmup")
        rows.append([label, f"{r['profile']} / {r['engine']}", r["streams"], _f(r["maps_per_s_per_stream"]),
                     _f(c2p["p50"]), _f(c2p["p95"]),
                     f"{r['dropped_windows']}" + ("" if share is None else f" ({100 * share:.1f} %)"),
                     _f(r.get("process_cpu_percent", r["resources"]["cpu_percent_mean"]), 0)])
        by = r.get("cpu_percent_by_stage") or {}
        if by:
            cpu_rows.append([label] + [_f(by.get(k), 1) if by.get(k) is not None else "–" for k in STAGE_ORDER]
                            + [_f(r.get("process_cpu_percent"), 0)])
    lines = _table(["run", "profile / engine", "streams", "maps/s per stream", "capture→publish p50 ms", "p95 ms",
                    "dropped windows (after warm-up)", "process CPU %"], rows)
    if cpu_rows:
        lines += ["", "Where the CPU goes (% of one core, thread CPU time per stage; 200 % = both cores):", ""]
        lines += _table(["run", *STAGE_ORDER, "whole process"], cpu_rows)
    goal = pipe.get("goal")
    if goal:
        lines += ["", f"Goal ({goal['goal']}): **{'met' if goal['met'] else 'not met'}**. {goal['explanation']}"]
    for g in pipe.get("goals", []):
        lines += [f"- {g['goal']}: **{'met' if g['met'] else 'not met'}** ({g['figures']})"]
    return lines


def _runs_newest_first(result: dict, run_dir: Path) -> list[tuple[dict, Path]]:
    """This run, then the non-quick runs beside it, newest first."""
    out = [(result, run_dir)]
    if run_dir.parent.is_dir():
        for d in sorted(run_dir.parent.iterdir(), key=lambda p: p.name, reverse=True):
            if d == run_dir or not (d / "bench.json").is_file():
                continue
            try:
                other = json.loads((d / "bench.json").read_text())
            except (OSError, ValueError):
                continue
            if not str(other.get("configuration", "")).startswith("quick"):
                out.append((other, d))
    return out


def latest_parts(result: dict, run_dir: Path) -> dict[str, Any]:
    """The newest measurement of each part: every model profile and the pipeline, each from the newest
    run (this one first) that measured it, so re-running one part or profile keeps the others."""
    profiles: dict[str, tuple[dict, Path]] = {}
    pipeline: Optional[tuple[dict, Path]] = None
    gpu: Optional[dict] = None
    for r, d in _runs_newest_first(result, run_dir):
        model = r.get("model") or {}
        for name, p in model.get("profiles", {}).items():
            if name not in profiles and "skipped" not in p:
                profiles[name] = (p, d)
        if gpu is None and model.get("gpu"):
            gpu = model["gpu"]
        if pipeline is None and (r.get("pipeline") or {}).get("runs"):
            pipeline = (r["pipeline"], d)
    sources: dict[str, tuple[dict, list[str]]] = {}
    runs = {d.name: r for r, d in _runs_newest_first(result, run_dir)}
    for name, (_, d) in profiles.items():
        sources.setdefault(d.name, (runs[d.name], []))[1].append(f"`{name}` model")
    if pipeline is not None:
        sources.setdefault(pipeline[1].name, (runs[pipeline[1].name], []))[1].append("pipeline")
    return {"profiles": {k: v[0] for k, v in profiles.items()}, "pipeline": pipeline[0] if pipeline else {},
            "gpu": gpu or {}, "sources": sources}


def readme_table(result: dict, run_dir: Path) -> str:
    """The README's performance section, generated from the newest measurement of each part."""
    parts = latest_parts(result, run_dir)
    sources = parts["sources"] or {run_dir.name: (result, ["run"])}
    lines = ["<!-- generated by `salstream bench` from " + ", ".join(f"{n}/bench.json" for n in sources)
             + "; do not edit by hand -->"]
    for r, what in sources.values():
        lines.append(f"{', '.join(what).capitalize()} measured {r.get('started', '')} with "
                     f"`{r.get('command', 'salstream bench')}` on: {machine_line(r['machine'])}; "
                     f"{r.get('threads')} engine thread(s).")
    lines.append("")
    model = {"profiles": parts["profiles"], "gpu": parts["gpu"]}
    rows = model_rows(model)
    if rows:
        lines += ["Model, per map (encoders for the new input + all DDIM steps), ms:", ""]
        lines += _table(["profile", "engine", "steps", "p50", "p95", "maps/s"], rows)
        for prof, p in model.get("profiles", {}).items():
            comp = (p.get("official_style") or {}).get("comparison")
            if comp:
                lines += ["", f"`{prof}` {comp['steps']}-step window ({comp.get('clock', 'wall')} time): ours "
                          f"({comp['ours_engine']}) {_f(comp['ours_p50_ms'], 0)} ms vs official-style eager sampler "
                          f"{_f(comp['official_p50_ms'], 0)} ms: **{_f(comp['speedup'], 2)}×** (goal ≥ 1.5×), "
                          f"max |Δmap| {comp['max_abs_diff']:.2e}."]
    pipe = parts["pipeline"]
    if pipe.get("runs"):
        lines += ["", "Live pipeline (paced sources at their frame rate, one map per frame requested, loopback "
                      "subscriber):", ""] + pipeline_lines(pipe)
    gpu = model.get("gpu") or {}
    if "skipped" in gpu:
        lines += ["", f"GPU: not measured in this run ({gpu['skipped']})."]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, run_dir: Path, readme_path: Optional[Path] = None) -> dict[str, Path]:
    """Write bench.json and summary.md (plots are written by the caller before this)."""
    out = {"json": write_json(result, run_dir / "bench.json")}
    md = run_dir / "summary.md"
    md.write_text(markdown_summary(result))
    out["summary"] = md
    if readme_path is not None:
        readme_path.parent.mkdir(parents=True, exist_ok=True)
        readme_path.write_text(readme_table(result, run_dir))
        out["readme_table"] = readme_path
    return out
