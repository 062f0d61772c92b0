"""Cost of the `lite` profile per new frame: FLOPs and CPU latency of each part.

A live `lite` stream does, for every new frame: the video encoder on that frame, the
audio encoder on at most one new log-mel slice (one every 0.11 s, i.e. fewer than one
per frame at 30 fps; counted as one), and ``steps`` denoiser calls for the window that
ends at the frame (the slice transformer and the temporal mixing run inside each call).

    python -m benchmarks.lite_cost                 # eager + ONNX Runtime, 2 threads
    python -m benchmarks.lite_cost --no-ort --repeats 10
    python -m benchmarks.lite_cost --threads 1 --versus timing=false   # v4 vs v3's network

``--versus`` builds a second network (architecture overrides as for ``salstream train``) and
times both on ONNX Runtime call by call in turn, so a drift in the machine's speed (a busy
neighbour, a slower host) hits both alike; timing one and then the other in separate runs
moved the ratio by ±20 % on a shared VM.

FLOPs come from ``torch.utils.flop_counter`` (2 × multiply-adds of convolutions and
matrix products; element-wise work is not counted). Latency is the median wall time
of batch-1 calls after warm-up. Writes JSON (default ``benchmarks/results/lite_cost.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from salstream.diffsal import create_model  # noqa: E402
from salstream.diffsal.models.base import stack_time  # noqa: E402
from salstream.diffsal.registry import arch_overrides  # noqa: E402


def count_gflops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(fn: Callable[[], object], repeats: int, clock: str = "wall", warmup: int = 3) -> float:
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    return statistics.median(times) * 1000


def interleaved_ms(fns: list[Callable[[], object]], repeats: int, clock: str = "wall", warmup: int = 3) -> list[float]:
    """Median time of each function, calling them in turn: fns[0], fns[1], …, fns[0], …"""
    now = CLOCKS[clock]
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + repeats):
        for fn, ts in zip(fns, times):
            start = now()
            fn()
            if r >= warmup:
                ts.append(now() - start)
    return [statistics.median(ts) * 1000 for ts in times]


def sample_inputs(model) -> dict:
    """Batch-1 inputs of each part and a window's cached features, seeded."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, *cfg.input_size, generator=g) * 2 - 1
    slice_ = torch.randn(1, 1, *cfg.audio.slice_size, generator=g) - 3
    with torch.no_grad():
        video = stack_time([model.encode_video(torch.rand(frame.shape, generator=g) * 2 - 1) for _ in range(cfg.frames)])
        audio = stack_time([model.encode_audio(torch.randn(slice_.shape, generator=g) - 3)
                            for _ in range(cfg.audio.n_slices)])
    return {"frame": frame, "slice": slice_, "x_t": torch.randn(1, 1, *cfg.map_size, generator=g),
            "t": torch.tensor([500]), "video": video, "audio": audio}


