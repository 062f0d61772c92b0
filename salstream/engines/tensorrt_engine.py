"""``tensorrt``: the three graphs compiled by Torch-TensorRT (FP16 kernels), batch 1…max_batch.

The module stays FP32 with FP32 inputs; ``enabled_precisions`` lets TensorRT pick FP16
kernels, so model code that mixes dtypes (FP32 timestep embeddings) compiles as is.

Torch-TensorRT and the TensorRT libraries are imported only when this engine is
asked for; without them (or without a GPU) the request fails with one line naming
what to install. Compiled graphs can be saved next to the ONNX export
(``salstream export --tensorrt`` writes ``DIR/tensorrt/``) and loaded without
recompiling; their manifest is checked against the model like the ONNX one.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from salstream.diffsal.config import MODES
from salstream.errors import SalstreamError
from salstream.diffsal.inference import encode_window

from salstream.export.graphs import (AUDIO_GRAPH, DENOISE_GRAPHS, VIDEO_GRAPH, AudioEncoderGraph, DenoiseGraph, FlatInputs,
                           VideoEncoderGraph, as_tuple, audio_feature_names, count_outputs, denoise_args, denoise_io,
                           example_window, flat_denoise_inputs, flatten_args, mode_of, video_feature_names)
from salstream.export.manifest import (BATCH_AXIS, GraphSpec, Manifest, TensorSpec, check_identity, file_sha256,
                             read_manifest, verify_files, weights_sha256)

from .base import Engine, EngineUnavailable, register_engine

TRT_EXTRA = "pip install 'salstream[tensorrt]' (Torch-TensorRT, with NVIDIA's TensorRT libraries)"
TRT_SUBDIR = "tensorrt"


def import_torch_tensorrt():
    """``torch_tensorrt``, or one clear line saying what is missing."""
    no_gpu = "" if torch.cuda.is_available() else " and a CUDA GPU (torch.cuda.is_available() is False here)"
    try:
        import torch_tensorrt
    except Exception as exc:  # ImportError, or OSError/RuntimeError when the TensorRT libraries are absent
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise EngineUnavailable(f"engine 'tensorrt' needs Torch-TensorRT{no_gpu}: {TRT_EXTRA} "
                                f"[{type(exc).__name__}: {reason}]") from None
    if no_gpu:
        raise EngineUnavailable(f"engine 'tensorrt' needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                "use --engine ort-cpu")
    return torch_tensorrt


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _spec(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, [BATCH_AXIS, *[int(d) for d in t.shape[1:]]], _dtype_name(t))


@torch.inference_mode()
def compile_graphs(model: torch.nn.Module, *, out_dir: Optional[str | os.PathLike] = None, max_batch: int = 8,
                   modes=MODES, checkpoint_sha256: Optional[str] = None, device: str = "cuda"):
    """Compile every graph with Torch-TensorRT (FP16 allowed); save them and a manifest when ``out_dir`` is given.

    Returns ``(modules, manifest)``: graph name -> callable taking flat tensors.
    """
    trt = import_torch_tensorrt()
    t_start = time.perf_counter()
    cfg = model.config
    weights = weights_sha256(model)
    dev = torch.device(device)
    net = copy.deepcopy(model).to(dev).eval()
    video, audio = example_window(cfg, 1)
    video, audio = video.to(dev), audio.to(dev)
    v_feats, a_feats = encode_window(net, video, audio, "av")
    n_video, n_audio = len(as_tuple(v_feats)), count_outputs(a_feats)
    frame = video[:, :, 0] if cfg.per_frame_video else video
    clip = audio[:, :, 0] if cfg.per_frame_video else audio
    x_t = torch.randn((1, 1, *cfg.map_size), device=dev)
    t = torch.full((1,), 500, dtype=torch.int64, device=dev)

    jobs: list[tuple[str, torch.nn.Module, tuple, list[str], list[str], Optional[str]]] = [
        (VIDEO_GRAPH, VideoEncoderGraph(net), (frame,), ["video"], video_feature_names(n_video), None),
        (AUDIO_GRAPH, AudioEncoderGraph(net), (clip,), ["audio"], audio_feature_names(n_audio), None),
    ]
    for mode in modes:
        io = denoise_io(mode, n_video, n_audio)
        jobs.append((DENOISE_GRAPHS[mode], DenoiseGraph(net, mode), denoise_args(mode, x_t, t, v_feats, a_feats),
                     io.inputs, io.outputs, mode))

    modules: dict[str, Callable] = {}
    graphs: dict[str, GraphSpec] = {}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for name, module, args, in_names, out_names, mode in jobs:
        flat = flatten_args(args)
        inputs = [trt.Input(min_shape=(1, *x.shape[1:]), opt_shape=(1, *x.shape[1:]),
                            max_shape=(max_batch, *x.shape[1:]), dtype=x.dtype) for x in flat]
        compiled = trt.compile(FlatInputs(module, args), ir="dynamo", inputs=inputs,
                               enabled_precisions={torch.float32, torch.float16}, truncate_double=True)
        modules[name] = compiled
        outs = as_tuple(module(*args))
        spec = GraphSpec(file=f"{name}.ep", sha256="", mode=mode,
                         inputs=[_spec(n, x) for n, x in zip(in_names, flat)],
                         outputs=[_spec(n, y) for n, y in zip(out_names, outs)])
        if out is not None:
            trt.save(compiled, str(out / spec.file), output_format="exported_program", arg_inputs=flat)
            spec.sha256 = file_sha256(out / spec.file)
        graphs[name] = spec
    manifest = Manifest(profile=cfg.profile, config=cfg, weights_sha256=weights, checkpoint_sha256=checkpoint_sha256,
                        opset=0, precision="fp16", exporter=f"torch_tensorrt {trt.__version__}", graphs=graphs,
                        modes={m: DENOISE_GRAPHS[m] for m in modes}, video_outputs=n_video, audio_outputs=n_audio,
                        versions={"torch": torch.__version__, "torch_tensorrt": trt.__version__},
                        export_seconds=round(time.perf_counter() - t_start, 2))
    if out is not None:
        manifest.write(out)
    return modules, manifest


def load_graphs(directory: str | os.PathLike, **expect: Any):
    """Load saved Torch-TensorRT graphs after checking their manifest and checksums."""
    import_torch_tensorrt()  # registers TensorRT's runtime ops that the saved programs call
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_identity(directory, manifest, **expect)
    verify_files(directory, manifest)
    modules = {name: torch.export.load(str(directory / g.file)).module() for name, g in manifest.graphs.items()}
    return modules, manifest


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, modules: dict[str, Callable], manifest: Manifest, device: str = "cuda"):
        self.modules = modules
        self.manifest = manifest
        self.config = manifest.config
        self.device = torch.device(device)

    def _run(self, name: str, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if name not in self.modules:
            raise SalstreamError(f"engine tensorrt: no compiled {name} graph; compile with all modes")
        spec = self.manifest.graphs[name]
        xs = [x.to(self.device, non_blocking=True) for x in flat]
        xs = [x.float() if x.is_floating_point() else x.to(torch.int64) for x in xs]
        if len(xs) != len(spec.inputs):
            raise SalstreamError(f"engine tensorrt: graph {name} takes {len(spec.inputs)} inputs, got {len(xs)}")
        return as_tuple(self.modules[name](*xs))

    @torch.inference_mode()
    def encode_video(self, video: torch.Tensor):
        return self._run(VIDEO_GRAPH, [video])

    @torch.inference_mode()
    def encode_audio(self, audio: torch.Tensor):
        out = self._run(AUDIO_GRAPH, [audio])
        return out[0] if self.manifest.audio_outputs is None else out

    @torch.inference_mode()
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats) -> torch.Tensor:
        mode = mode_of(video_feats, audio_feats)
        if mode not in self.manifest.modes:
            raise SalstreamError(f"engine tensorrt: no denoise graph for mode {mode!r}")
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        return self._run(self.manifest.modes[mode], flat_denoise_inputs(mode, x_t, t, video_feats, audio_feats))[0].float()


@register_engine("tensorrt")
def _make_tensorrt(model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None,
                   artifacts: Optional[str] = None, profile: Optional[str] = None, max_batch: int = 8,
                   **_: Any) -> TensorRTEngine:
    import_torch_tensorrt()  # fail fast, before loading or compiling anything
    saved = Path(artifacts) / TRT_SUBDIR if artifacts is not None else None
    if saved is not None and saved.is_dir():
        expect: dict[str, Any] = {"profile": profile}
        if model is not None:
            expect["weights"] = weights_sha256(model)
        if checkpoint is not None:
            expect["checkpoint"] = file_sha256(checkpoint)
        modules, manifest = load_graphs(saved, **expect)
        return TensorRTEngine(modules, manifest)
    from .torch_engine import _resolve_model
    model = _resolve_model(model, checkpoint)
    modules, manifest = compile_graphs(model, max_batch=max_batch)
    return TensorRTEngine(modules, manifest)
