"""ONNX Runtime engines: ``ort-cpu``, ``ort-cuda`` and ``ort-trt`` (TensorRT execution provider).

The engine runs the graphs ``salstream export`` writes, after checking their manifest
against the model the caller asked for (``salstream.runtime.load_engine`` exports them
once into a cache when no directory is given).

Sessions set their thread counts and graph optimisation explicitly. On a GPU every
call goes through I/O binding on torch CUDA tensors, so features and the noisy map
stay on the device for the whole DDIM loop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch

from salstream.artifacts.graphs import AUDIO_GRAPH, VIDEO_GRAPH, flat_denoise_inputs, mode_of
from salstream.artifacts.manifest import (
    GraphSpec,
    Manifest,
    TensorSpec,
    check_identity,
    file_sha256,
    read_manifest,
    verify_files,
    weights_sha256,
)
from salstream.engines.base import Engine, EngineUnavailable, register_engine
from salstream.errors import SalstreamError

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}

GPU_EXTRA = "pip install 'salstream[gpu]' (onnxruntime-gpu replaces onnxruntime: pip uninstall onnxruntime first)"


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's FPUs)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            package = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id").read_text().strip()
            core = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or physical_cores())
    so.inter_op_num_threads = 1          # the graphs run one after another; no parallel branches to feed
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3            # provider fall-back warnings are turned into our own errors
    # Idle worker threads sleep instead of spinning: a live pipeline shares the cores with
    # decoding, pacing and publishing, and spinning workers starved them (measured: 76 ms per
    # lite map with 2 spinning threads vs 35 ms without, on a busy 2-core machine).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtEngine(Engine):
    """Runs exported graphs with one ONNX Runtime session per graph (created on first use)."""

    def __init__(self, artifacts: str | os.PathLike, *, kind: str = "cpu", threads: Optional[int] = None,
                 device_id: int = 0, io_binding: Optional[bool] = None, profile: Optional[str] = None,
                 weights: Optional[str] = None, checkpoint: Optional[str] = None, max_batch: int = 8):
        self.kind = kind
        self.name = {"cpu": "ort-cpu", "cuda": "ort-cuda", "trt": "ort-trt"}[kind]
        self.artifacts = Path(artifacts)
        self.manifest: Manifest = read_manifest(self.artifacts)
        check_identity(self.artifacts, self.manifest, profile=profile, weights=weights, checkpoint=checkpoint)
        verify_files(self.artifacts, self.manifest)
        if kind == "cpu" and self.manifest.precision == "fp16":
            raise SalstreamError(f"exported graphs {self.artifacts} are {self.manifest.precision}; ONNX Runtime's CPU "
                                 "provider needs FP32 graphs: export again without --fp16")
        self.config = self.manifest.config
        self.threads = int(threads or physical_cores())
        self.max_batch = max_batch
        self.device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", device_id)
        self.io_binding = (kind != "cpu") if io_binding is None else bool(io_binding)
        self._sessions: dict[str, ort.InferenceSession] = {}

    # ------------------------------------------------------------------ sessions
    def _providers(self, graph: GraphSpec) -> list[Any]:
        if self.kind == "cpu":
            return ["CPUExecutionProvider"]
        cuda = {"device_id": self.device.index or 0,
                # run on torch's stream: no extra synchronisation between torch ops and graph runs
                "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream),
                "has_user_compute_stream": "1", "cudnn_conv_algo_search": "HEURISTIC"}
        providers: list[Any] = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        if self.kind == "trt":
            def shapes(batch: int) -> str:
                return ",".join(f"{s.name}:{'x'.join(str(d) for d in s.concrete(batch))}" for s in graph.inputs)
            trt = {"device_id": self.device.index or 0, "trt_fp16_enable": "1",
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(self.artifacts / "trt_cache"),
                   "trt_timing_cache_enable": "1",
                   "trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(1),
                   "trt_profile_max_shapes": shapes(self.max_batch)}
            providers.insert(0, ("TensorrtExecutionProvider", trt))
        return providers

    def session(self, name: str) -> ort.InferenceSession:
        if name not in self._sessions:
            graph = self.manifest.graphs[name]
            sess = ort.InferenceSession(str(self.artifacts / graph.file), sess_options=session_options(self.threads),
                                        providers=self._providers(graph))
            want = {"cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}.get(self.kind)
            if want and want not in sess.get_providers():
                raise EngineUnavailable(f"engine {self.name!r}: ONNX Runtime could not start {want} on "
                                        f"cuda:{self.device.index or 0} (fell back to {sess.get_providers()}); "
                                        "check the CUDA/TensorRT libraries, or use --engine ort-cpu")
            self._sessions[name] = sess
        return self._sessions[name]

    def warmup(self, modes: Sequence[str] = ("av",)) -> None:
        """Create the sessions, and run each once at batch 1, now rather than inside the first
        windows (a session's first run also sets up its memory): a live stream that starts
        cold drops its first second or more of frames."""
        for g in [VIDEO_GRAPH, AUDIO_GRAPH, *[self.manifest.modes[m] for m in modes if m in self.manifest.modes]]:
            if g in self.manifest.graphs:
                spec = self.manifest.graphs[g]
                self.run(g, [torch.zeros(s.concrete(1), dtype=_TORCH[s.dtype]) for s in spec.inputs])

    # ------------------------------------------------------------------ running
    def _prepare(self, graph: str, x: torch.Tensor, spec: TensorSpec, batch: int) -> torch.Tensor:
        want = spec.concrete(batch)
        if tuple(x.shape) != want:
            raise SalstreamError(f"engine {self.name}: graph {graph} input {spec.name!r} has shape {tuple(x.shape)}, "
                                 f"expected {want} (batch {batch}); the inputs do not fit the exported "
                                 f"{self.manifest.profile} model")
        x = x.to(self.device if self.io_binding else "cpu", _TORCH[spec.dtype])
        return x.contiguous()

    def run(self, name: str, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run graph ``name`` on flat inputs in manifest order; returns its outputs as tensors."""
        graph = self.manifest.graphs[name]
        if len(inputs) != len(graph.inputs):
            raise SalstreamError(f"engine {self.name}: graph {name} takes {len(graph.inputs)} inputs "
                                 f"({', '.join(graph.input_names)}), got {len(inputs)}")
        batch = int(inputs[0].shape[0])
        xs = [self._prepare(name, x, s, batch) for x, s in zip(inputs, graph.inputs)]
        sess = self.session(name)
        if not self.io_binding:
            feeds = {s.name: x.numpy() for x, s in zip(xs, graph.inputs)}
            return [torch.from_numpy(y) for y in sess.run(graph.output_names, feeds)]
        binding = sess.io_binding()
        dev_type, dev_id = self.device.type, self.device.index or 0
        for x, s in zip(xs, graph.inputs):
            binding.bind_input(s.name, dev_type, dev_id, _NP[s.dtype], tuple(x.shape), x.data_ptr())
        outs = []
        for s in graph.outputs:
            y = torch.empty(s.concrete(batch), dtype=_TORCH[s.dtype], device=self.device)
            binding.bind_output(s.name, dev_type, dev_id, _NP[s.dtype], tuple(y.shape), y.data_ptr())
            outs.append(y)
        sess.run_with_iobinding(binding)
        return outs

    def _graph(self, name: str, what: str) -> str:
        if name not in self.manifest.graphs:
            raise SalstreamError(f"exported graphs {self.artifacts} have no {name} graph ({what}); export again "
                                 "with all modes")
        return name

    def encode_video(self, video: torch.Tensor):
        return tuple(self.run(self._graph(VIDEO_GRAPH, "video encoder"), [video]))

    def encode_audio(self, audio: torch.Tensor):
        out = self.run(self._graph(AUDIO_GRAPH, "audio encoder"), [audio])
        return out[0] if self.manifest.audio_outputs is None else tuple(out)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, video_feats, audio_feats) -> torch.Tensor:
        mode = mode_of(video_feats, audio_feats)
        if mode not in self.manifest.modes:
            raise SalstreamError(f"exported graphs {self.artifacts} lack the {mode!r} mode (have "
                                 f"{', '.join(self.manifest.modes)}); export again with that mode")
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        flat = flat_denoise_inputs(mode, x_t, t, video_feats, audio_feats)
        x0 = self.run(self.manifest.modes[mode], flat)[0]
        return x0.float() if x0.dtype != torch.float32 else x0

    def describe(self) -> dict:
        return {"engine": self.name, "profile": self.config.profile, "artifacts": str(self.artifacts),
                "precision": self.manifest.precision, "threads": self.threads, "io_binding": self.io_binding,
                "providers": {n: s.get_providers()[0] for n, s in self._sessions.items()}}


