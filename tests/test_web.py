"""The browser viewer: a real pipeline publishing on loopback, the aiohttp bridge, and a real
headless Chromium (Debian's package) or aiohttp clients reading it."""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import aiohttp
import cv2
import numpy as np
import pytest

from salstream.errors import SalstreamError
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.sources.synthetic import SyntheticSource
from salstream.streamer.web.consumer import local_address
from salstream.streamer.web.server import WebViewer
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.browser import Chromium, chromium_path
from tests.support.pipeline import RunningPipeline


def live_pipeline(engine, address: str, seeds=(1, 2), size=(192, 112)) -> RunningPipeline:
    """Paced synthetic streams (ids 0, 1, …) publishing on ``address`` until stopped."""
    sources = [SyntheticSource(seed, stream_id=str(i), width=size[0], height=size[1]) for i, seed in enumerate(seeds)]
    opts = PipelineOptions(publish=address, max_batch=len(seeds))
    return RunningPipeline(Pipeline(opts, engine, sources=sources))


# ---------------------------------------------------------------------------------------- Chromium
def canvas(sid: str) -> str:
    return f"document.querySelector('.tile[data-stream=\"{sid}\"] canvas')"


def pixels(sid: str) -> str:
    """A JS expression: the canvas's pixels (RGBA bytes) as a plain array."""
    return f"(() => {{ const c = {canvas(sid)}; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }})()"


NEXT_PAINT = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


def set_control(browser: Chromium, element: str, value: str, event: str = "input") -> None:
    browser.evaluate(f"(() => {{ const e = document.getElementById('{element}'); e.value = '{value}'; "
                     f"e.dispatchEvent(new Event('{event}')); }})()")
    browser.evaluate(NEXT_PAINT)


def drawn(browser: Chromium, sid: str) -> int:
    return browser.evaluate(f"window.salstreamViewer.drawn['{sid}'] || 0")


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (scripts/install-system-deps installs it)")
def test_viewer_page_in_chromium(engine, tmp_path):
    first = live_pipeline(engine, "tcp://127.0.0.1:*")
    address = first.endpoint
    try:
        with WebViewer("127.0.0.1:0") as viewer:
            viewer.connect(address).start()
            with Chromium(viewer.url, tmp_path) as browser:
                # The page loads against the live pipeline and draws both streams.
                browser.wait_for("window.salstreamViewer && window.salstreamViewer.streams.join() === '0,1'", 60,
                                 "the stream list reached the page")
                browser.wait_for("(window.salstreamViewer.drawn['0'] || 0) > 2 && (window.salstreamViewer.drawn['1'] || 0) > 2",
                                 60, "maps drawn for both streams")
                assert browser.evaluate("document.querySelectorAll('#picker button').length") == 3   # grid, 0, 1

                # The canvas changes over time (the synthetic objects move; new maps arrive).
                before = browser.evaluate(pixels("0"))
                browser.wait_for(f"(() => {{ const a = {json.dumps(before)}; const b = {pixels('0')}; "
                                 "return a.length !== b.length || a.some((v, i) => v !== b[i]); })()", 30,
                                 "the canvas changed")

                # Each map is drawn over its own frame, with its mode shown.
                browser.wait_for("window.salstreamViewer.shown['0'].frame_matched", 30, "a map drawn over its own frame")
                assert browser.evaluate("window.salstreamViewer.shown['0'].mode") == "av"
                assert "audio-visual" in browser.evaluate("document.querySelector('.tile[data-stream=\"0\"] figcaption').textContent")

                # Paused, the picture holds; the opacity control shows that the heatmap is composited over it.
                browser.evaluate("document.getElementById('pause').click()")
                browser.evaluate(NEXT_PAINT)
                set_control(browser, "opacity", "1")
                with_heat = np.array(browser.evaluate(pixels("0")), np.int16)
                time.sleep(0.5)
                assert np.array_equal(with_heat, np.array(browser.evaluate(pixels("0")), np.int16)), "pause froze it"
                set_control(browser, "opacity", "0")
                frame_only = np.array(browser.evaluate(pixels("0")), np.int16)
                diff = np.abs(with_heat - frame_only).reshape(-1, 4)[:, :3]
                assert diff.mean() > 5 and (diff.max(axis=1) > 60).mean() > 0.01, "no heatmap over the frame"
                set_control(browser, "colormap", "gray", "change")
                assert np.array_equal(frame_only, np.array(browser.evaluate(pixels("0")), np.int16)), \
                    "at opacity 0 the colormap must not matter"
                set_control(browser, "opacity", "0.6")
                set_control(browser, "colormap", "jet", "change")
                browser.evaluate("document.getElementById('pause').click()")

                # The stream picker shows one stream, and the server then sends only that one.
                browser.evaluate("document.querySelector('#picker button[data-stream=\"1\"]').click()")
                assert browser.evaluate("document.getElementById('tiles').className") == "single"
                assert browser.evaluate("document.querySelector('.tile[data-stream=\"0\"]').classList.contains('hidden')")
                assert not browser.evaluate("document.querySelector('.tile[data-stream=\"1\"]').classList.contains('hidden')")
                time.sleep(1.5)        # let maps already on the way arrive
                zero, one = drawn(browser, "0"), drawn(browser, "1")
                browser.wait_for(f"(window.salstreamViewer.drawn['1'] || 0) >= {one + 5}", 30, "stream 1 kept drawing")
                assert drawn(browser, "0") - zero <= 1, "the unselected stream was still sent"
                assert "stream 1" in browser.evaluate("document.getElementById('chart-title').textContent")
                browser.evaluate("document.querySelector('#picker button[data-stream=\"*\"]').click()")
                browser.wait_for(f"(window.salstreamViewer.drawn['0'] || 0) > {zero + 2}", 30, "back to the grid")

                # The publisher stops: the page says so and stays up; a new publisher on the same
                # address brings maps back (frame indices start again).
                old_index = browser.evaluate("window.salstreamViewer.shown['0'].frame_index")
                first.stop()
                browser.wait_for("document.getElementById('connection').textContent.includes('no maps')", 30,
                                 "the page noticed that the maps stopped")
                second = live_pipeline(engine, address, seeds=(5, 6))
                try:
                    count = drawn(browser, "0")
                    browser.wait_for(f"window.salstreamViewer.drawn['0'] > {count + 3} && "
                                     f"window.salstreamViewer.shown['0'].frame_index < {old_index}", 60,
                                     "maps of the restarted publisher drawn")
                    browser.wait_for("document.getElementById('connection').textContent === 'live'", 30, "live again")
                    assert browser.evaluate("window.salstreamViewer.reconnects") == 0   # the page never reloaded
                    png = browser.screenshot()
                    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
                finally:
                    second.stop()
    finally:
        first.stop()


