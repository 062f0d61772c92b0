"""Live inputs: one factory, :func:`open_source`, for every kind of source.

Spec forms: a media file path, ``rtsp://…``, ``http(s)://…``, ``webcam:N``,
``synthetic`` or ``synthetic:SEED``. ``mic=`` adds a microphone (PyAudio device name or
index; ``True``/``"default"`` for the default input) whose audio replaces the source's.
"""
from __future__ import annotations

import re
from pathlib import Path

from salstream.errors import SalstreamError
from salstream.streamer.live.sources.base import Source

__all__ = ["Source", "open_source", "default_demo_source", "SPEC_HELP"]

SPEC_HELP = "a media file path, rtsp://…, http(s)://…, webcam:N, synthetic or synthetic:SEED"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MEDIA_DIR = Path(__file__).resolve().parents[2] / "media"
DEMO_CLIP = "box.mp4"


def default_demo_source() -> str:
    """Path of the bundled demo clip (a real recording with sound, see media/LICENSE.md)."""
    path = _MEDIA_DIR / DEMO_CLIP
    if not path.is_file():
        raise SalstreamError(f"the bundled demo clip {path} is missing; reinstall salstream or pass --source")
    return str(path)


def open_source(spec: str, *, stream_id: str = "0", paced: bool = True, mic: str | int | bool | None = None,
                audio_rate: int = 16000, open_timeout: float = 5.0, read_timeout: float = 5.0,
                **options: object) -> Source:
    """Open ``spec`` (see the module docstring); bad input raises :class:`SalstreamError`.

    Extra ``options`` go to the concrete source (e.g. ``reconnect_attempts`` for live URLs,
    ``n_frames`` for synthetic, ``retries`` for webcams).
    """
    spec = str(spec).strip()
    if not spec:
        raise SalstreamError(f"empty source; give {SPEC_HELP}")
    source = _open_video(spec, stream_id=stream_id, paced=paced, audio_rate=audio_rate,
                         open_timeout=open_timeout, read_timeout=read_timeout, options=options)
    if mic is not None and mic is not False:
        from salstream.streamer.live.sources.microphone import with_microphone
        source = with_microphone(source, mic, sample_rate=audio_rate)
    return source


def _open_video(spec: str, *, stream_id: str, paced: bool, audio_rate: int, open_timeout: float,
                read_timeout: float, options: dict) -> Source:
    lower = spec.lower()
    if lower == "synthetic" or lower.startswith("synthetic:"):
        from salstream.streamer.live.sources.synthetic import SyntheticSource
        seed_text = spec.partition(":")[2] or "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise SalstreamError(f"source {spec!r}: the seed must be an integer, e.g. synthetic:7") from None
        return SyntheticSource(seed, stream_id=stream_id, paced=paced, sample_rate=audio_rate, **options)
    if lower.startswith("webcam:") or lower == "webcam":
        from salstream.streamer.live.sources.webcam import WebcamSource
        dev = spec.partition(":")[2] or "0"
        if not dev.isdigit():
            raise SalstreamError(f"source {spec!r}: give the camera index, e.g. webcam:0")
        return WebcamSource(int(dev), stream_id=stream_id, open_timeout=open_timeout, **options)
    match = _SCHEME.match(spec)
    if match:
        scheme = match.group(1).lower()
        if scheme == "file":
            spec = spec[len("file://"):]
        else:
            from salstream.streamer.live.sources.pyav import NETWORK_SCHEMES, PyAVSource
            if scheme not in NETWORK_SCHEMES:
                raise SalstreamError(f"source {spec!r}: unsupported scheme {scheme!r}; give {SPEC_HELP}")
            return PyAVSource(spec, stream_id=stream_id, paced=paced, audio_rate=audio_rate,
                              open_timeout=open_timeout, read_timeout=read_timeout, **options)
    if not Path(spec).expanduser().is_file():
        hint = "" if ":" not in spec else " (for a URL write scheme://…)"
        raise SalstreamError(f"source {spec!r}: no such file{hint}; give {SPEC_HELP}")
    from salstream.streamer.live.sources.pyav import PyAVSource
    return PyAVSource(str(Path(spec).expanduser()), stream_id=stream_id, paced=paced, audio_rate=audio_rate,
                      open_timeout=open_timeout, read_timeout=read_timeout, **options)
