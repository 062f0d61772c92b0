"""Compile a model's three graphs with Torch-TensorRT (FP16 kernels, batch 1…max_batch) and save them.

The module stays FP32 with FP32 inputs; ``enabled_precisions`` lets TensorRT pick FP16
kernels, so model code that mixes dtypes (FP32 timestep embeddings) compiles as is. The
compiled programs and a manifest go to ``DIR/tensorrt/`` beside the ONNX export; the
``tensorrt`` engine loads them after checking the manifest against the model.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from salstream.artifacts.graphs import (
    AUDIO_GRAPH,
    DENOISE_GRAPHS,
    VIDEO_GRAPH,
    AudioEncoderGraph,
    DenoiseGraph,
    FlatInputs,
    VideoEncoderGraph,
    as_tuple,
    audio_feature_names,
    count_outputs,
    denoise_args,
    denoise_io,
    example_window,
    flatten_args,
    video_feature_names,
)
from salstream.artifacts.manifest import BATCH_AXIS, GraphSpec, Manifest, TensorSpec, file_sha256, weights_sha256
from salstream.artifacts.tensorrt import import_torch_tensorrt
from salstream.diffsal.config import MODES
from salstream.diffsal.inference import encode_window


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
