"""Parity of exported graphs against PyTorch: per graph and for the final map after DDIM.

Both sides get the same inputs (a seeded random window, the same starting noise).
Errors: ``max_abs`` = max |engine − torch|; ``max_rel`` = max_abs / max |torch| (the
error relative to the reference's range; element-wise ratios blow up near zero).
For maps the report adds the correlation coefficient (CC) of engine vs torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from salstream.artifacts.graphs import AUDIO_GRAPH, VIDEO_GRAPH, as_tuple, example_noise, example_window
from salstream.artifacts.manifest import weights_sha256
from salstream.diffsal.inference import encode_window, predict_window
from salstream.diffsal.metrics import cc

FP32_TOLERANCE = 1e-3   # end-to-end map, max abs (the project's stated FP32 bound)
FP16_MIN_CC = 0.99


def _errors(out: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> dict[str, float]:
    abs_err = max(float((o.float().cpu() - r.float()).abs().max()) for o, r in zip(out, ref))
    scale = max(float(r.float().abs().max()) for r in ref)
    return {"max_abs": abs_err, "max_rel": abs_err / scale if scale > 0 else abs_err}


def map_cc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean CC over the batch of (B, 1, H, W) maps."""
    a_np, b_np = a.float().cpu().numpy(), b.float().cpu().numpy()
    return float(np.mean([cc(x[0], y[0]) for x, y in zip(a_np, b_np)]))


@torch.inference_mode()
def parity_report(model: torch.nn.Module, engine: Any, *, modes: Optional[Sequence[str]] = None,
                  steps: Optional[int] = None, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Compare ``engine`` (anything with the engine interface) with ``model`` in eager PyTorch."""
    cfg = model.config
    manifest = getattr(engine, "manifest", None)
    modes = list(modes or (manifest.modes if manifest is not None else ("av", "video", "audio")))
    steps = cfg.default_steps if steps is None else steps
    video, audio = example_window(cfg, batch, seed)
    frame = video[:, :, -1] if cfg.per_frame_video else video
    clip = audio[:, :, -1] if cfg.per_frame_video else audio
    graphs: dict[str, dict[str, float]] = {}
    if any(m in ("av", "video") for m in modes):
        graphs[VIDEO_GRAPH] = _errors(as_tuple(engine.encode_video(frame)), as_tuple(model.encode_video(frame)))
    if any(m in ("av", "audio") for m in modes):
        graphs[AUDIO_GRAPH] = _errors(as_tuple(engine.encode_audio(clip)), as_tuple(model.encode_audio(clip)))
    v_feats, a_feats = encode_window(model, video, audio, "av")
    x_t = example_noise(cfg, batch, seed + 1)
    t = torch.full((batch,), 500, dtype=torch.int64)
    for mode in modes:
        v = v_feats if mode in ("av", "video") else None
        a = a_feats if mode in ("av", "audio") else None
        name = manifest.modes[mode] if manifest is not None else f"denoise[{mode}]"
        graphs[name] = _errors([engine.denoise(x_t, t, v, a)], [model.denoise(x_t, t, v, a)])
    maps: dict[str, dict[str, float]] = {}
    noise = example_noise(cfg, batch, seed + 2)
    for mode in modes:
        ref = predict_window(model, video, audio, mode, steps, noise=noise)
        out = predict_window(engine, video, audio, mode, steps, noise=noise.to(getattr(engine, "device", "cpu")))
        maps[mode] = {**_errors([out], [ref]), "cc": map_cc(out, ref)}
    precision = manifest.precision if manifest is not None else "fp32"
    worst = max(m["max_abs"] for m in maps.values())
    ok = worst <= FP32_TOLERANCE if precision == "fp32" else min(m["cc"] for m in maps.values()) >= FP16_MIN_CC
    return {
        "profile": cfg.profile, "engine": getattr(engine, "name", type(engine).__name__), "precision": precision,
        "weights_sha256": weights_sha256(model), "steps": steps, "batch": batch, "seed": seed,
        "graphs": graphs, "maps": maps,
        "criterion": (f"end-to-end map max_abs <= {FP32_TOLERANCE}" if precision == "fp32"
                      else f"end-to-end map CC >= {FP16_MIN_CC}"),
        "pass": bool(ok),
    }


def write_parity(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``parity.json`` and ``parity.md`` in ``out_dir``."""
    out_dir = Path(out_dir)
    js = out_dir / "parity.json"
    js.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    lines = [f"# Parity: {report['engine']} vs PyTorch ({report['profile']}, {report['precision']})", "",
             f"Same inputs on both sides (seed {report['seed']}, batch {report['batch']}); "
             f"{report['steps']} DDIM steps for the maps. max_rel = max_abs / max|torch|.", "",
             "| graph | max abs | max rel |", "|---|---|---|"]
    lines += [f"| {name} | {e['max_abs']:.3g} | {e['max_rel']:.3g} |" for name, e in report["graphs"].items()]
    lines += ["", "| final map (mode) | max abs | max rel | CC |", "|---|---|---|---|"]
    lines += [f"| {mode} | {e['max_abs']:.3g} | {e['max_rel']:.3g} | {e['cc']:.6f} |"
              for mode, e in report["maps"].items()]
    lines += ["", f"Criterion: {report['criterion']} — **{'pass' if report['pass'] else 'FAIL'}**", ""]
    md = out_dir / "parity.md"
    md.write_text("\n".join(lines))
    return js, md
