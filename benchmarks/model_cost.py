"""Model cost per profile: parameters, GFLOPs and latency of each part.

    python -m benchmarks.model_cost                      # every registered profile, CPU
    python -m benchmarks.model_cost --profile full --repeats 3 --threads 2
    python -m benchmarks.model_cost --profile full --device cuda

GFLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-
add; matmuls and convolutions only). Latency is eager FP32, batch 1: one warm-up call,
then the median of ``--repeats`` timed calls, wall clock (and process CPU time, which is
less disturbed by other load on the machine). Results are merged into
``benchmarks/results/model_cost.json`` per profile (other profiles' entries are kept)
and printed as a markdown table.

Each profile contributes a function ``PART_BUILDERS[profile](model, device)`` returning
:class:`Part` rows; add a profile by registering one more.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent

from salstream.diffsal.inference import predict_window  # noqa: E402
from salstream.diffsal.registry import available_profiles, create_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_cost.json"


@dataclass
class Part:
    name: str                                   # row label
    params: int                                 # parameters this row owns (0: shared / none)
    call: Optional[Callable[[], object]] = None  # one invocation to count and time (None: no compute)
    note: str = ""


def _count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def full_parts(model, device: torch.device) -> list[Part]:
    """`full`: MViT, VGGish convs, audio transformer, one UNet step per mode, dead tensors."""
    cfg = model.config
    h, w = cfg.input_size
    ah, aw = cfg.audio.slice_size
    s = cfg.audio.n_slices
    video = torch.randn(1, 3, cfg.frames, h, w, device=device)
    audio = torch.randn(1, 1, s, ah, aw, device=device)
    with torch.inference_mode():
        v = model.encode_video(video)
        a = model.encode_audio(audio)
        vgg_maps = model.audio_net(audio.reshape(s, 1, ah, aw))
        vgg_maps = vgg_maps.reshape(1, s, *vgg_maps.shape[1:]).transpose(1, 2).contiguous()
    x_t = torch.randn(1, 1, *cfg.map_size, device=device)
    t = torch.tensor([500], device=device)
    d = model.decoder_net
    dead = (_count(model.audio_net.embeddings, model.fc, model.spatiotemp_net.to_patch_embedding)
            + model.spatiotemp_net.pos_embedding.numel())
    return [
        Part("video encoder (MViTv2-S, visual_net)", _count(model.visual_net), lambda: model.encode_video(video)),
        Part("audio VGGish convs (audio_net.features)", _count(model.audio_net.features),
             lambda: model.audio_net(audio.reshape(s, 1, ah, aw))),
        Part("audio transformer (spatiotemp_net.transformer)", _count(model.spatiotemp_net.transformer),
             lambda: model.spatiotemp_net(vgg_maps)),
        Part("UNet step, AV (decoder_net)", _count(d), lambda: model.denoise(x_t, t, v, a),
             "noise encoder + 4 MAM stages × 9 slots + readout/head"),
        Part("UNet step, video-only", 0, lambda: model.denoise(x_t, t, v, None),
             "slots 0-4 only, no noise encoder (same map, spec §4.5)"),
        Part("UNet step, audio-only", 0, lambda: model.denoise(x_t, t, None, a), "zeros as video maps"),
        Part("dead tensors (VGGish FC head, fc, audio patch/pos embedding)", dead, None, "never computed"),
    ]


PART_BUILDERS: dict[str, Callable[..., list[Part]]] = {"full": full_parts}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(call: Callable[[], object], device: torch.device, repeats: int) -> dict:
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            call()  # also the warm-up
        _sync(device)
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            _sync(device)
            walls.append((time.perf_counter() - t0) * 1e3)
            cpus.append((time.process_time() - c0) * 1e3)
    return {"gflops": counter.get_total_flops() / 1e9, "ms": statistics.median(walls),
            "cpu_ms": statistics.median(cpus), "ms_all": [round(x, 1) for x in walls]}


def run_profile(profile: str, device: torch.device, repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = create_model(profile).to(device).eval()
    cfg = model.config
    rows = []
    for part in PART_BUILDERS[profile](model, device):
        row = {"part": part.name, "params": part.params, "note": part.note}
        if part.call is not None:
            row.update(measure(part.call, device, repeats))
        rows.append(row)
        print(f"  {part.name}: {row.get('ms', 0):.1f} ms", file=sys.stderr)
    video = torch.randn(1, 3, cfg.frames, *cfg.input_size, device=device)
    audio_shape = ((1, 1, cfg.audio.n_slices, *cfg.audio.slice_size) if not cfg.per_frame_video
                   else (1, 1, cfg.frames, *cfg.audio.slice_size))
    audio = torch.randn(*audio_shape, device=device)
    window = measure(lambda: predict_window(model, video, audio, "av", steps=steps,
                                            generator=torch.Generator().manual_seed(0)), device, repeats)
    return {"input": {"video": list(video.shape), "audio": list(audio.shape), "map": list(cfg.map_size)},
            "total_params": _count(model), "rows": rows, "window": {"steps": steps, **window}}


def markdown(profile: str, res: dict) -> str:
    lines = [f"### {profile}  (video {res['input']['video']}, audio {res['input']['audio']})", "",
             "| part | params (M) | GFLOPs | ms | CPU-ms | note |", "|---|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        g = f"{r['gflops']:.1f}" if "gflops" in r else "—"
        ms = f"{r['ms']:.0f}" if "ms" in r else "—"
        cpu = f"{r['cpu_ms']:.0f}" if "cpu_ms" in r else "—"
        lines.append(f"| {r['part']} | {r['params'] / 1e6:.2f} | {g} | {ms} | {cpu} | {r['note']} |")
    wnd = res["window"]
    lines.append(f"| **window: encoders + {wnd['steps']} AV steps** | {res['total_params'] / 1e6:.2f} | "
                 f"{wnd['gflops']:.1f} | {wnd['ms']:.0f} | {wnd['cpu_ms']:.0f} | end to end |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", help="profile(s) to measure (default: all with rows)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps for the window row")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    profiles = args.profile or [p for p in available_profiles() if p in PART_BUILDERS]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "loadavg_before": os.getloadavg(),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for profile in profiles:
        print(f"measuring {profile} on {device} …", file=sys.stderr)
        res = run_profile(profile, device, args.repeats, args.steps)
        res["env"] = {**env, "loadavg_after": os.getloadavg(), "measured": time.strftime("%Y-%m-%d %H:%M")}
        results.setdefault(profile, {})[str(device.type)] = res
        print(markdown(profile, res) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
