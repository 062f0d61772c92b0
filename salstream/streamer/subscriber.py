"""A small client for the map stream (see :mod:`streamer.wire` for the format).

    from salstream.streamer.subscriber import Subscriber
    with Subscriber("tcp://127.0.0.1:5556") as sub:
        msg = sub.recv_map(timeout=5.0)        # MapMessage or None on timeout
        print(msg.frame_index, msg.pts, msg.saliency.shape, msg.latency_ms)

Messages that do not follow the format are skipped and counted in ``bad_messages``
(the last error is kept in ``last_error``); gaps in a stream's ``seq`` are counted
in ``missed`` (maps ZeroMQ dropped because this subscriber was slow).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

import zmq

from . import wire
from .wire import FrameMessage, MapMessage, WireError


class Subscriber:
    """SUB socket connected to a publisher.

    ``streams``: stream ids to receive (``None``: all). ``frames``: also receive the
    ``frame/<stream>`` previews. ``hwm``: messages queued here before ZeroMQ drops.
    ``max_message_bytes``: ZeroMQ drops the connection of a peer that sends a larger
    message part instead of buffering it (default: the largest part the wire format
    allows), so a hostile or broken publisher cannot make this process allocate
    without bound; sizes inside a message are checked by :func:`streamer.wire.decode`.
    """

    def __init__(self, address: str, streams: Optional[Iterable[str]] = None, *, frames: bool = False,
                 hwm: int = 64, context: Optional[zmq.Context] = None,
                 max_message_bytes: int = wire.MAX_MESSAGE_PART_BYTES):
        self.address = address
        self.streams = None if streams is None else {str(s) for s in streams}
        self.frames = frames
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, int(hwm))
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        if self.streams is None:
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            for s in self.streams:
                self._sock.setsockopt(zmq.SUBSCRIBE, wire.map_topic(s))
                if frames:
                    self._sock.setsockopt(zmq.SUBSCRIBE, wire.frame_topic(s))
        self._sock.connect(address)
        self._last_seq: dict[str, int] = {}
        self.received = 0
        self.missed = 0
        self.bad_messages = 0
        self.last_error: Optional[str] = None

    def _wanted(self, msg: MapMessage | FrameMessage) -> bool:
        # ZeroMQ filters by prefix ("1" also matches "10"): compare exactly here.
        if isinstance(msg, FrameMessage) and not self.frames:
            return False
        return self.streams is None or msg.stream in self.streams

    def recv(self, timeout: Optional[float] = None) -> MapMessage | FrameMessage | None:
        """Next valid message, or ``None`` after ``timeout`` seconds (``None``: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining is not None:
                if not self._sock.poll(int(remaining * 1000)):
                    return None
            parts = self._sock.recv_multipart(copy=True)
            if parts and wire.is_side_channel(parts[0]) and not parts[0].startswith(wire.FRAME_TOPIC_PREFIX.encode()):
                continue                    # another channel on the same socket (e.g. roi/<stream>)
            try:
                msg = wire.decode(parts)
            except WireError as exc:
                self.bad_messages += 1
                self.last_error = str(exc)
                continue
            if not self._wanted(msg):
                continue
            if isinstance(msg, MapMessage):
                self._count(msg)
            return msg

    def _count(self, msg: MapMessage) -> None:
        self.received += 1
        seq = msg.header.get("seq")
        if isinstance(seq, int):
            last = self._last_seq.get(msg.stream)
            if last is not None and seq > last + 1:
                self.missed += seq - last - 1
            self._last_seq[msg.stream] = seq

    def recv_map(self, timeout: Optional[float] = None) -> Optional[MapMessage]:
        """Next map (frame previews, if subscribed, are skipped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self.recv(remaining)
            if msg is None or isinstance(msg, MapMessage):
                return msg

    def drain(self) -> list[MapMessage | FrameMessage]:
        """Everything queued right now, without waiting (a viewer then keeps the newest)."""
        out = []
        while True:
            msg = self.recv(timeout=0.0)
            if msg is None:
                return out
            out.append(msg)

    def __iter__(self) -> Iterator[MapMessage | FrameMessage]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
