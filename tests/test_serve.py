"""`salstream serve`: stream lists, moved streams' clocks, replicas behind the forwarder, and a real
two-node Ray cluster (skipped when the 'serve' extra is not installed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.serve import TinyEngine, collect_maps

REPO = Path(__file__).resolve().parent.parent


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


# ---------------------------------------------------------------------------------- command line
def test_serve_help_has_run_options_and_cluster_options(capsys):
    from salstream import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--source", "--profile", "--engine", "--steps", "--hop", "--publish", "--allow-remote",
                "--max-batch", "--config", "--replicas", "--ray-address", "--replica-gpus", "streams.yaml"):
        assert opt in text, opt
    assert "--record" not in text and "--mic" not in text     # one machine's consumers stay with `run`


@pytest.mark.parametrize("argv, needle", [
    (["--source", "synthetic", "--replicas", "0"], "--replicas 0"),
    (["--config", "missing.yaml"], "missing.yaml"),
    ([], "--source SPEC"),
    (["--source", "synthetic", "--steps", "0"], "--steps 0"),
])
def test_serve_bad_input_is_one_line_before_any_cluster_starts(argv, needle, capsys):
    from salstream import cli
    code = cli.main(["serve", "--publish", "tcp://127.0.0.1:*", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("salstream serve: error")]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_serve_without_ray_says_which_extra_to_install(monkeypatch, capsys):
    from salstream import cli
    monkeypatch.setitem(sys.modules, "ray", None)            # as if the extra were not installed
    assert cli.main(["serve", "--source", "synthetic", "--publish", "tcp://127.0.0.1:*"]) == 2
    assert "pip install 'salstream[serve]'" in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------- forwarder
def test_the_forwarder_passes_messages_on_byte_for_byte_and_tracks_only_its_streams():
    import zmq
    fwd = Forwarder("tcp://127.0.0.1:*", ["cam"])
    try:
        ctx = zmq.Context.instance()
        rx = ctx.socket(zmq.SUB)
        rx.setsockopt(zmq.SUBSCRIBE, b"")
        rx.connect(fwd.endpoint)
        tx = ctx.socket(zmq.PUB)
        tx.connect(fwd.start())
        time.sleep(0.3)
        header = wire.MapHeader(stream="cam", frame_index=7, pts=0.25, capture_time=1.0, seq=3)
        sent = [wire.encode_map(header, np.full((4, 6), 0.5, np.float32)),
                [b"frame/cam", b'{"x":1}', b"jpeg"],
                wire.encode_map(header.replace(stream="stranger"), np.zeros((2, 2), np.float32))]
        for parts in sent:
            tx.send_multipart(parts)
        got = []
        while len(got) < 3 and rx.poll(3000):
            got.append(rx.recv_multipart())
        assert got == sent
        last, age = fwd.last_map("cam")
        assert (last.frame_index, last.pts, last.seq) == (7, 0.25, 3) and age >= 0
        assert fwd.maps == {"cam": 1} and fwd.last_map("stranger") is None
    finally:
        tx.close(0)
        rx.close(0)
        fwd.close()


def test_serve_bench_machinery_forwarder_rate_and_grid():
    from benchmarks.serve_bench import forwarder_capacity, parse_grid
    r = forwarder_capacity(messages=300, preview_bytes=1000)
    assert r["messages"] == r["sent"] == 600 and r["messages_per_s"] > 0 and r["map_bytes"] == 48 * 80 * 4
    assert parse_grid("1x1, 2x4") == [(1, 1), (2, 4)]
    with pytest.raises(SystemExit, match="REPLICASxSTREAMS"):
        parse_grid("2by4")


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


def test_serve_roi_publishes_roi_messages_for_every_map_through_the_forwarder():
    """serve --roi: each replica runs the ROI feed, so roi/<stream> leaves on the one public
    address beside the maps, at the source's frame size, one per map."""
    from salstream.streamer.guidance.roi import RoiConfig
    fwd = Forwarder("tcp://127.0.0.1:*", ["a"])
    rep = StreamReplica("r0", OPTS, TinyEngine(), fwd.start(), roi=RoiConfig(block_size=16))
    try:
        rep.ready(timeout=60)
        with Subscriber(fwd.endpoint, ["a"], kinds={"map", "roi"}) as sub:
            time.sleep(0.3)                                   # the subscription reaches the forwarder
            rep.add_stream("a", "synthetic:1")
            maps, rois = {}, {}
            deadline = time.monotonic() + 30
            while len(rois) < 8 and time.monotonic() < deadline:
                m = sub.recv(timeout=0.5)
                if isinstance(m, wire.RoiMessage):
                    rois[m.frame_index] = m
                elif isinstance(m, wire.MapMessage):
                    maps[m.frame_index] = m
    finally:
        rep.stop()
        fwd.close()
    assert len(rois) >= 8, f"{len(rois)} roi messages"
    assert set(rois) <= set(maps)                             # every ROI belongs to a published map
    h, w = maps[min(rois)].header.source_shape
    assert all(r.frame_size == (h, w) for r in rois.values())
    assert next(iter(rois.values())).offsets.shape == (-(-h // 16), -(-w // 16))


# ---------------------------------------------------------------------------------- Ray
def _need_ray():
    return pytest.importorskip("ray", reason="the cluster tests need the 'serve' extra (pip install '.[serve]')")


def _with_repo_on_path(env: dict) -> dict:
    # Replicas run in Ray's worker processes: they import salstream and tests.support from this checkout.
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))


