"""The ZeroMQ wire format (version 1): what a saliency map looks like on the socket.

Every message is three ZeroMQ frames (one multipart message)::

    [topic, header, payload]

``topic``
    UTF-8. A map's topic is its stream id exactly (``b"0"``); stream ids never contain
    ``/``, which is reserved for side channels of a stream on the same socket,
    ``<kind>/<stream id>``: ``frame/`` (JPEG previews), ``roi/`` (encoder regions) and
    ``status/`` (heartbeats: ``live``/``reconnecting``/``ended``, empty payload) and
    ``conf/`` (per-pixel spread of a map sampled several times, ``--samples K``).
    Clients skip side channels they do not know. ZeroMQ subscriptions match by prefix,
    so a subscriber compares the topic exactly after receiving.
``header``
    UTF-8 JSON object (at most :data:`MAX_HEADER_BYTES`); for a map the fields of
    :class:`MapHeader`.
``payload``
    map: the map as a C-order array of ``shape`` (rows, columns) in ``dtype``:
    ``"float32"`` little-endian in [0, 1], or ``"uint8"`` (value = round(255 · map)).
    frame: a JPEG of the target frame (RGB). roi: the block QP offsets, float32
    little-endian, ``shape`` (rows, columns). conf: the per-pixel standard deviation of
    the map's K draws, float32 little-endian, the map's ``shape``; its header is the map's
    (same ``seq``, ``frame_index``, times) with ``kind: "conf"`` and ``dtype: "float32"``.

Times: ``pts`` is the media clock of the source (seconds); ``capture_time`` and
``publish_time`` are the publisher host's monotonic clock (seconds); ``publish_wall``
is Unix time for subscribers on other hosts.

Decoding never trusts the sender: sizes are checked before anything is allocated, every
header field a client reads is type- and range-checked, and a message that fails is a
:class:`WireError` (the subscriber skips and counts it). This module needs only numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np

from salstream.errors import SalstreamError

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 4096                       # largest map / ROI grid side a client accepts
MAX_PREVIEW_SIDE = 4096               # largest JPEG preview side a client decodes
MAX_STREAM_ID_BYTES = 255
MAX_DEPTH = 16                        # deepest nesting of objects/arrays a header may use
MAX_NUMBER = 1e15                     # largest magnitude of a number field a client accepts
PAYLOAD_DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
# The largest single message part this format allows (a MAX_SIDE² float32 map).
MAX_MESSAGE_PART_BYTES = MAX_SIDE * MAX_SIDE * 4

MAP, FRAME, ROI, STATUS, CONF = "map", "frame", "roi", "status", "conf"
KINDS = (MAP, FRAME, ROI, STATUS, CONF)
SIDE_CHANNELS = (FRAME, ROI, STATUS, CONF)  # kinds published under "<kind>/<stream id>"
# status/<stream>: a heartbeat (about once a second, and at once on a change) saying whether
# the stream is "live", "reconnecting" (its source is down) or "ended".
STATES = ("live", "reconnecting", "ended")
MODES = ("av", "video", "audio")
# Per-stage latency keys (ms), in pipeline order; "denoise" is a list, one entry per step.
LATENCY_STAGES = ("assemble", "wait", "video_encoder", "audio_encoder", "denoise", "postprocess", "publish")
# Header keys every map carries (documented in the README's wire-format section).
MAP_FIELDS = ("version", "kind", "stream", "seq", "frame_index", "pts", "capture_time", "publish_time",
              "publish_wall", "shape", "dtype", "mode", "latency_ms", "dropped", "send_dropped",
              "profile", "engine", "steps", "batch", "flags")
FRAME_TOPIC_PREFIX = FRAME + "/"


class WireError(SalstreamError):
    """A message that does not follow this format (truncated, wrong version, bad fields or sizes)."""


# ------------------------------------------------------------------------------------- topics
def topic(kind: str, stream_id: str) -> bytes:
    """``b"<stream>"`` for maps, ``b"<kind>/<stream>"`` for side channels."""
    return (stream_id if kind == MAP else f"{kind}/{stream_id}").encode("utf-8")


def map_topic(stream_id: str) -> bytes:
    return topic(MAP, stream_id)


def frame_topic(stream_id: str) -> bytes:
    return topic(FRAME, stream_id)


def split_topic(raw: bytes) -> tuple[str, str]:
    """``(kind, stream)`` of a topic; an unknown side channel gives its own name as the kind."""
    text = raw.decode("utf-8")
    kind, sep, stream = text.partition("/")
    return (kind, stream) if sep else (MAP, text)


def check_stream_id(stream_id: str) -> str:
    if (not isinstance(stream_id, str) or not stream_id or "/" in stream_id
            or len(stream_id.encode()) > MAX_STREAM_ID_BYTES):
        raise SalstreamError(f"stream id {stream_id!r}: must be 1–255 bytes without '/' (reserved for "
                             "side channels such as frame/<id>); pick a short name such as 'cam0'")
    return stream_id


def is_side_channel(raw_topic: bytes) -> bool:
    """True for ``<channel>/<stream>`` topics (frame previews, ROI messages, …)."""
    return b"/" in raw_topic


# ------------------------------------------------------------------------------ field checks
def _fail(kind: str, key: str, value: Any, want: str) -> WireError:
    shown = repr(value)
    return WireError(f"{kind} header field {key!r} = {shown[:60]}{'…' if len(shown) > 60 else ''}: expected {want}")


def _int(h: Mapping, key: str, kind: str, lo: int = 0, hi: int = 2 ** 53, default: Any = ...) -> int:
    v = h.get(key, default)
    if v is ...:
        raise WireError(f"{kind} header lacks {key!r}")
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(kind, key, v, f"an integer in [{lo}, {hi}]")
    return v


def _num(h: Mapping, key: str, kind: str, default: Any = ..., allow_none: bool = False) -> Optional[float]:
    v = h.get(key, default)
    if v is ...:
        raise WireError(f"{kind} header lacks {key!r}")
    if v is None and allow_none:
        return None
    if not _finite(v):
        raise _fail(kind, key, v, "a finite number")
    return float(v)


def _str(h: Mapping, key: str, kind: str, default: Any = ..., max_len: int = 256) -> str:
    v = h.get(key, default)
    if v is ...:
        raise WireError(f"{kind} header lacks {key!r}")
    if not isinstance(v, str) or len(v) > max_len:
        raise _fail(kind, key, v, f"a string of at most {max_len} characters")
    return v


def _shape(h: Mapping, key: str, kind: str, dims: int, max_side: int) -> tuple[int, ...]:
    v = h.get(key)
    if (not isinstance(v, list) or len(v) != dims
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= max_side for s in v)):
        raise _fail(kind, key, v, f"[{', '.join(['n'] * dims)}] with each side 1…{max_side}")
    return tuple(v)


def _check_version(h: Mapping) -> None:
    version = h.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise WireError(f"wire format version {version!r} not supported (this client reads {FORMAT_VERSION}); "
                        "upgrade the subscriber or the publisher so they match")


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header JSON object, size-checked; never raises anything but :class:`WireError`."""
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"unreadable header ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    if _depth(header) > MAX_DEPTH:
        raise WireError(f"header nests objects/arrays deeper than {MAX_DEPTH} levels")
    return header


