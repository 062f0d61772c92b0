"""The units that flow from sources into the window assembler.

Times are explicit: ``pts`` is the media timestamp in seconds (stream clock),
``capture_time`` the local monotonic clock (``time.monotonic()``) when the unit was
read. Audio is always mono float32 in [-1, 1] at ``sample_rate`` (16 kHz by default,
what the log-mel features need); ``sample_index`` counts samples since the stream
started so audio slices can be located without floating-point drift.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass
class VideoFrame:
    image: np.ndarray            # (H, W, 3) uint8 RGB
    pts: float                   # seconds, media clock
    capture_time: float          # time.monotonic() when read
    index: int                   # 0-based frame counter of this stream
    stream_id: str = "0"


@dataclass
class AudioChunk:
    samples: np.ndarray          # (N,) float32 mono in [-1, 1]
    pts: float                   # seconds, media clock of the first sample
    capture_time: float
    sample_index: int            # index of the first sample since stream start
    sample_rate: int = 16000
    stream_id: str = "0"


@dataclass
class StreamEvent:
    """Out-of-band news from a source: a gap (reconnect), audio lost/back, end of stream."""
    kind: str                    # "gap" | "audio_lost" | "audio_back" | "end" | "error"
    pts: float | None = None
    capture_time: float = 0.0
    detail: dict = field(default_factory=dict)
    stream_id: str = "0"


Unit = Union[VideoFrame, AudioChunk, StreamEvent]
