"""What a command needs before it runs the model: weights, exported graphs, an engine.

This is the one place that composes ``diffsal`` (checkpoints, bundled weights),
``export`` (graphs written once into the user cache) and ``engines`` (which only read
them). The command line, the Python API and the benchmarks call it; the live pipeline
receives the engine it builds.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from salstream.errors import SalstreamError

log = logging.getLogger("salstream.runtime")


AUTO = "auto"


def choose_engine() -> tuple[str, str]:
    """The fastest engine this machine can run, and why: a GPU engine when a usable CUDA GPU and
    runtime are present, else ONNX Runtime on the CPU, else eager PyTorch."""
    if torch.cuda.is_available():
        try:
            import onnxruntime as ort
            if "CUDAExecutionProvider" in ort.get_available_providers():
                return "ort-cuda", "a CUDA GPU and onnxruntime-gpu are present"
        except ImportError:
            pass
        return "torch-cuda", "a CUDA GPU is present (install salstream[gpu] for ONNX Runtime on it)"
    try:
        import onnxruntime  # noqa: F401
        return "ort-cpu", "no CUDA GPU; ONNX Runtime runs the graphs ~3x faster than eager PyTorch on a CPU"
    except ImportError:
        return "torch", "no CUDA GPU and no ONNX Runtime"


def _check_runtime(name: str) -> None:
    """Fail with one line before any export when the engine's runtime or device is missing."""
    if name.startswith("ort-"):
        from salstream.engines.onnxruntime_engine import require_provider
        require_provider(name)
    elif name == "tensorrt":
        from salstream.artifacts.tensorrt import import_torch_tensorrt
        import_torch_tensorrt()


def exported_graphs(name: str, model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None,
                    profile: Optional[str] = None, cache_root: Optional[str | os.PathLike] = None) -> Path:
    """The cached export engine ``name`` reads, written on first use (ONNX, or Torch-TensorRT for ``tensorrt``)."""
    from salstream.artifacts.manifest import file_sha256
    from salstream.export.cache import cached_export

    ck_sha = file_sha256(checkpoint) if checkpoint is not None else None

    def load() -> torch.nn.Module:
        from salstream.diffsal.checkpoint import load_model
        return load_model(checkpoint, profile)

    source: Any = model if model is not None else load
    if model is None and checkpoint is None:
        raise SalstreamError(f"engine {name!r} needs a model or a checkpoint to export")
    # CPU providers run FP32 graphs; the CUDA provider is fastest with FP16 ones (TensorRT converts FP32 itself).
    out = cached_export(source, checkpoint_sha256=ck_sha, fp16=(name == "ort-cuda"), root=cache_root)
    if name == "tensorrt":
        from salstream.artifacts.tensorrt import TRT_SUBDIR
        from salstream.export.tensorrt import compile_graphs
        if not (out / TRT_SUBDIR).is_dir():
            net = model if model is not None else load()
            log.info("compiling the %s graphs with Torch-TensorRT once; cached in %s", net.config.profile, out)
            compile_graphs(net, out_dir=out / TRT_SUBDIR, checkpoint_sha256=ck_sha)
    return out


def make_engine(name: str, model: Optional[torch.nn.Module] = None, *, checkpoint: Optional[str] = None,
                artifacts: Optional[str | os.PathLike] = None, threads: Optional[int] = None,
                profile: Optional[str] = None, cache_root: Optional[str | os.PathLike] = None, **kwargs: Any):
    """:func:`salstream.engines.create_engine`, exporting the graphs once when an exported-graph
    engine is given no ``artifacts`` directory."""
    from salstream.engines import EXPORTED_GRAPH_ENGINES, create_engine

    if name in EXPORTED_GRAPH_ENGINES and artifacts is None:
        _check_runtime(name)
        artifacts = exported_graphs(name, model, checkpoint, profile, cache_root)
    if artifacts is not None:
        kwargs["artifacts"] = str(artifacts)
    return create_engine(name, model=model, checkpoint=checkpoint, threads=threads, profile=profile, **kwargs)


def resolve_weights(profile: str, checkpoint: Optional[str]) -> Optional[str]:
    """``checkpoint``, else the profile's bundled weights, else ``None`` (an untrained model)."""
    from salstream.diffsal.registry import bundled_weights
    if checkpoint is not None:
        return str(checkpoint)
    bundled = bundled_weights(profile)
    return str(bundled) if bundled is not None else None


def load_engine(profile: str, checkpoint: Optional[str], engine: str = AUTO, threads: Optional[int] = None,
                artifacts: Optional[str] = None, cache_root: Optional[str] = None):
    """The engine for ``profile``: the given checkpoint, else the bundled weights, else untrained.

    ``engine``: a registered name, or ``"auto"`` (:func:`choose_engine`).
    ``artifacts``: a ``salstream export`` directory for the exported-graph engines; they
    refuse graphs of another checkpoint, profile or set of weights. Returns ``(engine, weights path)``.
    """
    from salstream.diffsal.checkpoint import load_model
    from salstream.diffsal.registry import available_profiles, create_model
    from salstream.engines import EXPORTED_GRAPH_ENGINES, available_engines

    if profile not in available_profiles():
        raise SalstreamError(f"--profile {profile}: choose one of {', '.join(available_profiles())}")
    if engine == AUTO:
        engine, why = choose_engine()
        log.info("engine: %s (%s; --engine overrides)", engine, why)
    if engine not in available_engines():
        raise SalstreamError(f"--engine {engine}: choose one of {', '.join(available_engines())}")
    if artifacts is not None and engine not in EXPORTED_GRAPH_ENGINES:
        raise SalstreamError(f"--artifacts {artifacts}: exported graphs run on an exported-graph engine; "
                             "add --engine ort-cpu (or another ort-*/tensorrt engine), or drop --artifacts")
    if artifacts is not None and not Path(artifacts).is_dir():
        raise SalstreamError(f"--artifacts {artifacts}: no such directory; give the folder `salstream export` "
                             "wrote, or drop --artifacts to export on the fly")
    path = resolve_weights(profile, checkpoint)
    if path is not None:
        model = load_model(path, profile=profile)
        log.info("weights: %s", path)
    else:
        model = create_model(profile)
        log.warning("no trained weights for the %s profile (pass --checkpoint): running an UNTRAINED model, "
                    "so the maps are noise until trained weights are present", profile)
    if threads is None and engine == "ort-cpu" and model.config.per_frame_video:
        # The live scheduler runs the encoders and the denoiser side by side, one core each; at batch 1
        # a second intra-op thread per call costs more in synchronisation than it saves (measured).
        threads = 1
    eng = make_engine(engine, model, checkpoint=path, artifacts=artifacts, threads=threads,
                      profile=profile if artifacts is not None else None, cache_root=cache_root)
    return eng, path
