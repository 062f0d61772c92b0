"""Sources that stall, go away, come back or hold damage: the run goes on and says what happened."""
from __future__ import annotations

import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import numpy as np
import pytest

from salstream.cli import main
from salstream.streamer.live.assembler import WindowAssembler
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.sources.pyav import PyAVSource
from salstream.streamer.live.units import StreamEvent, VideoFrame
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.media import write_test_clip
from tests.support.process import settled
from tests.support.rtsp import RtspTestServer, system_python
from tests.support.tiny_models import tiny_config

bad_input = pytest.mark.bad_input
needs_rtsp = pytest.mark.skipif(system_python() is None,
                                reason="needs GStreamer's RTSP server (scripts/install-system-deps)")


class _Reader:
    """Iterates a source on its own thread (as the pipeline does), keeping every unit."""

    def __init__(self, source):
        self.source, self.units = source, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for unit in self.source:
            self.units.append(unit)

    def frames(self) -> list[VideoFrame]:
        return [u for u in list(self.units) if isinstance(u, VideoFrame)]

    def events(self, kind: str) -> list[StreamEvent]:
        return [u for u in list(self.units) if isinstance(u, StreamEvent) and u.kind == kind]

    def wait(self, cond, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)


def test_reconnect_and_stall_options_are_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--reconnect N|forever" in out and "--reconnect-max-delay S" in out and "--stall-frames N" in out


# ------------------------------------------------------------------------------ RTSP
@needs_rtsp
@bad_input("sources", "an RTSP server that hangs for 3 s without disconnecting, then goes away "
           "(a camera reboot)",
           "the stall is a gap (`reason` \"stall: no frame for N s\"); with `--reconnect forever` the source "
           "reports `reconnecting` and resumes when the server is back")
def test_rtsp_stall_is_a_gap_and_reconnect_forever_outlasts_the_outage():
    server = RtspTestServer(audio=False, width=160, height=120, fps=30).start()
    src = PyAVSource(server.url, reconnect_attempts=None, reconnect_delay=0.1, reconnect_max_delay=0.25,
                     read_timeout=6.0)
    cfg = tiny_config()
    asm = WindowAssembler(cfg, "0", has_audio=False, stall_after=30 / src.fps)
    reader = _Reader(src)
    try:
        reader.wait(lambda: len(reader.frames()) >= 10)
        os.kill(server.proc.pid, signal.SIGSTOP)      # the server hangs: no frame, no disconnect
        time.sleep(3.0)
        os.kill(server.proc.pid, signal.SIGCONT)
        n = len(reader.frames())
        reader.wait(lambda: len(reader.frames()) >= n + 10)
        for unit in list(reader.units):
            asm.push(unit)
        stalls = [g for g in asm.gaps if g["reason"].startswith("stall")]
        assert len(stalls) == 1 and stalls[0]["to_pts"] > stalls[0]["from_pts"], asm.gaps
        assert not reader.events("gap")               # it never disconnected
        # Now the server goes away; the source keeps trying and says so.
        port = server.port
        server.kill()
        reader.wait(lambda: reader.events("gap"))
        assert settled(lambda: src.status, "reconnecting") == "reconnecting"
        time.sleep(2.0)
        server = RtspTestServer(port=port, audio=False, width=160, height=120, fps=30).start()
        n = len(reader.frames())
        reader.wait(lambda: len(reader.frames()) >= n + 5, timeout=40)
        assert src.status == "live" and src.reconnects == 1 and not reader.events("error")
    finally:
        src.close()
        server.close()
        reader.thread.join(10)


# ------------------------------------------------------------------------------ status heartbeats
@bad_input("sources", "a subscriber that must tell a stream that is down from one that is idle",
           "`status/<stream>` heartbeats about once a second: `live`, `reconnecting`, `ended`")
def test_status_heartbeats_say_live_then_ended(engine):
    opts = PipelineOptions(sources=["synthetic"], publish="tcp://127.0.0.1:*", max_frames=60, steps=1,
                           send_frames=False, heartbeat_s=0.2)
    pipe = Pipeline(opts, engine)
    got: list[wire.StatusMessage] = []
    done = threading.Event()

    def listen() -> None:
        pipe.bound.wait(30)
        with Subscriber(pipe.endpoint, kinds={"status"}) as sub:
            while True:
                msg = sub.recv(timeout=0.2)
                if msg is not None:
                    got.append(msg)
                    if msg.state == "ended":
                        return
                elif done.is_set():
                    return
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    pipe.run()
    done.set()
    t.join(10)
    states = [m.state for m in got]
    assert "live" in states and states[-1] == "ended", states
    live = [m for m in got if m.state == "live" and m.last_pts is not None]
    assert live and all(m.stream == "0" and m.frame_age_s >= 0 for m in live)


# ------------------------------------------------------------------------------ HTTP
class _FlakyFileServer(ThreadingHTTPServer):
    """Serves one file with byte ranges; the first response that crosses the middle of the file is
    cut there (the server "restarts" mid-stream) and the next connections are refused for a while."""

    daemon_threads = True

    def __init__(self, data: bytes):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.data, self.cut_done, self.down_until = data, False, 0.0


