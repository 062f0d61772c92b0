"""Live faults at the pipeline level, with real parts: an RTSP server killed and restarted by
PID, files whose soundtrack stops and returns, late and dead ZeroMQ subscribers, a camera
read path that fails, signals during a multi-stream run, and the loopback-only default."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest
import zmq

from salstream import cli
from salstream.cli.run import add_parser
from salstream.errors import SalstreamError
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.sources import open_source
from salstream.streamer.live.sources.synthetic import SyntheticSource
from salstream.streamer.live.sources.webcam import WebcamSource
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import DEFAULT_ADDRESS, Publisher, is_loopback
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.media import write_test_clip
from tests.support.process import open_descriptors, settled
from tests.support.rtsp import RtspTestServer, free_port, system_python

REPO = Path(__file__).resolve().parent.parent
needs_rtsp = pytest.mark.skipif(system_python() is None,
                                reason="GStreamer RTSP server bindings missing (run scripts/install-system-deps)")


class LiveRun:
    """A pipeline running in a background thread; ``finish()`` stops it and returns its summary."""

    def __init__(self, opts: PipelineOptions, engine, sources=None):
        opts.publish = "tcp://127.0.0.1:*"
        self.pipe = Pipeline(opts, engine=engine, sources=sources)
        self.out: dict = {}
        self.thread = threading.Thread(target=self._target, name="test-pipeline")
        self.thread.start()
        assert self.pipe.bound.wait(30), "publisher never bound"

    def _target(self) -> None:
        try:
            self.out["summary"] = self.pipe.run()
        except BaseException as exc:   # re-raised in the test thread
            self.out["error"] = exc

    def finish(self, timeout: float = 60.0, stop: bool = True):
        if stop:
            self.pipe.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not stop"
        if "error" in self.out:
            raise self.out["error"]
        return self.out["summary"]


def collect_until(sub: Subscriber, done: Callable[[list], bool], limit: float) -> list[wire.MapMessage]:
    maps: list[wire.MapMessage] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not done(maps):
        m = sub.recv_map(timeout=0.5)
        if m is not None:
            maps.append(m)
    return maps


# --------------------------------------------------------------------------- RTSP outage
@needs_rtsp
def test_rtsp_outage_is_marked_on_the_next_map_and_maps_resume_within_2s(engine):
    server = RtspTestServer(audio=True, width=160, height=120, fps=30).start()
    try:
        src = open_source(server.url, open_timeout=10, read_timeout=3, reconnect_attempts=80)
        run = LiveRun(PipelineOptions(steps=1, send_frames=False, wait_subscriber=30), engine, sources=[src])
        with Subscriber(run.pipe.endpoint) as sub:
            before = collect_until(sub, lambda ms: len(ms) >= 8, 60)
            assert len(before) >= 8, "no maps from the RTSP stream"
            server.kill()                    # SIGKILL by PID: the camera loses power
            killed_at = time.monotonic()
            # Whatever was in flight still arrives; then nothing until the server is back.
            time.sleep(1.2)
            while (m := sub.recv_map(timeout=0.05)) is not None:
                before.append(m)
            server.start()
            back_at = server.ready_at
            after = collect_until(sub, lambda ms: sum(1 for m in ms if m.header["flags"].get("gap")) == 1
                                  and len(ms) >= 10, 30)
        summary = run.finish()
    finally:
        server.close()
    marked = [m for m in after if m.header["flags"].get("gap")]
    assert len(marked) == 1, "exactly one map marks the outage"
    first = marked[0]
    assert all(not m.header["flags"].get("gap") for m in before)
    assert all(m.header["publish_time"] < back_at for m in after[:after.index(first)]), \
        "maps before the marked one are leftovers from before the outage"
    (gap,) = first.header["gaps"]
    last_before = max(m.pts for m in before)
    # The missing PTS range: from the last frame read before the outage to the first after it.
    assert gap["from_pts"] >= last_before and gap["to_pts"] > gap["from_pts"] + 1.0
    assert gap["to_pts"] - gap["from_pts"] == pytest.approx(back_at - killed_at, abs=1.5)
    assert first.pts >= gap["to_pts"] and gap["reason"]
    resume = first.header["publish_time"] - back_at
    print(f"\nRTSP outage: first map {resume:.2f} s after the server accepted connections again "
          f"(outage {gap['to_pts'] - gap['from_pts']:.2f} s of media time)")
    assert resume < 2.0
    pts = [m.pts for m in before + after]
    assert all(b > a for a, b in zip(pts, pts[1:])), "the media clock runs on across the outage"
    assert summary.gaps == 1 and not summary.source_errors
    assert "source outages: 1" in summary.format()


# --------------------------------------------------------------------------- audio stops, returns
def write_clip_with_audio_hole(path: Path, seconds: float, hole: tuple[float, float], fps: int = 10,
                               size: tuple[int, int] = (96, 64), rate: int = 16000) -> None:
    """H.264 + AAC in Matroska whose soundtrack has no packets at all inside ``hole``."""
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
    vs.options = {"preset": "ultrafast", "g": str(fps)}
    aus = out.add_stream("aac", rate=rate, layout="mono")
    fmt = aus.codec_context.format.name
    n_video = int(seconds * fps)
    block = 1024
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.4 * np.sin(2 * np.pi * 700 * t)).astype(np.float32)
    audio_blocks = [s for s in range(0, len(tone) - block, block)
                    if not (hole[0] * rate <= s + block and s < hole[1] * rate)]
    events = sorted([(i / fps, "v", i) for i in range(n_video)] + [(s / rate, "a", s) for s in audio_blocks])
    rng = np.random.default_rng(0)
    for _, kind, k in events:
        if kind == "v":
            img = np.full((size[1], size[0], 3), 60 + (k * 7) % 150, np.uint8)
            img[rng.integers(0, size[1] - 8):, :8] = 250
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            packets = vs.encode(frame)
        else:
            frame = av.AudioFrame.from_ndarray(tone[None, k:k + block].copy(), format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, k, Fraction(1, rate)
            packets = aus.encode(frame)
        for p in packets:
            out.mux(p)
    for p in list(vs.encode(None)) + list(aus.encode(None)):
        out.mux(p)
    out.close()


def test_audio_that_stops_goes_video_only_flagged_and_returns_to_av(engine, tmp_path):
    clip = tmp_path / "hole.mkv"
    write_clip_with_audio_hole(clip, seconds=5.0, hole=(1.5, 3.5))
    opts = PipelineOptions(sources=[str(clip)], paced=True, steps=1, send_frames=False, wait_subscriber=30,
                           audio_wait_ms=200)
    run = LiveRun(opts, engine)
    with Subscriber(run.pipe.endpoint) as sub:
        maps = collect_until(sub, lambda ms: bool(ms) and ms[-1].pts > 4.7, 60)
    summary = run.finish(stop=False)
    assert len(maps) >= 15, f"only {len(maps)} maps"

    def of(lo: float, hi: float) -> list[wire.MapMessage]:
        return [m for m in maps if lo <= m.pts <= hi]
    early, silent, late = of(0.3, 1.4), of(1.8, 3.3), of(3.7, 5.0)
    assert early and silent and late
    assert all(m.header["mode"] == "av" for m in early)
    # Audio stopped: video-only, and the header says why.
    assert all(m.header["mode"] == "video" and m.header["flags"].get("audio_lagging") for m in silent)
    # It came back: audio-visual again, unflagged.
    assert all(m.header["mode"] == "av" and not m.header["flags"].get("audio_lagging") for m in late)
    # At first each window waits (up to 200 ms) for the late audio; once the soundtrack has been
    # silent for a second the pipeline stops waiting, so the maps are prompt again.
    first_lag = [m.latency_ms["assemble"] for m in of(1.8, 2.3)]
    stalled = [m.latency_ms["assemble"] for m in of(2.9, 3.4)]
    assert first_lag and stalled
    assert min(first_lag) >= 190 and np.median(stalled) < 100, (first_lag, stalled)
    assert summary.lagging_windows > 0 and not summary.source_errors


# --------------------------------------------------------------------------- subscribers
def _dead_subscriber(endpoint: str) -> subprocess.Popen:
    """A subscriber process that connects, subscribes, says so, then stops reading (we freeze it)."""
    code = ("import sys, time, zmq\n"
            "s = zmq.Context().socket(zmq.SUB)\n"
            "s.setsockopt(zmq.RCVHWM, 1)\n"
            "s.setsockopt(zmq.SUBSCRIBE, b'')\n"
            f"s.connect({endpoint!r})\n"
            "print('READY', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_late_subscriber_gets_current_maps_and_a_dead_one_never_blocks(engine):
    src = SyntheticSource(3, width=96, height=64, fps=10.0, n_frames=40)
    run = LiveRun(PipelineOptions(steps=1, wait_subscriber=30, hwm=4), engine, sources=[src])
    dead = _dead_subscriber(run.pipe.endpoint)     # the first subscriber: the run starts for it
    try:
        assert run.pipe.ready.wait(60)
        os.kill(dead.pid, signal.SIGSTOP)          # hung: its socket stays open, nothing is read
        time.sleep(2.5)                            # maps flow meanwhile, to the hung subscriber only
        with Subscriber(run.pipe.endpoint, frames=True) as sub:
            joined = time.monotonic()
            first = sub.recv_map(timeout=10)
            assert first is not None, "a late subscriber must get maps"
            os.kill(dead.pid, signal.SIGKILL)      # and now it is gone altogether
            dead.wait(10)
            maps = [first] + collect_until(sub, lambda ms: len(ms) >= 15, 30)
            missed = sub.missed
    finally:
        if dead.poll() is None:
            dead.kill()
            dead.wait(10)
        dead.stdout.close()
    summary = run.finish()
    # Current maps, not a backlog: captured just before the join, well into the stream.
    assert first.header["capture_time"] > joined - 1.0
    assert first.frame_index >= 15 and first.header["seq"] >= 5
    assert missed == 0, "this subscriber reads promptly, so it misses nothing"
    seqs = [m.header["seq"] for m in maps]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # The hung and then dead subscriber never held the publisher back: maps kept their pace.
    span = maps[-1].header["publish_time"] - maps[0].header["publish_time"]
    assert span < 1.6 * (maps[-1].frame_index - maps[0].frame_index) / 10.0 + 0.5
    lat = [m.header["publish_time"] - m.header["capture_time"] for m in maps]
    assert np.median(lat) < 1.0
    assert summary.maps >= len(maps)


# --------------------------------------------------------------------------- camera failure
def test_camera_read_failures_end_the_run_with_a_clear_error(engine, tmp_path):
    # OpenCV's read path on a file is the camera's: when frames stop, reads are retried,
    # then the stream reports an error and ends; the pipeline finishes instead of hanging.
    clip = write_test_clip(tmp_path / "cam.mp4", seconds=1.0, fps=20, size=(96, 64), audio_rate=None)
    cam = WebcamSource(str(clip.path), retries=3, retry_delay=0.02, read_timeout=2.0)
    started = time.monotonic()
    run = LiveRun(PipelineOptions(steps=1, send_frames=False), engine, sources=[cam])
    summary = run.finish(timeout=60, stop=False)
    assert time.monotonic() - started < 30
    assert summary.maps > 0
    assert len(summary.source_errors) == 1 and "stopped delivering frames" in summary.source_errors[0]


def test_cli_exits_1_when_the_input_fails_for_good(small_checkpoint, tmp_path, capsys, monkeypatch):
    # `salstream run` with a camera whose frames stop (the OpenCV read path on a file, as above):
    # the summary, then one clear line for the failed stream, and exit status 1.
    clip = write_test_clip(tmp_path / "cam.mp4", seconds=0.5, fps=20, size=(96, 64), audio_rate=None)
    monkeypatch.setattr(Pipeline, "_open_sources",
                        lambda self: [WebcamSource(str(clip.path), retries=2, retry_delay=0.01)])
    code = cli.main(["run", "--checkpoint", str(small_checkpoint), "--steps", "1", "--publish",
                     "tcp://127.0.0.1:*", "--no-record", "--threads", "1", "--engine", "torch", "-q"])
    out, err = capsys.readouterr()
    assert code == 1 and "maps in" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("salstream run: error: stream 0:")]
    assert len(lines) == 1 and "stopped delivering frames" in lines[0]


# --------------------------------------------------------------------------- shutdown
@needs_rtsp
@pytest.mark.parametrize("sig, streams", [(signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_signal_during_a_live_rtsp_run_exits_0_playable_and_leak_free(sig, streams, small_checkpoint, tmp_path,
                                                                      capsys):
    server = RtspTestServer(audio=True, width=160, height=120, fps=30).start()
    clip = write_test_clip(tmp_path / "other.mp4", seconds=30, fps=10, size=(96, 64), audio_rate=16000)
    record = tmp_path / "overlay.mp4"
    port = free_port()
    argv = ["run", "--source", server.url] + (["--source", str(clip.path)] if streams == 2 else []) + [
        "--checkpoint", str(small_checkpoint), "--record", str(record), "--publish", f"tcp://127.0.0.1:{port}",
        "--steps", "1", "--threads", "1", "--no-frames", "--engine", "torch"]
    zmq.Context.instance()                   # the shared context (and its I/O thread) outlives any run
    threads_before = set(threading.enumerate())
    sockets_before = open_descriptors()[1]
    seen: dict[str, int] = {}
    returned = threading.Event()             # the run ended by itself: nobody to signal any more

    def subscribe_then_signal() -> None:
        try:
            with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
                deadline = time.monotonic() + 120
                while (time.monotonic() < deadline and not returned.is_set()
                       and (len(seen) < streams or min(seen.values()) < 3)):
                    m = sub.recv_map(timeout=0.5)
                    if m is not None:
                        seen[m.stream] = seen.get(m.stream, 0) + 1
        finally:
            if not returned.is_set():
                os.kill(os.getpid(), sig)    # delivered to the main thread, inside `salstream run`
    helper = threading.Thread(target=subscribe_then_signal, name="test-signaller")
    try:
        helper.start()
        try:
            code = cli.main(argv)
        finally:
            returned.set()
        helper.join(30)
        out, err = capsys.readouterr()
        assert len(seen) == streams and min(seen.values()) >= 3, (seen, err[-2000:])
        assert code == 0, err
        assert "finishing" in err and "maps in" in out and "Traceback" not in err
        assert set(threading.enumerate()) == threads_before, "threads left running after the run"
        assert settled(lambda: open_descriptors()[1], sockets_before) == sockets_before, \
            "sockets left open after the run"
    finally:
        server.close()
    with av.open(str(record)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        n = sum(1 for _ in c.decode(video=0))
    assert n >= 3
    assert not list(tmp_path.glob(".*.partial")), "no partial recording left beside the file"


# --------------------------------------------------------------------------- security
def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            host, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET if len(host) == 8 else socket.AF_INET6,
                                           bytes.fromhex(host)[::-1] if len(host) == 8
                                           else b"".join(bytes.fromhex(host[i:i + 8])[::-1]
                                                         for i in range(0, 32, 8))))
    return found


def test_binds_loopback_by_default_and_other_interfaces_need_the_flag(capsys):
    import argparse
    sub = argparse.ArgumentParser().add_subparsers()
    args = add_parser(sub).parse_args([])
    assert args.publish == DEFAULT_ADDRESS == PipelineOptions().publish
    assert is_loopback(DEFAULT_ADDRESS[len("tcp://"):].rpartition(":")[0])
    with Publisher("tcp://127.0.0.1:*") as pub:
        assert _listening(int(pub.endpoint.rpartition(":")[2])) == {"127.0.0.1"}
    for address in ("tcp://0.0.0.0:5599", "tcp://*:5599", "tcp://[::]:5599", "tcp://eth0:5599"):
        with pytest.raises(SalstreamError, match="--allow-remote"):
            Publisher(address)
        assert cli.main(["run", "--publish", address, "--no-record"]) == 2
        assert "--allow-remote" in capsys.readouterr().err
    with Publisher("tcp://0.0.0.0:*", allow_remote=True) as pub:   # explicit: every interface
        assert _listening(int(pub.endpoint.rpartition(":")[2])) == {"0.0.0.0"}


def test_subscriber_checks_sizes_before_allocating():
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    good = wire.encode_map(wire.MapHeader(stream="0", frame_index=0, pts=0.0, capture_time=0.0),
                           np.full((4, 6), 0.5, np.float32))
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", max_message_bytes=1 << 20) as sub:
            time.sleep(0.3)
            # A header that claims a huge map over a tiny payload, and an oversized header: skipped.
            huge = dict(json_header(good), shape=[8192, 8192])
            raw.send_multipart([b"0", wire.dump_header(huge), b"\0" * 16])
            raw.send_multipart([b"0", b"{" + b" " * (wire.MAX_HEADER_BYTES + 1) + b"}", b""])
            raw.send_multipart(good)
            m = sub.recv_map(timeout=5)
            assert m is not None and m.saliency.shape == (4, 6)
            assert sub.bad_messages == 2 and "header" in (sub.last_error or "")
            # A part larger than the subscriber's limit is refused by ZeroMQ itself: it drops
            # that publisher's connection instead of buffering the part (and does not redial it).
            raw.send_multipart([b"0", b"{}", b"\0" * (4 << 20)])
            raw.send_multipart(good)
            assert sub.recv(timeout=1.0) is None
            assert sub.bad_messages == 2
    finally:
        raw.close(0)


def json_header(parts: list[bytes]) -> dict:
    import json
    return json.loads(parts[1])


# --------------------------------------------------------------------------- soak
def test_short_soak_keeps_its_invariants(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--seconds", "15", "--small",
                           "--threads", "1", "--sample-s", "1", "--churn-s", "3", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    report = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 10_000
    assert report["ok"] and not report["full_mode"]
    assert set(report["checks"]) == {"no_python_thread_leak", "no_socket_leak", "no_fd_leak", "maps_flowed"}
    assert report["threads"]["leaked"] == [] and report["threads"]["python_after"] == report["threads"]["python_before"]
    assert report["fds"]["sockets_after"] == report["fds"]["sockets_before"]
    assert report["fds"]["after"] <= report["fds"]["before"]
    assert report["maps"] > 10 and report["missed_by_subscriber"] == 0
    assert report["churn_subscribers"]["joins"] >= 2
    # Short runs report the RSS growth and the latency drift without asserting them.
    assert report["rss_mb"]["asserted"] is False and report["rss_mb"]["after_warmup"] > 0
    assert report["latency_capture_to_publish_ms"]["p95_first_third"] is not None
    samples = report["samples"]
    assert len(samples) >= 12 and max(s["sockets"] for s in samples) > report["fds"]["sockets_before"]
