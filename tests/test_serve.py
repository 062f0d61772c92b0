"""`salstream serve`: stream lists, moved streams' clocks, replicas behind the forwarder, and a real
two-node Ray cluster (skipped when the 'serve' extra is not installed)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from salstream.errors import SalstreamError
from salstream.serve.config import StreamSpec, stream_specs
from salstream.serve.forwarder import Forwarder
from salstream.serve.replica import StreamReplica
from salstream.serve.resume import ContinuedSource, Resume
from salstream.streamer.live.pipeline import PipelineOptions
from salstream.streamer.live.sources import open_source
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.serve import TinyEngine, collect_maps


# ---------------------------------------------------------------------------------- stream lists
def test_streams_from_sources_and_a_config_file(tmp_path):
    cfg = tmp_path / "streams.yaml"
    cfg.write_text("streams:\n  - synthetic:3\n  - {id: lobby, source: 'rtsp://cam:8554/s'}\n")
    assert stream_specs(["synthetic", "synthetic:1"], str(cfg)) == [
        StreamSpec("0", "synthetic"), StreamSpec("1", "synthetic:1"), StreamSpec("2", "synthetic:3"),
        StreamSpec("lobby", "rtsp://cam:8554/s")]
    plain = tmp_path / "list.yaml"
    plain.write_text("- synthetic:7\n")
    assert stream_specs(None, str(plain)) == [StreamSpec("0", "synthetic:7")]


@pytest.mark.parametrize("text, needle", [
    ("streams: []\n", "non-empty list"),
    ("- {id: a, source: synthetic}\n- {id: a, source: synthetic:1}\n", "used twice"),
    ("- {id: 'x/y', source: synthetic}\n", "without '/'"),
    ("- {src: synthetic}\n", "expected {source: SPEC"),
    ("cameras: [synthetic]\n", "unknown key"),
    ("- !!python/object/apply:os.system ['true']\n", "not valid YAML"),   # safe_load never builds objects
    ("- [unclosed\n", "not valid YAML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, needle):
    cfg = tmp_path / "streams.yaml"
    cfg.write_text(text)
    with pytest.raises(SalstreamError, match="streams.yaml") as exc:
        stream_specs(None, str(cfg))
    assert needle in str(exc.value)


def test_no_streams_and_missing_config_are_clear():
    with pytest.raises(SalstreamError, match="--source SPEC"):
        stream_specs([], None)
    with pytest.raises(SalstreamError, match="no such file"):
        stream_specs(None, "missing.yaml")


# ---------------------------------------------------------------------------------- moved clocks
def test_a_continued_source_reports_the_gap_and_continues_every_clock():
    inner = open_source("synthetic:2", stream_id="s", paced=False, n_frames=30, max_frames=6, width=96, height=64)
    resume = Resume(after_pts=10.0, after_index=300, next_seq=42, lost_for=1.5)
    units = list(ContinuedSource(inner, resume))
    assert isinstance(units[0], StreamEvent) and units[0].kind == "gap"
    assert units[0].detail["from_pts"] == 10.0 and "replica" in units[0].detail["reason"]
    assert units[-1].kind == "end" and sum(isinstance(u, StreamEvent) and u.kind == "end" for u in units) == 1
    frames = [u for u in units if isinstance(u, VideoFrame)]
    audio = [u for u in units if isinstance(u, AudioChunk)]
    assert len(frames) == 6 and audio
    # Clocks continue after the last published map by about the outage.
    assert 11.5 <= frames[0].pts < 12.0 and np.all(np.diff([f.pts for f in frames]) > 0)
    assert frames[0].index >= 300 + 45 and [f.index for f in frames] == list(range(frames[0].index,
                                                                                   frames[0].index + 6))
    # Audio keeps the source contract: pts == sample_index / rate exactly, contiguous, beside its frames.
    assert all(a.pts == a.sample_index / a.sample_rate for a in audio)
    assert all(b.sample_index == a.sample_index + a.samples.size for a, b in zip(audio, audio[1:]))
    assert abs(audio[0].pts - frames[0].pts) < 1e-3


def test_closing_a_continued_source_closes_the_reopened_one():
    inner = open_source("synthetic", stream_id="s", paced=True, width=96, height=64)
    src = ContinuedSource(inner, Resume(1.0, 30, 31, 0.1))
    it = iter(src)
    next(it)
    src.close()
    assert inner.closed
    assert list(it)[-1].kind == "end"


# ---------------------------------------------------------------------------------- one replica
OPTS = PipelineOptions(send_frames=False, audio_wait_ms=20.0, batch_deadline_ms=2.0)


@pytest.fixture()
def forwarded_replica():
    fwd = Forwarder("tcp://127.0.0.1:*", ["a", "b"])
    addr = fwd.start()
    rep = StreamReplica("r0", OPTS, TinyEngine(), addr)
    try:
        rep.ready(timeout=60)
        yield fwd, rep
    finally:
        rep.stop()
        fwd.close()


def test_a_replica_behind_the_forwarder_serves_streams_and_resumes_a_moved_one(forwarded_replica):
    fwd, rep = forwarded_replica
    with Subscriber(fwd.endpoint) as sub:
        time.sleep(0.3)                                   # the subscription reaches the forwarder
        rep.add_stream("a", "synthetic:1")
        rep.add_stream("b", "synthetic:2")
        maps = collect_maps(sub, lambda m: len(m["a"]) >= 8 and len(m["b"]) >= 8, timeout=30)
        for sid in "ab":
            pts = [m.pts for _, m in maps[sid]]
            assert len(pts) >= 8 and np.all(np.diff(pts) > 0), sid
            assert [m.header.seq for _, m in maps[sid]] == list(range(maps[sid][0][1].header.seq,
                                                                      maps[sid][0][1].header.seq + len(pts)))
        st = rep.status()
        assert st["running"] == ["a", "b"] and st["maps"]["a"] >= 8 and st["error"] is None

        # Stream a stops here and comes back as if moved from a lost replica.
        assert rep.remove_stream("a")
        deadline = time.monotonic() + 10
        while "a" in rep.status()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)                                   # the outage
        sub.drain()
        header, age = fwd.last_map("a")
        assert age >= 0.5                                # (the last maps in flight when it stopped)
        rep.add_stream("a", "synthetic:1", Resume(header.pts, header.frame_index, header.seq + 1, age))
        after = collect_maps(sub, lambda m: len(m["a"]) >= 3, timeout=20)["a"]
        first = after[0][1]
        assert first.header.flags.get("gap") is True
        gap = first.header.gaps[0]
        assert gap["from_pts"] == header.pts and gap["to_pts"] <= first.pts and "replica" in gap["reason"]
        assert first.pts > header.pts + 0.5 and first.frame_index > header.frame_index
        assert first.header.seq == header.seq + 1
        assert not any(m.header.flags.get("gap") for _, m in after[1:])
        assert np.all(np.diff([m.pts for _, m in after]) > 0)


def test_a_source_that_cannot_open_fails_its_call_only(forwarded_replica):
    fwd, rep = forwarded_replica
    with pytest.raises(SalstreamError, match="no such file"):
        rep.add_stream("a", "missing.mp4")
    assert rep.status()["error"] is None
    rep.add_stream("b", "synthetic:2")
    assert rep.status()["running"] == ["b"]
