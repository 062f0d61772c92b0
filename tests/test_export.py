"""ONNX export: graphs, manifest, parity report, identity checks and the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import salstream
from salstream.artifacts.graphs import DENOISE_GRAPHS  # noqa: E402
from salstream.artifacts.manifest import MANIFEST_NAME, file_sha256, read_manifest, weights_sha256  # noqa: E402
from salstream.cli.export import check_parity  # noqa: E402
from salstream.diffsal.checkpoint import save_checkpoint
from salstream.engines import create_engine  # noqa: E402
from salstream.errors import SalstreamError  # noqa: E402
from salstream.export.onnx_export import export_onnx  # noqa: E402
from tests.support.tiny_models import tiny_model

# Where this machine keeps the code the graphs were traced from: must not end up in the files.
LOCAL_DIRS = {str(Path(salstream.__file__).resolve().parent), str(Path(__file__).resolve().parent)}


@pytest.mark.parametrize("per_frame", [True, False])
def test_export_writes_every_graph_with_the_documented_names(tiny_exports, per_frame):
    model, d = tiny_exports[per_frame]
    m = read_manifest(d)
    assert set(m.graphs) == {"encode_video", "encode_audio", "denoise", "denoise_video", "denoise_audio"}
    assert m.modes == DENOISE_GRAPHS
    assert m.profile == "tiny" and m.precision == "fp32" and m.opset >= 17
    assert m.config == model.config
    assert m.weights_sha256 == weights_sha256(model)
    assert m.graphs["denoise"].input_names == ["x_t", "t", "video_0", "video_1", "audio_feats"]
    assert m.graphs["denoise_video"].input_names == ["x_t", "t", "video_0", "video_1"]
    assert m.graphs["denoise_audio"].input_names == ["x_t", "t", "audio_feats"]
    h, w = model.config.input_size
    want_video = ["batch", 3, h, w] if per_frame else ["batch", 3, model.config.frames, h, w]
    assert m.graphs["encode_video"].inputs[0].shape == want_video
    for name, g in m.graphs.items():
        assert (d / g.file).is_file(), name


@pytest.mark.parametrize("per_frame", [True, False])
def test_manifest_matches_the_graph_files(tiny_exports, per_frame):
    _, d = tiny_exports[per_frame]
    m = read_manifest(d)
    for name, g in m.graphs.items():
        assert file_sha256(d / g.file) == g.sha256
        proto = onnx.load(str(d / g.file))
        onnx.checker.check_model(proto)
        # no stack traces naming this machine's files in a graph that gets copied around
        assert not any(p.encode() in (d / g.file).read_bytes() for p in LOCAL_DIRS), name
        assert not any(n.doc_string or any(p.key.endswith("stack_trace") for p in n.metadata_props)
                       for n in proto.graph.node), name
        assert any(o.version == m.opset for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        sess = ort.InferenceSession(str(d / g.file), providers=["CPUExecutionProvider"])
        ins, outs = sess.get_inputs(), sess.get_outputs()
        assert [i.name for i in ins] == g.input_names
        assert [o.name for o in outs] == g.output_names
        for spec, value in [*zip(g.inputs, ins), *zip(g.outputs, outs)]:
            assert len(spec.shape) == len(value.shape), (name, spec.name)
            assert isinstance(value.shape[0], str), f"{name}.{spec.name}: batch axis is not dynamic"
            assert spec.shape[1:] == list(value.shape[1:]), (name, spec.name)
            assert value.type == {"float32": "tensor(float)", "int64": "tensor(int64)"}[spec.dtype]


def test_batch_axis_is_dynamic(tiny_exports):
    model, d = tiny_exports[True]
    m = read_manifest(d)
    sess = ort.InferenceSession(str(d / m.graphs["encode_video"].file), providers=["CPUExecutionProvider"])
    h, w = model.config.input_size
    for batch in (1, 3, 5):
        frames = torch.randn(batch, 3, h, w)
        outs = sess.run(None, {"video": frames.numpy()})
        ref = model.encode_video(frames)
        assert outs[0].shape[0] == batch
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("per_frame", [True, False])
def test_parity_report_files_and_values(tiny_exports, per_frame):
    model, d = tiny_exports[per_frame]
    report = check_parity(model, d, steps=3, batch=2)
    assert report["pass"] is True
    assert set(report["maps"]) == {"av", "video", "audio"}
    for e in [*report["graphs"].values(), *report["maps"].values()]:
        assert 0 <= e["max_abs"] <= 1e-4 and e["max_rel"] >= 0
    assert all(e["cc"] > 0.9999 for e in report["maps"].values())
    saved = json.loads((d / "parity.json").read_text())
    assert saved["maps"].keys() == report["maps"].keys()
    md = (d / "parity.md").read_text()
    assert "| denoise_audio |" in md and "| av |" in md and "pass" in md


def test_parity_report_detects_a_wrong_graph(tiny_exports, tmp_path):
    """A graph exported from other weights, relabelled as this model's, must fail parity."""
    model, d = tiny_exports[True]
    other = tiny_model(True, seed=7)
    export_onnx(other, tmp_path, modes=["video"])
    from salstream.engines.onnxruntime_engine import OrtEngine
    from salstream.export.parity import parity_report
    report = parity_report(model, OrtEngine(tmp_path, kind="cpu"), modes=["video"], steps=2)
    assert report["pass"] is False and report["maps"]["video"]["max_abs"] > 1e-3


