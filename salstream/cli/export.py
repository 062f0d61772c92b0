"""``salstream export``: checkpoint -> ONNX graphs + manifest + parity report (+ Torch-TensorRT)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from salstream.cli.numbers import number
from salstream.diffsal.config import MODES
from salstream.errors import SalstreamError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX graphs (and optionally Torch-TensorRT)",
        description="Write encode_video.onnx, encode_audio.onnx and one denoise graph per mode (denoise.onnx is "
                    "audio-visual, denoise_video.onnx, denoise_audio.onnx) with a dynamic batch axis, a "
                    "manifest.json and a parity report (parity.json / parity.md) against PyTorch.")
    p.add_argument("--checkpoint", default=None,
                   help="salstream checkpoint (.safetensors); default: the bundled weights of --profile")
    p.add_argument("--profile", default=None,
                   help="expected profile; the checkpoint must match it (default: whatever the checkpoint is; "
                        "without --checkpoint: lite)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--fp16", action="store_true", help="half-precision graphs for GPU providers (ort-cuda/ort-trt)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also compile the graphs with Torch-TensorRT (FP16) into OUT/tensorrt (needs a GPU and "
                        "salstream[tensorrt])")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to export (default: all)")
    p.add_argument("--opset", type=number(int, 13, 30), default=None, help="ONNX opset (default 18)")
    p.add_argument("--steps", type=number(int, 1, 1000), default=None, help="DDIM steps for the parity run (default: profile's)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity report")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from salstream.diffsal.checkpoint import file_sha256, load_model
    from salstream.export.onnx_export import DEFAULT_OPSET, export_onnx

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SalstreamError(f"--modes {args.modes!r}: unknown mode(s) {', '.join(bad) or '(none given)'}; "
                             f"choose from {', '.join(MODES)}")
    if args.tensorrt:  # fail before the (long) ONNX export when Torch-TensorRT or the GPU is missing
        from salstream.artifacts.tensorrt import import_torch_tensorrt
        import_torch_tensorrt()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from salstream.runtime import resolve_weights
        checkpoint = resolve_weights(args.profile or "lite", None)
        if checkpoint is None:
            raise SalstreamError(f"no bundled weights for the {args.profile or 'lite'} profile; "
                                 "give the weights to export with --checkpoint CKPT")
    model = load_model(checkpoint, args.profile)
    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"exporting {model.config.profile} from {checkpoint} to {out} (a minute or two on a small CPU)", flush=True)
    manifest = export_onnx(model, out, checkpoint_sha256=file_sha256(checkpoint), modes=modes,
                           opset=args.opset or DEFAULT_OPSET, fp16=args.fp16,
                           progress=lambda msg: print(f"  {msg}", flush=True))
    print(f"exported {manifest.profile} ({manifest.precision}, opset {manifest.opset}, {manifest.exporter}) in "
          f"{time.perf_counter() - t0:.1f} s: {', '.join(g.file for g in manifest.graphs.values())} -> {out}")
    status = 0
    if not args.no_parity:
        print("  checking parity against PyTorch", flush=True)
        report = check_parity(model, out, steps=args.steps)
        if report.get("skipped"):
            print(f"parity: skipped ({report['skipped']})")
        else:
            worst = max(m["max_abs"] for m in report["maps"].values())
            print(f"parity vs PyTorch: final map max abs {worst:.2e} ({report['criterion']}): "
                  f"{'pass' if report['pass'] else 'FAIL'}; see {out / 'parity.md'}")
            status = 0 if report["pass"] else 1
    if args.tensorrt:
        from salstream.artifacts.tensorrt import TRT_SUBDIR
        from salstream.export.tensorrt import compile_graphs
        t1 = time.perf_counter()
        compile_graphs(model, out_dir=out / TRT_SUBDIR, modes=modes, checkpoint_sha256=file_sha256(checkpoint))
        print(f"Torch-TensorRT graphs (FP16) in {time.perf_counter() - t1:.1f} s -> {out / TRT_SUBDIR}")
    return status


def check_parity(model, artifacts: Path, **kwargs) -> dict:
    """Parity of the exported graphs under ONNX Runtime CPU against PyTorch; the report is written beside them."""
    import json

    from salstream.artifacts.manifest import read_manifest
    from salstream.engines import create_engine
    from salstream.export.parity import parity_report, write_parity

    manifest = read_manifest(artifacts)
    if manifest.precision != "fp32":
        report = {"profile": manifest.profile, "engine": "ort-cpu", "precision": manifest.precision,
                  "skipped": "FP16 graphs need a GPU execution provider (ort-cuda / ort-trt); "
                             "run the parity check on a GPU machine", "graphs": {}, "maps": {}, "pass": None}
        (Path(artifacts) / "parity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return report
    engine = create_engine("ort-cpu", model=model, artifacts=str(artifacts))
    report = parity_report(model, engine, **kwargs)
    write_parity(report, artifacts)
    return report
