"""``torch-cuda``: PyTorch on a CUDA GPU in FP16 autocast, ``torch.compile``d, denoiser replayed as CUDA graphs.

FP16 comes from autocast rather than ``model.half()``: the weights stay FP32, matmuls
and convolutions run in FP16, and numerically touchy ops (softmax, norms) and the
models' own FP32 arithmetic (timestep embeddings) keep working unchanged.

The denoiser is called ``steps`` times per window with the same shapes, so after a
warm-up it is captured once per (mode, batch) into a CUDA graph and replayed: one
launch per step instead of hundreds of kernel launches. Inputs are copied into the
graph's static buffers; the output is cloned because the next replay overwrites it.
The DDIM arithmetic itself stays in FP32 (``denoise`` returns FP32).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch

from salstream.artifacts.graphs import (
    AudioEncoderGraph,
    DenoiseGraph,
    VideoEncoderGraph,
    denoise_args,
    flatten_args,
    mode_of,
    rebuild_args,
)
from salstream.engines.base import Engine, EngineUnavailable, register_engine


def require_cuda(engine: str) -> None:
    if not torch.cuda.is_available():
        raise EngineUnavailable(f"engine {engine!r} needs a CUDA GPU and a CUDA build of PyTorch "
                                f"(torch {torch.__version__}: torch.cuda.is_available() is False); "
                                "use --engine ort-cpu or torch")


class _CapturedCall:
    """One fixed-shape call of ``fn`` recorded as a CUDA graph."""

    def __init__(self, fn: Callable, args: tuple, warmup: int = 3):
        self.template = args
        self.static_in = [a.clone() for a in flatten_args(args)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and compilation) off the capture stream, as CUDA graphs require
            for _ in range(warmup):
                fn(*rebuild_args(self.static_in, self.template))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(*rebuild_args(self.static_in, self.template))

    def __call__(self, args: tuple) -> torch.Tensor:
        for dst, src in zip(self.static_in, flatten_args(args)):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_out.clone()


class _Autocast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args):
        with torch.autocast("cuda", dtype=self.dtype):
            return self.inner(*args)


class TorchCudaEngine(Engine):
    name = "torch-cuda"

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16,
                 compile: bool = True, cuda_graphs: bool = True):
        require_cuda(self.name)
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = model.config
        # a copy on the device: the caller's CPU model stays usable (e.g. as the reference)
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.cuda_graphs = cuda_graphs

        def wrap(m: torch.nn.Module) -> Callable:
            m = _Autocast(m, dtype)
            return torch.compile(m, dynamic=False) if compile else m
        self._video = wrap(VideoEncoderGraph(self.model))
        self._audio = wrap(AudioEncoderGraph(self.model))
        self._denoise = {m: wrap(DenoiseGraph(self.model, m)) for m in ("av", "video", "audio")}
        self._captured: dict[tuple, _CapturedCall] = {}

    def _in(self, x):
        if x is None:
            return None
        if isinstance(x, torch.Tensor):
            return x.to(self.device, non_blocking=True)
        return tuple(self._in(v) for v in x)

    @torch.inference_mode()
    def encode_video(self, video: torch.Tensor):
        return self._video(self._in(video))

    @torch.inference_mode()
    def encode_audio(self, audio: torch.Tensor):
        return self._audio(self._in(audio))

    @torch.inference_mode()
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats) -> torch.Tensor:
        mode = mode_of(video_feats, audio_feats)
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        args = denoise_args(mode, self._in(x_t), t.to(self.device, torch.int64), self._in(video_feats),
                            self._in(audio_feats))
        if not self.cuda_graphs:
            return self._denoise[mode](*args).float()
        key = (mode, *[(tuple(a.shape), a.dtype) for a in flatten_args(args)])
        if key not in self._captured:
            self._captured[key] = _CapturedCall(self._denoise[mode], args)
        return self._captured[key](args).float()

    def describe(self) -> dict:
        return {"engine": self.name, "profile": self.config.profile, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "cuda_graphs": self.cuda_graphs,
                "captured": len(self._captured)}


@register_engine("torch-cuda")
def _make_torch_cuda(model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None, device: str = "cuda",
                     compile: bool = True, cuda_graphs: bool = True, dtype: torch.dtype = torch.float16,
                     **_: Any) -> TorchCudaEngine:
    require_cuda("torch-cuda")  # before loading a large checkpoint for nothing
    from salstream.engines.torch_engine import _resolve_model
    return TorchCudaEngine(_resolve_model(model, checkpoint), device=device, dtype=dtype, compile=compile,
                           cuda_graphs=cuda_graphs)
