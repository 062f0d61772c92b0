"""Wire format, publisher and subscriber over real ZeroMQ sockets on loopback."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from salstream.errors import SalstreamError
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import Publisher, check_bind_address
from salstream.streamer.wire.subscriber import Subscriber


def _header(stream="0", frame_index=0, **kw):
    h = {"stream": stream, "frame_index": frame_index, "pts": frame_index / 30, "capture_time": time.monotonic(),
         "mode": "av", "latency_ms": {"wait": 1.0}, "dropped": 0, "profile": "lite", "engine": "torch",
         "steps": 2, "batch": 1, "flags": {}}
    h.update(kw)
    return h


def _connected_pair(**pub_kw):
    """A publisher on a free loopback port and a subscriber that has joined (no slow-joiner loss)."""
    pub = Publisher("tcp://127.0.0.1:*", **pub_kw)
    sub = Subscriber(pub.endpoint, frames=True)
    probe = np.zeros((2, 2), np.float32)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pub.publish_map(_header(stream="probe"), probe)
        if sub.recv(timeout=0.05) is not None:
            sub.drain()
            return pub, sub
    raise AssertionError("subscriber never joined")


def test_round_trip_float32_and_uint8():
    rng = np.random.default_rng(0)
    m = rng.random((7, 11), dtype=np.float32)
    msg = wire.decode(wire.encode_map(_header(frame_index=3, dtype="float32"), m))
    assert isinstance(msg, wire.MapMessage)
    assert msg.stream == "0" and msg.frame_index == 3
    np.testing.assert_array_equal(msg.saliency, m)
    assert msg.header["shape"] == [7, 11] and msg.header["version"] == wire.FORMAT_VERSION

    msg8 = wire.decode(wire.encode_map(_header(dtype="uint8"), m))
    assert msg8.raw.dtype == np.uint8
    np.testing.assert_allclose(msg8.saliency, m, atol=0.5 / 255 + 1e-7)


def test_payload_is_little_endian_float32_row_major():
    m = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    parts = wire.encode_map(_header(), m)
    assert parts[0] == b"0"
    assert json.loads(parts[1])["kind"] == "map"
    np.testing.assert_array_equal(np.frombuffer(parts[2], "<f4"), m.ravel())


@pytest.mark.parametrize("mutate, needle", [
    (lambda p: p[:2], "3 message parts"),
    (lambda p: [p[0], p[1], p[2][:-4]], "payload"),
    (lambda p: [p[0], json.dumps(dict(json.loads(p[1]), version=99)).encode(), p[2]], "version"),
    (lambda p: [p[0], json.dumps(dict(json.loads(p[1]), shape=[10 ** 6, 10 ** 6])).encode(), p[2]], "shape"),
    (lambda p: [p[0], json.dumps(dict(json.loads(p[1]), shape=[2])).encode(), p[2]], "shape"),
    (lambda p: [p[0], json.dumps(dict(json.loads(p[1]), dtype="float64")).encode(), p[2]], "dtype"),
    (lambda p: [p[0], b"{not json", p[2]], "header"),
    (lambda p: [p[0], b"x" * (wire.MAX_HEADER_BYTES + 1), p[2]], "limit"),
    (lambda p: [b"other", p[1], p[2]], "topic"),
])
def test_decode_rejects_malformed(mutate, needle):
    parts = wire.encode_map(_header(), np.zeros((4, 5), np.float32))
    with pytest.raises(wire.WireError, match=needle):
        wire.decode(mutate(parts))


def test_stream_id_rules():
    assert wire.check_stream_id("cam0") == "cam0"
    for bad in ("", "frame/x", "a/b", "x" * 300):
        with pytest.raises(SalstreamError):
            wire.check_stream_id(bad)


def test_wait_for_subscriber():
    with Publisher("tcp://127.0.0.1:*") as pub:
        assert not pub.wait_for_subscriber(0.1)          # nobody yet
        with Subscriber(pub.endpoint) as sub:
            assert pub.wait_for_subscriber(5.0)
            pub.publish_map(_header(), np.ones((2, 2), np.float32))
            first = sub.recv_map(timeout=2.0)             # no slow-joiner loss once subscribed
        assert first is not None and first.header["seq"] == 0


def test_publish_subscribe_maps_and_frames_over_loopback():
    pub, sub = _connected_pair()
    with pub, sub:
        yy, xx = np.mgrid[0:120, 0:160]
        img = np.stack([xx * 255 // 159, yy * 255 // 119, (xx + yy) % 256], -1).astype(np.uint8)
        for i in range(3):
            pub.send_frame("0", i, i / 30, time.monotonic(), img)
            pub.publish_map(_header(frame_index=i), np.full((4, 6), i / 4, np.float32))
        got = []
        while len(got) < 6:
            msg = sub.recv(timeout=2.0)
            assert msg is not None, f"only {len(got)} messages arrived"
            got.append(msg)
    maps = [m for m in got if isinstance(m, wire.MapMessage)]
    frames = [m for m in got if isinstance(m, wire.FrameMessage)]
    assert [m.frame_index for m in maps] == [0, 1, 2]
    assert [m.header["seq"] for m in maps] == [0, 1, 2]
    assert not wire.missing_fields(maps[0].header)
    assert maps[2].header["publish_time"] >= maps[2].header["capture_time"]
    assert maps[0].latency_ms["publish"] >= 0 and maps[0].latency_ms["wait"] == 1.0
    assert [f.frame_index for f in frames] == [0, 1, 2]
    dec = frames[0].image()
    assert dec.shape == img.shape
    assert np.abs(dec.astype(int) - img.astype(int)).mean() < 6  # JPEG: lossy, but the same picture


def test_send_parts_shares_the_socket_for_other_topics():
    pub, sub = _connected_pair()
    with pub, sub:
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.SUB)
        raw.setsockopt(zmq.SUBSCRIBE, b"roi/")
        raw.connect(pub.endpoint)
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            assert pub.send_parts([b"roi/0", b"{}", b"x"])
            if raw.poll(50):
                got = raw.recv_multipart()
        raw.close(0)
        pub.publish_map(_header(frame_index=7), np.zeros((2, 2), np.float32))
        msgs = []
        while (m := sub.recv(timeout=0.5)) is not None:
            msgs.append(m)
    assert got == [b"roi/0", b"{}", b"x"]
    # the map client skips side channels it does not know, without calling them malformed
    assert [m.frame_index for m in msgs] == [7] and sub.bad_messages == 0


def test_subscriber_filters_streams_exactly():
    pub = Publisher("tcp://127.0.0.1:*")
    with pub, Subscriber(pub.endpoint, streams=["1"]) as sub:
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            pub.publish_map(_header(stream="10"), np.zeros((2, 2), np.float32))  # same prefix, other stream
            pub.publish_map(_header(stream="1"), np.ones((2, 2), np.float32))
            got = sub.recv_map(timeout=0.05)
        assert got is not None and got.stream == "1"
        assert all(m.stream == "1" for m in sub.drain())


def test_slow_subscriber_never_blocks_publisher():
    pub, sub = _connected_pair(hwm=4)
    sub._sock.setsockopt(zmq.RCVHWM, 4)
    m = np.random.default_rng(2).random((160, 256), dtype=np.float32)   # 160 KiB per map
    n = 400
    with pub, sub:
        worst = 0.0
        t0 = time.monotonic()
        for i in range(n):     # the subscriber reads nothing meanwhile
            t = time.monotonic()
            pub.publish_map(_header(frame_index=i), m)
            worst = max(worst, time.monotonic() - t)
        total = time.monotonic() - t0
        received = []
        while (msg := sub.recv_map(timeout=0.5)) is not None:   # what was queued for the subscriber
            received.append(msg)
        # ZeroMQ drops the newest messages for a full subscriber; the next one that gets
        # through reveals the gap.
        pub.publish_map(_header(frame_index=n), m)
        last = sub.recv_map(timeout=2.0)
        assert last is not None and last.header["seq"] == n
    assert worst < 0.5 and total < 10, (worst, total)
    assert len(received) < n                    # ZeroMQ dropped for the slow subscriber…
    assert sub.missed + len(received) == n
    assert sub.missed > 0                       # …and the subscriber can tell from the seq gaps
    seqs = [r.header["seq"] for r in received]
    assert seqs == sorted(seqs)


def test_address_in_use_is_one_clear_error():
    pub = Publisher("tcp://127.0.0.1:*")
    with pub:
        with pytest.raises(SalstreamError, match="already in use") as exc:
            Publisher(pub.endpoint)
        assert pub.endpoint in str(exc.value) and "--publish" in str(exc.value)


def test_non_loopback_needs_allow_remote():
    with pytest.raises(SalstreamError, match="--allow-remote"):
        check_bind_address("tcp://0.0.0.0:5556")
    assert check_bind_address("tcp://0.0.0.0:5556", allow_remote=True)
    assert check_bind_address("tcp://127.0.0.1:5556")
    assert check_bind_address("tcp://localhost:5556")
    for bad in ("udp://127.0.0.1:1", "tcp://127.0.0.1", "tcp://127.0.0.1:port"):
        with pytest.raises(SalstreamError, match="--publish"):
            check_bind_address(bad)


def test_subscriber_skips_and_counts_bad_messages():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        good = wire.encode_map(_header(), np.zeros((3, 3), np.float32))
        deadline = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < deadline:
            raw.send_multipart([good[0], good[1], good[2][:5]])   # truncated payload
            raw.send_multipart(good)
            msg = sub.recv_map(timeout=0.05)
        assert msg is not None and msg.saliency.shape == (3, 3)
        assert sub.bad_messages >= 1 and "payload" in sub.last_error
    raw.close(0)
