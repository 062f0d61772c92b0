"""ZeroMQ publisher: sends maps (and optional frame previews) without ever blocking.

An XPUB socket (a PUB that also reports subscriptions) never waits for
subscribers: once a subscriber's queue holds ``hwm`` messages, ZeroMQ drops further
messages for that subscriber only, so one slow viewer cannot stall the pipeline or
the other viewers. Every map carries a
per-stream ``seq`` so a subscriber can count what it missed; sends that ZeroMQ
refuses outright (``zmq.Again``) are counted here as ``send_dropped``.
"""
from __future__ import annotations

import errno
import ipaddress
import threading
import time
from collections import defaultdict
from typing import Optional

import numpy as np
import zmq

from salstream.errors import SalstreamError
from salstream.redact import redact_value
from salstream.streamer.wire import format as wire

DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def check_bind_address(address: str, allow_remote: bool = False) -> str:
    """Refuse to expose maps beyond this host unless asked (``--allow-remote``)."""
    if address.startswith(("ipc://", "inproc://")):
        return address
    if not address.startswith("tcp://"):
        raise SalstreamError(f"--publish {address}: expected tcp://HOST:PORT (e.g. {DEFAULT_ADDRESS}) "
                             "or ipc://PATH")
    host, _, port = address[len("tcp://"):].rpartition(":")
    # "*" is ZeroMQ's "any free port" (handy for tests); anything else must be a number.
    if not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
        raise SalstreamError(f"--publish {address}: expected tcp://HOST:PORT with a numeric port, "
                             f"e.g. {DEFAULT_ADDRESS}")
    refuse_remote(host, f"--publish {address}", "tcp://127.0.0.1:PORT", allow_remote)
    return address


