"""Numeric options are finite and in range, refused with the option's name before anything runs."""
from __future__ import annotations

import pytest

from salstream.cli import main
from salstream.diffsal.datasets.layout import load_videos
from salstream.diffsal.datasets.synthetic import synthetic_root, write_synthetic
from salstream.diffsal.train import TrainOptions
from salstream.errors import SalstreamError
from salstream.streamer.live.pipeline import PipelineOptions

bad_input = pytest.mark.bad_input

CASES = [
    (["run", "--steps", "0"], "--steps", "between 1 and 1000"),
    (["run", "--duration", "nan"], "--duration", "finite"),
    (["run", "--duration", "inf"], "--duration", "finite"),
    (["run", "--duration", "-1"], "--duration", "> 0"),
    (["run", "--max-batch", "1e9"], "--max-batch", "invalid int value"),
    (["run", "--max-batch", "1000000000"], "--max-batch", "1…256"),
    (["run", "--hop", "-1"], "--hop", ">= 1"),
    (["run", "--audio-wait-ms", "1e308"], "--audio-wait-ms", "under ten minutes"),
    (["run", "--threads", "0"], "--threads", "1…1024"),
    (["run", "--reconnect", "-2"], "--reconnect", "forever"),
    (["run", "--stall-frames", "1"], "--stall-frames", "2…100000"),
    (["train", "--epochs", "0"], "--epochs", "out of range"),
    (["train", "--epochs", "-3"], "--epochs", "out of range"),
    (["train", "--lr", "-1"], "--lr", "out of range"),
    (["train", "--lr", "nan"], "--lr", "not a finite number"),
    (["eval", "--frame-step", "0"], "--frame-step", "out of range"),
    (["view", "--alpha", "2"], "--alpha", "out of range"),
    (["view", "--fps", "0"], "--fps", "out of range"),
    (["encode", "--source", "x.mp4", "--out", "y.mp4", "--block-size", "0"], "--block-size", "out of range"),
]


@bad_input("options", "numeric options that are not finite, overflow or are absurd (`--duration nan`, "
           "`--steps 0`, `--max-batch 1e9`, `train --epochs 0`, `--lr -1`, …)",
           "refused before anything runs: one line naming the option and the range, exit 2")
@pytest.mark.parametrize("argv, option, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_numbers_are_refused_with_the_option_name(argv, option, needle, capsys):
    code = main(argv + (["--publish", "tcp://127.0.0.1:*", "--no-record"] if argv[0] == "run" else []))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"salstream {argv[0]}: error:")]
    assert code == 2 and len(lines) == 1 and len(err.strip().splitlines()) == 1, err
    assert option in lines[0] and needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_api_options_are_checked_too():
    with pytest.raises(SalstreamError, match="--duration"):
        PipelineOptions(duration=float("nan")).validate()
    with pytest.raises(SalstreamError, match="--audio-wait-ms"):
        PipelineOptions(audio_wait_ms=float("inf")).validate()
    with pytest.raises(SalstreamError, match="--epochs"):
        TrainOptions(epochs=0).validate()
    with pytest.raises(SalstreamError, match="--lr"):
        TrainOptions(lr=-1.0).validate()


@bad_input("options", "two `train` runs on the synthetic set with different clip settings",
           "each setting has its own cached set; a set is never rewritten in place, its clip list never shrinks")
def test_synthetic_cache_is_keyed_by_what_shapes_it(tmp_path):
    assert synthetic_root(tmp_path) == tmp_path / "synthetic"
    assert synthetic_root(tmp_path, n_frames=40) != synthetic_root(tmp_path) != synthetic_root(tmp_path, n_frames=41)
    root = write_synthetic(tmp_path / "syn", {"train": 2}, n_frames=6, width=64, height=48)
    write_synthetic(root, {"train": 1}, n_frames=6, width=64, height=48)       # asks for fewer
    assert [v.name for v in load_videos(root, "train", datasets=["Synthetic"])["Synthetic"]] == \
        ["train_0000", "train_0001"]
    before = (root / "synthetic.json").read_text()
    with pytest.raises(SalstreamError, match="other parameters"):
        write_synthetic(root, {"train": 2}, n_frames=8, width=64, height=48)
    assert (root / "synthetic.json").read_text() == before
