"""Convert an official DiffSal checkpoint (.pth) into a salstream `full` checkpoint.

``salstream convert-official IN.pth OUT.safetensors [--allow-missing-audio]``

The official trainer saves ``torch.save({"state_dict", "optim_dict", "epoch", "step"})``
from a DDP-wrapped model, so every key starts with ``module.`` (spec §7). Its own
loader uses ``strict=False``, which silently ignores any mismatch; here every tensor
must find its place, or the conversion fails naming each one.
"""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Callable, Optional

import torch

from salstream.diffsal.checkpoint import file_sha256, save_checkpoint
from salstream.errors import CheckpointError

# Present in an audio-visual checkpoint, absent from a video-only (DHF1K) one.
AUDIO_PREFIXES = ("audio_net.", "spatiotemp_net.", "fc.")
_MAX_LISTED = 25


def read_official_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an official file, ``module.`` stripped (wrapped or bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint {path}: no such file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"official checkpoint {path}: holds objects other than tensors and plain "
                              f"containers, refused by the safe loader ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"official checkpoint {path}: not a readable torch.save file ({exc}); "
                              "it may be truncated — download it again") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"official checkpoint {path}: expected a dict with 'state_dict' (or a bare "
                              f"state dict), found {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"official checkpoint {path}: entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor; is this a state dict?")
        name = key[len("module."):] if key.startswith("module.") else key
        if name in out:
            raise CheckpointError(f"official checkpoint {path}: {name!r} appears twice (with and without "
                                  "the 'module.' prefix)")
        out[name] = value
    return out


def _listing(title: str, rows: list[str]) -> str:
    more = f"\n    … and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return f"  {title} ({len(rows)}):\n" + "\n".join(f"    {r}" for r in rows[:_MAX_LISTED]) + more


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, allow_missing_audio: bool = False,
                     log: Optional[Callable[[str], None]] = print) -> dict:
    """Convert ``src`` (.pth) to ``dst`` (.safetensors); returns a summary dict.

    A video-only (DHF1K) file lacks every ``audio_net``/``spatiotemp_net``/``fc`` tensor;
    with ``allow_missing_audio`` those keep this model's initial values (the audio path
    is then untrained and only the video-only mode is meaningful).
    """
    from salstream.diffsal.models.full import FullDiffSal, full_config

    say = log or (lambda _msg: None)
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"output {dst} is the input file; choose another output path")
    state = read_official_state(src)
    # Shapes only: a meta-device model costs no memory and no initialisation time.
    with torch.device("meta"):
        model = FullDiffSal(full_config())
    own = model.state_dict()

    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in own]
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    video_only = bool(missing) and all(k.startswith(AUDIO_PREFIXES) for k in missing) \
        and not any(k.startswith(AUDIO_PREFIXES) for k in state)
    if video_only and allow_missing_audio:
        initial = FullDiffSal(full_config()).state_dict()  # a real, initialised model
        fill = {k: initial[k] for k in missing}
        missing = []
    else:
        fill = {}

    if unexpected or wrong or missing:
        parts = [f"official checkpoint {src} does not fit the full model:"]
        if unexpected:
            parts.append(_listing("tensors with no place in the model", unexpected))
        if wrong:
            parts.append(_listing("tensors of the wrong shape", wrong))
        if missing:
            parts.append(_listing("model tensors missing from the file",
                                  [f"{k} {tuple(own[k].shape)}" for k in missing]))
        if video_only:
            parts.append("  This looks like a video-only (DHF1K) checkpoint: pass --allow-missing-audio to "
                         "keep initial audio weights (only the video-only mode is then meaningful).")
        raise CheckpointError("\n".join(parts))

    # Every name and shape was checked above; now a strict load that adopts the tensors
    # (cast to the model's dtypes) instead of copying them into freshly allocated ones.
    merged = {k: v.to(own[k].dtype) for k, v in {**state, **fill}.items()}
    model.load_state_dict(merged, strict=True, assign=True)
    meta = {"source": src.name, "source_sha256": file_sha256(src),
            "audio_weights": "initialised (video-only source)" if video_only else "from source"}
    save_checkpoint(model, dst, metadata=meta)
    summary = {"output": str(dst), "tensors": len(state), "filled_audio_tensors": len(fill),
               "video_only": video_only}
    if video_only:
        say(f"{src.name}: video-only (DHF1K) checkpoint — {len(fill)} audio tensors "
            "(audio_net, spatiotemp_net, fc) kept at their initial values; use mode 'video'")
    say(f"converted {len(state)} tensors from {src} -> {dst}")
    return summary


def _run(args: argparse.Namespace) -> int:
    convert_official(args.input, args.output, allow_missing_audio=args.allow_missing_audio)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert-official", help="convert an official DiffSal .pth into a salstream checkpoint",
        description="Convert an official DiffSal checkpoint (torch.save with 'state_dict', DDP 'module.' "
                    "prefixes) into a salstream `full` safetensors checkpoint, loading every tensor strictly.")
    p.add_argument("input", help="official checkpoint, e.g. split1_weights/best.pth")
    p.add_argument("output", help="salstream checkpoint to write, e.g. full-split1.safetensors")
    p.add_argument("--allow-missing-audio", action="store_true",
                   help="accept a video-only (DHF1K) checkpoint; audio weights keep their initial values")
    p.set_defaults(func=_run)
    return p
