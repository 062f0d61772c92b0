"""The encoder feed of a live run: `salstream run --roi` publishes roi/<stream>, `salstream encode --connect`
follows it (streamer.guidance.roi.RoiFeed, streamer.guidance.session.follow_publisher)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type as SideDataType

from salstream.cli import main as cli_main
from salstream.streamer.guidance.encoder import EncodeSettings, GuidedEncoder
from salstream.streamer.guidance.roi import QpMap, QpMapper, RoiConfig, RoiFeed
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import Publisher
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.rtsp import free_port

REPO = Path(__file__).resolve().parent.parent


def _halves(w: int, h: int, left: float, right: float, block: int = 16) -> QpMap:
    rows, cols = -(-h // block), -(-w // block)
    off = np.full((rows, cols), right, np.float32)
    off[:, : cols // 2] = left
    return QpMap(off, block, w, h)


def test_qp_map_fits_a_cropped_or_scaled_frame():
    qp = _halves(201, 99, -8, 6)                      # 13×7 blocks, odd source size
    cropped = qp.fit(200, 98)                          # the encoder's even crop: same blocks
    np.testing.assert_array_equal(cropped.offsets, qp.offsets)
    assert (cropped.width, cropped.height) == (200, 98)
    small = qp.fit(100, 50)                            # a preview at half size: 7×4 blocks, resampled
    assert small.offsets.shape == (4, 7)
    assert small.offsets[:, :2].max() == pytest.approx(-8) and small.offsets[:, 4:].min() == pytest.approx(6)
    assert qp.fit(201, 99) is qp


def test_encoder_applies_received_offsets_without_smoothing_them_again(tmp_path):
    w, h = 128, 64
    # A slow mapper (5 s) would have moved the offsets only a little: received ones bypass it.
    enc = GuidedEncoder(tmp_path / "q.mp4", w, h, 30, EncodeSettings(bitrate=300_000, extra_x264_params="keyint=1"),
                        roi=RoiConfig(time_constant=5.0))
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(4):
        noise = np.random.default_rng(i).integers(-8, 9, size=(h, w))
        img = np.clip(128 + 60 * np.sin(xx / 9.0 + 0.2 * i) * np.cos(yy / 7.0) + noise, 0, 255).astype(np.uint8)
        enc.write(np.repeat(img[..., None], 3, axis=2), pts=i / 30, qp_map=_halves(w, h, -9, 9) if i == 0 else None)
    assert enc.close().guided_frames == 4
    with av.open(str(tmp_path / "q.mp4")) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"export_side_data": "venc_params"}
        qps = [f.side_data.get(SideDataType.VIDEO_ENC_PARAMS).qp_map().astype(float) for f in c.decode(s)]
    for q in qps:                                      # every frame: right half 18 QP coarser, as sent
        assert 18 - 3 < q[:, 4:].mean() - q[:, :4].mean() < 18 + 3


def test_roi_feed_publishes_every_map_at_the_source_size():
    cfg = RoiConfig(time_constant=1.0, max_step=0)
    feed = RoiFeed(cfg)
    sal = np.zeros((16, 24), np.float32)
    sal[:, :12] = 1.0
    with Publisher("tcp://127.0.0.1:*") as pub, Subscriber(pub.endpoint, ["0"], kinds={"roi"}) as sub:
        feed.start([], pub)

        def header(i: int, **kw) -> wire.MapHeader:
            return wire.MapHeader(stream="0", frame_index=i, pts=i / 30, capture_time=5.0, source_shape=[99, 201],
                                  **kw)

        got = None
        i = 0
        deadline = time.monotonic() + 5.0
        while got is None and time.monotonic() < deadline:     # slow joiner: publish until connected
            feed.on_map(header(i), sal)
            got = sub.recv(timeout=0.05)
            i += 1
        assert isinstance(got, wire.RoiMessage), "no roi/0 message arrived over loopback"
        assert got.frame_size == (99, 201) and got.offsets.shape == (7, 13) and got.frame_index < i
        target = QpMapper(201, 99, cfg).target(sal)
        np.testing.assert_allclose(got.offsets, target, atol=1e-5)   # a constant map: smoothing is at rest
        # The map flips; smoothing (1 s) moves it only part of the way ... unless the stream had a gap.
        flipped = sal[:, ::-1].copy()
        sub.drain()
        feed.on_map(header(i), flipped)
        feed.on_map(header(i + 1, flags={"gap": True}), flipped)
        msgs = [sub.recv(timeout=2.0), sub.recv(timeout=2.0)]
    after_flip, after_gap = msgs
    assert np.abs(after_flip.offsets - target).max() < 5.0
    np.testing.assert_allclose(after_gap.offsets, QpMapper(201, 99, cfg).target(flipped), atol=1e-5)
    assert feed.summary() and "roi" in feed.summary()[0]


def test_connect_without_a_run_fails_clearly(tmp_path, capsys):
    rc = cli_main(["encode", "--connect", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.mp4"),
                   "--bitrate", "100k", "--wait", "0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no frame previews of stream 0" in err and "--roi" in err
    assert not (tmp_path / "x.mp4").exists()


def test_run_help_lists_roi(capsys):
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--roi " in text and "--roi-salient-qp" in text


def test_encode_connect_follows_a_live_run_with_roi(small_checkpoint, tmp_path):
    """Acceptance: roi/0 arrives from a real `salstream run --roi`, and `salstream encode --connect` writes a
    playable, guided file while that run is still live."""
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "salstream", "run", "--source", "synthetic:3", "--checkpoint", str(small_checkpoint),
         "--publish", address, "--steps", "1", "--threads", "1", "--engine", "torch", "--roi", "--no-record",
         "--duration", "180"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rois: dict[int, wire.RoiMessage] = {}
    stop = threading.Event()

    def listen() -> None:
        with Subscriber(address, ["0"], kinds={"roi"}) as sub:
            while not stop.is_set():
                msg = sub.recv(timeout=0.1)
                if msg is not None:
                    rois[msg.frame_index] = msg

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    out = tmp_path / "follow.mp4"
    try:
        deadline = time.monotonic() + 120
        while not rois and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert rois, proc.stderr.read() if proc.poll() is not None else "no roi/0 message within 120 s"
        first = next(iter(rois.values()))
        # The synthetic source is 384×224: 16-px blocks, 14 rows × 24 columns, at the source size.
        assert first.frame_size == (224, 384) and first.offsets.shape == (14, 24) and first.regions
        assert first.offsets.min() < -5                 # the most salient blocks get about the default −10
        import io
        from contextlib import redirect_stdout
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = cli_main(["encode", "--connect", address, "--out", str(out), "--bitrate", "150k", "--frames", "15",
                           "--json", "--wait", "60"])
        assert rc == 0
        assert proc.poll() is None, "the run ended before the encoder finished: not a live follow"
        summary = json.loads(buf.getvalue())
        # The other guide: the run's maps, turned into offsets by this encoder.
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = cli_main(["encode", "--connect", address, "--out", str(tmp_path / "maps.mkv"), "--bitrate", "150k",
                           "--frames", "5", "--guide", "maps", "--json"])
        assert rc == 0 and proc.poll() is None
        by_maps = json.loads(buf.getvalue())
        assert by_maps["frames"] == by_maps["guided_frames"] == 5 and by_maps["guidance_received"] >= 1
    finally:
        stop.set()
        listener.join(5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert summary["frames"] == 15 and summary["guidance_received"] >= 1 and summary["ended"] == "frames"
    assert summary["guided_frames"] == 15
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (384, 224)
        s.codec_context.options = {"export_side_data": "venc_params"}
        frames = list(c.decode(s))
    assert len(frames) == 15
    # x264 moved each block's quantiser by the offset the run published for that frame: the first (intra)
    # frame against the same 15 pictures encoded with the same settings and no offsets, block by block.
    index = int(round(frames[0].time * 30))
    assert index in rois, (index, sorted(rois)[:5])
    sent = rois[index].offsets
    with GuidedEncoder(tmp_path / "plain.mp4", 384, 224, 30, EncodeSettings(bitrate=150_000), guided=False) as enc:
        for f in frames:
            enc.write(f.to_ndarray(format="rgb24"), pts=f.time)
    with av.open(str(tmp_path / "plain.mp4")) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"export_side_data": "venc_params"}
        plain = next(iter(c.decode(s))).side_data.get(SideDataType.VIDEO_ENC_PARAMS).qp_map().astype(float)
    moved = frames[0].side_data.get(SideDataType.VIDEO_ENC_PARAMS).qp_map().astype(float) - plain
    # The untrained test model's maps are flat (offsets span ~4 QP) and x264 rounds to whole QPs, so compare
    # quarters: the blocks sent the finest offsets moved down against those sent the coarsest, about as far.
    lo, hi = sent <= np.percentile(sent, 25), sent >= np.percentile(sent, 75)
    want = sent[hi].mean() - sent[lo].mean()
    assert want > 1.0
    assert moved[hi].mean() - moved[lo].mean() > 0.5 * want, (moved[hi].mean(), moved[lo].mean(), want)
