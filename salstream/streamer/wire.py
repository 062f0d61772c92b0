"""The ZeroMQ wire format (version 1): what a saliency map looks like on the socket.

Every message is three ZeroMQ frames (one multipart message)::

    [topic, header, payload]

``topic``
    UTF-8. A map's topic is its stream id exactly (``b"0"``); stream ids never
    contain ``/``, which is reserved for side channels of a stream on the same socket:
    ``b"frame/<stream id>"`` (frame previews, below) and e.g. ``b"roi/<stream id>"``
    (encoder regions, :mod:`streamer.roi`). Clients skip side channels they do not
    know. ZeroMQ subscriptions match by prefix, so a subscriber compares the topic
    exactly after receiving.
``header``
    UTF-8 JSON object (at most :data:`MAX_HEADER_BYTES`); a map's keys are
    :data:`MAP_FIELDS`. ``flags`` holds only the conditions that apply, e.g.
    ``warmup`` (window padded at the stream start), ``audio_lagging`` (run video-only
    because the audio was late or stopped), ``audio_lost``, ``approx_frames``,
    ``warm_start``, and ``gap``: the first map published after a source outage, whose
    header then also has ``gaps``, a list of ``{"from_pts", "to_pts", "reason"}``
    (no frames exist strictly between the two PTS).
``payload``
    map: the map as a C-order array of ``header["shape"]`` (rows, columns) in
    ``header["dtype"]``: ``"float32"`` little-endian in [0, 1], or ``"uint8"``
    (0–255, value = round(255 · map)). frame: a JPEG of the target frame (RGB),
    downscaled to at most ``header["shape"]``.

Times: ``pts`` is the media clock of the source (seconds); ``capture_time`` and
``publish_time`` are the publisher host's monotonic clock (seconds; comparable with
``time.monotonic()`` of any process on the same host); ``publish_wall`` is Unix time
for subscribers on other hosts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from salstream.errors import SalstreamError

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 8192                       # refuse absurd shapes before allocating anything
FRAME_TOPIC_PREFIX = "frame/"
PAYLOAD_DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
# The largest single message part this format can hold (a MAX_SIDE² float32 map).
MAX_MESSAGE_PART_BYTES = MAX_SIDE * MAX_SIDE * 4

# Header keys every map carries (documented in the README's wire-format section).
MAP_FIELDS = ("version", "kind", "stream", "seq", "frame_index", "pts", "capture_time", "publish_time",
              "publish_wall", "shape", "dtype", "mode", "latency_ms", "dropped", "send_dropped",
              "profile", "engine", "steps", "batch", "flags")
# Per-stage latency keys (ms), in pipeline order; "denoise" is a list, one entry per step.
LATENCY_STAGES = ("assemble", "wait", "video_encoder", "audio_encoder", "denoise", "postprocess", "publish")


class WireError(SalstreamError):
    """A message that does not follow this format (truncated, wrong version, bad sizes)."""


def map_topic(stream_id: str) -> bytes:
    return stream_id.encode("utf-8")


def frame_topic(stream_id: str) -> bytes:
    return (FRAME_TOPIC_PREFIX + stream_id).encode("utf-8")


def check_stream_id(stream_id: str) -> str:
    if not stream_id or "/" in stream_id or len(stream_id.encode()) > 255:
        raise SalstreamError(f"stream id {stream_id!r}: must be 1–255 bytes without '/' (reserved for "
                             "side channels such as frame/<id>); pick a short name such as 'cam0'")
    return stream_id


def is_side_channel(topic: bytes) -> bool:
    """True for ``<channel>/<stream>`` topics (frame previews, ROI messages, …)."""
    return b"/" in topic


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


def encode_map(header: dict, saliency: np.ndarray) -> list[bytes]:
    """Multipart frames for one map; ``header`` gets ``shape``/``dtype`` filled from the map."""
    dtype = header.get("dtype", "float32")
    return pack_map(header, np.shape(saliency), encode_map_payload(saliency, dtype))


def pack_map(header: dict, shape: tuple[int, ...], payload: bytes) -> list[bytes]:
    """Multipart frames from an already encoded payload (lets the publisher time the header last)."""
    header = dict(header, version=FORMAT_VERSION, kind="map", shape=[int(s) for s in shape],
                  dtype=header.get("dtype", "float32"))
    return [map_topic(header["stream"]), _dump(header), payload]


def encode_frame(header: dict, jpeg: bytes) -> list[bytes]:
    header = dict(header, version=FORMAT_VERSION, kind="frame", encoding="jpeg")
    return [frame_topic(header["stream"]), _dump(header), jpeg]


def _dump(header: dict) -> bytes:
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    return data


@dataclass
class MapMessage:
    """One decoded saliency map. ``saliency`` is float32 (H, W) in [0, 1] whatever the wire dtype."""
    stream: str
    header: dict[str, Any]
    saliency: np.ndarray
    raw: np.ndarray = field(repr=False)   # the array exactly as sent (float32 or uint8)

    @property
    def frame_index(self) -> int:
        return int(self.header["frame_index"])

    @property
    def pts(self) -> float:
        return float(self.header["pts"])

    @property
    def latency_ms(self) -> dict[str, Any]:
        return self.header["latency_ms"]


@dataclass
class FrameMessage:
    """The target frame of a map (for overlays): RGB uint8 decoded from the JPEG."""
    stream: str
    header: dict[str, Any]
    jpeg: bytes = field(repr=False)

    @property
    def frame_index(self) -> int:
        return int(self.header["frame_index"])

    def image(self) -> np.ndarray:
        import cv2
        bgr = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise WireError(f"stream {self.stream}: frame {self.frame_index} is not a decodable JPEG")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode(parts: list[bytes]) -> MapMessage | FrameMessage:
    """Validate and decode one multipart message. Sizes are checked before any allocation."""
    if len(parts) != 3:
        raise WireError(f"expected 3 message parts (topic, header, payload), got {len(parts)}")
    topic_b, header_b, payload = (bytes(p) if not isinstance(p, bytes) else p for p in parts)
    if len(header_b) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(header_b)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        topic = topic_b.decode("utf-8")
        header = json.loads(header_b.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"unreadable topic or header ({exc})") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise WireError(f"wire format version {version!r} not supported (this client reads {FORMAT_VERSION}); "
                        "upgrade the subscriber or the publisher so they match")
    kind = header.get("kind")
    stream = header.get("stream")
    if kind == "frame":
        if topic != FRAME_TOPIC_PREFIX + str(stream):
            raise WireError(f"frame topic {topic!r} does not match its header stream {stream!r}")
        return FrameMessage(str(stream), header, payload)
    if kind != "map":
        raise WireError(f"unknown message kind {kind!r}")
    if topic != str(stream):
        raise WireError(f"map topic {topic!r} does not match its header stream {stream!r}")
    shape = header.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and 0 < s <= MAX_SIDE for s in shape)):
        raise WireError(f"map shape {shape!r} invalid: expected [rows, cols], each 1…{MAX_SIDE}")
    dtype = PAYLOAD_DTYPES.get(header.get("dtype"))
    if dtype is None:
        raise WireError(f"map dtype {header.get('dtype')!r} invalid: expected one of {', '.join(PAYLOAD_DTYPES)}")
    expected = shape[0] * shape[1] * dtype.itemsize
    if len(payload) != expected:
        raise WireError(f"map payload is {len(payload)} bytes, header says {shape[0]}×{shape[1]} "
                        f"{header['dtype']} = {expected} bytes")
    raw = np.frombuffer(payload, dtype=dtype).reshape(shape)
    sal = raw.astype(np.float32) / 255.0 if dtype == np.uint8 else raw.astype(np.float32)
    return MapMessage(str(stream), header, sal, raw)


def missing_fields(header: dict, required: Optional[tuple[str, ...]] = None) -> list[str]:
    return [k for k in (required or MAP_FIELDS) if k not in header]