@pytest.mark.ray
def test_serve_command_publishes_both_streams_and_their_roi_and_stops_on_ctrl_c(small_checkpoint):
    _need_ray()
    proc = subprocess.Popen(
        [sys.executable, "-m", "salstream", "serve", "--source", "synthetic", "--source", "synthetic:1",
         "--replicas", "2", "--publish", "tcp://127.0.0.1:*", "--checkpoint", str(small_checkpoint),
         "--engine", "torch", "--threads", "1", "--steps", "1", "--no-frames", "--replica-cpus", "0.5", "--roi"],
        cwd=REPO, env=_with_repo_on_path(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    endpoint = threading.Event()

    def read_stderr():                     # the command says where it publishes (any free port)
        for line in proc.stderr:
            err_lines.append(line)
            if "publishing the maps of" in line:
                endpoint.address = line.rsplit(" on ", 1)[1].strip()
                endpoint.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not endpoint.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert endpoint.is_set(), "".join(err_lines)[-3000:]
        with Subscriber(endpoint.address) as sub:
            # (stops early if the command exits, so its error shows at once)
            maps = collect_maps(sub, lambda m: (len(m["0"]) >= 3 and len(m["1"]) >= 3) or proc.poll() is not None,
                                timeout=120)
        with Subscriber(endpoint.address, kinds={"roi"}) as rsub:      # --roi: the replicas' ROI feeds
            roi_streams: set[str] = set()
            roi_deadline = time.monotonic() + 60
            while roi_streams != {"0", "1"} and proc.poll() is None and time.monotonic() < roi_deadline:
                m = rsub.recv(timeout=0.5)
                if m is not None:
                    roi_streams.add(m.stream)
        assert proc.poll() is None, "".join(err_lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(90)                      # (the summary is far smaller than a pipe's buffer)
        out = proc.stdout.read()
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(err_lines)
    assert len(maps["0"]) >= 3 and len(maps["1"]) >= 3, err[-3000:]
    assert roi_streams == {"0", "1"}, err[-3000:]
    for sid in ("0", "1"):
        assert not wire.missing_fields(maps[sid][0][1].header)
        assert np.all(np.diff([m.pts for _, m in maps[sid]]) > 0)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGINT, finishing" in err and "maps in" in out and "replica r0" in out and "replica r1" in out


@pytest.fixture(scope="module")
def two_nodes():
    """A real Ray cluster of two nodes on this machine (Ray's own test utility), one CPU each."""
    ray = _need_ray()
    from ray.cluster_utils import Cluster

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _with_repo_on_path(dict(os.environ))["PYTHONPATH"]
    node = {"num_cpus": 1, "object_store_memory": 100 << 20}
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=dict(node, include_dashboard=False))
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class RunningCluster:
    """A :class:`ClusterController` run in a thread (as the command does in its main thread)."""

    def __init__(self, ctl):
        self.ctl, self.summary, self.error = ctl, None, None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert ctl.ready.wait(120) and self.error is None, self.error

    def _run(self):
        try:
            self.summary = self.ctl.run()
        except BaseException as exc:
            self.error = exc
            self.ctl.ready.set()

    def stop(self):
        self.ctl.stop()
        self._thread.join(120)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.summary


@pytest.mark.ray
def test_four_streams_over_two_nodes_survive_a_killed_replica(two_nodes):
    from salstream.serve.controller import ClusterController

    streams = [StreamSpec(f"cam{i}", f"synthetic:{i}") for i in range(4)]
    ctl = ClusterController(OPTS, TinyEngine(), streams, replicas=2, replica_cpus=0.5, health_interval=0.25)
    run = RunningCluster(ctl)
    try:
        with Subscriber(ctl.endpoint) as sub:
            ids = [s.stream_id for s in streams]
            before = collect_maps(sub, lambda m: all(len(m[i]) >= 8 for i in ids), timeout=90)
            assert all(len(before[i]) >= 8 for i in ids), {i: len(before[i]) for i in ids}
            # Spread: two streams on each replica, and each replica on its own node.
            placement = {i: ctl.replica_of(i) for i in ids}
            assert sorted(placement.values()) == ["r0", "r0", "r1", "r1"]
            assert len({r.info["pid"] for r in ctl.replicas}) == 2
            assert len({r.info["node"] for r in ctl.replicas}) == 2 and None not in {r.info["node"] for r in ctl.replicas}

            victim = ctl.replicas[1]
            moved = [i for i in ids if placement[i] == victim.name]
            kept = [i for i in ids if i not in moved]
            os.kill(victim.info["pid"], signal.SIGKILL)         # the replica's process dies
            killed = time.monotonic()

            def back(m):
                return all(len(_since_gap(m[i])) >= 3 for i in moved) and all(len(m[i]) >= 3 for i in kept)
            after = collect_maps(sub, back, timeout=30)
            # A replacement replica starts in place of the lost one (capacity comes back; nothing moves to it).
            deadline = time.monotonic() + 60
            while not (len(ctl.replicas) == 3 and ctl.replicas[2].ready) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(ctl.replicas) == 3 and ctl.replicas[2].ready
        summary = run.stop()
    finally:
        if run._thread.is_alive():
            run.stop()

    for i in ids:
        every = before[i] + after[i]                         # one stream each, as subscribers see it
        assert np.all(np.diff([m.pts for _, m in every]) > 0), i
        assert np.all(np.diff([m.frame_index for _, m in every]) > 0), i
        assert np.all(np.diff([m.header.seq for _, m in every]) > 0), i
        assert not wire.missing_fields(every[-1][1].header)
        gaps = [k for k, (_, m) in enumerate(every) if m.header.flags.get("gap")]
        if i in kept:                                        # the other streams were not disturbed
            assert not gaps, i
            continue
        assert len(gaps) == 1 and len(every) - gaps[0] >= 3, f"stream {i} did not come back"
        t_first, first = every[gaps[0]]
        assert t_first - killed < 5.0, f"stream {i} resumed {t_first - killed:.1f} s after the kill"
        gap = first.header.gaps[0]
        last = every[gaps[0] - 1][1]                         # the last map before the move…
        assert gap["from_pts"] == last.pts and last.pts < gap["to_pts"] <= first.pts   # …bounds the gap
        assert "r1" in gap["reason"] and ctl.replica_of(i) == "r0"
    assert sorted(m["stream"] for m in summary.moves) == sorted(moved)
    assert all(m["resumed_s"] is not None and m["resumed_s"] < 5.0 for m in summary.moves)
    assert summary.replicas[1]["lost"] and summary.replicas[0]["summary"]["maps"] > 0
    assert not summary.errors


def _since_gap(maps):
    k = next((k for k, (_, m) in enumerate(maps) if m.header.flags.get("gap")), None)
    return [] if k is None else maps[k:]