def _depth(value: Any) -> int:
    """How deeply JSON containers nest in ``value`` (iterative: a hostile header cannot recurse us)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            todo.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def dump_header(header: Mapping[str, Any]) -> bytes:
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    return data


# --------------------------------------------------------------------------------- map header
LatencyValue = Union[float, list[float]]


@dataclass(frozen=True)
class MapHeader:
    """Everything a map's header says (README, "Wire format"). The one type that builds and reads it.

    The publisher fills ``seq``, ``publish_time``, ``publish_wall``, ``send_dropped``,
    ``shape`` and ``dtype``. Unknown fields a newer publisher adds are kept in ``extra``.
    ``header["field"]`` / ``header.get("field")`` read the JSON view, as a dict would.
    """
    stream: str
    frame_index: int
    pts: float
    capture_time: float
    mode: str = "av"
    latency_ms: dict[str, LatencyValue] = field(default_factory=dict)
    dropped: int = 0
    profile: str = ""
    engine: str = ""
    steps: int = 0
    batch: int = 1
    flags: dict[str, Union[bool, int]] = field(default_factory=dict)
    source_shape: Optional[list[int]] = None
    window: Optional[dict[str, Any]] = None
    gaps: Optional[list[dict[str, Any]]] = None
    seq: int = 0
    publish_time: float = 0.0
    publish_wall: float = 0.0
    send_dropped: int = 0
    shape: tuple[int, int] = (0, 0)
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    kind = MAP

    @classmethod
    def of(cls, header: "MapHeader | Mapping[str, Any]") -> "MapHeader":
        """``header`` itself, or a producer's plain dict of the same fields (unknown keys go to ``extra``)."""
        if isinstance(header, MapHeader):
            return header
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in header.items() if k in known}
        extra = {k: v for k, v in header.items() if k not in known and k not in ("version", "kind")}
        return cls(**fields, extra={**fields.pop("extra", {}), **extra}) if extra else cls(**fields)

    def replace(self, **changes: Any) -> "MapHeader":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": FORMAT_VERSION, "kind": MAP, "stream": self.stream, "seq": self.seq,
                             "frame_index": self.frame_index, "pts": self.pts, "capture_time": self.capture_time,
                             "publish_time": self.publish_time, "publish_wall": self.publish_wall,
                             "shape": [int(s) for s in self.shape], "dtype": self.dtype, "mode": self.mode,
                             "latency_ms": self.latency_ms, "dropped": self.dropped,
                             "send_dropped": self.send_dropped, "profile": self.profile, "engine": self.engine,
                             "steps": self.steps, "batch": self.batch, "flags": self.flags}
        if self.source_shape is not None:
            d["source_shape"] = list(self.source_shape)
        if self.window is not None:
            d["window"] = self.window
        if self.gaps:
            d["gaps"] = self.gaps
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> bytes:
        return dump_header(self.to_dict())

    @classmethod
    def from_dict(cls, h: Mapping[str, Any], kind: str = MAP) -> "MapHeader":
        """Validate a received header (types, ranges, sizes) and build the typed view.
        ``kind``: ``"map"``, or ``"conf"`` for a map's spread (same fields)."""
        k = kind
        _check_version(h)
        if h.get("kind") != kind:
            raise WireError(f"header kind {h.get('kind')!r} is not {kind!r}")
        mode = _str(h, "mode", k)
        if mode not in MODES:
            raise _fail(k, "mode", mode, f"one of {', '.join(MODES)}")
        dtype = _str(h, "dtype", k)
        if dtype not in PAYLOAD_DTYPES:
            raise _fail(k, "dtype", dtype, f"one of {', '.join(PAYLOAD_DTYPES)}")
        return cls(
            stream=check_wire_stream(h.get("stream")), seq=_int(h, "seq", k),
            frame_index=_int(h, "frame_index", k), pts=_num(h, "pts", k),
            capture_time=_num(h, "capture_time", k), publish_time=_num(h, "publish_time", k),
            publish_wall=_num(h, "publish_wall", k), shape=_shape(h, "shape", k, 2, MAX_SIDE), dtype=dtype,
            mode=mode, latency_ms=_latency(h.get("latency_ms")), dropped=_int(h, "dropped", k),
            send_dropped=_int(h, "send_dropped", k, default=0), profile=_str(h, "profile", k, default=""),
            engine=_str(h, "engine", k, default=""), steps=_int(h, "steps", k, hi=10_000, default=0),
            batch=_int(h, "batch", k, hi=100_000, default=1), flags=_flags(h.get("flags", {})),
            source_shape=list(_shape(h, "source_shape", k, 2, 1 << 16)) if "source_shape" in h else None,
            window=_window(h.get("window")), gaps=_gaps(h.get("gaps")),
            extra={key: v for key, v in h.items() if key not in _MAP_KEYS})

    # The JSON view, so code written against the plain dict keeps working.
    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._json.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._json

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def keys(self):
        return self._json.keys()

    @property
    def _json(self) -> dict[str, Any]:
        cached = self.__dict__.get("_json_cache")
        if cached is None:
            cached = self.to_dict()
            object.__setattr__(self, "_json_cache", cached)
        return cached


