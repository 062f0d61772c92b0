"""A small client for the map stream (format: :mod:`salstream.streamer.wire.format`).

    from salstream.streamer.wire.subscriber import Subscriber
    with Subscriber("tcp://127.0.0.1:5556") as sub:
        msg = sub.recv_map(timeout=5.0)        # MapMessage or None on timeout
        print(msg.frame_index, msg.pts, msg.saliency.shape, msg.latency_ms)

Needs only pyzmq and numpy (OpenCV only to decode frame previews). Messages that do not
follow the format are skipped and counted in ``bad_messages`` (the last error is kept
in ``last_error``); a client never dies of one bad message. Gaps in a stream's ``seq``
are counted in ``missed`` (maps ZeroMQ dropped because this subscriber was slow).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

import zmq

from salstream.streamer.wire import format as wire
from salstream.streamer.wire.format import (
    ConfMessage,
    FrameMessage,
    MapMessage,
    Message,
    RoiMessage,
    StatusMessage,
    WireError,
)

__all__ = ["Subscriber", "MapMessage", "FrameMessage", "RoiMessage", "StatusMessage", "ConfMessage", "WireError"]

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20     # largest message part accepted by default
DEFAULT_MAX_QUEUED_BYTES = 256 << 20    # most a slow client queues (hwm × largest part)


class Subscriber:
    """SUB socket connected to a publisher.

    ``streams``: stream ids to receive (``None``: all). ``kinds``: message kinds to receive,
    any of ``"map"``, ``"frame"`` (JPEG previews), ``"roi"`` (encoder regions), ``"status"``
    (heartbeats: live / reconnecting / ended), ``"conf"`` (per-pixel spread of maps sampled
    K times, :class:`ConfMessage`, sent right after its map with the same ``seq``); default
    maps only, plus previews when ``frames=True``. ``hwm``: messages queued here before
    ZeroMQ drops. ``max_message_bytes``: ZeroMQ drops the connection of a peer that sends
    a larger message part instead of buffering it (default 4 MiB: a 1024×1024 float32 map
    or a large preview; raise it for bigger maps, up to the format's limit
    :data:`~salstream.streamer.wire.format.MAX_MESSAGE_PART_BYTES`), so a hostile or broken
    publisher cannot make this process allocate without bound. ``max_queued_bytes``: the
    queue is cut to ``max_queued_bytes // max_message_bytes`` messages when ``hwm`` messages
    of the largest size would exceed it, so a slow client never queues more than that
    (default 256 MiB). Sizes inside a message are checked by
    :func:`~salstream.streamer.wire.format.decode`.
    """

    def __init__(self, address: str, streams: Optional[Iterable[str]] = None, *, frames: bool = False,
                 kinds: Optional[Iterable[str]] = None, hwm: int = 64, context: Optional[zmq.Context] = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES):
        if not 0 < max_message_bytes <= wire.MAX_MESSAGE_PART_BYTES:
            raise ValueError(f"max_message_bytes {max_message_bytes}: must be 1…{wire.MAX_MESSAGE_PART_BYTES}")
        self.address = address
        self.streams = None if streams is None else {str(s) for s in streams}
        self.kinds = set(kinds) if kinds is not None else ({wire.MAP, wire.FRAME} if frames else {wire.MAP})
        unknown = self.kinds - set(wire.KINDS)
        if unknown:
            raise ValueError(f"unknown message kind(s) {sorted(unknown)}; choose from {', '.join(wire.KINDS)}")
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        # ZeroMQ's high-water mark counts whole messages: bound it so hwm × largest ≤ max_queued_bytes.
        self.hwm = max(1, min(int(hwm), int(max_queued_bytes) // int(max_message_bytes)))
        self._sock.setsockopt(zmq.RCVHWM, self.hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        for prefix in self._prefixes():
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self._sock.connect(address)
        self._last_seq: dict[str, int] = {}
        self.received = 0
        self.missed = 0
        self.bad_messages = 0
        self.last_error: Optional[str] = None

    @property
    def frames(self) -> bool:
        return wire.FRAME in self.kinds

    def _prefixes(self) -> list[bytes]:
        if self.streams is None:
            if self.kinds == set(wire.KINDS):
                return [b""]
            # Map topics have no prefix of their own: with maps wanted, take everything and filter here.
            return [b""] if wire.MAP in self.kinds else [f"{k}/".encode() for k in self.kinds]
        return [wire.topic(k, s) for k in self.kinds for s in self.streams]

    def _wanted(self, kind: str, stream: str) -> bool:
        # ZeroMQ filters by prefix ("1" also matches "10"): compare exactly here.
        return kind in self.kinds and (self.streams is None or stream in self.streams)

    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        """Next valid message of a wanted kind, or ``None`` after ``timeout`` seconds (``None``: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                remaining = max(0.0, deadline - time.monotonic())
                if not self._sock.poll(int(remaining * 1000)):
                    return None
            parts = self._sock.recv_multipart(copy=True)
            try:
                kind, stream = wire.split_topic(parts[0])
            except UnicodeDecodeError:
                kind = stream = ""
            if kind not in wire.KINDS and kind:
                continue                     # a side channel this client does not know: skip quietly
            if kind and not self._wanted(kind, stream):
                continue
            try:
                msg = wire.decode(parts)
            except WireError as exc:
                self.bad_messages += 1
                self.last_error = str(exc)
                continue
            except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
                # decode() raises only WireError by design; should a check still miss a case,
                # the message is skipped and counted all the same (a client never dies of one).
                self.bad_messages += 1
                self.last_error = f"undecodable message ({type(exc).__name__}: {str(exc)[:80]})"
                continue
            if isinstance(msg, MapMessage):
                self._count(msg)
            return msg

    def _count(self, msg: MapMessage) -> None:
        self.received += 1
        seq = msg.header.seq
        last = self._last_seq.get(msg.stream)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
        self._last_seq[msg.stream] = seq

    def recv_map(self, timeout: Optional[float] = None) -> Optional[MapMessage]:
        """Next map (messages of other kinds, if subscribed, are skipped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self.recv(remaining)
            if msg is None or isinstance(msg, MapMessage):
                return msg

    def drain(self) -> list[Message]:
        """Everything queued right now, without waiting (a viewer then keeps the newest)."""
        out = []
        while True:
            msg = self.recv(timeout=0.0)
            if msg is None:
                return out
            out.append(msg)

    def __iter__(self) -> Iterator[Message]:
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
