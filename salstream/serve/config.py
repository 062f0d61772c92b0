"""Which streams a cluster serves: ``--source`` options and/or a ``--config`` file.

The file is YAML (read with ``yaml.safe_load``: it never builds objects) holding a list
of streams, or a mapping with the key ``streams``; each stream is a source spec, or a
mapping with ``source`` and optionally ``id``::

    streams:
      - synthetic:1                                 # id: its position in the list
      - {id: lobby, source: "rtsp://cam-lobby:8554/stream"}

Streams from ``--source`` come first (ids 0, 1, …); the file's follow. An id defaults
to the stream's position in that combined list.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from salstream.errors import SalstreamError
from salstream.streamer.wire.format import check_stream_id

MAX_CONFIG_BYTES = 1 << 20          # a fleet of thousands of streams fits in far less
STREAM_KEYS = {"id", "source"}


@dataclass(frozen=True)
class StreamSpec:
    stream_id: str
    source: str


def read_config(path: str) -> list[Any]:
    """The raw stream entries of a config file (checked for shape, not yet for ids)."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise SalstreamError(f"--config {path}: no such file; give a YAML file with a list of streams "
                             "(see `salstream serve --help`)")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise SalstreamError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SalstreamError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0][:120]})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"streams"}
        if unknown:
            raise SalstreamError(f"--config {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                 "the file holds 'streams: [...]'")
        data = data.get("streams")
    if not isinstance(data, list) or not data:
        raise SalstreamError(f"--config {path}: expected a non-empty list of streams (or 'streams: [...]'), "
                             f"got {type(data).__name__}")
    return data


def stream_specs(sources: Optional[Iterable[str]] = None, config: Optional[str] = None) -> list[StreamSpec]:
    """``--source`` streams then the config file's, each with its id; ids are unique."""
    entries: list[Any] = list(sources or [])
    where = ["--source"] * len(entries)
    if config is not None:
        more = read_config(config)
        entries += more
        where += [f"--config {config}"] * len(more)
    if not entries:
        raise SalstreamError("no streams: give --source SPEC (repeatable) or --config streams.yaml")
    out: list[StreamSpec] = []
    seen: set[str] = set()
    for i, (entry, origin) in enumerate(zip(entries, where)):
        if isinstance(entry, str):
            sid, spec = str(i), entry
        elif isinstance(entry, dict):
            unknown = set(map(str, entry)) - STREAM_KEYS
            if unknown or "source" not in entry:
                raise SalstreamError(f"{origin}: stream {i}: expected {{source: SPEC, id: NAME}}, got keys "
                                     f"{', '.join(sorted(map(str, entry))) or 'none'}")
            sid, spec = str(entry.get("id", i)), entry["source"]
        else:
            raise SalstreamError(f"{origin}: stream {i}: expected a source spec or {{source: SPEC, id: NAME}}, "
                                 f"got {type(entry).__name__}")
        if not isinstance(spec, str) or not spec.strip():
            raise SalstreamError(f"{origin}: stream {sid}: the source must be a non-empty string")
        try:
            check_stream_id(sid)
        except SalstreamError as exc:
            raise SalstreamError(f"{origin}: {exc}") from None
        if sid in seen:
            raise SalstreamError(f"{origin}: stream id {sid!r} is used twice; give each stream its own id")
        seen.add(sid)
        out.append(StreamSpec(sid, spec.strip()))
    return out
