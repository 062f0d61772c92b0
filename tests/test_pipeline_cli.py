"""`salstream run` / `salstream view` from the command line: errors, help, signals, recording."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from salstream import cli as cli
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.units import VideoFrame
from salstream.streamer.overlay.recording import OverlayRecorder, OverlayRecording
from salstream.streamer.overlay.render import blend, heatmap
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.media import write_test_clip
from tests.support.rtsp import free_port

REPO = Path(__file__).resolve().parent.parent


def test_run_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--source", "--mic", "--profile", "--checkpoint", "--engine", "--steps", "--hop", "--publish",
                "--record", "--as-fast-as-possible", "--max-batch", "--batch-deadline-ms", "--duration",
                "--max-frames", "--allow-remote"):
        assert opt in text, opt


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps 0"),
    (["--hop", "0"], "--hop 0"),
    (["--publish", "tcp://0.0.0.0:5599"], "--allow-remote"),
    (["--source", "nope://x"], "nope"),
    (["--checkpoint", "missing.safetensors"], "missing.safetensors"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    code = cli.main(["run", "--no-record", "--publish", "tcp://127.0.0.1:*", *argv]
                    if "--publish" not in argv else ["run", "--no-record", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("salstream run: error")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_overlay_blend_puts_heat_where_the_map_is():
    frame = np.full((60, 80, 3), 100, np.uint8)
    sal = np.zeros((6, 8), np.float32)
    sal[0:2, 0:2] = 1.0                                     # top-left is salient
    out = blend(frame, sal, alpha=0.6)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.abs(out[:5, :5].astype(int) - 100).mean() > 40           # heat drawn there
    assert np.abs(out[40:, 60:].astype(int) - 100).max() == 0          # untouched elsewhere
    heat, weights = heatmap(sal, (60, 80))
    assert heat[0, 0, 0] > heat[0, 0, 2]                    # hot = red end of the colour map


def test_recorder_rejects_other_extensions(tmp_path):
    with pytest.raises(Exception, match="--record"):
        OverlayRecorder(tmp_path / "x.avi")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_cleanly_with_a_playable_recording(sig, small_checkpoint, tmp_path):
    clip = write_test_clip(tmp_path / "long.mp4", seconds=20, fps=10, size=(96, 64), audio_rate=16000)
    record = tmp_path / "overlay.mp4"
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "salstream", "run", "--source", str(clip.path), "--checkpoint",
         str(small_checkpoint), "--record", str(record), "--publish", f"tcp://127.0.0.1:{port}", "--steps", "1",
         "--threads", "1", "--engine", "torch"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
            got = [sub.recv_map(timeout=90)]
            got += [m for m in (sub.recv_map(timeout=5) for _ in range(4)) if m is not None]
        assert got[0] is not None, proc.stderr.read() if proc.poll() is not None else "no map"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "p50" in out and "p99" in out and "maps/s" in out
    assert "Traceback" not in err
    with av.open(str(record)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        n = sum(1 for _ in c.decode(video=0))
    assert n >= len(got)


def test_view_records_the_overlay_of_a_running_pipeline(engine, tmp_path):
    clip = write_test_clip(tmp_path / "c.mp4", seconds=1.0, fps=20, size=(96, 64), audio_rate=None)
    opts = PipelineOptions(sources=[str(clip.path)], paced=False, steps=1, publish="tcp://127.0.0.1:*",
                           wait_subscriber=30)
    pipe = Pipeline(opts, engine=engine)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("summary", pipe.run()))
    th.start()
    assert pipe.bound.wait(30)
    out = tmp_path / "view.mp4"
    code = cli.main(["view", pipe.endpoint, "--record", str(out), "--idle-timeout", "3", "--fps", "20"])
    th.join(60)
    assert code == 0
    with av.open(str(out)) as c:
        n = sum(1 for f in c.decode(video=0))
        assert (c.streams.video[0].height, c.streams.video[0].width) == (64, 96)
    assert n == result["summary"].maps == clip.n_frames


def test_view_without_gui_asks_for_record(capsys, monkeypatch):
    monkeypatch.setattr("salstream.streamer.overlay.render.has_gui", lambda: False)
    code = cli.main(["view", "tcp://127.0.0.1:1"])
    assert code == 2 and "--record" in capsys.readouterr().err


def test_recording_holds_the_newest_map_for_frames_without_one(tmp_path):
    rec = OverlayRecording(tmp_path / "hold.mp4")
    rec.start()
    left = np.zeros((6, 8), np.float32)
    left[:, :2] = 1.0
    right = left[:, ::-1].copy()
    frame = np.full((64, 96, 3), 90, np.uint8)
    for i in range(10):
        rec.on_unit(VideoFrame(frame, i / 10, 0.0, i))
        if i == 0:
            rec.add_map(0, left)
        elif i == 4:
            rec.add_map(4, right)           # windows 1–3 and 5–9 were dropped: no maps for them
    rec.close()
    with av.open(str(tmp_path / "hold.mp4")) as c:
        imgs = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(imgs) == 10                  # every frame is in the video, at the source rate
    side = ["L" if np.abs(im[:, :24] - 90).mean() > np.abs(im[:, -24:] - 90).mean() else "R" for im in imgs]
    assert side == ["L"] * 4 + ["R"] * 6
