"""Sources: media files through PyAV (+ HTTP), pacing, errors, webcam path, synthetic feed."""
from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from salstream.diffsal.datasets.synthetic import SyntheticClip
from salstream.errors import SalstreamError
from salstream.streamer.live.sources import default_demo_source, open_source
from salstream.streamer.live.sources.base import AudioClock, Pacer, Source
from salstream.streamer.live.sources.webcam import WebcamSource
from salstream.streamer.live.units import AudioChunk, VideoFrame
from tests.support.media import burst_onsets, collect, frame_index_from_image, write_test_clip

AUDIO_HOP = 0.010  # one STFT hop of the log-mel features: the alignment tolerance


def audio_of(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


def assert_contiguous(chunks: list[AudioChunk], rate: int = 16000) -> None:
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.sample_index == prev.sample_index + len(prev.samples)
    for c in chunks:
        assert c.sample_rate == rate and c.samples.dtype == np.float32 and c.samples.ndim == 1
        assert c.pts == pytest.approx(c.sample_index / rate, abs=1e-9)
        assert np.all(np.abs(c.samples) <= 1.0)


@pytest.fixture(scope="module")
def av_clip(tmp_path_factory):
    return write_test_clip(tmp_path_factory.mktemp("media") / "av.mp4", seconds=2.0, fps=30,
                           flash_frames=(10, 27, 45))


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory):
    return write_test_clip(tmp_path_factory.mktemp("media") / "video_only.mp4", seconds=1.0, audio_rate=None)


# --------------------------------------------------------------------------- files
def test_file_source_frames_audio_and_alignment(av_clip):
    src = open_source(str(av_clip.path), stream_id="cam7", paced=False)
    assert src.has_audio and src.fps == pytest.approx(30.0) and src.stream_id == "cam7"
    frames, chunks, events, _ = collect(src)

    assert [e.kind for e in events] == ["end"]
    assert len(frames) == av_clip.n_frames
    assert [f.index for f in frames] == list(range(len(frames)))
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0), "video PTS must strictly increase"
    np.testing.assert_allclose(pts, np.arange(len(frames)) / av_clip.fps, atol=1e-3)
    # Decoded in display order although the file has B-frames (index block in the corner).
    assert [frame_index_from_image(f.image) for f in frames] == [i % 24 for i in range(len(frames))]
    w, h = av_clip.size
    assert all(f.image.shape == (h, w, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.stream_id == "cam7" for f in frames + chunks)

    assert_contiguous(chunks)
    audio = audio_of(chunks)
    assert abs(len(audio) / 16000 - av_clip.duration) < 0.05

    # A flash frame and its tone burst must line up within one audio hop.
    flashes = [f.pts for f in frames if f.image.mean() > 150]
    assert flashes == pytest.approx(av_clip.flash_times(), abs=1e-3)
    onsets = [chunks[0].sample_index / 16000 + t for t in burst_onsets(audio, 16000)]
    assert len(onsets) == len(flashes)
    assert np.max(np.abs(np.array(onsets) - np.array(flashes))) < AUDIO_HOP


def test_file_without_audio_is_video_only(silent_clip):
    src = open_source(str(silent_clip.path), paced=False)
    assert src.has_audio is False
    frames, chunks, events, _ = collect(src)
    assert chunks == []
    assert len(frames) == silent_clip.n_frames
    assert events[-1].kind == "end"


def test_pacing_on_follows_media_time_and_off_is_fast(av_clip):
    start = time.monotonic()
    frames, chunks, _, order = collect(open_source(str(av_clip.path), paced=True))
    paced_wall = time.monotonic() - start
    start = time.monotonic()
    collect(open_source(str(av_clip.path), paced=False))
    fast_wall = time.monotonic() - start

    media = frames[-1].pts - frames[0].pts
    assert paced_wall >= 0.9 * media
    assert fast_wall < 0.5 * paced_wall
    # Released at native rate: capture times track PTS (loosely, the machine is shared).
    cap = np.array([f.capture_time for f in frames]) - frames[0].capture_time
    pts = np.array([f.pts for f in frames]) - frames[0].pts
    assert np.median(np.abs(cap - pts)) < 0.05
    # Paced units come out in media-time order, audio interleaved with video like a live feed.
    starts = [u.pts for u in order if isinstance(u, (VideoFrame, AudioChunk))]
    assert all(b >= a - 1e-6 for a, b in zip(starts, starts[1:]))


def test_pacing_is_not_held_back_by_a_soundtrack_that_stops_early(tmp_path):
    clip = write_test_clip(tmp_path / "short_audio.mp4", seconds=2.0, audio_seconds=0.4)
    frames, chunks, _, _ = collect(open_source(str(clip.path), paced=True))
    assert len(frames) == clip.n_frames
    assert 0.3 < (chunks[-1].sample_index + len(chunks[-1].samples)) / 16000 < 0.6
    lag = np.array([f.capture_time - frames[0].capture_time - (f.pts - frames[0].pts) for f in frames])
    assert np.median(np.abs(lag)) < 0.05 and np.percentile(np.abs(lag), 95) < 0.15


def test_close_from_another_thread_ends_iteration_promptly(av_clip):
    src = open_source(str(av_clip.path), paced=True)
    closed_at: list[float] = []

    def closer():
        time.sleep(0.3)
        closed_at.append(time.monotonic())
        src.close()

    threading.Thread(target=closer).start()
    frames, _, events, _ = collect(src)
    assert closed_at and time.monotonic() - closed_at[0] < 0.5
    assert 0 < len(frames) < av_clip.n_frames
    assert events[-1].kind == "end"


def test_http_source_reads_video_and_audio(av_clip):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(av_clip.path.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{av_clip.path.name}"
        src = open_source(url, paced=False, open_timeout=5, read_timeout=5)
        assert src.has_audio and not src.live  # a file over HTTP has a duration: it ends, no reconnect
        frames, chunks, events, _ = collect(src)
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == av_clip.n_frames
    assert_contiguous(chunks)
    assert abs(len(audio_of(chunks)) / 16000 - av_clip.duration) < 0.05
    assert [e.kind for e in events] == ["end"]


def test_http_live_stream_reconnects_when_the_server_hangs_up(tmp_path):
    # MPEG-TS sent progressively without a length: a live HTTP stream. Each connection
    # serves one second and then closes, which the source must treat as a disconnect.
    clip = write_test_clip(tmp_path / "live.ts", seconds=1.0, container_format="mpegts")
    data = clip.path.read_bytes()

    class Live(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            for i in range(0, len(data), 18800):
                self.wfile.write(data[i:i + 18800])
                self.wfile.flush()
                time.sleep(0.02)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Live)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = open_source(f"http://127.0.0.1:{server.server_address[1]}/live.ts", reconnect_attempts=3)
        assert src.live and src.has_audio
        frames, events = [], []
        for unit in src:
            if isinstance(unit, VideoFrame):
                frames.append(unit)
                if len(frames) == 2 * clip.n_frames:
                    src.close()
            elif not isinstance(unit, AudioChunk):
                events.append(unit)
    finally:
        server.shutdown()
        server.server_close()
    assert events[0].kind == "gap" and events[-1].kind == "end"
    assert src.reconnects >= 1
    assert len(frames) == 2 * clip.n_frames
    assert np.all(np.diff([f.pts for f in frames]) > 0), "the media clock continues across reconnects"


def test_bundled_demo_clip_is_real_av_media():
    path = Path(default_demo_source())
    assert path.is_file() and path.stat().st_size < 5_000_000
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert float(c.duration / 1e6) > 10
    src = open_source(str(path), paced=False)
    assert src.has_audio
    frames, chunks = [], []
    for unit in src:
        if isinstance(unit, VideoFrame):
            frames.append(unit)
        elif isinstance(unit, AudioChunk):
            chunks.append(unit)
        if len(frames) >= 45:
            src.close()
    assert frames[0].image.shape == (480, 640, 3)
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    assert_contiguous(chunks)
    # Real room sound, not digital silence.
    assert float(np.sqrt(np.mean(audio_of(chunks) ** 2))) > 1e-3


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec, needle", [
    ("does/not/exist.mp4", "no such file"),
    ("ftp://example.org/a.mp4", "unsupported scheme"),
    ("synthetic:abc", "seed must be an integer"),
    ("webcam:front", "camera index"),
    ("", "empty source"),
])
def test_bad_specs_raise_one_clear_error(spec, needle):
    with pytest.raises(SalstreamError) as info:
        open_source(spec)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg
    if spec:
        assert spec in msg