def refuse_remote(host: str, what: str, loopback_example: str, allow_remote: bool = False) -> None:
    """The one rule for every socket salstream listens on: loopback only unless ``--allow-remote``."""
    if not allow_remote and not is_loopback(host):
        raise SalstreamError(f"{what}: {host} is not a loopback address, so maps would be visible "
                             "to other machines; add --allow-remote to do that on purpose, or use "
                             f"{loopback_example}")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Publisher:
    """Binds a PUB socket and publishes :mod:`salstream.streamer.wire.format` messages.

    ``hwm``: messages queued per subscriber before ZeroMQ drops for it.
    ``payload_dtype``: ``"float32"`` or ``"uint8"`` (see :mod:`salstream.streamer.wire.format`).
    ``frame_max_side`` / ``jpeg_quality``: frame previews (``send_frame``) are
    downscaled so their longer side is at most this many pixels.
    ``address=None``: no socket at all (in-process use, e.g. the Python API): maps are
    still stamped (``seq``, times) for the pipeline's consumers, and nothing is sent.
    ``connect=True``: connect to ``address`` instead of binding it (a cluster replica
    sending to its driver's forwarder, which binds); nothing listens here then.
    """

    def __init__(self, address: Optional[str] = DEFAULT_ADDRESS, *, allow_remote: bool = False, hwm: int = 16,
                 payload_dtype: str = "float32", frame_max_side: int = 640, jpeg_quality: int = 80,
                 context: Optional[zmq.Context] = None, connect: bool = False):
        if address is not None and not connect:
            check_bind_address(address, allow_remote)
        if payload_dtype not in wire.PAYLOAD_DTYPES:
            raise SalstreamError(f"payload dtype {payload_dtype!r}: choose one of {', '.join(wire.PAYLOAD_DTYPES)}")
        self.address = address
        self.payload_dtype = payload_dtype
        self.frame_max_side = int(frame_max_side)
        self.jpeg_quality = int(jpeg_quality)
        self._lock = threading.Lock()   # a zmq socket must not be used by two threads at once
        self._seq: dict[str, int] = defaultdict(int)
        self.sent = 0
        self.send_dropped = 0
        self.frames_sent = 0
        self.subscribers_seen = 0
        self._sends = 0
        self._sock: Optional[zmq.Socket] = None
        self.endpoint: Optional[str] = None
        if address is None:
            return
        self._ctx = context or zmq.Context.instance()
        # XPUB sends exactly like PUB but also reports subscriptions, so a caller can wait
        # for its first subscriber (wait_for_subscriber) instead of losing the first maps.
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, int(hwm))
        self._sock.setsockopt(zmq.LINGER, 0)   # closing must not wait for slow subscribers
        if connect:
            try:
                self._sock.connect(address)
            except zmq.ZMQError as exc:
                self._sock.close(0)
                raise SalstreamError(f"cannot connect to {address} ({exc}); expected tcp://HOST:PORT") from None
            self.endpoint = address
            return
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            if exc.errno == errno.EADDRINUSE:
                raise SalstreamError(f"--publish {address}: address already in use (another salstream run?); "
                                     "stop that process or choose another port, e.g. "
                                     "--publish tcp://127.0.0.1:5557") from None
            raise SalstreamError(f"--publish {address}: cannot bind ({exc}); use tcp://127.0.0.1:PORT") from None
        # The endpoint actually bound (resolves tcp://127.0.0.1:* to a real port).
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _send(self, parts: list[bytes]) -> bool:
        if self._sock is None:
            return False
        self._sends += 1
        if self._sends % 64 == 0:          # subscription notices are not needed after start-up
            while self._sock.poll(0, zmq.POLLIN):
                if self._sock.recv()[:1] == b"\x01":
                    self.subscribers_seen += 1
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False

    def wait_for_subscriber(self, timeout: float, stop: Optional[threading.Event] = None) -> bool:
        """Block up to ``timeout`` s (or until ``stop`` is set) until some subscriber has subscribed;
        True if one did."""
        if self._sock is None:
            return False
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            remaining = deadline - time.monotonic()
            with self._lock:
                if self._sock.poll(0, zmq.POLLIN):
                    msg = self._sock.recv()
                    if msg[:1] == b"\x01":
                        self.subscribers_seen += 1
                        return True
                    continue
            if remaining <= 0:
                return False
            time.sleep(min(0.02, remaining))
        return False

    def continue_seq(self, stream_id: str, next_seq: int) -> None:
        """Number this stream's next map ``next_seq`` (a stream moved here from another publisher
        keeps counting, so subscribers see one sequence)."""
        with self._lock:
            self._seq[stream_id] = max(int(next_seq), self._seq[stream_id])

    def send_parts(self, parts: list[bytes]) -> bool:
        """Send an already encoded multipart message on this socket (other topics, e.g. ``roi/``).

        Never blocks; returns False (and counts it in ``send_dropped``) when ZeroMQ refuses.
        """
        with self._lock:
            return self._send(parts)

    def publish_map(self, header: "wire.MapHeader | dict", saliency: np.ndarray,
                    started: Optional[float] = None) -> wire.MapHeader:
        """Send one map; fills ``seq``, ``publish_time``, ``publish_wall``, ``send_dropped``, ``dtype``.

        ``header.latency_ms["publish"]`` is the time from ``started`` (monotonic; default:
        now — pass the end of the previous stage so the frame preview counts too) to the
        send, serialisation included. Returns the header that went out.
        """
        t0 = time.monotonic() if started is None else started
        header = wire.MapHeader.of(header)
        if header.gaps:   # gap reasons quote the source's errors, and every subscriber reads them
            header = header.replace(gaps=redact_value(header.gaps))
        # Without a socket nothing is serialised: the stamped header is all the consumers need.
        payload = wire.encode_map_payload(saliency, self.payload_dtype) if self._sock is not None else b""
        with self._lock:
            seq = self._seq[header.stream]
            self._seq[header.stream] = seq + 1
            now = time.monotonic()
            h = header.replace(seq=seq, dtype=self.payload_dtype, send_dropped=self.send_dropped,
                               latency_ms=dict(header.latency_ms, publish=(now - t0) * 1000.0),
                               publish_time=now, publish_wall=time.time())
            if self._sock is None:
                h = h.replace(shape=tuple(int(x) for x in np.shape(saliency)))
            elif self._send(wire.pack_map(h, np.shape(saliency), payload)):
                self.sent += 1
        return h

    def send_status(self, stream_id: str, state: str, *, last_pts: Optional[float] = None,
                    frame_age_s: Optional[float] = None, reconnects: int = 0) -> None:
        """Send a ``status/<stream>`` heartbeat (``live``, ``reconnecting`` or ``ended``)."""
        if self._sock is None:
            return
        parts = wire.encode_status(stream_id, state, last_pts=last_pts, frame_age_s=frame_age_s,
                                   reconnects=reconnects, sent=time.monotonic(), sent_wall=time.time())
        with self._lock:
            self._send(parts)

    def publish_conf(self, header: wire.MapHeader, spread: np.ndarray) -> bool:
        """Send the per-pixel spread of a map on ``conf/<stream>``, under the header ``publish_map``
        returned for that map (same ``seq`` and times). Never blocks; False when nothing went out."""
        if self._sock is None:
            return False
        parts = wire.encode_conf(header, spread)
        with self._lock:
            return self._send(parts)

    def send_frame(self, stream_id: str, frame_index: int, pts: float, capture_time: float,
                   image_rgb: np.ndarray) -> None:
        """Send a JPEG preview of a frame (topic ``frame/<stream>``) for remote overlays."""
        if self._sock is None:
            return
        import cv2
        h, w = image_rgb.shape[:2]
        scale = min(1.0, self.frame_max_side / max(h, w))
        img = image_rgb
        if scale < 1.0:
            img = cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            return
        header = {"stream": stream_id, "frame_index": int(frame_index), "pts": float(pts),
                  "capture_time": float(capture_time), "shape": [int(img.shape[0]), int(img.shape[1]), 3],
                  "source_shape": [int(h), int(w), 3]}
        with self._lock:
            if self._send(wire.encode_frame(header, jpeg.tobytes())):
                self.frames_sent += 1

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and not self._sock.closed:
                self._sock.close(0)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
