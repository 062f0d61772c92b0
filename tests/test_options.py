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
    (["run", "--steps", "0"], "--steps", "out of range"),
    (["run", "--duration", "nan"], "--duration", "not a finite number"),
    (["run", "--duration", "inf"], "--duration", "not a finite number"),
    (["run", "--duration", "-1"], "--duration", "out of range"),
    (["run", "--max-batch", "1e9"], "--max-batch", "not an integer"),
    (["run", "--hop", "-1"], "--hop", "out of range"),
    (["run", "--audio-wait-ms", "1e308"], "--audio-wait-ms", "out of range"),
    (["run", "--threads", "0"], "--threads", "out of range"),
    (["run", "--reconnect", "-2"], "--reconnect", "forever"),
    (["run", "--stall-frames", "1"], "--stall-frames", "out of range"),
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
           "refused by the parser: one line naming the option and the range, exit 2")
@pytest.mark.parametrize("argv, option, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_numbers_are_refused_with_the_option_name(argv, option, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument {option}" in err and needle in err, err[-500:]
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
