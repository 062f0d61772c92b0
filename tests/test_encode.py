"""Saliency-guided H.264 through PyAV/libx264 (streamer.guidance, `salstream encode`)."""
from __future__ import annotations

import ctypes
import json
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type as SideDataType

from salstream.cli import main as cli_main
from salstream.diffsal.datasets.synthetic import SyntheticClip
from salstream.errors import SalstreamError
from salstream.streamer.align import FrameMapAligner
from salstream.streamer.guidance.encoder import EncodeSettings, GuidedEncoder, RoiTagger, parse_bitrate
from salstream.streamer.guidance.quality import encode_clip, encode_matched, measure_region_quality
from salstream.streamer.guidance.roi import Region, RoiConfig, regions_to_struct
from salstream.streamer.live.units import VideoFrame
from tests.support.rtsp import free_port

W, H = 256, 128


def _textured(i: int) -> np.ndarray:
    """Smooth pattern plus fresh noise every frame: every block costs bits, none hits the QP limits."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W]
    img = 128 + 60 * np.sin(xx / 9.0 + 0.2 * i) * np.cos(yy / 7.0) + rng.integers(-8, 9, size=(H, W))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _decoded_qp(path) -> np.ndarray:
    """Mean decoded macroblock QP over all frames, (rows, cols)."""
    maps = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"export_side_data": "venc_params"}
        for f in c.decode(s):
            maps.append(f.side_data.get(SideDataType.VIDEO_ENC_PARAMS).qp_map().astype(float))
    return np.mean(maps, axis=0)


def test_tagger_attaches_the_regions_as_side_data():
    tagger = RoiTagger(64, 48, capacity=5, time_base=Fraction(1, 90000))
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    regions = [Region(0, 16, 0, 32, -7), Region(16, 48, 32, 64, 5)]
    out = tagger.tag(frame, regions)
    sd = out.side_data.get(SideDataType.REGIONS_OF_INTEREST)
    assert ctypes.string_at(sd.buffer_ptr, sd.buffer_size) == regions_to_struct(regions, 5).tobytes()
    # The next frame gets its own list (no carry-over from the previous one).
    frame.pts = 3000
    out2 = tagger.tag(frame, [Region(0, 48, 0, 64, 2)])
    sd2 = out2.side_data.get(SideDataType.REGIONS_OF_INTEREST)
    got = np.frombuffer(ctypes.string_at(sd2.buffer_ptr, sd2.buffer_size), "<i4").reshape(5, 7)
    np.testing.assert_array_equal(got[0], [28, 0, 48, 0, 64, 2, 51])
    assert got[1:, 1:5].max() == 0


@pytest.mark.parametrize("preset", ["veryfast", "ultrafast"])
def test_regions_change_the_quantiser_where_the_map_says(tmp_path, preset):
    # Left half salient. ultrafast turns adaptive quantisation off, which makes x264 ignore
    # regions unless the encoder turns it back on: both presets must honour the map.
    # Intra-only, so every decoded macroblock QP is its own (skipped blocks would inherit).
    sal = np.zeros((H, W), np.float32)
    sal[:, : W // 2] = 1.0
    settings = EncodeSettings(bitrate=300_000, preset=preset, extra_x264_params="keyint=1")
    frames = [(_textured(i), sal) for i in range(10)]
    encode_clip(tmp_path / "base.mp4", frames, W, H, 30, settings, guided=False)
    encode_clip(tmp_path / "roi.mp4", frames, W, H, 30, settings, guided=True,
                roi=RoiConfig(salient_offset=-8, background_offset=8, time_constant=0))
    base, roi = _decoded_qp(tmp_path / "base.mp4"), _decoded_qp(tmp_path / "roi.mp4")
    half = base.shape[1] // 2
    assert abs(base[:, :half].mean() - base[:, half:].mean()) < 1.0
    # −8 vs +8 QP as configured: qoffset = qp/51 reaches x264 with the right scale and sign.
    assert 16 - 2.5 < roi[:, half:].mean() - roi[:, :half].mean() < 16 + 2.5
    # Same bitrate: the salient half is now better than in the baseline, the rest worse.
    qb = measure_region_quality(tmp_path / "base.mp4", frames)
    qr = measure_region_quality(tmp_path / "roi.mp4", frames)
    assert qr.psnr_inside > qb.psnr_inside + 0.3 and qr.psnr_outside < qb.psnr_outside - 2.0


def test_guided_encoding_raises_quality_in_the_salient_region_at_equal_size(tmp_path):
    """The issue's acceptance check, on the synthetic benchmark clip with its ground-truth density.

    Same ABR+VBV settings for both; the guided encode's bitrate is corrected (secant
    method) until its size is within 2 % of the baseline's.
    """
    clip = SyntheticClip(2_000_001, n_frames=90)
    frames = [clip.frame(i) for i in range(clip.n_frames)]
    maps = [clip.density(i) for i in range(clip.n_frames)]
    pairs = lambda: zip(frames, maps)  # noqa: E731
    settings = EncodeSettings(bitrate=150_000)
    base = encode_clip(tmp_path / "base.mp4", pairs(), clip.width, clip.height, clip.fps, settings, guided=False)
    guided, used = encode_matched(tmp_path / "guided.mp4", pairs, clip.width, clip.height, clip.fps, settings,
                                  base.bytes, tolerance=0.02)
    qb = measure_region_quality(tmp_path / "base.mp4", pairs(), threshold=0.5)
    qg = measure_region_quality(tmp_path / "guided.mp4", pairs(), threshold=0.5)
    assert qb.frames == qg.frames == 90
    assert abs(qg.video_bytes / qb.video_bytes - 1.0) <= 0.05, (qb.video_bytes, qg.video_bytes, used.bitrate)
    assert qg.psnr_inside > qb.psnr_inside + 1.0, (qb.summary(), qg.summary())
    assert qg.weighted_psnr > qb.weighted_psnr + 0.2
    assert qg.qp_inside < qb.qp_inside - 4.0
    # The bits came from the background: it got coarser, the salient region's share grew.
    assert qg.qp_outside > qb.qp_outside - 0.5
    assert qg.bit_share_inside_est > qb.bit_share_inside_est


def test_measurement_sees_a_known_degradation(tmp_path):
    # Ground truth for the meter: blur only the right half of the reference → only "outside" drops.
    clip = SyntheticClip(5, n_frames=10, width=128, height=96)
    frames = [clip.frame(i) for i in range(10)]
    sal = np.zeros((96, 128), np.float32)
    sal[:, :64] = 1.0
    encode_clip(tmp_path / "a.mp4", [(f, sal) for f in frames], 128, 96, 30, EncodeSettings(bitrate=2_000_000),
                guided=False)
    q = measure_region_quality(tmp_path / "a.mp4", [(f, sal) for f in frames], threshold=0.5)
    assert q.area_inside == pytest.approx(0.5)
    noisy = []
    rng = np.random.default_rng(0)
    for f in frames:
        g = f.astype(np.int16)
        g[:, 64:] += rng.integers(-40, 41, size=g[:, 64:].shape, dtype=np.int16)
        noisy.append(np.clip(g, 0, 255).astype(np.uint8))
    q2 = measure_region_quality(tmp_path / "a.mp4", [(f, sal) for f in noisy], threshold=0.5)
    assert q2.psnr_inside == pytest.approx(q.psnr_inside, abs=1e-6)
    assert q2.psnr_outside < q.psnr_outside - 5
    with pytest.raises(SalstreamError, match="more frames than the reference"):
        measure_region_quality(tmp_path / "a.mp4", [(f, sal) for f in frames[:5]])


def _vf(i: int) -> VideoFrame:
    return VideoFrame(image=np.zeros((4, 4, 3), np.uint8), pts=i / 30, capture_time=0.0, index=i)


def test_aligner_waits_for_the_map_of_each_frame():
    al = FrameMapAligner(max_delay=5)
    m = {i: np.full((2, 2), i, np.float32) for i in range(10)}
    assert al.add_frame(_vf(0)) == [] and al.add_frame(_vf(1)) == []
    out = al.add_map(0, m[0])
    assert [(f.index, s[0, 0]) for f, s in out] == [(0, 0)]
    assert al.add_frame(_vf(2)) == []
    out = al.add_map(2, m[2])                        # map 1 was skipped by the scheduler
    assert [(f.index, s[0, 0]) for f, s in out] == [(1, 0), (2, 2)]   # frame 1 gets the nearest earlier map
    assert al.late_frames == 1


def test_aligner_bounds_the_delay_when_maps_stop():
    al = FrameMapAligner(max_delay=3)
    released = []
    for i in range(10):
        released += al.add_frame(_vf(i))
    assert [f.index for f, _ in released] == list(range(7)) and al.pending == 3
    assert all(s is None for _, s in released)       # no map ever: the encoder keeps its last regions
    assert [f.index for f, _ in al.flush()] == [7, 8, 9]


def test_encoder_takes_pipeline_frames_and_keeps_the_last_map(tmp_path):
    sal = np.zeros((H, W), np.float32)
    sal[:, W // 2:] = 1.0
    applied = []
    enc = GuidedEncoder(tmp_path / "p.mp4", W, H, 30, EncodeSettings(bitrate=300_000), guided=True,
                        roi=RoiConfig(time_constant=0), on_qp_map=lambda *a: applied.append(a))
    for i in range(12):
        vf = VideoFrame(image=_textured(i), pts=1.0 + i / 30, capture_time=0.0, index=i)
        enc.write_frame(vf, sal if i == 0 else None)   # one map, then none: regions persist
    st = enc.close()
    assert st.frames == st.guided_frames == 12 and len(applied) == 1
    assert applied[0][1] == pytest.approx(1.0)        # the PTS of the frame the map was applied to
    qp = _decoded_qp(tmp_path / "p.mp4")        # mean over all 12 frames: the regions held after the one map
    assert qp[:, qp.shape[1] // 2 + 1:].mean() < qp[:, : qp.shape[1] // 2 - 1].mean() - 3
    with av.open(str(tmp_path / "p.mp4")) as c:
        times = [f.time for f in c.decode(video=0)]
    assert times[0] == pytest.approx(1.0, abs=1e-3) and times[-1] == pytest.approx(1.0 + 11 / 30, abs=1e-3)


def test_bad_inputs_are_refused_with_the_fix(tmp_path):
    with pytest.raises(SalstreamError, match="even width"):
        GuidedEncoder(tmp_path / "x.mp4", 65, 48, 30)
    with pytest.raises(SalstreamError, match="500k"):
        parse_bitrate("fast")
    assert parse_bitrate("2M") == 2_000_000 and parse_bitrate("500k") == 500_000
    with pytest.raises(SalstreamError, match="at least 10k"):
        EncodeSettings(bitrate=100)
    enc = GuidedEncoder(tmp_path / "y.mp4", 64, 48, 30)
    with pytest.raises(SalstreamError, match=r"\(48, 64, 3\) uint8"):
        enc.write(np.zeros((48, 32, 3), np.uint8), None)
    enc.close()


def test_cli_encodes_a_synthetic_source_with_ground_truth(tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    rc = cli_main(["encode", "--source", "synthetic:3", "--out", str(out), "--bitrate", "150k",
                   "--saliency-guided", "--truth", "--frames", "45", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == summary["guided_frames"] == 45 and summary["frames_without_own_map"] == 0
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 45
    assert cli_main(["encode", "--source", str(out), "--out", str(tmp_path / "again.mp4"), "--bitrate", "150k",
                     "--saliency-guided", "--truth"]) == 2
    assert "no ground truth" in capsys.readouterr().err
    assert cli_main(["encode", "--source", "synthetic:3", "--out", str(out), "--bitrate", "1x"]) == 2


def test_cli_follows_maps_from_a_publisher(tmp_path, capsys):
    """Live route: maps arrive over ZeroMQ (the wire format of `salstream run`) while frames are read."""
    from salstream.streamer.wire.publisher import Publisher

    n = 40
    sal = np.zeros((56, 96), np.float32)
    sal[:, :48] = 1.0                                  # model-sized map: left half salient
    stop = threading.Event()
    with Publisher("tcp://127.0.0.1:*") as pub:
        def publish_maps() -> None:
            # Keep re-sending every frame's map, like a pipeline that runs ahead.
            while not stop.is_set():
                for i in range(n):
                    pub.publish_map({"stream": "0", "frame_index": i, "pts": i / 30, "capture_time": 0.0,
                                     "latency_ms": {}}, sal)
                time.sleep(0.01)

        t = threading.Thread(target=publish_maps, daemon=True)
        t.start()
        try:
            rc = cli_main(["encode", "--source", "synthetic:4", "--out", str(tmp_path / "m.mp4"), "--bitrate", "200k",
                           "--saliency-guided", "--maps", pub.endpoint, "--frames", str(n), "--paced", "yes",
                           "--max-delay", "30", "--json"])
        finally:
            stop.set()
            t.join()
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == n and summary["guided_frames"] >= n - 5
    # The first (intra) frame already used its map: left blocks finer than right ones.
    clip = SyntheticClip(4, n_frames=300)
    q = measure_region_quality(tmp_path / "m.mp4", [(clip.frame(i), sal) for i in range(n)])
    assert q.qp_outside - q.qp_inside > 10


def test_cli_runs_the_pipeline_in_process_and_publishes_roi(tmp_path, capsys):
    """Default route: the live pipeline computes the maps (an untrained lite model is enough to
    prove the wiring) and the regions actually applied go out on roi/0 next to the maps."""
    from salstream.streamer.wire.subscriber import Subscriber

    address = f"tcp://127.0.0.1:{free_port()}"
    got = []
    stop = threading.Event()

    def listen() -> None:
        with Subscriber(address, ["0"], kinds={"roi"}) as sub:
            while not stop.is_set():
                msg = sub.recv(timeout=0.1)
                if msg is not None:
                    got.append(msg)

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        rc = cli_main(["encode", "--source", "synthetic:3", "--out", str(tmp_path / "p.mp4"), "--bitrate", "150k",
                       "--saliency-guided", "--frames", "20", "--steps", "1", "--publish", address, "--json",
                       "--engine", "torch"])
    finally:
        stop.set()
        t.join()
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 20 and summary["maps_received"] >= 1
    assert summary["guided_frames"] == 20       # frames before the first map take the nearest later one
    with av.open(str(tmp_path / "p.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 20
    # Subscriber joins late (slow joiner) but must see some of the ROI messages.
    assert got and got[-1].offsets.shape == (14, 24) and got[-1].regions
