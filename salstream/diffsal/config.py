"""Model configuration shared by the network, preprocessing, streaming and checkpoints.

A :class:`ModelConfig` travels inside every checkpoint, so a file says which profile
it is, which input sizes it expects and how its inputs must be prepared.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

# Pixel statistics (spec §1.1). "av": the STAViS statistics on 0–255 RGB used by the
# released audio-visual checkpoints; "imagenet": x/255 then ImageNet statistics (DHF1K);
# "tf": TF-style [-1, 1] scaling that the EfficientNet-Lite weights expect.
PIXEL_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "av": ((114.7748, 107.7354, 99.4750), (38.7568578, 37.88248729, 40.02898126)),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "tf": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}

MODES = ("av", "video", "audio")

# Bounds of a stored config (checkpoint metadata is input: it is checked before it sizes anything).
MAX_CONFIG_CHARS = 64 * 1024
MAX_SIDE = 4096          # input, map and audio slice sides
MAX_ARCH_NUMBER = 65536  # widths, depths, heads, kernel sizes… of any profile


def _check_arch(v: Any, name: str, depth: int) -> None:
    """Profile-specific architecture values: small numbers, short strings, short flat lists."""
    if depth > 3:
        raise ValueError(f"config field {name}: nested too deeply")
    if isinstance(v, bool) or v is None:
        return
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or abs(v) > MAX_ARCH_NUMBER:
            raise ValueError(f"config field {name} = {v!r}: expected a finite number of at most {MAX_ARCH_NUMBER}")
    elif isinstance(v, str):
        if len(v) > 256:
            raise ValueError(f"config field {name}: string longer than 256 characters")
    elif isinstance(v, (list, tuple)):
        if len(v) > 64:
            raise ValueError(f"config field {name}: more than 64 entries")
        for i, x in enumerate(v):
            _check_arch(x, f"{name}[{i}]", depth + 1)
    elif isinstance(v, dict):
        if len(v) > 256:
            raise ValueError(f"config field {name}: more than 256 keys")
        for k, x in v.items():
            _check_arch(x, f"{name}.{k}", depth + 1)
    else:
        raise ValueError(f"config field {name}: unsupported value {type(v).__name__}")


@dataclass
class AudioConfig:
    """Log-mel slicing (VGGish style, spec §1.3)."""
    sample_rate: int = 16000
    n_slices: int = 9                 # slices per window
    slice_seconds: float = 0.64       # 64 STFT frames of 10 ms
    slice_hop_seconds: float = 0.11   # 11 STFT frames
    n_mels: int = 64
    slice_size: tuple[int, int] = (112, 192)  # each 64×64 slice is resized to this (rows = time)

    @property
    def window_seconds(self) -> float:
        return self.slice_seconds + (self.n_slices - 1) * self.slice_hop_seconds


@dataclass
class ModelConfig:
    profile: str
    frames: int = 16                      # frames per window
    frame_stride: int = 1                 # source frames between two window frames
    target_index: int = 8                 # which window frame the map belongs to
    input_size: tuple[int, int] = (224, 384)   # (H, W) fed to the video encoder
    map_size: tuple[int, int] = (224, 384)     # (H, W) of the predicted map
    pixel_norm: str = "av"
    per_frame_video: bool = False         # True: encode_video takes one frame, features are cached per frame
    default_steps: int = 4
    timestep_spacing: str = "leading"     # DDIM timesteps: "leading" (official) or "trailing"
    audio: AudioConfig = field(default_factory=AudioConfig)
    arch: dict[str, Any] = field(default_factory=dict)  # profile-specific widths etc.

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """The config stored in a checkpoint, range-checked before anything is built from it.

        Raises ``ValueError`` naming the first field out of range (a crafted file must not
        make the loader allocate gigabytes or loop for hours)."""
        if not isinstance(text, str) or len(text) > MAX_CONFIG_CHARS:
            raise ValueError(f"config metadata longer than {MAX_CONFIG_CHARS} characters")
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("config metadata is not a JSON object")
        audio = d.get("audio", {})
        if not isinstance(audio, dict):
            raise ValueError("config field 'audio' is not an object")
        d["audio"] = AudioConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in audio.items()})
        for k in ("input_size", "map_size"):
            if not isinstance(d.get(k), (list, tuple)):
                raise ValueError(f"config field {k!r} = {d.get(k)!r}: expected [height, width]")
            d[k] = tuple(d[k])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> "ModelConfig":
        """Every field within what a real model of any profile uses (generous bounds); else ``ValueError``."""
        def need(ok: bool, name: str, value: Any, want: str) -> None:
            if not ok:
                shown = repr(value)
                raise ValueError(f"config field {name} = {shown[:80]}: expected {want}")

        def integer(name: str, v: Any, lo: int, hi: int) -> None:
            need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, name, v, f"an integer in {lo}…{hi}")

        def size(name: str, v: Any) -> None:
            need(isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                and 1 <= x <= MAX_SIDE for x in v),
                 name, v, f"[height, width], each 1…{MAX_SIDE}")

        need(isinstance(self.profile, str) and 0 < len(self.profile) <= 64, "profile", self.profile, "a profile name")
        integer("frames", self.frames, 1, 256)
        integer("frame_stride", self.frame_stride, 1, 64)
        integer("target_index", self.target_index, 0, self.frames - 1)
        size("input_size", self.input_size)
        size("map_size", self.map_size)
        need(self.pixel_norm in PIXEL_NORMS, "pixel_norm", self.pixel_norm, f"one of {', '.join(PIXEL_NORMS)}")
        need(isinstance(self.per_frame_video, bool), "per_frame_video", self.per_frame_video, "true or false")
        integer("default_steps", self.default_steps, 1, 1000)
        need(self.timestep_spacing in ("leading", "trailing"), "timestep_spacing", self.timestep_spacing,
             "leading or trailing")
        a = self.audio
        integer("audio.sample_rate", a.sample_rate, 1000, 192000)
        integer("audio.n_slices", a.n_slices, 1, 256)
        integer("audio.n_mels", a.n_mels, 1, 512)
        for name in ("slice_seconds", "slice_hop_seconds"):
            v = getattr(a, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 60,
                 f"audio.{name}", v, "seconds in (0, 60]")
        size("audio.slice_size", a.slice_size)
        need(isinstance(self.arch, dict), "arch", self.arch, "an object")
        _check_arch(self.arch, "arch", 0)
        return self

    @property
    def causal(self) -> bool:
        return self.target_index == self.frames - 1
