"""Backends that run the three graphs (``encode_video``, ``encode_audio``, ``denoise``).

``create_engine(name, ...)`` is the one factory; every engine satisfies
:class:`salstream.engines.base.Engine`, so ``salstream.diffsal.inference`` drives them
all with the same DDIM loop. Importing this package registers the implementations;
GPU engines import their runtimes only when one is created.
"""
from salstream.engines import onnxruntime_engine, tensorrt_engine, torch_cuda_engine, torch_engine  # noqa: F401
from salstream.engines.base import Engine, EngineUnavailable, available_engines, create_engine, register_engine

__all__ = ["Engine", "EngineUnavailable", "available_engines", "create_engine", "register_engine"]

# Engines that run graphs written by `salstream export` (they need an artifacts directory).
EXPORTED_GRAPH_ENGINES = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