# ---------------------------------------------------------------------- factories

def require_provider(engine: str) -> None:
    """Raise one clear line when ONNX Runtime or the GPU this engine needs is missing."""
    available = ort.get_available_providers()
    if engine == "ort-cuda" and "CUDAExecutionProvider" not in available:
        raise EngineUnavailable(f"engine 'ort-cuda' needs onnxruntime-gpu (this onnxruntime has only "
                                f"{', '.join(available)}): {GPU_EXTRA}")
    if engine == "ort-trt" and "TensorrtExecutionProvider" not in available:
        raise EngineUnavailable(f"engine 'ort-trt' needs onnxruntime-gpu with its TensorRT provider and the NVIDIA "
                                f"TensorRT libraries (this onnxruntime has only {', '.join(available)}): {GPU_EXTRA}")
    if engine != "ort-cpu" and not torch.cuda.is_available():
        raise EngineUnavailable(f"engine {engine!r} needs a CUDA GPU, and torch.cuda.is_available() is False here; "
                                "use --engine ort-cpu")


def _make(engine: str, kind: str):
    def factory(model: Optional[torch.nn.Module] = None, checkpoint: Optional[str] = None,
                artifacts: Optional[str] = None, threads: Optional[int] = None, profile: Optional[str] = None,
                io_binding: Optional[bool] = None, device_id: int = 0, **_: Any) -> OrtEngine:
        require_provider(engine)
        if artifacts is None:
            raise SalstreamError(f"engine {engine!r} runs exported graphs: give the directory `salstream export` "
                                 "wrote (--artifacts DIR), or let `salstream run` export them once")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise SalstreamError(f"checkpoint {checkpoint}: no such file")
        ck_sha = file_sha256(checkpoint) if checkpoint is not None else None
        weights = weights_sha256(model) if model is not None else None
        if checkpoint is not None and weights is None:
            manifest = read_manifest(artifacts)
            if manifest.checkpoint_sha256 is None:  # exported from an in-memory model: compare the weights
                from salstream.diffsal.checkpoint import load_state
                weights = weights_sha256(load_state(checkpoint)[1])
        return OrtEngine(artifacts, kind=kind, threads=threads, device_id=device_id, io_binding=io_binding,
                         profile=profile, weights=weights, checkpoint=ck_sha)
    return factory


register_engine("ort-cpu")(_make("ort-cpu", "cpu"))
register_engine("ort-cuda")(_make("ort-cuda", "cuda"))
register_engine("ort-trt")(_make("ort-trt", "trt"))
