"""Export a model's three graphs to ONNX with a dynamic batch axis, plus the manifest.

``encode_video.onnx`` and ``encode_audio.onnx`` are the encoders; the denoiser is
exported once per mode because ONNX inputs cannot be ``None``: ``denoise.onnx``
(audio-visual), ``denoise_video.onnx`` and ``denoise_audio.onnx``. Feature tuples
become flat named inputs ``video_0 … video_{n-1}`` and ``audio_feats``.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import onnx
import torch
from torch import nn

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
    needs_audio,
    needs_video,
    video_feature_names,
)
from salstream.artifacts.manifest import (
    BATCH_AXIS,
    MANIFEST_NAME,
    GraphSpec,
    Manifest,
    TensorSpec,
    file_sha256,
    weights_sha256,
)
from salstream.diffsal.config import MODES
from salstream.diffsal.inference import check_mode, encode_window
from salstream.errors import SalstreamError

log = logging.getLogger("salstream")

DEFAULT_OPSET = 18
EXPORT_BATCH = 2          # torch.export specialises a size-1 axis, so trace with 2 and mark it dynamic
# Above this, weights go to an external ``.onnx.data`` file (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
                onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}


def _batch_dynamic(args: Any, dim: Any) -> Any:
    """A ``dynamic_shapes`` tree mirroring ``args``: axis 0 of every tensor is the batch."""
    if isinstance(args, torch.Tensor):
        return {0: dim}
    if isinstance(args, (tuple, list)):
        return tuple(_batch_dynamic(a, dim) for a in args)
    return None


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  opset: int, external_data: bool, exporter: str) -> str:
    """Write one graph; returns the exporter used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dim = torch.export.Dim(BATCH_AXIS, min=1, max=1024)
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_shapes=_batch_dynamic(args, dim), external_data=external_data,
                                  optimize=True, verbose=False)
            else:
                axes = {n: {0: BATCH_AXIS} for n in input_names + output_names}
                torch.onnx.export(FlatInputs(module, args), tuple(flatten_args(args)), str(path), dynamo=False,
                                  opset_version=opset, input_names=input_names, output_names=output_names,
                                  dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # one line naming the graph; the model code is what needs fixing
        first = (str(exc).splitlines() or [""])[0]
        raise SalstreamError(f"could not export {path.name} with the {exporter} exporter: "
                             f"{type(exc).__name__}: {first}") from exc
    return exporter


def _specs_from(names: list[str], tensors: Sequence[torch.Tensor], onnx_values) -> list[TensorSpec]:
    """Shapes from the traced PyTorch tensors (batch-first), dtypes from the ONNX graph."""
    declared = {v.name: v for v in onnx_values}
    specs = []
    for name, t in zip(names, tensors):
        if name not in declared:
            raise SalstreamError(f"exported graph lacks the expected tensor {name!r}")
        elem = declared[name].type.tensor_type.elem_type
        specs.append(TensorSpec(name, [BATCH_AXIS, *[int(d) for d in t.shape[1:]]], _ONNX_DTYPES.get(elem, str(elem))))
    return specs


def _write_graph(name: str, module: nn.Module, args: tuple, outputs: Sequence[torch.Tensor], io_in: list[str],
                 io_out: list[str], out_dir: Path, opset: int, external_data: bool, exporter: str,
                 mode: Optional[str] = None, fp16: bool = False) -> tuple[GraphSpec, str]:
    path = out_dir / f"{name}.onnx"
    used = _export_graph(module, args, path, io_in, io_out, opset, external_data, exporter)
    if fp16:
        _convert_fp16(path, external_data)
    model_proto = _drop_local_paths(path)
    extra = {}
    data = out_dir / f"{name}.onnx.data"
    if data.exists():
        extra[data.name] = file_sha256(data)
    spec = GraphSpec(file=path.name, sha256=file_sha256(path), mode=mode, extra_files=extra,
                     inputs=_specs_from(io_in, flatten_args(args), model_proto.graph.input),
                     outputs=_specs_from(io_out, list(outputs), model_proto.graph.output))
    return spec, used


# Node metadata the torch exporters write that names files of the exporting machine (source
# paths in Python stack traces). Exported folders get copied to other machines and shared.
_LOCAL_METADATA = ("pkg.torch.onnx.stack_trace",)


def _graphs_of(graph: "onnx.GraphProto"):
    """The graph and every subgraph under its nodes (If/Loop bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs_of(attr.g)
            for g in attr.graphs:
                yield from _graphs_of(g)


def _drop_local_paths(path: Path) -> "onnx.ModelProto":
    """Remove stack traces (node doc strings, ``pkg.torch.onnx.stack_trace``) from a written graph;
    tensors and external data stay as they are. Returns the graph (without its external data)."""
    proto = onnx.load(str(path), load_external_data=False)
    nodes = [n for g in _graphs_of(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    changed = False
    for node in nodes:
        if node.doc_string:
            node.doc_string, changed = "", True
        keep = [p for p in node.metadata_props if p.key not in _LOCAL_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            changed = True
    if changed:
        onnx.save(proto, str(path))
    return proto


def _convert_fp16(path: Path, external_data: bool) -> None:
    """Half precision inside, FP32 at the graph's inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(half, str(path), save_as_external_data=external_data, location=data.name if external_data else None)


@torch.no_grad()
def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, checkpoint_sha256: Optional[str] = None,
                modes: Iterable[str] = MODES, opset: int = DEFAULT_OPSET, fp16: bool = False,
                exporter: str = "dynamo", seed: int = 0,
                progress: Optional[Callable[[str], None]] = None) -> Manifest:
    """Export ``model``'s graphs into ``out_dir`` and write ``manifest.json`` last.

    ``fp16`` converts each exported FP32 graph to half precision inside (weights and
    activations) while keeping FP32 inputs and outputs, for GPU execution providers;
    ONNX Runtime's CPU provider lacks FP16 kernels for most operators. Converting the
    graph rather than the module keeps models whose code mixes dtypes (``t.float()``)
    exportable.
    """
    # dynamo (torch.export) is the default: the legacy TorchScript exporter is deprecated and wrote an
    # invalid Transpose (negative perm) for the lite audio mixer; it stays available as an option.
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be dynamo or torchscript, got {exporter!r}")
    if opset < 17:
        raise SalstreamError(f"opset {opset} is too old: LayerNorm needs opset 17 or newer")
    modes = [check_mode(m) for m in dict.fromkeys(modes)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / MANIFEST_NAME
    if stale.exists():
        stale.unlink()  # until the new manifest is written, the directory is not a valid export
    t_start = time.perf_counter()
    model = model.eval()
    cfg = model.config
    weights = weights_sha256(model)
    n_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    external = n_bytes > EXTERNAL_DATA_BYTES  # the FP32 graph is written first, whatever the precision

    # Example inputs at batch 2 and the reference features they give.
    video, audio = example_window(cfg, EXPORT_BATCH, seed)
    want_video = any(needs_video(m) for m in modes)
    want_audio = any(needs_audio(m) for m in modes)
    v_feats, a_feats = encode_window(model, video if want_video else None, audio if want_audio else None,
                                     "av" if want_video and want_audio else ("video" if want_video else "audio"))
    graphs: dict[str, GraphSpec] = {}
    used: set[str] = set()
    total = int(want_video) + int(want_audio) + len(modes)

    def step(name: str) -> None:   # one line per graph: an export takes minutes on a small CPU
        if progress is not None:
            progress(f"exporting {name} ({len(graphs) + 1}/{total}, {time.perf_counter() - t_start:.0f} s so far)")
    n_video = len(as_tuple(v_feats)) if v_feats is not None else 0
    n_audio = count_outputs(a_feats) if a_feats is not None else None
    if want_video:
        step(VIDEO_GRAPH)
        frame = video[:, :, 0] if cfg.per_frame_video else video
        out = as_tuple(v_feats if not cfg.per_frame_video else tuple(f[:, :, 0] for f in as_tuple(v_feats)))
        spec, kind = _write_graph(VIDEO_GRAPH, VideoEncoderGraph(model), (frame,), out, ["video"],
                                  video_feature_names(n_video), out_dir, opset, external, exporter, fp16=fp16)
        graphs[VIDEO_GRAPH] = spec
        used.add(kind)
    if want_audio:
        step(AUDIO_GRAPH)
        clip = audio[:, :, 0] if cfg.per_frame_video else audio
        a_out = as_tuple(a_feats)
        if cfg.per_frame_video:
            a_out = tuple(f[:, :, 0] for f in a_out)
        spec, kind = _write_graph(AUDIO_GRAPH, AudioEncoderGraph(model), (clip,), a_out, ["audio"],
                                  audio_feature_names(n_audio), out_dir, opset, external, exporter, fp16=fp16)
        graphs[AUDIO_GRAPH] = spec
        used.add(kind)
    x_t = torch.randn((EXPORT_BATCH, 1, *cfg.map_size), generator=torch.Generator().manual_seed(seed + 1))
    t = torch.tensor([750, 250][:EXPORT_BATCH], dtype=torch.int64)
    for mode in modes:
        step(DENOISE_GRAPHS[mode])
        args = denoise_args(mode, x_t, t, v_feats, a_feats)
        io = denoise_io(mode, n_video, n_audio)
        spec, kind = _write_graph(DENOISE_GRAPHS[mode], DenoiseGraph(model, mode), args, [x_t], io.inputs,
                                  io.outputs, out_dir, opset, external, exporter, mode=mode, fp16=fp16)
        graphs[DENOISE_GRAPHS[mode]] = spec
        used.add(kind)

    import onnxruntime
    manifest = Manifest(
        profile=cfg.profile, config=cfg, weights_sha256=weights, checkpoint_sha256=checkpoint_sha256,
        opset=opset, precision="fp16" if fp16 else "fp32", exporter="+".join(sorted(used)), graphs=graphs,
        modes={m: DENOISE_GRAPHS[m] for m in modes}, video_outputs=n_video, audio_outputs=n_audio,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        export_seconds=round(time.perf_counter() - t_start, 2))
    manifest.write(out_dir)
    return manifest
