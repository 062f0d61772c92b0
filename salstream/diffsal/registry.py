"""Profile registry: ``create_model("lite")`` / ``create_model("full")``.

Profiles register a default :class:`ModelConfig`, a builder and, when the package ships
trained weights for them, the file name of those weights under ``diffsal/weights/``
(:func:`bundled_weights`). Callers may override config fields
(``create_model("full", input_size=(64, 96))``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from salstream.diffsal.config import ModelConfig
from salstream.errors import SalstreamError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_BUILDERS: dict[str, tuple[Callable[[], ModelConfig], Callable[[ModelConfig], nn.Module]]] = {}
_WEIGHTS: dict[str, str] = {}


def register_profile(name: str, default_config: Callable[[], ModelConfig], weights: Optional[str] = None):
    """Register a profile; ``weights``: file name of its bundled checkpoint in :data:`WEIGHTS_DIR`."""
    def deco(builder: Callable[[ModelConfig], nn.Module]):
        _BUILDERS[name] = (default_config, builder)
        if weights is not None:
            _WEIGHTS[name] = weights
        return builder
    return deco


def bundled_weights(profile: str) -> Optional[Path]:
    """The checkpoint shipped with the package for ``profile``, or ``None`` (none registered or file absent)."""
    _load_builtin_profiles()
    name = _WEIGHTS.get(profile)
    path = WEIGHTS_DIR / name if name else None
    return path if path is not None and path.is_file() else None


BUILTIN_PROFILE_MODULES = ("salstream.diffsal.models.full", "salstream.diffsal.models.lite")


def _load_builtin_profiles() -> None:
    # Importing the modules registers them; kept lazy so `diffsal.config` stays light.
    import importlib
    for name in BUILTIN_PROFILE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent profile module
                raise


def available_profiles() -> list[str]:
    _load_builtin_profiles()
    return sorted(_BUILDERS)


def default_config(profile: str, **overrides) -> ModelConfig:
    _load_builtin_profiles()
    if profile not in _BUILDERS:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(_BUILDERS)}")
    cfg = _BUILDERS[profile][0]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def create_model(profile_or_config: str | ModelConfig, **overrides) -> nn.Module:
    """Build an untrained model (eval mode) for a profile name or a full config."""
    cfg = (profile_or_config if isinstance(profile_or_config, ModelConfig)
           else default_config(profile_or_config, **overrides))
    _load_builtin_profiles()
    model = _BUILDERS[cfg.profile][1](cfg)
    return model.eval()


def arch_overrides(profile: str, items: Sequence[str]) -> dict:
    """``--arch KEY=VALUE`` command-line items -> ``create_model`` overrides: the profile's
    architecture settings with those changed (VALUE is JSON)."""
    if not items:
        return {}
    arch = dict(default_config(profile).arch)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in arch:
            raise SalstreamError(f"--arch {item!r}: expected KEY=VALUE with KEY one of the {profile} profile's "
                                 f"settings ({', '.join(sorted(arch))})")
        try:
            arch[key] = json.loads(text)
        except json.JSONDecodeError:
            raise SalstreamError(f"--arch {item!r}: VALUE must be JSON (true, 0, [128, 64, 32], \"gated\")") from None
    return {"arch": arch}
