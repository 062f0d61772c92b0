"""The browser viewer: one page, a WebSocket of frames and maps, and MJPEG for clients without JavaScript.

Routes (all read-only; nothing is fetched from outside the server):

``/``                   the viewer page (``static/``: plain HTML, JS and CSS, no build step)
``/ws``                 WebSocket. Binary messages are ``[4-byte big-endian n][n bytes of JSON][payload]``:
                        ``{"type": "frame", stream, frame_index, pts}`` + JPEG, then
                        ``{"type": "map", stream, frame_index, pts, mode, flags, latency_ms, shape, …}`` +
                        the map as uint8 (round(255 · value), model resolution). Text messages are JSON:
                        ``hello``, ``streams`` (the list changed) and ``stats`` (each second: per stream
                        maps/s, p50/p95 capture→publish latency, age of the newest map). The page may send
                        ``{"type": "select", "streams": [...] | null}`` to receive only some streams.
``/mjpeg[/<stream>]``   ``multipart/x-mixed-replace`` JPEGs of the overlay blended on the server
``/snapshot[/<stream>]`` one such JPEG
``/streams``            JSON: the streams and their figures

Every client gets the newest map of a stream when it is ready for more: a slow browser
skips maps, nothing queues up for it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from importlib import resources
from typing import Optional

from aiohttp import WSMsgType, web

from salstream.errors import SalstreamError
from salstream.streamer.web import DEFAULT_LISTEN
from salstream.streamer.web.bridge import MapBridge
from salstream.streamer.wire.publisher import is_loopback, refuse_remote

log = logging.getLogger("salstream.web")

STATIC_FILES = {"index.html": "text/html", "viewer.js": "text/javascript", "viewer.css": "text/css"}
# The page only talks to this server (WebSocket included) and runs only its own script.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_CLIENT_MESSAGE = 64 * 1024
# Per client, what the kernel may hold unsent: a few previews. More would show a slow browser
# seconds-old pictures (automatic tuning grows it to megabytes) before "newest only" applies.
SEND_BUFFER = 256 * 1024
BOUNDARY = "salstreamframe"


def parse_listen(listen: str, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 = any free one) → (host, port), loopback unless allowed."""
    host, sep, port = str(listen).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SalstreamError(f"--listen {listen}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    refuse_remote(host, f"--listen {listen}", DEFAULT_LISTEN, allow_remote)
    return host.strip("[]"), int(port)


class WebViewer:
    """Serves the viewer for the maps published at an address.

    The listening socket is bound at construction (a busy port fails at once, before a run
    loads its model); :meth:`connect` subscribes, :meth:`start` serves in a background thread
    with its own event loop, :meth:`close` ends both. ``alpha`` is the opacity of the
    server-side (MJPEG) overlay; ``send_buffer`` the bytes each client's socket may hold unsent.
    """

    def __init__(self, listen: str = DEFAULT_LISTEN, *, allow_remote: bool = False, alpha: float = 0.6,
                 send_buffer: int = SEND_BUFFER):
        host, port = parse_listen(listen, allow_remote)
        self.loopback_only = is_loopback(host)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, port), family=family, backlog=64)
        except socket.gaierror as exc:
            raise SalstreamError(f"--listen {listen}: unknown host {host!r} ({exc.strerror})") from None
        except OSError as exc:
            raise SalstreamError(f"--listen {listen}: cannot listen there ({exc.strerror or exc}); is another "
                                 "viewer running? choose another port, e.g. --listen 127.0.0.1:8081") from None
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"
        self.alpha = float(alpha)
        self.send_buffer = int(send_buffer)
        self.bridge: Optional[MapBridge] = None
        self.clients = 0            # browsers and MJPEG clients served so far
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._changed: Optional[asyncio.Event] = None
        self._closing = False
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._open: set = set()     # live WebSocket / MJPEG responses, ended on close

    # ------------------------------------------------------------------ lifecycle
    def connect(self, address: str) -> "WebViewer":
        """Subscribe to the publisher at ``address`` (it may start later, or restart: ZeroMQ reconnects)."""
        if self.bridge is not None:
            self.bridge.stop()
        self.bridge = MapBridge(address, on_change=self._wake_threadsafe).start()
        return self

    def start(self) -> "WebViewer":
        if self.bridge is None:
            raise SalstreamError("WebViewer.start(): call connect(ADDRESS) first")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="salstream-web", daemon=True)
            self._thread.start()
            self._ready.wait(30)
            if self._error is not None:
                raise self._error
            log.debug("web viewer: %s (maps from %s)", self.url, self.bridge.address)
        return self

    def close(self) -> None:
        self._closing = True
        if self._loop is not None and self._thread is not None:
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:        # the loop already ended
                pass
            self._thread.join(15)
        if self.bridge is not None:
            self.bridge.stop()
        self._sock.close()

    def __enter__(self) -> "WebViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        try:
            self._changed = asyncio.Event()
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, self._sock).start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._wake()
            for resp in list(self._open):      # end long-lived responses so cleanup does not wait for them
                if isinstance(resp, web.WebSocketResponse):
                    loop.run_until_complete(resp.close(code=1001, message=b"viewer closing"))
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # ------------------------------------------------------------------ change notification
    def _wake_threadsafe(self, _stream: str = "") -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                pass

    def _wake(self) -> None:
        """Wake every client waiting for news (runs in the loop thread)."""
        if self._changed is not None:
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    async def _news(self, timeout: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ routes
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CLIENT_MESSAGE, middlewares=[self._same_origin])
        app.router.add_get("/", self._static)
        app.router.add_get("/{name:index\\.html|viewer\\.js|viewer\\.css}", self._static)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/mjpeg", self._mjpeg)
        app.router.add_get("/mjpeg/{stream}", self._mjpeg)
        app.router.add_get("/snapshot", self._snapshot)
        app.router.add_get("/snapshot/{stream}", self._snapshot)
        app.router.add_get("/streams", self._streams)
        return app

    @web.middleware
    async def _same_origin(self, request: web.Request, handler):
        """Only pages of this server may use it from a browser. Frames are camera pictures: another
        site open in the same browser must not read them through the WebSocket (which ignores
        CORS), nor reach a loopback viewer under its own host name (DNS rebinding)."""
        host = request.host.rpartition(":")[0] if request.host.count(":") == 1 or request.host.startswith("[") \
            else request.host
        if self.loopback_only and not is_loopback(host.strip("[]") or request.host):
            raise web.HTTPForbidden(text=f"host {request.host!r} is not this viewer's loopback address\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin.partition("://")[2].rstrip("/") != request.host:
            raise web.HTTPForbidden(text=f"origin {origin!r} is not this viewer\n")
        return await handler(request)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        body = resources.files("salstream.streamer.web").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                     "X-Content-Type-Options": "nosniff"})

    async def _streams(self, request: web.Request) -> web.Response:
        return web.json_response({"address": self.bridge.address, "streams": self.bridge.stats(),
                                  "maps": self.bridge.maps, "missed": self.bridge.missed})

    def _pick(self, request: web.Request) -> Optional[str]:
        wanted = request.match_info.get("stream")
        if wanted is not None:
            return wanted
        streams = self.bridge.streams()
        return streams[0] if streams else None

    async def _snapshot(self, request: web.Request) -> web.Response:
        stream = self._pick(request)
        jpeg = None if stream is None else await asyncio.get_running_loop().run_in_executor(
            None, self.bridge.overlay_jpeg, stream, self.alpha)
        if not jpeg:
            raise web.HTTPNotFound(text=f"no map of stream {stream!r} yet; streams: {self.bridge.streams()}\n")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-store"})
        self._bound_send_buffer(request)
        await resp.prepare(request)
        self.clients += 1
        self._open.add(resp)
        loop = asyncio.get_running_loop()
        sent = None
        try:
            while not self._closing:
                stream = self._pick(request)
                latest = None if stream is None else self.bridge.latest(stream)
                if latest is not None and latest.version != sent:
                    jpeg = await loop.run_in_executor(None, self.bridge.overlay_jpeg, stream, self.alpha)
                    if jpeg:
                        # write() waits while the client is slow: the next part is then the newest map.
                        await resp.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         f"{len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    sent = latest.version
                await self._news(1.0)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._open.discard(resp)
        return resp

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_CLIENT_MESSAGE)
        self._bound_send_buffer(request)
        await ws.prepare(request)
        self.clients += 1
        self._open.add(ws)
        client = {"streams": None}      # None: every stream
        sender = asyncio.ensure_future(self._send_loop(ws, client))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._client_message(msg.data, client)
                    self._wake()
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            self._open.discard(ws)
        return ws

    def _bound_send_buffer(self, request: web.Request) -> None:
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    @staticmethod
    def _client_message(text: str, client: dict) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "select":
            streams = msg.get("streams")
            if streams is None:
                client["streams"] = None
            elif isinstance(streams, list) and len(streams) <= 1024 and all(isinstance(s, str) for s in streams):
                client["streams"] = set(streams)
            client["sent"] = {}          # send the newest state of newly selected streams at once

    async def _send_loop(self, ws: web.WebSocketResponse, client: dict) -> None:
        loop = asyncio.get_running_loop()
        known: list[str] = []
        next_stats = 0.0
        try:
            # Inside the try: a browser may be gone before its hello (a page closed while loading).
            await ws.send_json({"type": "hello", "version": 1, "address": self.bridge.address})
            while not ws.closed and not self._closing:
                streams = self.bridge.streams()
                if streams != known:
                    known = streams
                    await ws.send_json({"type": "streams", "streams": streams})
                sent = client.setdefault("sent", {})
                wanted = client["streams"]
                for stream in streams:
                    if wanted is not None and stream not in wanted:
                        continue
                    latest = self.bridge.latest(stream)
                    if latest is None or sent.get(stream) == latest.version:
                        continue
                    # Each send waits while the browser is slow, so what follows is always the newest state.
                    if latest.frame_jpeg is not None:
                        await ws.send_bytes(_packed({"type": "frame", **latest.frame_info}, latest.frame_jpeg))
                    if latest.spread_u8 is None:
                        await ws.send_bytes(_packed({"type": "map", **latest.map_info}, latest.map_u8))
                    else:   # the spread rides with its map: the payload is the map, then the spread
                        await ws.send_bytes(_packed({"type": "map", "spread": True, **latest.map_info},
                                                    latest.map_u8 + latest.spread_u8))
                    sent[stream] = latest.version
                if loop.time() >= next_stats:
                    next_stats = loop.time() + 1.0
                    await ws.send_json({"type": "stats", "streams": self.bridge.stats(),
                                        "missed": self.bridge.missed})
                await self._news(max(0.05, next_stats - loop.time()))
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass    # the browser went away (or the viewer is closing)


def _packed(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return struct.pack(">I", len(head)) + head + payload
