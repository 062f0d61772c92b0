"""An ALSA capture device that plays a file: the real PyAudio/PortAudio path without a sound card.

ALSA reads ``$XDG_CONFIG_HOME/alsa/asoundrc``; :func:`write_capture_device` writes one that
defines a capture PCM over ALSA's ``file`` plugin reading raw S16_LE mono samples. Set
``XDG_CONFIG_HOME`` to the returned directory *before* PyAudio is first initialised.
Reads are bit-exact but not paced, and past the end of the file old data repeats, so
read exactly the file's length.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_capture_device(config_home: str | Path, samples: np.ndarray, *, name: str = "wavin",
                         rate: int = 16000) -> tuple[Path, str]:
    """Write ``samples`` (int16, or float in [-1, 1]) as the device's input.

    Returns ``(config_home, device_name)``.
    """
    config_home = Path(config_home)
    (config_home / "alsa").mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
    raw = config_home / f"{name}.raw"
    samples.astype("<i2").tofile(raw)
    slave = f"{name}_file"
    (config_home / "alsa" / "asoundrc").write_text(
        f'pcm.{name} {{ type plug slave {{ pcm "{slave}" format S16_LE rate {int(rate)} channels 1 }}\n'
        f'  hint {{ show on description "file {raw.name} as capture device" }} }}\n'
        f'pcm.{slave} {{ type file slave.pcm "null" file "/dev/null" infile "{raw}" format "raw" }}\n')
    return config_home, name
