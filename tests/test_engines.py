"""Engines on CPU: ONNX Runtime equals PyTorch, identity checks, cache, and clear errors for absent GPUs."""
from __future__ import annotations

import dataclasses
import shutil

import onnxruntime as ort
import pytest
import torch

from salstream.artifacts.graphs import example_noise, example_window  # noqa: E402
from salstream.artifacts.manifest import MANIFEST_NAME, read_manifest  # noqa: E402
from salstream.diffsal.config import MODES  # noqa: E402
from salstream.diffsal.inference import predict_window  # noqa: E402
from salstream.engines import EngineUnavailable, available_engines, create_engine  # noqa: E402
from salstream.engines.onnxruntime_engine import OrtEngine, physical_cores, session_options  # noqa: E402
from salstream.errors import SalstreamError  # noqa: E402
from salstream.export.onnx_export import export_onnx  # noqa: E402
from salstream.runtime import make_engine
from tests.support.tiny_models import tiny_model

HAS_CUDA = torch.cuda.is_available()


def test_all_engines_are_registered():
    assert {"torch", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch-cuda"} <= set(available_engines())


@pytest.mark.parametrize("io_binding", [False, True])
@pytest.mark.parametrize("per_frame", [True, False])
def test_ort_cpu_equals_torch_end_to_end(tiny_exports, per_frame, io_binding):
    model, d = tiny_exports[per_frame]
    engine = create_engine("ort-cpu", model=model, artifacts=d, io_binding=io_binding)
    video, audio = example_window(model.config, batch=2, seed=11)
    noise = example_noise(model.config, batch=2, seed=12)
    maps = {}
    for mode in MODES:
        ref = predict_window(model, video, audio, mode, steps=4, noise=noise)
        out = predict_window(engine, video, audio, mode, steps=4, noise=noise)
        assert out.shape == ref.shape == (2, 1, *model.config.map_size)
        assert (out - ref).abs().max().item() <= 1e-5, mode
        maps[mode] = out
    # the modes really run different graphs
    assert (maps["av"] - maps["video"]).abs().max() > 1e-3
    assert (maps["av"] - maps["audio"]).abs().max() > 1e-3


def test_ort_session_settings_are_explicit():
    so = session_options(threads=2)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session_options().intra_op_num_threads == physical_cores() >= 1


def test_engine_refuses_graphs_of_other_weights_or_profile(tiny_exports):
    model, d = tiny_exports[True]
    other = tiny_model(True, seed=5)
    with pytest.raises(SalstreamError, match="other weights"):
        create_engine("ort-cpu", model=other, artifacts=d)
    with pytest.raises(SalstreamError, match="profile 'tiny', expected 'lite'"):
        create_engine("ort-cpu", model=model, artifacts=d, profile="lite")


def test_engine_refuses_a_modified_graph(tiny_exports, tmp_path):
    model, d = tiny_exports[True]
    import shutil
    shutil.copytree(d, tmp_path / "g")
    with open(tmp_path / "g" / "denoise.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SalstreamError, match="denoise.onnx does not match its checksum"):
        create_engine("ort-cpu", model=model, artifacts=tmp_path / "g")
    (tmp_path / "g" / "denoise.onnx").unlink()
    with pytest.raises(SalstreamError, match="denoise.onnx is missing"):
        create_engine("ort-cpu", model=model, artifacts=tmp_path / "g")


def test_wrong_input_shape_names_the_input(tiny_exports):
    model, d = tiny_exports[True]
    engine = create_engine("ort-cpu", model=model, artifacts=d)
    with pytest.raises(SalstreamError, match="input 'video' has shape"):
        engine.encode_video(torch.randn(1, 3, 40, 40))


def test_missing_mode_graph_is_a_clear_error(tmp_path):
    model = tiny_model(True)
    export_onnx(model, tmp_path, modes=["video"])
    engine = OrtEngine(tmp_path)
    video, audio = example_window(model.config, 1)
    with pytest.raises(SalstreamError, match="encode_audio"):
        predict_window(engine, video, audio, "av")


def test_export_on_the_fly_is_cached(tmp_path):
    model = tiny_model(True)
    e1 = make_engine("ort-cpu", model, cache_root=tmp_path)
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and (entries[0] / MANIFEST_NAME).is_file()
    stamp = (entries[0] / MANIFEST_NAME).stat().st_mtime_ns
    e2 = make_engine("ort-cpu", model, cache_root=tmp_path)
    assert e2.artifacts == e1.artifacts and (entries[0] / MANIFEST_NAME).stat().st_mtime_ns == stamp
    video, audio = example_window(model.config, 1)
    noise = example_noise(model.config, 1)
    ref = predict_window(model, video, audio, "av", noise=noise)
    assert (predict_window(e2, video, audio, "av", noise=noise) - ref).abs().max() <= 1e-5
    # another model gets its own entry, never the cached graphs of the first
    e3 = make_engine("ort-cpu", tiny_model(True, seed=9), cache_root=tmp_path)
    assert e3.artifacts != e1.artifacts and len(list(tmp_path.iterdir())) == 2


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors given where no GPU runtime exists")
@pytest.mark.parametrize("name, needle", [
    ("ort-cuda", "salstream[gpu]"), ("ort-trt", "salstream[gpu]"),
    ("tensorrt", "salstream[tensorrt]"), ("torch-cuda", "CUDA"),
])
def test_gpu_engines_say_what_is_missing_in_one_line(tiny_exports, name, needle):
    model, d = tiny_exports[True]
    with pytest.raises(EngineUnavailable) as err:
        create_engine(name, model=model, artifacts=d)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and name in msg
    assert isinstance(err.value, SalstreamError)  # the CLI prints these as one line


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors given where no GPU runtime exists")
def test_export_cli_tensorrt_without_runtime_is_one_line(tmp_path, capsys):
    from salstream.cli import main
    rc = main(["export", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o"),
               "--tensorrt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "salstream[tensorrt]" in err
    assert not (tmp_path / "o").exists()


def test_manifest_records_export_facts(tiny_exports):
    _, d = tiny_exports[False]
    m = read_manifest(d)
    assert m.export_seconds is not None and m.export_seconds > 0
    assert m.versions["onnxruntime"] == ort.__version__
    assert m.video_outputs == 2 and m.audio_outputs is None
    assert dataclasses.asdict(m.config)["per_frame_video"] is False


def _real_model(profile: str):
    from salstream.diffsal import create_model
    if profile == "full":
        from salstream.diffsal.config import AudioConfig
        # smallest size the full network accepts (multiples of 32; audio slices half the frame)
        return create_model("full", input_size=(64, 96), map_size=(64, 96), audio=AudioConfig(slice_size=(32, 48)))
    return create_model(profile)


@pytest.mark.slow
@pytest.mark.parametrize("profile", [
    "lite",
    pytest.param("full", marks=pytest.mark.skipif(
        not __import__("os").environ.get("SALSTREAM_FULL_EXPORT"),
        reason="exporting full's 145 M-parameter graphs takes minutes on 2 cores: set SALSTREAM_FULL_EXPORT=1")),
])
def test_real_profiles_ort_cpu_equal_torch_per_mode(profile, tmp_path):
    """The issue's bound: end-to-end map max abs diff <= 1e-3 in FP32, for each mode."""
    from salstream.cli.export import check_parity
    if profile == "lite":
        # The bundled weights, exported into the test session's export cache the way `salstream run`
        # does it, so the other tests that run the bundled model (the README example) find them there.
        from salstream.diffsal.checkpoint import load_model
        from salstream.diffsal.registry import bundled_weights
        from salstream.runtime import exported_graphs
        model = load_model(bundled_weights("lite"), profile="lite")
        graphs = exported_graphs("ort-cpu", model, checkpoint=str(bundled_weights("lite")))
        tmp_path = tmp_path / "graphs"
        shutil.copytree(graphs, tmp_path)        # the parity report is written beside the graphs
    else:
        model = _real_model(profile)
        export_onnx(model, tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest.profile == profile and set(manifest.modes) == set(MODES)
    report = check_parity(model, tmp_path, batch=2)
    for mode in MODES:
        assert report["maps"][mode]["max_abs"] <= 1e-3, (mode, report["maps"][mode])
    assert report["pass"] is True
    # the same graphs refuse to serve the other profile's checkpoint identity
    with pytest.raises(SalstreamError, match="expected 'full'" if profile == "lite" else "expected 'lite'"):
        OrtEngine(tmp_path, profile="full" if profile == "lite" else "lite")


def test_int8_quantised_graphs_run_and_stay_close(tiny_exports, tmp_path):
    from salstream.export.parity import map_cc
    from salstream.export.quantize import quantize_export
    model, d = tiny_exports[True]
    q = quantize_export(d, tmp_path / "int8", op_types=("MatMul", "Gemm", "Conv"))
    manifest = read_manifest(q)
    assert manifest.precision == "int8" and manifest.weights_sha256 == read_manifest(d).weights_sha256
    import onnx
    ops = {n.op_type for n in onnx.load(str(q / "denoise.onnx")).graph.node}
    assert ops & {"ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"}, ops
    engine = create_engine("ort-cpu", model=model, artifacts=q)
    video, audio = example_window(model.config, 2, seed=1)
    noise = example_noise(model.config, 2)
    ref = predict_window(model, video, audio, "av", noise=noise)
    out = predict_window(engine, video, audio, "av", noise=noise)
    assert 0 < (out - ref).abs().max() < 0.2 and map_cc(out, ref) > 0.9


def test_exports_are_cached_per_user_not_per_working_folder(tmp_path, monkeypatch):
    """A run from another folder finds the graphs the first one exported (no second export)."""
    from salstream.export.cache import default_cache_root
    monkeypatch.setenv("SALSTREAM_CACHE", str(tmp_path / "cache"))
    assert default_cache_root() == tmp_path / "cache" / "engines"
    model = tiny_model(True, seed=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = make_engine("ort-cpu", model)
    stamp = (first.artifacts / MANIFEST_NAME).stat().st_mtime_ns
    monkeypatch.chdir(tmp_path / "b")
    second = make_engine("ort-cpu", model)
    assert second.artifacts == first.artifacts and (second.artifacts / MANIFEST_NAME).stat().st_mtime_ns == stamp
    written = [p for d in ("a", "b") for p in (tmp_path / d).rglob("*")]
    assert not written, f"nothing is written into the working folders: {written}"
    monkeypatch.delenv("SALSTREAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "salstream" / "engines"


def test_warm_up_starts_the_sessions_a_stream_will_use_before_its_first_frame(tiny_exports):
    """A cold ONNX Runtime engine pays for session set-up inside the first windows, and a live
    stream drops frames meanwhile; the pipeline warms the encoders and the mode graphs its
    streams will run (auto: audio-visual and video-only if a stream has sound)."""
    import numpy as np

    from salstream.artifacts.graphs import AUDIO_GRAPH, VIDEO_GRAPH
    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    from salstream.streamer.live.sources.arrays import ArraySource
    model, d = tiny_exports[True]
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    cases = [("auto", None, {"video"}), ("auto", np.zeros(16000, np.float32), {"av", "video"}),
             ("audio", np.zeros(16000, np.float32), {"audio"})]
    for mode, audio, modes in cases:
        engine = create_engine("ort-cpu", model=model, artifacts=d)
        assert not engine._sessions
        pipe = Pipeline(PipelineOptions(mode=mode), engine, sources=[ArraySource(frames, audio=audio)])
        pipe._sources = pipe._open_sources()
        pipe._warm_up(engine, pipe._sources)
        graphs = {VIDEO_GRAPH, AUDIO_GRAPH} | {engine.manifest.modes[m] for m in modes}
        assert set(engine._sessions) == graphs, mode


def test_a_stream_with_sound_added_to_a_running_pipeline_is_warmed_before_it_is_read(tiny_exports):
    """A cluster replica starts with no streams and so warms video-only; a stream with sound
    that arrives later gets its audio-visual session started by ``add_source`` itself, not
    inside the scheduler's next batch (which every other stream on the replica waits for)."""
    import threading

    import numpy as np

    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    from salstream.streamer.live.sources.arrays import ArraySource
    model, d = tiny_exports[True]
    engine = create_engine("ort-cpu", model=model, artifacts=d)
    started = []
    real_warmup = engine.warmup
    engine.warmup = lambda modes: (started.append(list(modes)), real_warmup(modes))
    pipe = Pipeline(PipelineOptions(mode="auto", publish=None), engine, sources=[], keep_open=True)
    runner = threading.Thread(target=pipe.run, daemon=True)
    runner.start()
    try:
        assert pipe.ready.wait(60)
        assert started == [["video"]] and engine.manifest.modes["av"] not in engine._sessions
        frames = np.zeros((2, 48, 64, 3), np.uint8)
        pipe.add_source(ArraySource(frames, stream_id="silent"))
        assert started == [["video"]], "a second silent stream warms nothing again"
        pipe.add_source(ArraySource(frames, audio=np.zeros(16000, np.float32), stream_id="sound"))
        assert started == [["video"], ["av"]]
        assert engine.manifest.modes["av"] in engine._sessions
    finally:
        pipe.stop()
        runner.join(30)
