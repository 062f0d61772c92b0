"""Bad input through `salstream run`: one line naming the input and the fix, exit status 2,
and nothing half-written (the --record file is never left behind)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from salstream import cli as cli  # noqa: E402
from salstream.diffsal.checkpoint import save_checkpoint  # noqa: E402
from salstream.diffsal.registry import _BUILDERS, register_profile  # noqa: E402
from salstream.errors import SalstreamError  # noqa: E402
from salstream.export.onnx_export import export_onnx  # noqa: E402
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions  # noqa: E402
from salstream.streamer.overlay.recording import OverlayRecording  # noqa: E402
from salstream.streamer.wire.publisher import Publisher  # noqa: E402
from tests.support.media import write_test_clip  # noqa: E402
from tests.support.rtsp import free_port  # noqa: E402
from tests.support.tiny_models import TinySaliency, tiny_config, tiny_model


@pytest.fixture(scope="module")
def files(engine, tmp_path_factory):
    """Every bad (and good) input the table refers to, made once."""
    d = tmp_path_factory.mktemp("inputs")
    out = {"dir": d}
    out["clip"] = write_test_clip(d / "clip.mp4", seconds=1.0, fps=10, size=(96, 64), audio_rate=None).path
    # A container FFmpeg reads, holding video it has no decoder for (sample entry renamed).
    (d / "codec.mp4").write_bytes(out["clip"].read_bytes().replace(b"avc1", b"zzzz"))
    out["codec"] = d / "codec.mp4"
    ckpt = save_checkpoint(engine.model, d / "lite.safetensors")
    out["ckpt"] = ckpt
    data = ckpt.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (d / "corrupt.safetensors").write_bytes(b"\x93NUMPY not a checkpoint" * 100)
    out["truncated"], out["corrupt"] = d / "truncated.safetensors", d / "corrupt.safetensors"
    # Exported graphs and a checkpoint of *different* weights of the same (small test) profile.
    if "tiny" not in _BUILDERS:
        register_profile("tiny", lambda: tiny_config(True))(lambda cfg: TinySaliency(cfg))
    export_onnx(tiny_model(True, seed=0), d / "graphs", modes=["video"])
    out["graphs"] = d / "graphs"
    out["tiny_other"] = save_checkpoint(tiny_model(True, seed=5), d / "tiny_other.safetensors")
    return out


def _closed_port() -> int:
    return free_port()      # nothing listens there once the probe socket is closed


CASES = {
    # name: (argv after `run`, what the line must name, what it must suggest)
    "unknown scheme": (["--source", "gopher://cam/1"], "gopher", "rtsp://"),
    "unreachable rtsp": (lambda f: ["--source", f"rtsp://127.0.0.1:{_closed_port()}/live"], "rtsp://127.0.0.1",
                         "server is up"),
    "unreachable http": (lambda f: ["--source", f"http://127.0.0.1:{_closed_port()}/a.ts"], "http://127.0.0.1",
                         "server is up"),
    "missing file": (["--source", "no_such_clip.mp4"], "no_such_clip.mp4", "give"),
    "unsupported codec": (lambda f: ["--source", str(f["codec"])], "codec.mp4", "re-encode"),
    "corrupt checkpoint": (lambda f: ["--checkpoint", str(f["corrupt"])], "corrupt.safetensors", "re-copy"),
    "truncated checkpoint": (lambda f: ["--checkpoint", str(f["truncated"])], "truncated.safetensors", "re-copy"),
    "checkpoint of the other profile": (lambda f: ["--checkpoint", str(f["ckpt"]), "--profile", "full"],
                                        "lite.safetensors", "--profile lite"),
    "graphs of another checkpoint": (lambda f: ["--profile", "tiny", "--checkpoint", str(f["tiny_other"]),
                                                "--engine", "ort-cpu", "--artifacts", str(f["graphs"])],
                                     "graphs", "re-export"),
    "graphs with the torch engine": (lambda f: ["--checkpoint", str(f["ckpt"]), "--artifacts", str(f["graphs"]), "--engine", "torch"],
                                     "--artifacts", "--engine ort-cpu"),
    "audio-only mode without audio": (lambda f: ["--checkpoint", str(f["ckpt"]), "--mode", "audio"],
                                      "audio-only", "--mic"),
    "steps 0": (["--steps", "0"], "--steps 0", "between 1 and 1000"),
    "steps 5000": (["--steps", "5000"], "--steps 5000", "between 1 and 1000"),
    "hop 0": (["--hop", "0"], "--hop 0", ">= 1"),
    "warm start out of range": (["--warm-start", "1000"], "--warm-start 1000", "0…999"),
    "record extension": (["--record", "overlay.avi"], "overlay.avi", ".mp4"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, files, capsys):
    argv, names, fix = CASES[name]
    argv = argv(files) if callable(argv) else argv
    record = files["dir"] / f"rec_{name.replace(' ', '_')}.mp4"
    full = ["run", "--publish", "tcp://127.0.0.1:*", "--threads", "1"]
    if "--source" not in argv:            # cases about the source give their own
        full += ["--source", str(files["clip"])]
    if "--record" not in argv:
        full += ["--record", str(record)]
    full += argv
    code = cli.main(full)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("salstream run: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert names in lines[0] and fix in lines[0], lines[0]
    leftovers = [p for p in files["dir"].iterdir() if p.name.startswith((record.name, f".{record.name}"))]
    assert not leftovers, f"half-written output left behind: {leftovers}"


def test_publish_address_in_use_is_one_line_and_exit_2(files, capsys, tmp_path):
    record = tmp_path / "rec.mp4"
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as busy:
        code = cli.main(["run", "--source", str(files["clip"]), "--publish", busy.endpoint, "--record", str(record)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert busy.endpoint in err[0] and "already in use" in err[0] and "--publish tcp://127.0.0.1:" in err[0]
    assert not list(tmp_path.iterdir())


class MisfitEngine:
    """A real engine described by a config of another input size (e.g. mismatched graphs)."""

    def __init__(self, inner):
        self.inner = inner
        self.config = dataclasses.replace(inner.config, input_size=(48, 64))
        self.name = inner.name

    def encode_video(self, x):
        return self.inner.encode_video(x)

    def encode_audio(self, x):
        return self.inner.encode_audio(x)

    def denoise(self, *args):
        return self.inner.denoise(*args)


def test_wrong_window_shape_is_named_and_leaves_no_recording(engine, files, tmp_path, capsys, monkeypatch):
    record = tmp_path / "overlay.mp4"
    opts = PipelineOptions(sources=[str(files["clip"])], publish="tcp://127.0.0.1:*", steps=1, paced=False)
    with pytest.raises(SalstreamError, match=r"encode_video takes one frame \(B, 3, 64, 96\), got \(\d+, 3, 48, 64\)"):
        Pipeline(opts, MisfitEngine(engine), consumers=[OverlayRecording(record)]).run()
    assert not list(tmp_path.iterdir()), "the recording was started, so it must be removed, not left half-made"
    # The same through the command line: one line, exit 2.
    monkeypatch.setattr("salstream.runtime.load_engine", lambda *a, **k: (MisfitEngine(engine), None))
    code = cli.main(["run", "--source", str(files["clip"]), "--publish", "tcp://127.0.0.1:*", "--record",
                     str(record), "--as-fast-as-possible"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("salstream run: error:")]
    assert code == 2 and len(lines) == 1 and "preprocess" in lines[0] and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_model_and_engine_input_checks_name_the_input(engine, files):
    with pytest.raises(SalstreamError, match="encode_video takes one frame"):
        engine.encode_video(torch.randn(1, 3, 40, 40))
    from salstream.engines import create_engine
    ort = create_engine("ort-cpu", model=tiny_model(True, seed=0), artifacts=files["graphs"])
    with pytest.raises(SalstreamError, match="input 'video' has shape"):
        ort.encode_video(torch.randn(1, 3, 40, 40))


def _open_paths() -> list[str]:
    import os
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def test_inputs_opened_before_a_later_error_are_closed(files, capsys):
    # The source opens (the file is held open by the demuxer), then the checkpoint is bad:
    # the run must not leave the input open behind it.
    clip = str(files["clip"].resolve())
    code = cli.main(["run", "--source", clip, "--checkpoint", str(files["corrupt"]), "--publish",
                     "tcp://127.0.0.1:*", "--no-record"])
    assert code == 2 and "corrupt.safetensors" in capsys.readouterr().err
    assert clip not in _open_paths()