def test_non_media_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video")
    with pytest.raises(SalstreamError, match="cannot read .*notes.mp4"):
        open_source(str(bogus))


def test_audio_only_file_is_rejected(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for pkt in list(s.encode(frame)) + list(s.encode(None)):
            out.mux(pkt)
    with pytest.raises(SalstreamError, match="no video track"):
        open_source(str(path))


def test_refused_network_stream_is_a_clear_error():
    with pytest.raises(SalstreamError, match="cannot open stream 'rtsp://127.0.0.1:9/none'"):
        open_source("rtsp://127.0.0.1:9/none", open_timeout=2, read_timeout=2)


def test_stream_that_is_not_ready_yet_is_asked_again_until_open_timeout(av_clip, monkeypatch):
    # A server that answers before its encoder runs makes FFmpeg report invalid data; the
    # source keeps asking (here: twice refused, then the real media) instead of failing.
    import salstream.streamer.live.sources.pyav as pyav_mod
    real_open, calls = av.open, []

    def starting_server(url, **kwargs):
        calls.append(url)
        if len(calls) <= 2:
            raise av.error.InvalidDataError(-1094995529, "Invalid data found when processing input", url)
        return real_open(str(av_clip.path))

    monkeypatch.setattr(pyav_mod.av, "open", starting_server)
    src = open_source("rtsp://127.0.0.1:9/warming-up", open_timeout=5, read_timeout=2)
    try:
        assert len(calls) == 3 and src.has_audio
    finally:
        src.close()
    def never_ready(url, **kwargs):
        raise av.error.InvalidDataError(-1094995529, "Invalid data found when processing input", url)

    monkeypatch.setattr(pyav_mod.av, "open", never_ready)
    start = time.monotonic()
    with pytest.raises(SalstreamError, match="waited up to 1 s"):
        open_source("rtsp://127.0.0.1:9/never-ready", open_timeout=1, read_timeout=1)
    assert time.monotonic() - start < 3


# --------------------------------------------------------------------------- webcam
def test_missing_camera_fails_fast_with_a_clear_error():
    start = time.monotonic()
    with pytest.raises(SalstreamError, match="webcam:63"):
        open_source("webcam:63", open_timeout=5)
    assert time.monotonic() - start < 6


def test_webcam_path_reads_frames_then_reports_failure(av_clip):
    # OpenCV's VideoCapture on a file is the same read path as a camera; when the frames
    # stop, the failed reads are retried, then reported as an error event, then end.
    src = WebcamSource(str(av_clip.path), retries=2, retry_delay=0.01)
    assert src.has_audio is False
    frames, chunks, events, _ = collect(src, limit_s=20)
    assert len(frames) == av_clip.n_frames and not chunks
    assert [frame_index_from_image(f.image) for f in frames[:30]] == [i % 24 for i in range(30)]
    flash = frames[av_clip.flash_frames[0]].image
    assert flash.mean() > 150 and flash.shape == (av_clip.size[1], av_clip.size[0], 3)
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    assert [e.kind for e in events] == ["error", "end"]
    assert "stopped delivering frames" in events[0].detail["message"]


# --------------------------------------------------------------------------- synthetic
def test_synthetic_feed_loops_the_training_generator_in_sync():
    n, total = 20, 45
    src = open_source("synthetic:5", paced=False, n_frames=n, max_frames=total, stream_id="s")
    frames, chunks, events, _ = collect(src)
    assert src.has_audio and [e.kind for e in events] == ["end"]
    clip = SyntheticClip(5, n_frames=n)
    assert len(frames) == total
    for f in (frames[0], frames[7], frames[n], frames[n + 7], frames[-1]):
        np.testing.assert_array_equal(f.image, clip.frame(f.index % n))
        assert f.pts == pytest.approx(f.index / 30.0)
    assert_contiguous(chunks)
    audio = audio_of(chunks)
    one_loop = clip.audio_between(0.0, n / 30.0)
    assert len(audio) == round(total * 16000 / 30)
    np.testing.assert_array_equal(audio[: len(one_loop)], one_loop)
    np.testing.assert_array_equal(audio[len(one_loop): 2 * len(one_loop)], one_loop)


def test_synthetic_feed_is_paced_by_default():
    src = open_source("synthetic", max_frames=12)
    start = time.monotonic()
    frames, _, _, _ = collect(src)
    assert len(frames) == 12
    assert time.monotonic() - start >= 0.9 * 11 / 30


# --------------------------------------------------------------------------- clocks
class _Dummy(Source):
    def _units(self):
        return iter(())


def test_audio_clock_fills_holes_trims_overlaps_and_keeps_count():
    clock = AudioClock(_Dummy("x"), 16000)
    a = clock.chunk(np.ones(160, np.float32), 0.5, 0.0)
    assert a.sample_index == 8000 and a.pts == 0.5
    b = clock.chunk(np.ones(160, np.float32), 0.5 + 160 / 16000 + 0.002, 0.0)  # 2 ms jitter: ignored
    assert b.sample_index == 8160 and len(b.samples) == 160
    c = clock.chunk(np.full(100, 0.5, np.float32), (8320 + 800) / 16000, 0.0)  # 50 ms hole
    assert c.sample_index == 8320 and len(c.samples) == 900
    assert np.all(c.samples[:800] == 0) and np.all(c.samples[800:] == 0.5)
    d = clock.chunk(np.arange(400, dtype=np.float32) / 1000, (9220 - 300) / 16000, 0.0)  # overlap
    assert d.sample_index == 9220 and len(d.samples) == 100
    assert d.samples[0] == pytest.approx(0.3)
    clock.restart()
    e = clock.chunk(np.full(10, 2.0, np.float32), 1.0, 0.0)  # after a gap: jumps, clips to [-1, 1]
    assert e.sample_index == 16000 and np.all(e.samples == 1.0)


def test_audio_clock_drops_audio_before_the_media_origin():
    clock = AudioClock(_Dummy("x"), 16000)
    a = clock.chunk(np.arange(320, dtype=np.float32) / 1000, -0.01, 0.0)
    assert a.sample_index == 0 and len(a.samples) == 160 and a.samples[0] == pytest.approx(0.16)


def test_pacer_does_not_burst_after_falling_behind():
    src = _Dummy("x")
    pacer = Pacer(src, max_lag=0.2)
    start = time.monotonic()
    pacer.release_at(0.0)
    time.sleep(0.5)  # the consumer stalled: 0.5 s behind
    pacer.release_at(0.05)  # re-anchors instead of releasing a backlog at full speed
    pacer.release_at(0.15)
    assert time.monotonic() - start >= 0.5 + 0.09
