"""Per-graph and end-to-end latency of every available engine (p50/p95), plus INT8 under ONNX Runtime.

For each engine: ``encode_video`` (one frame for `lite`, one clip for `full`),
``encode_audio`` (one slice / one window of slices) and ``denoise`` (audio-visual) at
batch 1, and the end-to-end cost of one live map. For `lite` a live map is what every
new frame costs: the video encoder on that frame, the audio encoder on one new slice
(at most one per frame at 30 fps; counted as one) and ``steps`` denoiser calls with the
DDIM arithmetic. For `full` it is a whole window (clip encoder, slices, steps).

Dynamic INT8 quantisation (``onnxruntime.quantization.quantize_dynamic``) is measured
as two variants, MatMul/Gemm weights only and MatMul/Gemm/Conv, each with its maps'
CC against the FP32 ONNX graphs on the same random windows and noise.

    python -m benchmarks.engines                       # lite, 2 threads, random weights
    python -m benchmarks.engines --checkpoint CKPT --iters 100

Writes ``benchmarks/results/engines.json`` and ``engines.md``. Engines whose runtime
or GPU is missing are listed with the reason instead of a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from salstream.artifacts.graphs import example_noise, example_window  # noqa: E402
from salstream.diffsal.inference import encode_window, predict_from_features  # noqa: E402
from salstream.errors import EngineUnavailable  # noqa: E402
from salstream.export.onnx_export import export_onnx  # noqa: E402
from salstream.export.parity import map_cc  # noqa: E402
from salstream.runtime import make_engine  # noqa: E402


def timings(fn: Callable[[], Any], iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(ts, 50)), "p95_ms": float(np.percentile(ts, 95)),
            "mean_ms": float(np.mean(ts)), "n": iters}


def _sync(engine) -> None:
    if getattr(engine, "device", torch.device("cpu")).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def measure(engine, model, steps: int, iters: int, warmup: int) -> dict[str, Any]:
    cfg = model.config
    video, audio = example_window(cfg, 1, seed=0)
    frame = video[:, :, -1] if cfg.per_frame_video else video
    clip = audio[:, :, -1] if cfg.per_frame_video else audio
    v, a = encode_window(engine, video, audio, "av")
    x_t = example_noise(cfg, 1).to(getattr(engine, "device", "cpu"))
    t = torch.full((1,), 500, dtype=torch.int64)
    noise = example_noise(cfg, 1, seed=5).to(getattr(engine, "device", "cpu"))

    def wrap(fn):
        def run():
            fn()
            _sync(engine)
        return run

    def live_map():
        if cfg.per_frame_video:       # new frame + one new slice, features of the rest are cached
            engine.encode_video(frame)
            engine.encode_audio(clip)
            predict_from_features(engine, v, a, 1, steps, noise=noise)
        else:
            vv, aa = encode_window(engine, video, audio, "av")
            predict_from_features(engine, vv, aa, 1, steps, noise=noise)

    return {
        "encode_video": timings(wrap(lambda: engine.encode_video(frame)), iters, warmup),
        "encode_audio": timings(wrap(lambda: engine.encode_audio(clip)), iters, warmup),
        "denoise": timings(wrap(lambda: engine.denoise(x_t, t, v, a)), iters, warmup),
        "live_map": timings(wrap(live_map), max(5, iters // 2), max(1, warmup // 2)),
    }


@torch.inference_mode()
def map_agreement(engine, reference, model, windows: int = 4, steps: int = 2) -> float:
    """Mean CC of ``engine``'s maps against ``reference``'s on the same random windows and noise."""
    ccs = []
    for seed in range(windows):
        video, audio = example_window(model.config, 1, seed=100 + seed)
        noise = example_noise(model.config, 1, seed=200 + seed)
        maps = []
        for e in (engine, reference):
            v, a = encode_window(e, video, audio, "av")
            maps.append(predict_from_features(e, v, a, 1, steps, noise=noise))
        ccs.append(map_cc(*maps))
    return float(np.mean(ccs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="lite", choices=("lite", "full"))
    p.add_argument("--checkpoint", help="measure this checkpoint instead of freshly initialised weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps per map (default: profile's)")
    p.add_argument("--artifacts", help="existing FP32 export to use (default: export into a temporary dir)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from salstream.diffsal.checkpoint import load_model
        model = load_model(args.checkpoint, args.profile)
    else:
        from salstream.diffsal import create_model
        model = create_model(args.profile)
    steps = model.config.default_steps if args.steps is None else args.steps
    result: dict[str, Any] = {
        "profile": args.profile, "checkpoint": os.path.basename(args.checkpoint) if args.checkpoint else None,
        "threads": args.threads, "steps": steps, "batch": 1, "iters": args.iters,
        "input_size": list(model.config.input_size), "map_size": list(model.config.map_size),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()[0],
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "engines": {}, "unavailable": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="salstream-bench-")
    artifacts = Path(args.artifacts) if args.artifacts else Path(tmp.name) / "fp32"
    if not args.artifacts:
        t0 = time.perf_counter()
        export_onnx(model, artifacts)
        result["export_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"exported {args.profile} in {result['export_seconds']} s", flush=True)

    candidates: list[tuple[str, str, dict]] = [
        ("torch", "torch", {"threads": args.threads}),
        ("ort-cpu", "ort-cpu", {"artifacts": artifacts, "threads": args.threads}),
    ]
    if not args.no_int8:
        from salstream.export.quantize import quantize_export
        for label, ops in (("ort-cpu-int8-matmul", ("MatMul", "Gemm")), ("ort-cpu-int8-conv", ("MatMul", "Gemm", "Conv"))):
            q = quantize_export(artifacts, Path(tmp.name) / label, op_types=ops)
            candidates.append((label, "ort-cpu", {"artifacts": q, "threads": args.threads}))
    candidates += [("torch-cuda", "torch-cuda", {}), ("ort-cuda", "ort-cuda", {}), ("ort-trt", "ort-trt", {}),
                   ("tensorrt", "tensorrt", {})]

    engines: dict[str, Any] = {}
    for label, name, kwargs in candidates:
        try:
            engine = make_engine(name, model, **kwargs)
        except EngineUnavailable as exc:
            result["unavailable"][label] = str(exc)
            print(f"{label}: unavailable ({exc})", flush=True)
            continue
        engines[label] = engine
        result["engines"][label] = measure(engine, model, steps, args.iters, args.warmup)
        r = result["engines"][label]
        print(f"{label}: " + ", ".join(f"{k} p50 {v['p50_ms']:.1f} ms" for k, v in r.items()), flush=True)

    if "ort-cpu" in engines:
        for label in [k for k in engines if k.startswith("ort-cpu-int8")]:
            result["engines"][label]["map_cc_vs_fp32"] = map_agreement(engines[label], engines["ort-cpu"], model)
        if "torch" in result["engines"]:
            e2e = result["engines"]
            result["ort_cpu_speedup_live_map"] = e2e["torch"]["live_map"]["p50_ms"] / e2e["ort-cpu"]["live_map"]["p50_ms"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "salstream.engines.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "salstream.engines.md").write_text(markdown(result))
    print((out / "salstream.engines.md").read_text())
    tmp.cleanup()
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Engine latency: {r['profile']} (batch 1, {r['threads']} threads, {r['steps']} DDIM steps)", "",
             f"Input {r['input_size'][0]}×{r['input_size'][1]}, map {r['map_size'][0]}×{r['map_size'][1]}; "
             f"weights: {r['checkpoint'] or 'freshly initialised'}; {r['iters']} timed calls per graph after warm-up; "
             f"load average at start {r['machine']['load_avg_at_start']:.1f} on {r['machine']['cores_visible']} cores.",
             "", "| engine | encode_video p50 / p95 ms | encode_audio p50 / p95 | denoise p50 / p95 | "
             "live map p50 / p95 | maps/s (p50) | map CC vs FP32 |", "|---|---|---|---|---|---|---|"]
    for label, e in r["engines"].items():
        cells = [f"{e[g]['p50_ms']:.2f} / {e[g]['p95_ms']:.2f}" for g in ("encode_video", "encode_audio", "denoise", "live_map")]
        cc = f"{e['map_cc_vs_fp32']:.4f}" if "map_cc_vs_fp32" in e else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {1e3 / e['live_map']['p50_ms']:.1f} | {cc} |")
    if "ort_cpu_speedup_live_map" in r:
        lines += ["", f"ORT-CPU vs torch eager, live map: {r['ort_cpu_speedup_live_map']:.2f}× faster (p50)."]
    if r.get("export_seconds") is not None:
        lines += [f"ONNX export of all graphs: {r['export_seconds']} s."]
    if r["unavailable"]:
        lines += ["", "Not measured here:", ""] + [f"- {k}: {v}" for k, v in r["unavailable"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
