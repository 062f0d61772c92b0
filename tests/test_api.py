"""The Python API (`from salstream import Saliency`): files, arrays, live sources, maps to disk, and
the README's example run as written."""
from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from salstream import Saliency
from salstream.errors import SalstreamError
from salstream.streamer.saved_maps import load_saved_maps
from tests.support.media import write_test_clip

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of 160×120 H.264 at 20 fps with AAC audio."""
    return write_test_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1.0, fps=20, audio_rate=48000)


def decoded_frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_a_file_gives_every_frame_with_its_own_map(engine, clip):
    sal = Saliency(engine=engine)
    preds = sal.predict_file(str(clip.path))
    got = list(preds)
    frames = decoded_frames(clip.path)
    assert [p.frame_index for p in got] == list(range(clip.n_frames)) == list(range(len(frames)))
    for p, expected in zip(got, frames):
        pts, frame, smap = p                                      # unpacks as a triple
        assert pts == pytest.approx(p.frame_index / clip.fps, abs=1e-3)
        assert np.array_equal(frame, expected)                    # the map's own frame, as decoded
        assert smap.shape == (16, 24) and smap.dtype == np.float32 and 0 <= smap.min() <= smap.max() <= 1
        assert p.header.frame_index == p.frame_index and p.mode == "av"
    assert preds.finished and preds.summary.maps == clip.n_frames and preds.summary.per_stream == {"0": clip.n_frames}


def test_frames_in_memory_run_the_same_path_as_the_file(engine, clip):
    """Video-only, the same frames give the same maps whether they come from the file or an array."""
    sal = Saliency(engine=engine, mode="video")
    from_file = [p.saliency for p in sal.predict_file(str(clip.path))]
    from_array = [p.saliency for p in sal.predict_frames(decoded_frames(clip.path), fps=clip.fps)]
    assert len(from_file) == len(from_array) == clip.n_frames
    assert all(np.array_equal(a, b) for a, b in zip(from_file, from_array))


def test_frames_with_a_waveform_are_audio_visual_until_the_audio_ends(engine, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (30, 64, 96, 3), dtype=np.uint8)
    stereo = (rng.standard_normal((48000 * 2 // 3, 2)) * 0.2).astype(np.float32)    # 0.67 s at 48 kHz for 1 s of video
    preds = Saliency(engine=engine).predict_frames(frames, fps=30, audio=stereo, sample_rate=48000,
                                                   save_maps=str(tmp_path / "maps"))
    got = list(preds)
    assert [p.frame_index for p in got] == list(range(30))
    assert got[5].mode == "av" and got[-1].mode == "video" and got[-1].header.flags.get("audio_lost")
    saved = load_saved_maps(tmp_path / "maps")
    assert saved.complete and np.array_equal(saved.frame_index, np.arange(30))
    assert all(np.array_equal(s, p.saliency) for s, p in zip(saved.maps, got))      # bit for bit (float32)


def test_a_live_source_stops_when_the_loop_is_left(engine):
    sal = Saliency(engine=engine)
    preds = sal.live("synthetic:3")
    got = []
    for pts, frame, smap in preds:
        got.append((pts, frame.shape, smap.shape))
        if len(got) == 4:
            break
    assert preds.finished and preds.summary is not None and preds.summary.maps >= 4
    assert got[0][1] == (224, 384, 3) and got[1][0] > got[0][0]
    assert not [t for t in threading.enumerate() if t.name.startswith(("salstream-api", "salstream-source"))]
    # the object is free for the next call
    assert len(list(sal.live("synthetic:4", max_frames=20))) >= 1


def test_bad_input_is_a_clear_error(engine):
    sal = Saliency(engine=engine)
    with pytest.raises(SalstreamError, match=r"dtype float32: expected uint8.*astype\(np.uint8\)"):
        sal.predict_frames(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(SalstreamError, match=r"shape \(4, 32, 32\): expected \(N, H, W, 3\)"):
        sal.predict_frames(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(SalstreamError, match="sample_rate"):
        sal.predict_frames(np.zeros((4, 32, 32, 3), np.uint8), audio=np.zeros(100, np.float32), sample_rate=0)
    with pytest.raises(SalstreamError, match="no such file"):
        list(sal.predict_file("missing.mp4"))
    with pytest.raises(SalstreamError, match="--steps 0"):
        Saliency(engine=engine, steps=0)
    running = iter(sal.live("synthetic:1"))
    next(running)
    with pytest.raises(SalstreamError, match="still running"):
        sal.predict_file("missing.mp4")
    running.close()
    with pytest.raises(SalstreamError, match="no such file"):      # free again once the first run ended
        list(sal.predict_file("missing.mp4"))


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python use"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match and "from salstream import Saliency" in match.group(1)
    return match.group(1)


def test_the_readme_example_runs_as_written(monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    # The example asks for the fastest engine here: on a CPU that is ONNX Runtime, exported once into
    # the test session's cache (the real-profile parity test exports the same bundled weights there).
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["readme"])
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.splitlines()
    assert len(out) >= 10 and "(480, 640, 3)" in out[0]
