"""The driver's end of a cluster: replicas' messages in, one public socket out.

Replicas connect their publishers to an XSUB socket here (subscribed to everything);
every message is sent on unchanged through the :class:`~salstream.streamer.wire.publisher.Publisher`
bound at ``--publish``, whose XPUB socket filters per subscriber as in ``salstream run``.
Topics, headers and payloads are not rewritten, so subscribers cannot tell a cluster from
one process. The forwarder keeps the newest map header of each stream (not parsed until
asked), which is where a moved stream resumes from.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Optional

import zmq

from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import Publisher

log = logging.getLogger("salstream.serve.forwarder")


class Forwarder:
    """Binds ``publish`` (public, for subscribers) now, and the replicas' port in :meth:`start`.

    The replicas' ``listen_host`` must be reachable from every replica's node: loopback for
    a local runtime, the driver's cluster address otherwise (the caller applies the
    loopback rule). ``streams``: the stream ids whose newest map header is kept.
    """

    def __init__(self, publish: str, streams: Iterable[str], *, allow_remote: bool = False, hwm: int = 16,
                 payload_dtype: str = "float32"):
        # Bound first, on its own: a busy --publish address fails before a cluster starts.
        self.out = Publisher(publish, allow_remote=allow_remote, hwm=hwm, payload_dtype=payload_dtype)
        self.endpoint = self.out.endpoint
        self.streams = frozenset(streams)    # only these are tracked (a stranger's topics cannot grow memory)
        self.address: Optional[str] = None
        self._in: Optional[zmq.Socket] = None
        self._lock = threading.Lock()
        self._last: dict[str, tuple[bytes, float]] = {}    # stream -> (newest map header, monotonic received)
        self.maps: dict[str, int] = {}                     # stream -> maps forwarded
        self.forwarded = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, listen_host: str = "127.0.0.1") -> str:
        """Bind the replicas' port on ``listen_host`` and start forwarding; the address replicas connect to."""
        ctx = zmq.Context.instance()
        self._in = ctx.socket(zmq.XSUB)
        self._in.setsockopt(zmq.LINGER, 0)
        self._in.setsockopt(zmq.RCVHWM, 1024)
        # A peer that sends a larger part than the wire format allows is disconnected, never buffered.
        self._in.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_PART_BYTES)
        port = self._in.bind_to_random_port(f"tcp://{listen_host}")
        self.address = f"tcp://{listen_host}:{port}"
        self._in.send(b"\x01")          # subscribe to every topic; new replicas get it when they connect
        self._thread = threading.Thread(target=self._loop, name="salstream-forwarder", daemon=True)
        self._thread.start()
        return self.address

    def _loop(self) -> None:
        sock = self._in
        while not self._stop.is_set():
            if not sock.poll(100):
                continue
            for _ in range(256):                       # drain what is queued, then check the stop flag
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    if self._stop.is_set():
                        return
                    raise
                topic = parts[0].bytes
                stream = topic.decode("utf-8", "replace")
                if len(parts) == 3 and stream in self.streams:     # a map: remember where its stream is
                    with self._lock:
                        self._last[stream] = (parts[1].bytes, time.monotonic())
                        self.maps[stream] = self.maps.get(stream, 0) + 1
                self.out.send_parts(parts)
                self.forwarded += 1

    def last_map(self, stream_id: str) -> Optional[tuple[wire.MapHeader, float]]:
        """The newest map header forwarded for ``stream_id`` and its age in seconds, or None."""
        with self._lock:
            got = self._last.get(stream_id)
        if got is None:
            return None
        raw, received = got
        try:
            header = wire.MapHeader.from_dict(wire.parse_header(raw))
        except wire.WireError as exc:
            log.warning("stream %s: last header unreadable (%s)", stream_id, exc)
            return None
        return header, time.monotonic() - received

    def last_received(self, stream_id: str) -> Optional[float]:
        """Monotonic time the newest map of ``stream_id`` arrived here, or None."""
        with self._lock:
            got = self._last.get(stream_id)
        return None if got is None else got[1]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._in is not None:
            self._in.close(0)
        self.out.close()
