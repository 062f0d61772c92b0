"""Dynamic INT8 quantisation of exported FP32 graphs for ONNX Runtime on CPU.

Weights of MatMul/Gemm (and optionally Conv) become INT8; activations are quantised
on the fly per call. The result is a complete export directory (graphs + manifest
with ``precision: int8``) that ``ort-cpu`` loads like any other.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Optional, Sequence

from salstream.artifacts.manifest import MANIFEST_NAME, file_sha256, read_manifest
from salstream.errors import SalstreamError

DEFAULT_OPS = ("MatMul", "Gemm")


def quantize_export(src: str | os.PathLike, dst: str | os.PathLike, *,
                    op_types: Sequence[str] = DEFAULT_OPS, graphs: Optional[Sequence[str]] = None,
                    per_channel: bool = True) -> Path:
    """Write INT8 versions of ``src``'s graphs (all, or just ``graphs``; the rest are copied) into ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    if manifest.precision != "fp32":
        raise SalstreamError(f"exported graphs {src} are {manifest.precision}; INT8 quantisation starts from FP32 graphs")
    dst.mkdir(parents=True, exist_ok=True)
    if (dst / MANIFEST_NAME).exists():
        (dst / MANIFEST_NAME).unlink()
    for name, spec in manifest.graphs.items():
        if graphs is None or name in graphs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(src / spec.file, dst / spec.file, op_types_to_quantize=list(op_types),
                                 per_channel=per_channel, weight_type=QuantType.QInt8)
        else:
            shutil.copy2(src / spec.file, dst / spec.file)
        spec.sha256 = file_sha256(dst / spec.file)
        spec.extra_files = {}
    manifest.precision = "int8"
    manifest.exporter += f"+quantize_dynamic({','.join(op_types)})"
    manifest.write(dst)
    return dst
