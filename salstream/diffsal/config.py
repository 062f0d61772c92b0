"""Model configuration shared by the network, preprocessing, streaming and checkpoints.

A :class:`ModelConfig` travels inside every checkpoint, so a file says which profile
it is, which input sizes it expects and how its inputs must be prepared.
"""
from __future__ import annotations

import dataclasses
import json
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
        d = json.loads(text)
        d["audio"] = AudioConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("audio", {}).items()})
        for k in ("input_size", "map_size"):
            d[k] = tuple(d[k])
        return cls(**d)

    @property
    def causal(self) -> bool:
        return self.target_index == self.frames - 1
