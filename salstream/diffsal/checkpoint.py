"""Checkpoints: safetensors files that carry their own configuration.

Metadata keys: ``salstream_format`` (file layout version), ``profile``, ``config``
(the :class:`ModelConfig` as JSON) plus any caller extras (e.g. ``source``).
Every failure to use a file raises :class:`CheckpointError` naming the file, what
was expected and what was found.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from salstream.diffsal.config import ModelConfig
from salstream.errors import CheckpointError

FORMAT_VERSION = "1"


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: Optional[dict] = None) -> Path:
    """Write ``model``'s state dict and config; atomic (never leaves a half-written file)."""
    path = Path(path)
    meta = {"salstream_format": FORMAT_VERSION, "profile": model.config.profile, "config": model.config.to_json()}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    # safetensors refuses shared storage; contiguous clones keep every tensor independent.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata, checking it is a readable salstream checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: not a readable safetensors file ({exc}); it may be truncated or corrupt — "
            "re-copy it, or convert an official .pth with `salstream convert-official`") from None
    if "config" not in meta or "profile" not in meta:
        raise CheckpointError(f"checkpoint {path}: safetensors file without salstream metadata "
                              "(expected 'profile' and 'config'); was it written by salstream?")
    return meta


def load_state(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    meta = read_metadata(path)
    try:
        cfg = ModelConfig.from_json(meta["config"])
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path}: unusable config metadata ({str(exc)[:200]}); "
                              "re-save it with salstream or use the bundled weights") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: tensor data unreadable ({exc}); the file is truncated or "
                              "corrupt — re-copy it") from None
    return cfg, state


def load_model(path: str | os.PathLike, profile: Optional[str] = None) -> torch.nn.Module:
    """Build the checkpoint's model and load its weights strictly (eval mode)."""
    from salstream.diffsal.registry import create_model

    meta = read_metadata(path)
    if profile is not None and meta["profile"] != profile:
        raise CheckpointError(f"checkpoint {path}: expected profile {profile!r}, found {meta['profile']!r}; "
                              f"pass --profile {meta['profile']} or a {profile} checkpoint")
    cfg, state = load_state(path)
    # The config sizes the model: build it on the meta device first (no memory) and check it
    # against the tensors the file really holds, so crafted metadata cannot make us allocate.
    # (pretrained backbone weights are not fetched for the skeleton: the file must hold them anyway)
    bare = dataclasses.replace(cfg, arch={**cfg.arch, "pretrained": False}) if "pretrained" in cfg.arch else cfg
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = create_model(bare)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config cannot build a {cfg.profile} model "
                              f"({str(exc)[:200]})") from None
    check_state_fits(skeleton, state, source=str(path))
    del skeleton
    model = create_model(cfg)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def check_state_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s names and shapes (no copying)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:3])})")
        raise CheckpointError(f"checkpoint {source}: does not fit the {model.config.profile} model: "
                              + "; ".join(parts))


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing the first mismatches."""
    check_state_fits(model, state, source)
    model.load_state_dict(state, strict=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
