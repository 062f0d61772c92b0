"""Torch-TensorRT artifacts: where compiled graphs live in an export directory, and the runtime import.

Torch-TensorRT and the TensorRT libraries are imported only when asked for; without them
(or without a GPU) the request fails with one line naming what to install.
"""
from __future__ import annotations

import torch

from salstream.errors import EngineUnavailable

TRT_EXTRA = "pip install 'salstream[tensorrt]' (Torch-TensorRT, with NVIDIA's TensorRT libraries)"
TRT_SUBDIR = "tensorrt"     # compiled graphs and their own manifest, inside an export directory


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
        raise EngineUnavailable("engine 'tensorrt' needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                "use --engine ort-cpu")
    return torch_tensorrt