def ort_parts(engine, x: dict) -> dict[str, Callable[[], object]]:
    return {
        "video_encoder_frame": lambda: engine.encode_video(x["frame"]),
        "audio_encoder_slice": lambda: engine.encode_audio(x["slice"]),
        "denoise_av_step": lambda: engine.denoise(x["x_t"], x["t"], x["video"], x["audio"]),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--steps", type=int, default=None, help="denoising steps per map (default: the profile's)")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime measurement")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time (needs an otherwise idle machine); cpu: this process's CPU time, "
                        "robust to other load but only meaningful with --threads 1")
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture override as for `salstream train` (--arch timing=false: lite v3's network)")
    p.add_argument("--versus", action="append", default=[], metavar="KEY=VALUE",
                   help="also time the network with these overrides on ONNX Runtime, call by call in turn with "
                        "this one, and report the cost ratio per new frame (--versus timing=false: v4 vs v3)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lite_cost.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("lite", **arch_overrides("lite", args.arch)).requires_grad_(False)
    cfg = model.config
    steps = cfg.default_steps if args.steps is None else args.steps

    x = sample_inputs(model)
    frame, slice_, x_t, t, video, audio = (x[k] for k in ("frame", "slice", "x_t", "t", "video", "audio"))
    result: dict = {
        "profile": "lite", "arch_overrides": list(args.arch),
        "input_size": list(cfg.input_size), "map_size": list(cfg.map_size),
        "frames": cfg.frames, "audio_slices": cfg.audio.n_slices, "steps": steps,
        "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_parameters_M": sum(p.numel() for n, p in model.named_parameters()
                                      if not n.startswith("backbone.")) / 1e6,
        "clock": args.clock,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_start": os.getloadavg()},
    }
    with torch.no_grad():
        parts = {
            "video_encoder_frame": lambda: model.encode_video(frame),
            "backbone_only_frame": lambda: model.backbone(frame),
            "audio_encoder_slice": lambda: model.encode_audio(slice_),
            "denoise_av_step": lambda: model.denoise(x_t, t, video, audio),
            "denoise_video_step": lambda: model.denoise(x_t, t, video, None),
            "denoise_audio_step": lambda: model.denoise(x_t, t, None, audio),
        }
        result["gflops"] = {k: count_gflops(f) for k, f in parts.items()}
        result["eager_ms"] = {k: median_ms(f, args.repeats, args.clock) for k, f in parts.items()}

    def per_frame(table: dict) -> float:
        return table["video_encoder_frame"] + table["audio_encoder_slice"] + steps * table["denoise_av_step"]

    result["gflops"]["per_new_frame"] = per_frame(result["gflops"])
    result["eager_ms"]["per_new_frame"] = per_frame(result["eager_ms"])

    if not args.no_ort:
        from salstream.engines.onnxruntime_engine import OrtEngine
        from salstream.export.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / "this", modes=("av",))
            engine = OrtEngine(Path(tmp) / "this", kind="cpu", threads=args.threads)
            result["ort_ms"] = {k: median_ms(f, args.repeats, args.clock) for k, f in ort_parts(engine, x).items()}
            result["ort_ms"]["per_new_frame"] = per_frame(result["ort_ms"])
            result["ort_maps_per_s"] = 1000.0 / result["ort_ms"]["per_new_frame"]
            if args.versus:
                torch.manual_seed(0)
                other = create_model("lite", **arch_overrides("lite", args.versus)).requires_grad_(False)
                export_onnx(other, Path(tmp) / "versus", modes=("av",))
                other_engine = OrtEngine(Path(tmp) / "versus", kind="cpu", threads=args.threads)
                mine, theirs = ort_parts(engine, x), ort_parts(other_engine, sample_inputs(other))
                pair = {k: interleaved_ms([mine[k], theirs[k]], args.repeats * 3, args.clock) for k in mine}
                this_ms = {k: v[0] for k, v in pair.items()}
                other_ms = {k: v[1] for k, v in pair.items()}
                this_ms["per_new_frame"], other_ms["per_new_frame"] = per_frame(this_ms), per_frame(other_ms)
                result["versus"] = {"arch_overrides": list(args.versus), "ort_ms_this": this_ms,
                                    "ort_ms_versus": other_ms,
                                    "ratio_per_new_frame": this_ms["per_new_frame"] / other_ms["per_new_frame"]}
    result["machine"]["load_average_end"] = os.getloadavg()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lite, input {cfg.input_size[0]}x{cfg.input_size[1]}, map {cfg.map_size[0]}x{cfg.map_size[1]}, "
          f"{steps} steps, {args.threads} threads, {args.clock} clock")
    print(f"{'part':24s} {'GFLOPs':>8s} {'eager ms':>9s} {'ORT ms':>8s}")
    for k in result["gflops"]:
        ort_v = result.get("ort_ms", {}).get(k)
        print(f"{k:24s} {result['gflops'][k]:8.3f} {result['eager_ms'][k]:9.1f} "
              f"{'' if ort_v is None else f'{ort_v:8.1f}'}")
    if "versus" in result:
        v = result["versus"]
        print(f"ORT, in turn with --versus {' '.join(args.versus)}:")
        for k in v["ort_ms_this"]:
            print(f"  {k:22s} {v['ort_ms_this'][k]:8.1f} vs {v['ort_ms_versus'][k]:8.1f} ms")
        print(f"  cost per new frame: {100 * (v['ratio_per_new_frame'] - 1):+.1f} %")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
