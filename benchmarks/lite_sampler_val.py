"""Which DDIM setting should a `lite` checkpoint sample with? Mean CC per mode on the
synthetic **validation** split (never the test split) for several step counts and both
timestep spacings.

    python -m benchmarks.lite_sampler_val                          # the bundled weights
    python -m benchmarks.lite_sampler_val --checkpoint runs/x/best.safetensors

Scores 96 windows spread over the 8 validation clips (the ones ``salstream train`` uses),
seeded noise, and writes JSON (default
``benchmarks/results/lite_synthetic_eval/sampler_val.json``) plus a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from salstream.diffsal.checkpoint import load_model  # noqa: E402
from salstream.diffsal.datasets.layout import load_videos  # noqa: E402
from salstream.diffsal.datasets.synthetic import write_synthetic  # noqa: E402
from salstream.diffsal.evaluate import default_data_root  # noqa: E402
from salstream.diffsal.registry import bundled_weights  # noqa: E402
from salstream.diffsal.train import Batcher, quick_validation, training_targets  # noqa: E402

SETTINGS = [("trailing", 1), ("trailing", 2), ("trailing", 4), ("leading", 2), ("leading", 4)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(bundled_weights("lite")))
    p.add_argument("--windows", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lite_synthetic_eval"
                                        / "sampler_val.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, profile="lite").eval()
    root = write_synthetic(default_data_root() / "synthetic", {"val": 8})
    videos = load_videos(root, "val", datasets=["Synthetic"])["Synthetic"][:8]
    every = training_targets(model.config, videos, 1)
    pick = np.linspace(0, len(every) - 1, args.windows).round().astype(int)
    samples = [every[i] for i in pick]
    batcher = Batcher(model, videos, samples, progress=False)
    rows: dict[str, dict[str, float]] = {}
    for spacing, steps in SETTINGS:
        cc = quick_validation(model, batcher, samples, steps, True, timestep_spacing=spacing)
        rows[f"{spacing} {steps}"] = {m: round(cc[f"val_cc_{m}"], 3) for m in ("av", "video", "audio")}
    print("| spacing, steps | AV CC | video CC | audio CC |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['av']:.3f} | {r['video']:.3f} | {r['audio']:.3f} |")
    result = {"checkpoint": Path(args.checkpoint).name, "windows": len(samples), "split": "val", "cc": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
