"""Maps to disk: every map of a run, with its frame index and timestamps, in a plain layout.

``salstream run --save-maps DIR`` and the Python API's ``save_maps=DIR`` write::

    DIR/<stream>/maps.npz        the whole run: maps (N, H, W) exactly as published (float32, or uint8
                                 with --payload uint8), frame_index (N,) int64, pts (N,) float64 (s, media
                                 clock), capture_time / publish_time (N,) float64 (publisher's monotonic
                                 clock, s), seq (N,) int64, mode (N,) str; with --samples K > 1 also
                                 spread (N, H, W) float32: the K draws' per-pixel standard deviation as
                                 published on conf/<stream> (NaN where a map's spread was not saved)
    DIR/<stream>/headers.jsonl   one line per map: its full wire header (JSON)
    DIR/<stream>/png/0001.png    with --save-png: 8-bit maps (round(255 · value)) at model resolution,
                                 named by 1-based frame number like the saliency datasets

The files are written as the run goes: ``headers.jsonl`` line by line, the arrays in chunks
(``DIR/<stream>/chunks/000000.npz``, …, every ``chunk_maps`` maps or ``chunk_seconds``),
which are joined into ``maps.npz`` when the run ends. A spread arrives just after its map and
may land in the next chunk, so chunks keep it with its map's ``seq`` (``spread_seq``) and the
join lines it up with its map. A killed run keeps its chunks, and
:func:`load_saved_maps` reads either form. Every ``.npz`` loads with ``allow_pickle=False``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import numpy as np

from salstream.errors import SalstreamError
from salstream.streamer.wire import format as wire

log = logging.getLogger("salstream.saved_maps")

ARRAYS = ("maps", "frame_index", "pts", "capture_time", "publish_time", "seq", "mode")
SPREAD, SPREAD_SEQ = "spread", "spread_seq"


def stream_dir_name(stream_id: str) -> str:
    """A folder name for a stream id that cannot leave ``DIR`` (``/``, ``..``, odd characters are escaped)."""
    name = quote(str(stream_id), safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


class MapSaver:
    """Pipeline consumer that writes every map to ``directory`` (layout in the module docstring).

    The pipeline's threads only enqueue; a worker thread writes. ``png``: also write 8-bit
    PNGs. The directory must be new or empty, so two runs never mix.
    """

    def __init__(self, directory: str | os.PathLike, *, png: bool = False, chunk_maps: int = 64,
                 chunk_seconds: float = 2.0, max_pending: int = 4096):
        self.directory = Path(directory)
        if self.directory.exists() and (not self.directory.is_dir() or any(self.directory.iterdir())):
            raise SalstreamError(f"--save-maps {directory}: already exists and is not an empty folder; "
                                 "give a new (or empty) folder so two runs never mix")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SalstreamError(f"--save-maps {directory}: cannot create the folder ({exc})") from None
        self.png = bool(png)
        self.chunk_maps = max(1, int(chunk_maps))
        self.chunk_seconds = float(chunk_seconds)
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._streams: dict[str, _StreamFiles] = {}
        self.saved = 0
        self.dropped = 0            # maps the writer could not keep up with (disk far too slow)
        self.error: Optional[BaseException] = None

    # ------------------------------------------------------------------ pipeline side
    def start(self, sources=(), publisher=None) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="salstream-save-maps", daemon=True)
            self._thread.start()

    def on_unit(self, unit) -> None:
        pass

    def on_map(self, header: wire.MapHeader, saliency: np.ndarray) -> None:
        # The exact bytes the wire carries for this map, so the file equals what subscribers got.
        dtype = wire.PAYLOAD_DTYPES[header.dtype]
        published = np.frombuffer(wire.encode_map_payload(saliency, header.dtype), dtype).reshape(np.shape(saliency))
        try:
            self._q.put_nowait(("map", header, published))
        except queue.Full:
            self.dropped += 1

    def on_spread(self, header: wire.MapHeader, spread: np.ndarray) -> None:
        # conf/<stream> always carries float32, whatever the maps' payload dtype.
        try:
            self._q.put_nowait(("spread", header, np.array(spread, dtype=np.float32)))
        except queue.Full:
            pass       # its map keeps NaN for a spread; maps, not spreads, are what `dropped` counts

    def close(self, failed: bool = False) -> None:
        """Write what is queued, join the chunks into ``maps.npz``; re-raises a writer error."""
        self.start()
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise SalstreamError(f"--save-maps {self.directory}: writing failed ({self.error})") from self.error

    def summary(self) -> list[str]:
        line = f"maps saved: {self.saved} in {self.directory}/ ({len(self._streams)} stream(s))"
        return [line + (f", {self.dropped} not saved (disk too slow)" if self.dropped else "")]

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=self.chunk_seconds)
                except queue.Empty:
                    item = ...
                if item is None:
                    break
                if item is not ...:
                    kind, header, array = item
                    files = self._streams.get(header.stream)
                    if files is None:
                        files = self._streams[header.stream] = _StreamFiles(
                            self.directory / stream_dir_name(header.stream), self.png)
                    if kind == "map":
                        files.add(header, array)
                        self.saved += 1
                    else:
                        files.add_spread(header, array)
                now = time.monotonic()
                for files in self._streams.values():
                    if files.pending >= self.chunk_maps or (files.pending and now - files.since >= self.chunk_seconds):
                        files.write_chunk()
            for files in self._streams.values():
                files.finish()
        except BaseException as exc:   # surfaced by close(); keep draining so the pipeline never blocks
            self.error = exc
            log.exception("saving maps failed")
            while self._q.get() is not None:
                pass


class _StreamFiles:
    """One stream's folder: the header lines, the pending chunk, the PNGs."""

    def __init__(self, folder: Path, png: bool):
        self.folder = folder
        (folder / "chunks").mkdir(parents=True, exist_ok=True)
        if png:
            (folder / "png").mkdir(exist_ok=True)
        self.png = png
        self._headers = open(folder / "headers.jsonl", "w", encoding="utf-8")
        self._rows: list[tuple[wire.MapHeader, np.ndarray]] = []
        self._spreads: list[tuple[int, np.ndarray]] = []       # (seq of its map, spread)
        self._chunks = 0
        self.since = 0.0

    @property
    def pending(self) -> int:
        return len(self._rows) + len(self._spreads)

    def add(self, header: wire.MapHeader, saliency: np.ndarray) -> None:
        if not self._rows:
            self.since = time.monotonic()
        self._rows.append((header, saliency))
        self._headers.write(json.dumps(header.to_dict(), separators=(",", ":")) + "\n")
        self._headers.flush()
        if self.png:
            import cv2
            m = saliency if saliency.dtype == np.uint8 else np.rint(np.clip(saliency, 0.0, 1.0) * 255).astype(np.uint8)
            target = self.folder / "png" / f"{header.frame_index + 1:04d}.png"
            tmp = target.with_name(f".{target.name}.partial.png")
            if not cv2.imwrite(str(tmp), m):
                raise OSError(f"cannot write {target}")
            os.replace(tmp, target)

    def add_spread(self, header: wire.MapHeader, spread: np.ndarray) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self._spreads.append((header.seq, spread))

    def write_chunk(self) -> None:
        rows, self._rows = self._rows, []
        spreads, self._spreads = self._spreads, []
        arrays = _arrays(rows) if rows else {}
        if spreads:
            arrays[SPREAD] = np.stack([s for _, s in spreads])
            arrays[SPREAD_SEQ] = np.array([q for q, _ in spreads], np.int64)
        _save_npz(self.folder / "chunks" / f"{self._chunks:06d}.npz", arrays)
        self._chunks += 1

    def finish(self) -> None:
        if self.pending:
            self.write_chunk()
        self._headers.close()
        chunk_files = sorted((self.folder / "chunks").glob("*.npz"))
        _save_npz(self.folder / "maps.npz", _align_spread(_join([_load_npz(p) for p in chunk_files])))
        for p in chunk_files:
            p.unlink()
        (self.folder / "chunks").rmdir()


