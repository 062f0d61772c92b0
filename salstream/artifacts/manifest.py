"""The manifest that travels with exported graphs, and the checks made when loading them.

``manifest.json`` says which model the graphs were made from (profile, config,
checkpoint and weights hashes), what each graph takes and returns (names, shapes
with ``batch`` as the one dynamic axis, dtypes), the opset and each file's SHA-256.
An engine refuses graphs whose manifest does not match the model it was asked for.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from salstream.diffsal.checkpoint import file_sha256
from salstream.diffsal.config import ModelConfig
from salstream.errors import SalstreamError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
BATCH_AXIS = "batch"


def weights_sha256(model_or_state: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """Hash of the weights themselves (names, dtypes, shapes, bytes), independent of the file."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]       # ints, or "batch" for the dynamic axis
    dtype: str                   # numpy dtype name: float32, float16, int64

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if isinstance(d, str) else int(d) for d in self.shape)


@dataclass
class GraphSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    mode: Optional[str] = None   # denoise graphs: which mode they serve
    extra_files: dict[str, str] = field(default_factory=dict)  # external weight data: name -> sha256

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


@dataclass
class Manifest:
    profile: str
    config: ModelConfig
    weights_sha256: str
    checkpoint_sha256: Optional[str]
    opset: int
    precision: str                  # "fp32" or "fp16"
    exporter: str
    graphs: dict[str, GraphSpec]
    modes: dict[str, str]           # mode -> denoise graph name
    video_outputs: int = 0
    audio_outputs: Optional[int] = None   # None: encode_audio returns one tensor
    versions: dict[str, str] = field(default_factory=dict)
    export_seconds: Optional[float] = None
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "profile": self.profile,
            "config": json.loads(self.config.to_json()),
            "weights_sha256": self.weights_sha256,
            "checkpoint_sha256": self.checkpoint_sha256,
            "opset": self.opset,
            "precision": self.precision,
            "exporter": self.exporter,
            "batch_axis": BATCH_AXIS,
            "video_outputs": self.video_outputs,
            "audio_outputs": self.audio_outputs,
            "modes": self.modes,
            "graphs": {
                name: {
                    "file": g.file, "sha256": g.sha256, "mode": g.mode, "extra_files": g.extra_files,
                    "inputs": [vars(s) for s in g.inputs], "outputs": [vars(s) for s in g.outputs],
                } for name, g in self.graphs.items()
            },
            "versions": self.versions,
            "export_seconds": self.export_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        graphs = {
            name: GraphSpec(file=g["file"], sha256=g["sha256"], mode=g.get("mode"),
                            extra_files=dict(g.get("extra_files") or {}),
                            inputs=[TensorSpec(**s) for s in g["inputs"]],
                            outputs=[TensorSpec(**s) for s in g["outputs"]])
            for name, g in d["graphs"].items()
        }
        return cls(profile=d["profile"], config=ModelConfig.from_json(json.dumps(d["config"])),
                   weights_sha256=d["weights_sha256"], checkpoint_sha256=d.get("checkpoint_sha256"),
                   opset=int(d["opset"]), precision=d["precision"], exporter=d.get("exporter", "?"),
                   graphs=graphs, modes=dict(d["modes"]), video_outputs=int(d.get("video_outputs", 0)),
                   audio_outputs=d.get("audio_outputs"), versions=dict(d.get("versions") or {}),
                   export_seconds=d.get("export_seconds"), format=int(d.get("format", MANIFEST_FORMAT)))

    def write(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Read ``DIR/manifest.json``; a missing or unreadable one is a :class:`SalstreamError`."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise SalstreamError(f"exported graphs {directory}: no {MANIFEST_NAME} there; create them with "
                             "`salstream export --checkpoint CKPT --out DIR`")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as exc:
        raise SalstreamError(f"exported graphs {directory}: {MANIFEST_NAME} is unreadable ({str(exc)[:200]}); "
                             "re-export with `salstream export`") from None
    if manifest.format != MANIFEST_FORMAT:
        raise SalstreamError(f"exported graphs {directory}: manifest format {manifest.format}, this salstream "
                             f"reads format {MANIFEST_FORMAT}; re-export with `salstream export`")
    return manifest


def verify_files(directory: str | os.PathLike, manifest: Manifest, graphs: Optional[list[str]] = None) -> None:
    """Check the graph files exist and have the checksums the manifest recorded."""
    directory = Path(directory)
    for name in graphs or list(manifest.graphs):
        spec = manifest.graphs[name]
        for file, want in [(spec.file, spec.sha256), *spec.extra_files.items()]:
            path = directory / file
            if not path.is_file():
                raise SalstreamError(f"exported graphs {directory}: {file} is missing; re-export with "
                                     "`salstream export`")
            if file_sha256(path) != want:
                raise SalstreamError(f"exported graphs {directory}: {file} does not match its checksum in "
                                     f"{MANIFEST_NAME} (modified or corrupt); re-export with `salstream export`")


def check_identity(directory: str | os.PathLike, manifest: Manifest, *, profile: Optional[str] = None,
                   weights: Optional[str] = None, checkpoint: Optional[str] = None) -> None:
    """Refuse graphs made from another profile, checkpoint or set of weights than expected."""
    where = f"exported graphs {directory}"
    if profile is not None and manifest.profile != profile:
        raise SalstreamError(f"{where} were exported from profile {manifest.profile!r}, expected {profile!r}; "
                             f"export the {profile} checkpoint, or pass --profile {manifest.profile}")
    if checkpoint is not None and manifest.checkpoint_sha256 is not None and manifest.checkpoint_sha256 != checkpoint:
        raise SalstreamError(f"{where} were exported from another checkpoint (sha256 {manifest.checkpoint_sha256[:12]}…, "
                             f"expected {checkpoint[:12]}…); re-export this checkpoint with `salstream export`")
    if weights is not None and manifest.weights_sha256 != weights:
        raise SalstreamError(f"{where} were exported from other weights (sha256 {manifest.weights_sha256[:12]}…, "
                             f"expected {weights[:12]}…); re-export this checkpoint with `salstream export`")
