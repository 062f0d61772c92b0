"""A client never dies of one bad message: a rogue ZeroMQ publisher sends crafted messages."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from salstream.streamer.wire import format as wire
from salstream.streamer.wire.subscriber import Subscriber

bad_input = pytest.mark.bad_input
REPO = Path(__file__).resolve().parents[1]


def _good_map(frame_index: int = 0) -> list[bytes]:
    return wire.encode_map(wire.MapHeader(stream="0", frame_index=frame_index, pts=0.5, capture_time=1.0,
                                          latency_ms={"denoise": [1.0]}), np.full((4, 6), 0.25, np.float32))


def _header(parts: list[bytes]) -> dict:
    return json.loads(parts[1])


def _dump(h: dict) -> bytes:
    return json.dumps(h, separators=(",", ":")).encode()


def _with(**fields) -> list[bytes]:
    good = _good_map()
    return [good[0], _dump({**_header(good), **fields}), good[2]]


def _without(key: str) -> list[bytes]:
    good = _good_map()
    h = _header(good)
    del h[key]
    return [good[0], _dump(h), good[2]]


def _nested(depth: int) -> list[bytes]:
    good = _good_map()
    text = _dump(_header(good)).decode()[:-1] + ',"extra_field":' + "[" * depth + "]" * depth + "}"
    return [good[0], text.encode(), good[2]]


# Each crafted message: a class of mistakes a publisher (broken or hostile) can make.
CRAFTED = {
    "string where a number belongs": _with(pts="0.5"),
    "list where an integer belongs": _with(frame_index=[1]),
    "boolean as a count": _with(seq=True),
    "object as the shape": _with(shape={"rows": 4}),
    "negative shape": _with(shape=[-4, 6]),
    "number with 400 digits": [b"0", _with()[1].replace(b'"pts":0.5', b'"pts":' + b"9" * 400), _good_map()[2]],
    "number overflowing to infinity": [b"0", _with()[1].replace(b'"pts":0.5', b'"pts":1e999'), _good_map()[2]],
    "NaN literal": [b"0", _with()[1].replace(b'"pts":0.5', b'"pts":NaN'), _good_map()[2]],
    "nesting 20 levels deep": _nested(20),
    "nesting 50000 levels deep": _nested(50_000),
    "missing frame_index": _without("frame_index"),
    "missing latency_ms": _without("latency_ms"),
    "missing version": _without("version"),
    "version 2": _with(version=2),
    "latency of the wrong type": _with(latency_ms={"denoise": "slow"}),
    "flags holding a string": _with(flags={"gap": "yes"}),
    "gaps as a string": _with(gaps="all of them"),
    "window with a float frame count": _with(window={"frames": 1.5, "first_frame": 0}),
    "stream id with a slash": [b"0", _dump({**_header(_good_map()), "stream": "a/b"}), _good_map()[2]],
    "header that is a JSON list": [b"0", b"[1, 2, 3]", _good_map()[2]],
    "header that is not UTF-8": [b"0", b"\xff\xfe{}", _good_map()[2]],
    "topic that is not UTF-8": [b"\xff\xfe", _good_map()[1], _good_map()[2]],
    "one part only": [b"0"],
    "four parts": _good_map() + [b"x"],
    "payload shorter than the shape": _good_map()[:2] + [b"\0" * 5],
    "payload of NaNs": _good_map()[:2] + [np.full((4, 6), np.nan, "<f4").tobytes()],
    "frame preview that is not a JPEG": wire.encode_frame({"stream": "0", "frame_index": 0, "pts": 0.0,
                                                           "capture_time": 0.0}, b"GIF89a not a jpeg"),
    "frame preview with a string frame_index": wire.encode_frame({"stream": "0", "frame_index": "0", "pts": 0.0,
                                                                  "capture_time": 0.0}, b"\xff\xd8"),
    "roi with an inconsistent grid": [b"roi/0", json.dumps({"version": 1, "kind": "roi", "stream": "0",
                                                            "frame_index": 0, "pts": 0.0, "shape": [9, 9],
                                                            "frame_size": [16, 16], "block_size": 16,
                                                            "dtype": "float32"}).encode(), b"\0" * 324],
}


@bad_input("client", "crafted headers: wrong JSON types, 400-digit or infinite numbers, NaN, deep nesting, "
           "missing fields, wrong version, non-UTF-8, wrong part counts, short or NaN payloads",
           "`Subscriber.recv()` skips and counts each (`bad_messages`, `last_error`) and returns the next good one")
def test_subscriber_survives_every_crafted_message_and_counts_it():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", kinds={"map", "frame", "roi"}) as sub:
            time.sleep(0.3)
            for name, parts in CRAFTED.items():
                before = sub.bad_messages
                raw.send_multipart(parts)
                raw.send_multipart(_good_map(frame_index=7))
                msg = sub.recv(timeout=5)
                assert isinstance(msg, wire.MapMessage) and msg.frame_index == 7, name
                assert msg.saliency.shape == (4, 6) and np.allclose(msg.saliency, 0.25), name
                assert sub.bad_messages == before + 1, f"{name}: not counted ({sub.last_error})"
            assert sub.received == len(CRAFTED)
    finally:
        raw.close(0)


def test_every_crafted_header_is_a_wire_error_never_another_exception():
    for name, parts in CRAFTED.items():
        with pytest.raises(wire.WireError):
            wire.decode(parts)
            pytest.fail(f"{name}: decoded")
    # The README's example reads these fields; a header that passed decode always has them.
    msg = wire.decode(_good_map())
    assert all(k in msg.header for k in wire.MAP_FIELDS)


@bad_input("client", "a publisher that queues maximal messages at a slow client",
           "each part over `max_message_bytes` (4 MiB) drops that connection; the queue is capped at "
           "`max_queued_bytes` (256 MiB)")
def test_slow_client_queue_is_bounded_in_bytes():
    with Subscriber("tcp://127.0.0.1:1", max_message_bytes=wire.MAX_MESSAGE_PART_BYTES) as big:
        assert big.hwm * wire.MAX_MESSAGE_PART_BYTES <= 256 << 20
    with Subscriber("tcp://127.0.0.1:1") as default:
        assert default.hwm == 64 and default._sock.getsockopt(zmq.MAXMSGSIZE) == 4 << 20
    with pytest.raises(ValueError, match="max_message_bytes"):
        Subscriber("tcp://127.0.0.1:1", max_message_bytes=0)


@bad_input("client", "`salstream view` given undecodable previews and crafted headers",
           "skips and counts them (`N bad messages skipped` in its summary), records the good maps, exit 0")
def test_view_records_through_bad_messages(tmp_path):
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "view.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "salstream", "view", f"tcp://127.0.0.1:{port}", "--record",
                             str(out), "--max-maps", "5", "--duration", "60"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ok, jpeg = cv2.imencode(".jpg", np.full((8, 12, 3), 90, np.uint8))
        deadline, i = time.monotonic() + 60, 0
        while proc.poll() is None and time.monotonic() < deadline:
            head = {"stream": "0", "frame_index": i, "pts": i / 30, "capture_time": 0.0}
            raw.send_multipart(wire.encode_frame(head, b"\xff\xd8\xff\xc0 broken"))   # a JPEG that will not decode
            raw.send_multipart(CRAFTED["nesting 50000 levels deep"])
            raw.send_multipart(CRAFTED["number with 400 digits"])
            good = wire.encode_map(wire.MapHeader(stream="0", frame_index=i, pts=i / 30, capture_time=0.0, seq=i),
                                   np.full((4, 6), 0.5, np.float32))
            raw.send_multipart(good)
            i += 1
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        raw.close(0)
    assert proc.returncode == 0, stderr[-2000:]
    assert "5 maps from stream 0" in stdout and "bad messages skipped" in stdout
    assert out.stat().st_size > 0 and "Traceback" not in stderr


@bad_input("client", "a subscriber-only program (pyzmq + numpy)",
           "imports `salstream.streamer.wire.subscriber` without PyTorch, PyAV or OpenCV")
def test_subscriber_imports_without_torch_av_or_cv2():
    code = ("import sys; import salstream.streamer.wire.subscriber as s; "
            "heavy = sorted(m for m in ('torch', 'av', 'cv2', 'onnxruntime') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