class _RangeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv: _FlakyFileServer = self.server
        if time.monotonic() < srv.down_until:
            self.connection.close()                  # "restarting": nobody answers
            return
        data, start, end = srv.data, 0, len(srv.data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a), int(b) if b else len(data) - 1
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        middle = len(data) // 2
        pos = start
        while pos <= end:
            chunk_end = min(end + 1, pos + 4096)
            if not srv.cut_done and pos < middle <= chunk_end:
                srv.cut_done, srv.down_until = True, time.monotonic() + 1.0
                self.wfile.write(data[pos:middle])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(data[pos:chunk_end])
            pos = chunk_end
            time.sleep(0.002)                         # a stream, not one burst


@bad_input("sources", "the HTTP server of a file source restarting mid-stream",
           "reconnects (same policy as RTSP), reopens the file where it stopped and reads it to the end; "
           "the outage is a gap")
def test_http_file_source_survives_a_server_restart(tmp_path):
    # Noise compresses badly: a file of about 1 MB, read over many requests' worth of buffers.
    path, n_frames, fps = tmp_path / "in.mp4", 90, 15
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(n_frames):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    duration = n_frames / fps
    server = _FlakyFileServer(path.read_bytes())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = PyAVSource(f"http://127.0.0.1:{server.server_address[1]}/in.mp4", paced=False,
                         reconnect_attempts=40, reconnect_delay=0.1, reconnect_max_delay=0.25)
        assert not src.live
        units = list(src)
    finally:
        server.shutdown()
        server.server_close()
    frames = [u for u in units if isinstance(u, VideoFrame)]
    kinds = [u.kind for u in units if isinstance(u, StreamEvent)]
    assert server.cut_done and "gap" in kinds and "error" not in kinds, kinds
    assert frames[-1].pts > duration - 0.2
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))        # nothing repeated after the reopen
    assert len(frames) >= n_frames - 3


# ------------------------------------------------------------------------------ damaged and degenerate files
@bad_input("sources", "an MP4 with a corrupt region mid-file",
           "the undecodable packets are skipped (FFmpeg conceals) and the file is read to its end")
def test_corrupt_region_mid_file_does_not_end_the_read(tmp_path):
    clip = write_test_clip(tmp_path / "in.mp4", seconds=6, fps=15, size=(96, 64), audio_rate=16000)
    data = bytearray(clip.path.read_bytes())
    i = int(len(data) * 0.4)
    data[i:i + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    src = PyAVSource(bad, paced=False)
    units = list(src)
    frames = [u for u in units if isinstance(u, VideoFrame)]
    assert [u.kind for u in units if isinstance(u, StreamEvent)] == ["end"]
    assert src.skipped_packets > 0 and frames[-1].pts > clip.duration - 0.2


@bad_input("sources", "a degenerate video (1×1 pixels)", "one line naming the source and the minimum size, exit 2")
def test_one_pixel_video_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "dot.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 1, 1, "yuv444p"
        for i in range(10):
            f = av.VideoFrame.from_ndarray(np.zeros((1, 1, 3), np.uint8), format="rgb24").reformat(format="yuv444p")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    code = main(["run", "--source", str(path), "--publish", "tcp://127.0.0.1:*", "--no-record"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "1×1 pixels" in err[0] and str(path) in err[0]


@needs_rtsp
@bad_input("sources", "a live stream that hangs (no frame, no disconnect) while maps are being published",
           "the next map carries `flags.gap` and `gaps[0]` (PTS range, reason \"stall: no frame for N s\"); "
           "meanwhile the `status/<stream>` heartbeat shows `frame_age_s` growing")
def test_a_stall_reaches_subscribers_as_a_gap_and_in_the_heartbeat(engine):
    server = RtspTestServer(audio=False, width=160, height=120, fps=30).start()
    result: list = []
    pipe = None
    try:
        src = PyAVSource(server.url, read_timeout=6.0)
        pipe = Pipeline(PipelineOptions(publish="tcp://127.0.0.1:*", steps=1, send_frames=False, heartbeat_s=0.2),
                        engine, sources=[src])
        runner = threading.Thread(target=lambda: result.append(pipe.run()), daemon=True)
        runner.start()
        assert pipe.bound.wait(60)
        with Subscriber(pipe.endpoint, kinds={"map", "status"}) as sub:
            maps, ages = [], []

            def take(until) -> None:
                deadline = time.monotonic() + 60
                while not until() and time.monotonic() < deadline:
                    m = sub.recv(timeout=0.2)
                    if isinstance(m, wire.MapMessage):
                        maps.append(m)
                    elif isinstance(m, wire.StatusMessage) and m.frame_age_s is not None:
                        ages.append(m.frame_age_s)
            take(lambda: len(maps) >= 5)
            os.kill(server.proc.pid, signal.SIGSTOP)
            time.sleep(3.0)
            os.kill(server.proc.pid, signal.SIGCONT)
            take(lambda: any(m.header.flags.get("gap") for m in maps) and len(maps) >= 10)
        marked = [m for m in maps if m.header.flags.get("gap")]
        assert len(marked) == 1, [m.header.flags for m in maps]
        (gap,) = marked[0].header.gaps
        # The server's clock stopped with it, so the media PTS run on; the reason says how long it hung.
        assert gap["reason"].startswith("stall: no frame for ") and gap["to_pts"] > gap["from_pts"]
        assert float(gap["reason"].split()[4]) > 2.5
        assert max(ages) > 2.0                            # the heartbeat saw the source go quiet
    finally:
        if pipe is not None:
            pipe.stop()
        server.close()
    runner.join(30)
    assert result and not result[0].source_errors