_MAP_KEYS = {f.name for f in dataclasses.fields(MapHeader)} | {"version", "kind"}


def check_wire_stream(v: Any) -> str:
    if not isinstance(v, str) or not v or "/" in v or len(v.encode()) > MAX_STREAM_ID_BYTES:
        raise _fail("map", "stream", v, "a stream id of 1–255 bytes without '/'")
    return v


def _latency(v: Any) -> dict[str, LatencyValue]:
    if not isinstance(v, dict) or len(v) > 64:
        raise _fail("map", "latency_ms", v, "an object of stage -> milliseconds")
    out: dict[str, LatencyValue] = {}
    for key, val in v.items():
        if isinstance(val, list):
            if len(val) > 10_000 or not all(_finite(x) for x in val):
                raise _fail("map", f"latency_ms.{key}", val, "a list of finite numbers")
            out[key] = [float(x) for x in val]
        elif _finite(val):
            out[key] = float(val)
        else:
            raise _fail("map", f"latency_ms.{key}", val, "a finite number or a list of them")
    return out


def _finite(x: Any) -> bool:
    # The size test comes first: math.isfinite overflows on a JSON integer of 400 digits.
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= MAX_NUMBER and math.isfinite(x)


def _flags(v: Any) -> dict[str, Union[bool, int]]:
    if not isinstance(v, dict) or len(v) > 64 or not all(
            isinstance(x, bool) or (isinstance(x, int) and abs(x) < 2 ** 53) for x in v.values()):
        raise _fail("map", "flags", v, "an object of flag -> true or a count")
    return dict(v)


