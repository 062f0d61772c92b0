"""``tensorrt``: runs graphs compiled by Torch-TensorRT (``salstream export --tensorrt`` writes them).

The compiled programs live in ``DIR/tensorrt/`` with their own manifest, which is checked
against the model the caller asked for, like the ONNX one. Torch-TensorRT is imported
only when this engine is asked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from salstream.artifacts.graphs import AUDIO_GRAPH, VIDEO_GRAPH, as_tuple, flat_denoise_inputs, mode_of
from salstream.artifacts.manifest import (
    Manifest,
    check_identity,
    file_sha256,
    read_manifest,
    verify_files,
    weights_sha256,
)
from salstream.artifacts.tensorrt import TRT_SUBDIR, import_torch_tensorrt
from salstream.engines.base import Engine, register_engine
from salstream.errors import SalstreamError


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
                   artifacts: Optional[str] = None, profile: Optional[str] = None, **_: Any) -> TensorRTEngine:
    import_torch_tensorrt()  # fail fast, before reading anything
    saved = Path(artifacts) / TRT_SUBDIR if artifacts is not None else None
    if saved is None or not saved.is_dir():
        raise SalstreamError(f"engine tensorrt: no compiled graphs in {saved or '(no --artifacts)'}; compile them "
                             "with `salstream export --tensorrt --out DIR` (or let `salstream run` do it once)")
    expect: dict[str, Any] = {"profile": profile}
    if model is not None:
        expect["weights"] = weights_sha256(model)
    if checkpoint is not None:
        expect["checkpoint"] = file_sha256(checkpoint)
    modules, manifest = load_graphs(saved, **expect)
    return TensorRTEngine(modules, manifest)