def test_mode_subset_and_reexport_replace_the_manifest(tmp_path):
    model = tiny_model(True)
    m = export_onnx(model, tmp_path, modes=["audio"])
    assert set(m.graphs) == {"encode_audio", "denoise_audio"} and m.modes == {"audio": "denoise_audio"}
    assert read_manifest(tmp_path).modes == {"audio": "denoise_audio"}


def test_bad_manifests_fail_clearly(tiny_exports, tmp_path):
    _, d = tiny_exports[True]
    with pytest.raises(SalstreamError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(SalstreamError, match="unreadable"):
        read_manifest(tmp_path)


def test_fp16_export_is_half_precision_inside(tmp_path):
    model = tiny_model(True)
    m = export_onnx(model, tmp_path, fp16=True, modes=["video"])
    assert m.precision == "fp16"
    # FP32 at the boundary (engines feed the same tensors as for FP32 graphs), FP16 weights inside
    assert m.graphs["encode_video"].inputs[0].dtype == "float32"
    assert m.graphs["denoise_video"].inputs[1].dtype == "int64"
    proto = onnx.load(str(tmp_path / m.graphs["encode_video"].file))
    kinds = {init.data_type for init in proto.graph.initializer if len(init.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}
    # CPU parity cannot run FP16 graphs: the report says so instead of pretending
    report = check_parity(model, tmp_path)
    assert report["pass"] is None and "GPU" in report["skipped"]
    with pytest.raises(SalstreamError, match="FP32 graphs"):
        create_engine("ort-cpu", model=model, artifacts=tmp_path)


def test_exporting_over_a_previous_export_replaces_it(tiny_exports, tmp_path):
    _, d = tiny_exports[True]
    shutil.copytree(d, tmp_path / "x")
    other = tiny_model(True, seed=3)
    m = export_onnx(other, tmp_path / "x", modes=["video"])
    assert read_manifest(tmp_path / "x").weights_sha256 == m.weights_sha256 == weights_sha256(other)


def test_export_command_defaults_to_the_profiles_bundled_weights(tmp_path, monkeypatch, capsys):
    """`salstream export --out DIR` with no --checkpoint exports the weights the profile ships with,
    and says what it is doing graph by graph."""
    from salstream.cli import main
    from salstream.diffsal import registry

    ckpt = save_checkpoint(tiny_model(True, seed=3), tmp_path / "weights" / "tiny_bundled.safetensors")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", ckpt.parent)
    monkeypatch.setitem(registry._WEIGHTS, "tiny", ckpt.name)
    assert main(["export", "--profile", "tiny", "--out", str(tmp_path / "o"), "--no-parity", "--modes", "video"]) == 0
    out = capsys.readouterr().out
    assert str(ckpt) in out and "exporting encode_video (1/2" in out and "denoise_video (2/2" in out
    manifest = read_manifest(tmp_path / "o")
    assert manifest.checkpoint_sha256 == file_sha256(ckpt)
    # without bundled weights for the profile, the command asks for --checkpoint
    monkeypatch.delitem(registry._WEIGHTS, "tiny")
    assert main(["export", "--profile", "tiny", "--out", str(tmp_path / "o2")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