def _window(v: Any) -> Optional[dict[str, Any]]:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _fail("map", "window", v, "an object")
    return {"frames": _int(v, "frames", "map.window", hi=1 << 20), "first_frame": _int(v, "first_frame", "map.window"),
            "audio_end_pts": _num(v, "audio_end_pts", "map.window", default=None, allow_none=True)}


def _gaps(v: Any) -> Optional[list[dict[str, Any]]]:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) > 1024:
        raise _fail("map", "gaps", v, "a list of {from_pts, to_pts, reason}")
    out = []
    for g in v:
        if not isinstance(g, dict):
            raise _fail("map", "gaps", g, "{from_pts, to_pts, reason}")
        reason = g.get("reason")
        out.append({"from_pts": _num(g, "from_pts", "map.gaps", default=None, allow_none=True),
                    "to_pts": _num(g, "to_pts", "map.gaps", default=None, allow_none=True),
                    "reason": reason if isinstance(reason, str) and len(reason) <= 1024 else None})
    return out


# ------------------------------------------------------------------------------------ encoding
def encode_map_payload(saliency: np.ndarray, dtype: str) -> bytes:
    """The payload bytes for a (H, W) map in [0, 1]."""
    if dtype not in PAYLOAD_DTYPES:
        raise SalstreamError(f"payload dtype {dtype!r}: choose one of {', '.join(PAYLOAD_DTYPES)}")
    m = np.asarray(saliency, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D (H, W), got shape {m.shape}")
    if dtype == "uint8":
        return np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.uint8).tobytes()
    return np.ascontiguousarray(m, dtype=PAYLOAD_DTYPES["float32"]).tobytes()


def encode_map(header: "MapHeader | Mapping[str, Any]", saliency: np.ndarray) -> list[bytes]:
    """Multipart frames for one map; the header's ``shape`` is taken from the map."""
    header = MapHeader.of(header)
    return pack_map(header, np.shape(saliency), encode_map_payload(saliency, header.dtype))