# -------------------------------------------------------------------------------- protocol clients
def unpack(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + n]), data[4 + n:]


def test_websocket_maps_equal_the_published_maps_and_mjpeg_serves_overlays(engine):
    with live_pipeline(engine, "tcp://127.0.0.1:*", seeds=(3,)) as run, WebViewer("127.0.0.1:0") as viewer, \
            Subscriber(run.endpoint) as sub:
        viewer.connect(run.endpoint).start()
        published: dict[int, np.ndarray] = {}

        async def client():
            got = []
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(viewer.url + "ws") as ws:
                    hello = await ws.receive_json(timeout=30)
                    assert hello["type"] == "hello" and hello["address"] == run.endpoint
                    deadline = time.monotonic() + 60
                    while len([m for m in got if m[0]["type"] == "map"]) < 5 and time.monotonic() < deadline:
                        msg = await ws.receive(timeout=30)
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            got.append(unpack(msg.data))
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            got.append((json.loads(msg.data), b""))
                async with http.get(viewer.url + "mjpeg") as r:
                    assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
                    head = await r.content.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    mjpeg = await r.content.readexactly(length)
                async with http.get(viewer.url + "streams") as r:
                    listing = await r.json()
                async with http.get(viewer.url) as r:
                    page = await r.text()
                    csp = r.headers["Content-Security-Policy"]
            return got, mjpeg, listing, page, csp

        got, mjpeg, listing, page, csp = asyncio.run(client())
        # The streams run until stopped: read what was published so far (already queued here),
        # not until the publisher falls silent.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (m := sub.recv_map(timeout=0.5)) is not None:
            published[m.frame_index] = m.saliency
    maps = [(h, p) for h, p in got if h["type"] == "map"]
    frames = [(h, p) for h, p in got if h["type"] == "frame"]
    assert {"streams", "stats"} <= {h["type"] for h, _ in got}
    assert maps and frames
    compared = 0
    for h, payload in maps:
        rows, cols = h["shape"]
        assert len(payload) == rows * cols and h["stream"] == "0" and h["mode"] in wire.MODES
        assert h["latency_ms"] > 0 and isinstance(h["flags"], dict)
        if h["frame_index"] in published:
            expected = wire.encode_map_payload(published[h["frame_index"]], "uint8")
            assert payload == expected, "the browser's map differs from the published one"
            compared += 1
    assert compared >= 3
    # A frame message precedes its map and is a real JPEG of the preview.
    h, jpeg = frames[0]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (112, 192)
    overlay = cv2.imdecode(np.frombuffer(mjpeg, np.uint8), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape[:2] == (112, 192)
    assert set(listing["streams"]) == {"0"} and listing["streams"]["0"]["maps_per_s"] > 0
    assert '<script src="viewer.js">' in page and "http" not in page.split("<body>")[1].split("<noscript>")[0]
    assert "connect-src 'self'" in csp


class RawWebSocket:
    """A WebSocket client on a plain socket with a small receive buffer that reads only when asked
    (library clients read ahead into their own queues, so they cannot stand for a slow browser)."""

    def __init__(self, url: str, rcvbuf: int = 4096):
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        self.sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the server closed the connection"
            out += chunk
        return out

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next (unfragmented, unmasked) server message."""
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._exact(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._exact(8))
        return b0 & 0x0F, self._exact(n)

    def close(self) -> None:
        self.sock.close()


def test_a_slow_browser_gets_the_newest_map_not_a_backlog(engine):
    """A client that takes a map every 1.5 s through a small receive window: it skips maps the
    bridge had (gaps in the publisher's per-stream seq) instead of working through a queue."""
    # Large previews (noisy 640×360 JPEGs, tens of kB) fill the socket buffers within a few maps.
    with live_pipeline(engine, "tcp://127.0.0.1:*", seeds=(4,), size=(640, 360)) as run, \
            WebViewer("127.0.0.1:0", send_buffer=16 * 1024) as viewer:
        viewer.connect(run.endpoint).start()
        client = RawWebSocket(viewer.url)
        seqs = []
        try:
            t_end = time.monotonic() + 12.0
            while time.monotonic() < t_end:
                opcode, data = client.receive()
                if opcode == 2:
                    h, _ = unpack(data)
                    if h["type"] == "map":
                        seqs.append(h["seq"])
                        time.sleep(1.5)          # a browser busy for a while after each map
        finally:
            client.close()
        received, missed = viewer.bridge.maps, viewer.bridge.missed
    steps = np.diff(seqs)
    assert missed == 0 and len(seqs) >= 2 and received > len(seqs) + 4
    assert (steps > 0).all() and steps.max() >= 3, f"the maps came one by one (seq {seqs}; bridge {received})"


def test_a_browser_gone_before_its_hello_ends_its_sender_quietly():
    """The page closed while it loaded: the first send fails. The sender task must end, not leave
    an exception for the event loop to print ("Task exception was never retrieved")."""
    class GoneBrowser:          # the transport state aiohttp reports for a reset connection
        closed = False

        async def send_json(self, data):
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    with WebViewer("127.0.0.1:0") as viewer:
        viewer.connect("tcp://127.0.0.1:1")          # nobody publishes there
        assert asyncio.run(viewer._send_loop(GoneBrowser(), {"streams": None})) is None


def test_listen_address_rules():
    with pytest.raises(SalstreamError, match="not a loopback address.*--allow-remote"):
        WebViewer("0.0.0.0:0")
    with pytest.raises(SalstreamError, match="expected HOST:PORT"):
        WebViewer("8080")
    with WebViewer("127.0.0.1:0") as taken:
        with pytest.raises(SalstreamError, match="cannot listen there.*another port"):
            WebViewer(f"127.0.0.1:{taken.port}")
    with WebViewer("0.0.0.0:0", allow_remote=True) as anywhere:
        assert anywhere.port > 0
    assert local_address("tcp://0.0.0.0:5556") == "tcp://127.0.0.1:5556"
    assert local_address("tcp://[::]:5556") == "tcp://[::1]:5556"
    assert local_address("tcp://127.0.0.1:5556") == "tcp://127.0.0.1:5556"


def test_other_sites_cannot_read_the_viewer():
    """Frames are camera pictures: a page of another origin (cross-site WebSocket) or a host name
    that is not loopback (DNS rebinding) is refused; the viewer's own page and plain clients are not."""
    with WebViewer("127.0.0.1:0") as viewer:
        viewer.connect("tcp://127.0.0.1:1").start()          # nobody publishes there: the page just waits

        async def probe():
            async with aiohttp.ClientSession() as http:
                async with http.get(viewer.url) as r:
                    own = r.status
                async with http.get(viewer.url, headers={"Host": f"evil.example:{viewer.port}"}) as r:
                    rebound = r.status
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(viewer.url + "ws", headers={"Origin": "http://evil.example"})
                async with http.ws_connect(viewer.url + "ws", headers={"Origin": viewer.url.rstrip("/")}) as ws:
                    hello = await ws.receive_json(timeout=10)
            return own, rebound, refused.value.status, hello

        own, rebound, refused, hello = asyncio.run(probe())
    assert (own, rebound, refused, hello["type"]) == (200, 403, 403, "hello")