def _arrays(rows: list[tuple[wire.MapHeader, np.ndarray]]) -> dict[str, np.ndarray]:
    hs = [h for h, _ in rows]
    return {"maps": np.stack([m for _, m in rows]),
            "frame_index": np.array([h.frame_index for h in hs], np.int64),
            "pts": np.array([h.pts for h in hs], np.float64),
            "capture_time": np.array([h.capture_time for h in hs], np.float64),
            "publish_time": np.array([h.publish_time for h in hs], np.float64),
            "seq": np.array([h.seq for h in hs], np.int64),
            "mode": np.array([h.mode for h in hs], dtype="<U5")}


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the chunks' arrays key by key (a chunk may hold only maps or only spreads)."""
    keys = dict.fromkeys(k for p in parts for k in p)
    return {k: np.concatenate([p[k] for p in parts if k in p]) for k in keys}


def _align_spread(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Spreads stored with their map's seq -> ``spread`` (N, H, W) in the maps' order, NaN where
    a map has none; arrays without spreads are returned as they are."""
    if SPREAD_SEQ not in arrays:
        return arrays
    arrays = dict(arrays)
    spreads, seqs = arrays.pop(SPREAD), arrays.pop(SPREAD_SEQ)
    if "maps" not in arrays:     # spreads of maps that never got saved
        return arrays
    row = {int(q): i for i, q in enumerate(arrays["seq"])}
    aligned = np.full(arrays["maps"].shape, np.nan, np.float32)
    for q, s in zip(seqs, spreads):
        i = row.get(int(q))
        if i is not None and s.shape == aligned.shape[1:]:
            aligned[i] = s
    arrays[SPREAD] = aligned
    return arrays


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Written under a temporary name and moved into place: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass
class SavedMaps:
    """One stream's saved maps (see the module docstring for the arrays)."""
    maps: np.ndarray
    frame_index: np.ndarray
    pts: np.ndarray
    capture_time: np.ndarray
    publish_time: np.ndarray
    seq: np.ndarray
    mode: np.ndarray
    complete: bool          # False: read from the chunks of a run that did not finish
    spread: Optional[np.ndarray] = None   # (N, H, W) float32 with --samples K > 1, NaN where missing

    def __len__(self) -> int:
        return len(self.frame_index)


def load_saved_maps(directory: str | os.PathLike, stream: str = "0") -> SavedMaps:
    """Read one stream of a ``--save-maps`` folder (``maps.npz``, or the chunks of a killed run)."""
    folder = Path(directory) / stream_dir_name(stream)
    whole = folder / "maps.npz"
    if whole.is_file():
        arrays, complete = _load_npz(whole), True
    else:
        chunks = sorted((folder / "chunks").glob("[0-9]*.npz"))
        if not chunks:
            raise SalstreamError(f"{folder}: no saved maps of stream {stream!r} (no maps.npz, no chunks/)")
        arrays, complete = _align_spread(_join([_load_npz(p) for p in chunks])), False
    if "maps" not in arrays:       # a stream folder whose run ended before its first map
        arrays = {k: np.zeros((0,), np.float32) for k in ARRAYS}
    return SavedMaps(**{k: arrays[k] for k in ARRAYS}, complete=complete, spread=arrays.get(SPREAD))
