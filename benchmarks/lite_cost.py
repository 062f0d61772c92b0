"""Cost of the `lite` profile per new frame: FLOPs and CPU latency of each part.

A live `lite` stream does, for every new frame: the video encoder on that frame, the
audio encoder on at most one new log-mel slice (one every 0.11 s, i.e. fewer than one
per frame at 30 fps; counted as one), and ``steps`` denoiser calls for the window that
ends at the frame (the slice transformer and the temporal mixing run inside each call).

    python -m benchmarks.lite_cost                 # eager + ONNX Runtime, 2 threads
    python -m benchmarks.lite_cost --no-ort --repeats 10

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
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lite_cost.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("lite", **arch_overrides("lite", args.arch)).requires_grad_(False)
    cfg = model.config
    steps = cfg.default_steps if args.steps is None else args.steps

    frame = torch.rand(1, 3, *cfg.input_size) * 2 - 1
    slice_ = torch.randn(1, 1, *cfg.audio.slice_size) - 3
    x_t = torch.randn(1, 1, *cfg.map_size)
    t = torch.tensor([500])
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
        video = stack_time([model.encode_video(torch.rand_like(frame) * 2 - 1) for _ in range(cfg.frames)])
        audio = stack_time([model.encode_audio(torch.randn_like(slice_) - 3) for _ in range(cfg.audio.n_slices)])
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
            export_onnx(model, tmp, modes=("av",))
            engine = OrtEngine(tmp, kind="cpu", threads=args.threads)
            ort_parts = {
                "video_encoder_frame": lambda: engine.encode_video(frame),
                "audio_encoder_slice": lambda: engine.encode_audio(slice_),
                "denoise_av_step": lambda: engine.denoise(x_t, t, video, audio),
            }
            result["ort_ms"] = {k: median_ms(f, args.repeats, args.clock) for k, f in ort_parts.items()}
            result["ort_ms"]["per_new_frame"] = per_frame(result["ort_ms"])
            result["ort_maps_per_s"] = 1000.0 / result["ort_ms"]["per_new_frame"]
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
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
