"""End to end: a real media file → sources → windows → scheduler → ZeroMQ on loopback → subscriber."""
from __future__ import annotations

import threading

import av
import numpy as np
import pytest
import torch

from salstream.diffsal import audio as afeat
from salstream.errors import SalstreamError
from salstream.streamer.live.assembler import WindowAssembler
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.sources import open_source
from salstream.streamer.live.units import VideoFrame
from salstream.streamer.overlay.recording import OverlayRecording
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import Publisher
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.media import write_test_clip
from tests.support.pipeline import SlowEngine
from tests.support.rtsp import RtspTestServer, system_python

HOP_S = afeat.slice_hop_samples() / afeat.SAMPLE_RATE


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1.5 s of 160×120 H.264 at 20 fps with an AAC track (48 kHz, resampled by the source)."""
    return write_test_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1.5, fps=20, audio_rate=48000)


def run_with_subscriber(opts: PipelineOptions, engine, timeout: float = 120.0, frames: bool = True,
                        sources=None, consumers=()):
    """Run a pipeline in a thread; a subscriber joins before any map is sent and collects everything."""
    opts.publish = "tcp://127.0.0.1:*"
    opts.wait_subscriber = 30.0
    pipe = Pipeline(opts, engine=engine, sources=sources, consumers=consumers)
    out: dict = {}

    def target():
        try:
            out["summary"] = pipe.run()
        except BaseException as exc:   # re-raised in the test thread
            out["error"] = exc
    th = threading.Thread(target=target)
    th.start()
    assert pipe.bound.wait(30), "publisher never bound"
    msgs = []
    with Subscriber(pipe.endpoint, frames=frames) as sub:
        while th.is_alive() or True:
            m = sub.recv(timeout=1.0)
            if m is None:
                if not th.is_alive():
                    break
                continue
            msgs.append(m)
        missed = sub.missed
    th.join(timeout)
    if "error" in out:
        raise out["error"]
    return out["summary"], [m for m in msgs if isinstance(m, wire.MapMessage)], \
        [m for m in msgs if isinstance(m, wire.FrameMessage)], missed


def test_file_to_subscriber_end_to_end(engine, clip, tmp_path):
    record = tmp_path / "overlay.mp4"
    opts = PipelineOptions(sources=[str(clip.path)], paced=False, steps=2)
    recording = OverlayRecording(record)
    summary, maps, frames, missed = run_with_subscriber(opts, engine, consumers=[recording])
    n = clip.n_frames
    # offline (as fast as possible) runs map every window: one per frame with hop 1
    assert missed == 0 and summary.maps == n == len(maps)
    assert [m.frame_index for m in maps] == list(range(n))
    pts = [m.pts for m in maps]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[5] == pytest.approx(5 / clip.fps, abs=1e-3)
    for m in maps:
        h = m.header
        assert not wire.missing_fields(h), wire.missing_fields(h)
        assert m.saliency.shape == tuple(engine.config.map_size) and h["shape"] == list(engine.config.map_size)
        assert 0.0 <= m.saliency.min() and m.saliency.max() <= 1.0
        assert h["stream"] == "0" and h["profile"] == "lite" and h["engine"] == "torch" and h["steps"] == 2
        assert h["dtype"] == "float32" and h["version"] == wire.FORMAT_VERSION
        lat = h["latency_ms"]
        stages = [lat[k] for k in wire.LATENCY_STAGES if k != "denoise"] + lat["denoise"]
        assert all(v >= 0 for v in stages) and len(lat["denoise"]) == 2
        total = (h["publish_time"] - h["capture_time"]) * 1000
        assert sum(stages) == pytest.approx(total, abs=0.5)          # the stages add up to capture→publish
        assert h["publish_time"] >= h["capture_time"]
    assert sum(m.header["mode"] == "av" for m in maps) >= n - 3       # the clip has sound
    # the frame previews pair up with the maps
    assert [f.frame_index for f in frames] == list(range(n))
    assert frames[3].image().shape == (120, 160, 3)
    # the overlay recording is a playable H.264 file with the source audio
    with av.open(str(record)) as c:
        kinds = {s.type: s.codec_context.name for s in c.streams}
        assert kinds == {"video": "h264", "audio": "aac"}
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == n and recording.frames == n
    assert summary.percentile(50) > 0 and summary.maps_per_second > 0
    text = summary.format()
    assert "p50" in text and "p95" in text and "p99" in text and "maps/s" in text


def test_file_without_audio_track_runs_video_only(engine, tmp_path):
    silent = write_test_clip(tmp_path / "silent.mp4", seconds=0.5, fps=20, audio_rate=None)
    opts = PipelineOptions(sources=[str(silent.path)], paced=False, steps=1)
    summary, maps, _, _ = run_with_subscriber(opts, engine, frames=False)
    assert len(maps) == silent.n_frames
    assert {m.header["mode"] for m in maps} == {"video"}
    assert not any(m.header["flags"].get("audio_lagging") for m in maps)   # nothing to wait for


def test_windows_from_a_real_file_align_frames_and_audio(engine, tmp_path):
    # one flash at 1.0 s with a tone burst starting at the same instant
    clip = write_test_clip(tmp_path / "flash.mp4", seconds=2.0, fps=20, audio_rate=48000, flash_frames=(20,),
                           burst_seconds=0.08)
    src = open_source(str(clip.path), paced=False)
    asm = WindowAssembler(engine.config, "0", has_audio=src.has_audio, audio_wait=5.0)
    windows = []
    frames = {}
    for unit in src:
        if isinstance(unit, VideoFrame):
            frames[unit.index] = unit.pts
        windows += asm.push(unit)
    assert src.has_audio and len(windows) == clip.n_frames
    quiet = afeat.SILENCE_LOG_MEL + 1.0
    flash = 20 / clip.fps
    checked = 0
    for w in windows:
        assert w.mode == "av"
        assert w.target_pts == pytest.approx(frames[w.target_index])
        # the newest slice ends at the target frame's PTS, within one audio hop
        assert w.target_pts - HOP_S < w.audio_end_pts <= w.target_pts + 1e-6
        loud = float(w.audio[-1].max()) > quiet                  # the newest slice's loudest mel bin
        if w.audio_end_pts <= flash:
            assert not loud, f"window {w.target_index} hears the tone before it starts"
            checked += 1
        elif flash + 0.01 < w.audio_end_pts < flash + 0.6:
            assert loud, f"window {w.target_index} misses the tone at {flash} s"
            checked += 1
    assert checked > 20


@pytest.mark.skipif(system_python() is None,
                    reason="GStreamer RTSP server bindings missing (run scripts/install-system-deps)")
def test_rtsp_stream_with_audio_to_subscriber(engine, tmp_path):
    served = write_test_clip(tmp_path / "served.mp4", seconds=2.0, fps=20, flash_frames=(20,))
    server = RtspTestServer(file=served.path, fps=20).start()
    try:
        src = open_source(server.url, open_timeout=10, read_timeout=5, reconnect_attempts=0)
        assert src.has_audio
        summary, maps, _, _ = run_with_subscriber(PipelineOptions(steps=1), engine, frames=False, sources=[src])
    finally:
        server.close()
    assert len(maps) >= 10
    pts = [m.pts for m in maps]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert sum(m.header["mode"] == "av" for m in maps) >= len(maps) // 2     # audio came through RTSP too
    for m in maps:
        assert not wire.missing_fields(m.header) and m.saliency.shape == tuple(engine.config.map_size)
        assert m.header["publish_time"] >= m.header["capture_time"]


def test_latest_wins_on_a_paced_file_bounds_latency(engine, clip):
    slow = SlowEngine(engine, delay=0.06)     # ≈0.12 s+ per map against 50 ms between frames
    opts = PipelineOptions(sources=[str(clip.path)], paced=True, steps=2)
    summary, maps, _, _ = run_with_subscriber(opts, slow, frames=False)
    assert summary.dropped_windows > 0 and len(maps) + summary.dropped_windows == clip.n_frames
    assert maps[-1].header["dropped"] > 0
    idx = [m.frame_index for m in maps]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    compute = max(sum(m.latency_ms["denoise"]) + m.latency_ms["video_encoder"] + m.latency_ms["audio_encoder"]
                  for m in maps)
    for m in maps:                            # a map never waits behind a backlog of windows
        # Two stages (encode, denoise) each hold at most one window ahead of this one: never a backlog.
        assert m.latency_ms["wait"] <= 2 * compute + 2 * 1000 / clip.fps + 50


def test_two_streams_share_the_engine_in_batches(engine, clip):
    slow = SlowEngine(engine, delay=0.0)
    opts = PipelineOptions(sources=[str(clip.path), str(clip.path)], paced=True, steps=1, batch_deadline_ms=40)
    summary, maps, _, _ = run_with_subscriber(opts, slow, frames=False)
    assert summary.per_stream.keys() == {"0", "1"}
    assert summary.batch_sizes.get(2, 0) > 0 and max(slow.batches) == 2
    assert any(m.header["batch"] == 2 for m in maps)
    for sid in ("0", "1"):
        idx = [m.frame_index for m in maps if m.stream == sid]
        assert idx == sorted(idx) and idx


def test_address_in_use_fails_before_loading_anything(engine):
    with Publisher("tcp://127.0.0.1:*") as busy:
        def never():
            raise AssertionError("the engine must not be built when the address is busy")
        pipe = Pipeline(PipelineOptions(sources=["synthetic"], publish=busy.endpoint), never)
        with pytest.raises(SalstreamError, match="already in use"):
            pipe.run()


@pytest.mark.parametrize("field, value, needle", [
    ("steps", 0, "--steps"), ("steps", 5000, "--steps"), ("hop", 0, "--hop"), ("max_batch", 0, "--max-batch"),
    ("duration", -1.0, "--duration"), ("mode", "both", "--mode"), ("warm_start", 1000, "--warm-start"),
    ("max_new_frames", -1, "--max-new-frames"),
])
def test_out_of_range_options_are_clear(field, value, needle, engine):
    with pytest.raises(SalstreamError, match=needle):
        Pipeline(PipelineOptions(**{field: value}), engine)


def test_uint8_payload(engine, tmp_path):
    clip = write_test_clip(tmp_path / "c.mp4", seconds=0.3, fps=20, audio_rate=None)
    opts = PipelineOptions(sources=[str(clip.path)], paced=False, steps=1, payload_dtype="uint8")
    _, maps, _, _ = run_with_subscriber(opts, engine, frames=False)
    assert maps and all(m.header["dtype"] == "uint8" and m.raw.dtype == np.uint8 for m in maps)
    torch.testing.assert_close(torch.from_numpy(maps[0].saliency),
                               torch.from_numpy(maps[0].raw.astype(np.float32) / 255))