def pack_map(header: MapHeader, shape: tuple[int, ...], payload: bytes) -> list[bytes]:
    """Multipart frames from an already encoded payload (lets the publisher time the header last)."""
    h = header.replace(shape=tuple(int(s) for s in shape))
    return [map_topic(h.stream), h.to_json(), payload]


def encode_conf(header: "MapHeader | Mapping[str, Any]", spread: np.ndarray) -> list[bytes]:
    """``conf/<stream>``: the per-pixel spread of a map's draws, under that map's header
    (``kind: "conf"``, always float32 whatever the map's payload dtype)."""
    m = np.asarray(spread, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a spread must be 2-D (H, W), got shape {m.shape}")
    h = MapHeader.of(header).replace(shape=tuple(int(s) for s in m.shape), dtype="float32")
    d = dict(h.to_dict(), kind=CONF)
    return [topic(CONF, h.stream), dump_header(d), np.ascontiguousarray(m, dtype=PAYLOAD_DTYPES["float32"]).tobytes()]


def encode_frame(header: Mapping[str, Any], jpeg: bytes) -> list[bytes]:
    header = dict(header, version=FORMAT_VERSION, kind=FRAME, encoding="jpeg")
    return [frame_topic(header["stream"]), dump_header(header), jpeg]


def encode_status(stream_id: str, state: str, *, last_pts: Optional[float], frame_age_s: Optional[float],
                  reconnects: int, sent: float, sent_wall: float) -> list[bytes]:
    """``status/<stream>``: the heartbeat header, empty payload."""
    if state not in STATES:
        raise ValueError(f"status {state!r}: one of {', '.join(STATES)}")
    h = {"version": FORMAT_VERSION, "kind": STATUS, "stream": stream_id, "state": state, "last_pts": last_pts,
         "frame_age_s": frame_age_s, "reconnects": int(reconnects), "publish_time": sent, "publish_wall": sent_wall}
    return [topic(STATUS, stream_id), dump_header(h), b""]


def encode_roi(header: Mapping[str, Any], offsets: np.ndarray, block_size: int, frame_size: tuple[int, int],
               regions: list[list[int]], qp_range: int) -> list[bytes]:
    """``roi/<stream>``: header fields as for maps plus the block grid and its regions of interest."""
    rows, cols = np.shape(offsets)
    h = dict(header, version=FORMAT_VERSION, kind=ROI, stream=str(header["stream"]),
             frame_size=[int(frame_size[0]), int(frame_size[1])], block_size=int(block_size),
             shape=[int(rows), int(cols)], dtype="float32", qp_range=int(qp_range), regions=regions)
    payload = np.ascontiguousarray(offsets, dtype="<f4").tobytes()
    return [topic(ROI, h["stream"]), dump_header(h), payload]


# ------------------------------------------------------------------------------------ decoding
@dataclass
class MapMessage:
    """One decoded saliency map. ``saliency`` is float32 (H, W) in [0, 1] whatever the wire dtype."""
    stream: str
    header: MapHeader
    saliency: np.ndarray
    raw: np.ndarray = field(repr=False)   # the array exactly as sent (float32 or uint8)
    kind = MAP

    @property
    def frame_index(self) -> int:
        return self.header.frame_index

    @property
    def pts(self) -> float:
        return self.header.pts

    @property
    def latency_ms(self) -> dict[str, LatencyValue]:
        return self.header.latency_ms


@dataclass
class FrameMessage:
    """The target frame of a map (for overlays): a JPEG, decoded by :meth:`image` after a size check."""
    stream: str
    header: dict[str, Any]
    jpeg: bytes = field(repr=False)
    kind = FRAME

    @property
    def frame_index(self) -> int:
        return int(self.header["frame_index"])

    @property
    def pts(self) -> float:
        return float(self.header["pts"])

    def image(self, max_side: int = MAX_PREVIEW_SIDE) -> np.ndarray:
        """RGB uint8. The JPEG's own dimensions are read first: a picture larger than
        ``max_side`` (or not a JPEG) is refused before any pixel buffer is allocated."""
        import cv2
        check_preview(self.stream, self.frame_index, self.jpeg, max_side)
        try:
            bgr = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            bgr = None
        if bgr is None:
            raise WireError(f"stream {self.stream}: frame {self.frame_index} is not a decodable JPEG")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class RoiMessage:
    """Per-block QP offsets of one frame and its regions of interest (FFmpeg semantics, see guidance.roi)."""
    stream: str
    header: dict[str, Any]
    offsets: np.ndarray                  # (rows, cols) float32, QP units
    block_size: int
    frame_size: tuple[int, int]          # (height, width) in pixels
    regions: list[list[int]]             # [top, bottom, left, right, qoffset_num, qoffset_den]
    kind = ROI

    @property
    def frame_index(self) -> int:
        return int(self.header["frame_index"])


@dataclass
class StatusMessage:
    """A stream's heartbeat: ``state`` is ``live``, ``reconnecting`` or ``ended``.

    ``last_pts``: media time of the newest frame read (None before the first);
    ``frame_age_s``: seconds since that frame arrived (a stalled or idle source shows here);
    ``reconnects``: outages so far."""
    stream: str
    header: dict[str, Any]
    state: str
    last_pts: Optional[float]
    frame_age_s: Optional[float]
    reconnects: int
    kind = STATUS



@dataclass
class ConfMessage:
    """The per-pixel spread (standard deviation of the K draws, float32 (H, W), >= 0) of the map
    with the same stream and ``seq``; ``header`` is that map's header."""
    stream: str
    header: MapHeader
    spread: np.ndarray
    kind = CONF

    @property
    def frame_index(self) -> int:
        return self.header.frame_index

    @property
    def seq(self) -> int:
        return self.header.seq


Message = Union[MapMessage, FrameMessage, RoiMessage, StatusMessage, ConfMessage]

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """``(height, width)`` from a JPEG's start-of-frame segment, or ``None`` if it has none."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:            # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + length
    return None


def decode(parts: list[bytes]) -> Message:
    """Validate and decode one multipart message. Sizes are checked before any allocation."""
    if len(parts) != 3:
        raise WireError(f"expected 3 message parts (topic, header, payload), got {len(parts)}")
    topic_b, header_b, payload = (bytes(p) if not isinstance(p, bytes) else p for p in parts)
    try:
        kind, stream = split_topic(topic_b)
    except UnicodeDecodeError:
        raise WireError("topic is not UTF-8") from None
    header = parse_header(header_b)
    _check_version(header)
    if header.get("kind") != kind:
        raise WireError(f"topic {topic_b[:64]!r} does not match the header kind {header.get('kind')!r}")
    if header.get("stream") != stream:
        raise WireError(f"{kind} topic {topic_b[:64]!r} does not match its header stream {header.get('stream')!r}")
    if kind == MAP:
        return _decode_map(header, payload)
    if kind == FRAME:
        return _decode_frame(stream, header, payload)
    if kind == ROI:
        return _decode_roi(stream, header, payload)
    if kind == STATUS:
        return _decode_status(stream, header, payload)
    if kind == CONF:
        return _decode_conf(header, payload)
    raise WireError(f"unknown message kind {kind!r}")


def _decode_map(header: dict, payload: bytes) -> MapMessage:
    h = MapHeader.from_dict(header)
    dtype = PAYLOAD_DTYPES[h.dtype]
    rows, cols = h.shape
    expected = rows * cols * dtype.itemsize
    if len(payload) != expected:
        raise WireError(f"map payload is {len(payload)} bytes, header says {rows}×{cols} {h.dtype} = {expected} bytes")
    raw = np.frombuffer(payload, dtype=dtype).reshape(rows, cols)
    sal = raw.astype(np.float32) / 255.0 if h.dtype == "uint8" else raw.astype(np.float32)
    if h.dtype == "float32" and not np.all(np.isfinite(sal)):
        raise WireError(f"stream {h.stream}: map {h.frame_index} holds NaN or infinity")
    return MapMessage(h.stream, h, sal, raw)


def _decode_conf(header: dict, payload: bytes) -> ConfMessage:
    h = MapHeader.from_dict(header, kind=CONF)
    rows, cols = h.shape
    if h.dtype != "float32" or len(payload) != rows * cols * 4:
        raise WireError(f"conf payload is {len(payload)} bytes ({h.dtype}); header says {rows}×{cols} float32 "
                        f"= {rows * cols * 4} bytes")
    spread = np.frombuffer(payload, dtype=PAYLOAD_DTYPES["float32"]).reshape(rows, cols).astype(np.float32)
    if not np.all(np.isfinite(spread)) or spread.min() < 0:
        raise WireError(f"stream {h.stream}: spread of map {h.frame_index} holds negative, NaN or infinite values")
    return ConfMessage(h.stream, h, spread)


def _decode_frame(stream: str, header: dict, payload: bytes) -> FrameMessage:
    _int(header, "frame_index", "frame")
    _num(header, "pts", "frame")
    _num(header, "capture_time", "frame")
    if header.get("encoding", "jpeg") != "jpeg":
        raise _fail("frame", "encoding", header.get("encoding"), "'jpeg'")
    # Checked here, not only in image(): clients that pass previews on undecoded (the browser
    # viewer) must not hand a decompression bomb to the next decoder either.
    check_preview(stream, header["frame_index"], payload)
    return FrameMessage(stream, header, payload)


def check_preview(stream: str, frame_index: int, jpeg: bytes, max_side: int = MAX_PREVIEW_SIDE) -> tuple[int, int]:
    """``(height, width)`` the JPEG's own header claims, or :class:`WireError` when that is
    missing, zero or larger than ``max_side`` (read before any pixel buffer is allocated)."""
    size = jpeg_size(jpeg)
    if size is None:
        raise WireError(f"stream {stream}: frame {frame_index} is not a JPEG")
    if max(size) > max_side or min(size) < 1:
        raise WireError(f"stream {stream}: frame {frame_index} claims {size[1]}×{size[0]} pixels; "
                        f"previews are at most {max_side} per side")
    return size


def _decode_status(stream: str, h: dict, payload: bytes) -> StatusMessage:
    k = "status"
    state = _str(h, "state", k, max_len=32)
    if state not in STATES:
        raise _fail(k, "state", state, f"one of {', '.join(STATES)}")
    if payload:
        raise WireError(f"status payload is {len(payload)} bytes; expected none")
    _num(h, "publish_time", k)
    return StatusMessage(stream, h, state, _num(h, "last_pts", k, default=None, allow_none=True),
                         _num(h, "frame_age_s", k, default=None, allow_none=True),
                         _int(h, "reconnects", k, default=0))


def _decode_roi(stream: str, h: dict, payload: bytes) -> RoiMessage:
    k = "roi"
    _int(h, "frame_index", k)
    _num(h, "pts", k)
    shape = _shape(h, "shape", k, 2, MAX_SIDE)
    fs = _shape(h, "frame_size", k, 2, 1 << 16)
    b = _int(h, "block_size", k, lo=1, hi=1024)
    if list(shape) != [-(-fs[0] // b), -(-fs[1] // b)]:
        raise WireError(f"ROI shape {list(shape)}, frame_size {list(fs)} and block_size {b} are inconsistent")
    if h.get("dtype") != "float32" or len(payload) != shape[0] * shape[1] * 4:
        raise WireError(f"ROI payload is {len(payload)} bytes; expected {shape[0]}×{shape[1]} float32")
    regions = h.get("regions", [])
    if not isinstance(regions, list) or len(regions) > shape[0] * shape[1]:
        raise _fail(k, "regions", regions, "a list of at most one region per block")
    for r in regions:
        if not (isinstance(r, list) and len(r) == 6 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in r) and r[5] != 0):
            raise WireError(f"ROI region {r!r}: expected [top, bottom, left, right, num, den] integers, den ≠ 0")
    offsets = np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)
    return RoiMessage(stream, h, offsets, b, (fs[0], fs[1]), regions)


def missing_fields(header: Mapping[str, Any], required: Optional[tuple[str, ...]] = None) -> list[str]:
    return [k for k in (required or MAP_FIELDS) if k not in header]
