"""RTSP end to end against a real GStreamer RTSP server on 127.0.0.1 (started per test).

The server runs under the system Python (GStreamer bindings); scripts/install-system-deps
installs it. Faults are real: the server process is killed or frozen by PID.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from salstream.streamer.live.sources import open_source
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame
from tests.support.media import burst_onsets, collect, write_test_clip
from tests.support.rtsp import RtspTestServer, system_python

pytestmark = pytest.mark.skipif(system_python() is None,
                                reason="GStreamer RTSP server bindings missing (run scripts/install-system-deps)")

AUDIO_HOP = 0.010


@pytest.fixture()
def servers():
    started: list[RtspTestServer] = []

    def make(**kwargs) -> RtspTestServer:
        server = RtspTestServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()  # kills by PID if still running


def test_rtsp_video_and_audio_arrive_aligned(servers, tmp_path):
    clip = write_test_clip(tmp_path / "served.mp4", seconds=3.0, flash_frames=(20, 45, 60, 75))
    server = servers(file=clip.path)
    src = open_source(server.url, stream_id="door", open_timeout=10, read_timeout=5, reconnect_attempts=0)
    assert src.live and src.has_audio and src.fps == pytest.approx(30, abs=1)
    # the served file ends -> disconnect -> no reconnect allowed -> error, end
    frames, chunks, events, _ = collect(src, limit_s=20)
    assert [e.kind for e in events] == ["gap", "error", "end"]
    assert len(frames) >= clip.n_frames - 2
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    assert all(f.stream_id == "door" for f in frames)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.sample_index == prev.sample_index + len(prev.samples)
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) / 16000 > clip.duration - 0.2
    flashes = [f.pts for f in frames if f.image.mean() > 150]
    onsets = [chunks[0].sample_index / 16000 + t for t in burst_onsets(audio, 16000)]
    assert len(flashes) == len(clip.flash_frames) == len(onsets)
    assert np.max(np.abs(np.array(onsets) - np.array(flashes))) < AUDIO_HOP
    # Served in real time: the stream took about its media duration to arrive.
    assert frames[-1].capture_time - frames[0].capture_time > 0.6 * clip.duration  # preroll comes in a burst


def test_rtsp_server_killed_gives_gap_then_resumes_when_it_returns(servers):
    server = servers(audio=True)
    src = open_source(server.url, open_timeout=10, read_timeout=3, reconnect_attempts=40)
    before, after, chunks_before, chunks_after, events = [], [], [], [], []
    killed_at: float | None = None
    restarted: list[float] = []
    deadline = time.monotonic() + 40

    def bring_back() -> None:
        time.sleep(0.5)
        server.start()
        restarted.append(server.ready_at)

    for unit in src:
        assert time.monotonic() < deadline
        if isinstance(unit, StreamEvent):
            events.append((unit, time.monotonic()))
            if unit.kind == "gap":
                threading.Thread(target=bring_back, daemon=True).start()
            continue
        gap_seen = any(e.kind == "gap" for e, _ in events)
        if isinstance(unit, VideoFrame):
            (after if gap_seen else before).append(unit)
            if len(before) == 45 and killed_at is None:
                server.kill()  # SIGKILL by PID: the camera vanishes mid-stream
                killed_at = time.monotonic()
            if len(after) >= 45:
                src.close()
        else:
            (chunks_after if gap_seen else chunks_before).append(unit)

    kinds = [e.kind for e, _ in events]
    assert kinds == ["gap", "end"], kinds
    gap, gap_at = events[0]
    assert gap_at - killed_at < 2.0, "a dead server must be noticed quickly"
    assert gap.detail["from_pts"] == pytest.approx(before[-1].pts)
    assert restarted and src.reconnects == 1
    resume = after[0].capture_time - restarted[0]
    print(f"\nRTSP resume: first frame {resume:.2f} s after the server accepted connections again")
    assert resume < 5.0
    # The media clock continues across the outage; frame indices keep counting.
    assert after[0].pts > before[-1].pts + 0.4
    assert after[0].index == before[-1].index + 1
    assert np.all(np.diff([f.pts for f in after]) > 0)
    assert chunks_before and chunks_after, "audio flows before and after the reconnect"
    assert chunks_after[0].sample_index > chunks_before[-1].sample_index + len(chunks_before[-1].samples)
    assert abs(chunks_after[0].pts - after[0].pts) < 0.5
    tone = np.concatenate([c.samples for c in chunks_after])
    assert float(np.sqrt(np.mean(tone ** 2))) > 0.05  # the server's sine, not silence


def test_rtsp_without_audio_track_is_video_only(servers):
    server = servers(audio=False)
    src = open_source(server.url, open_timeout=10)
    assert src.has_audio is False
    frames = []
    for unit in src:
        assert not isinstance(unit, AudioChunk)
        if isinstance(unit, VideoFrame):
            frames.append(unit)
            if len(frames) == 20:
                src.close()
    assert frames[0].image.shape == (240, 320, 3)


def test_frozen_server_times_out_and_recovers(servers):
    server = servers(audio=True)
    pid = server.proc.pid
    src = open_source(server.url, open_timeout=2, read_timeout=1, reconnect_attempts=40)
    frames_after, events = [], []
    frozen_at = None
    deadline = time.monotonic() + 40
    n = 0
    try:
        for unit in src:
            assert time.monotonic() < deadline
            if isinstance(unit, VideoFrame):
                n += 1
                if n == 20:
                    os.kill(pid, signal.SIGSTOP)  # hung, not dead: reads block until the timeout
                    frozen_at = time.monotonic()
                if events:
                    frames_after.append(unit)
                    if len(frames_after) >= 10:
                        src.close()
            elif isinstance(unit, StreamEvent):
                events.append((unit.kind, time.monotonic()))
                if unit.kind == "gap":
                    os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert events[0][0] == "gap"
    assert 0.5 < events[0][1] - frozen_at < 5.0, "the read timeout bounds how long a hung server blocks"
    assert len(frames_after) >= 10
    assert events[-1][0] == "end"


def test_reconnect_gives_up_after_the_bounded_attempts(servers):
    server = servers(audio=False)
    src = open_source(server.url, open_timeout=5, read_timeout=2, reconnect_attempts=3)
    kinds = []
    start = None
    for unit in src:
        if isinstance(unit, VideoFrame) and start is None:
            server.kill()
            start = time.monotonic()
        elif isinstance(unit, StreamEvent):
            kinds.append(unit.kind)
            if unit.kind == "error":
                assert "could not reconnect after 3 attempts" in unit.detail["message"]
    assert kinds == ["gap", "error", "end"]
    assert time.monotonic() - start < 10
