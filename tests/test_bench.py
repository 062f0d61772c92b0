"""`salstream bench`: runs end to end on a tiny configuration and writes valid JSON, plots and markdown.

Timing goals are reported by the bench, never asserted here: these tests check that the
figures exist, are consistent with each other, and come from real runs (real engines,
ONNX Runtime sessions, ZeroMQ sockets on loopback).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# benchmarks/ is part of the checkout, not of the installed packages
from benchmarks import cli as bench_cli  # noqa: E402
from benchmarks.model_bench import (  # noqa: E402
    ModelBenchOptions,
    load_subject,
    official_style_window,
    run_model_bench,
    smooth_clip,
)
from benchmarks.pipeline_bench import explain_goal  # noqa: E402
from benchmarks.report import stats, write_json  # noqa: E402
from tests.support.pipeline import one_torch_thread

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(path: Path) -> dict:
    def no_constants(name):  # NaN / Infinity are not JSON
        raise AssertionError(f"{path.name} contains {name}")
    return json.loads(path.read_text(), parse_constant=no_constants)


def _only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _assert_pngs(run_dir: Path, names: list[str]) -> None:
    assert names, "no plots were written"
    for name in names:
        data = (run_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name


def test_quick_bench_runs_end_to_end_and_writes_json_plots_and_tables(tmp_path):
    table = tmp_path / "README-performance.md"
    with one_torch_thread():
        rc = bench_cli.main(["--quick", "--out", str(tmp_path / "runs"), "--readme-table", str(table)])
    assert rc == 0
    run_dir = _only_run(tmp_path / "runs")
    res = _strict_json(run_dir / "bench.json")

    m = res["machine"]
    for key in ("cpu_model", "cpu_count", "cpu_affinity", "ram_gib", "gpu", "git", "load_average", "load_average_end"):
        assert key in m, key
    assert m["cpu_count"] >= 1 and m["versions"]["torch"] == torch.__version__
    assert {"onnxruntime", "numpy", "tensorrt", "torch_tensorrt"} <= set(m["versions"])

    lite = res["model"]["profiles"]["lite"]
    per_map = lite["engines"]["torch"]["per_map"]
    assert set(per_map) == {"1", "2"}
    for s in per_map.values():
        assert s["n"] == 3 and 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
        assert s["maps_per_s"] == pytest.approx(1000 / s["p50"], rel=1e-3)
    graphs = lite["engines"]["torch"]["graphs"]
    # each timed lite map encodes one frame and one slice and runs `steps` denoiser calls
    assert graphs["encode_video"]["n"] == graphs["encode_audio"]["n"] == 6
    assert graphs["denoise"]["n"] == 3 * 1 + 3 * 2
    ws = lite["warm_start"]
    assert ws["steps_run"] < ws["steps"] and ws["windows"] == 2 and -1 <= ws["cc_min"] <= 1

    full = res["model"]["profiles"]["full"]
    off = full["official_style"]
    assert off["per_map"]["1"]["n"] == 1 and off["comparison"]["speedup"] > 0
    assert off["identity"]["1"]["max_abs_diff"] < 1e-5
    if not torch.cuda.is_available():
        assert "torch.cuda.is_available() is False" in res["model"]["gpu"]["skipped"]

    runs = res["pipeline"]["runs"]
    assert [(r["streams"], r["hop"]) for r in runs] == [(1, 1), (2, 1), (2, 2)]   # + the two-stream goal's hop-2 run
    for r in runs:
        assert "skipped" not in r, r
        assert r["maps_measured"] > 0 and r["capture_to_publish_ms"]["p50"] > 0
        assert r["capture_to_receive_ms"]["p50"] >= r["capture_to_publish_ms"]["p50"] - 1.0
        assert r["resources"]["timeline"] and r["resources"]["rss_mib_max"] > 50
        assert set(r["per_stream"]) == {str(i) for i in range(r["streams"])}
        assert r["stage_median_ms"]["denoise"] > 0
        assert len(r["cdf_ms"]["capture_to_publish"]) == r["maps_measured"]
    goal = res["pipeline"]["goal"]
    assert isinstance(goal["met"], bool) and goal["explanation"]

    _assert_pngs(run_dir, res["plots"])
    assert {"model_latency_vs_steps.png", "pipeline_latency_cdf.png", "pipeline_stages.png",
            "pipeline_resources.png", "pipeline_scaling.png"} <= set(res["plots"])
    summary = (run_dir / "summary.md").read_text()
    assert "| lite | torch |" in summary and "official-style" in summary
    readme = table.read_text()
    assert run_dir.name in readme and "capture→publish" in readme

    # --render rewrites the outputs from bench.json; a run without a pipeline part takes that part
    # from the newest earlier non-quick run, so re-running one part keeps the other in the table.
    older, newer = tmp_path / "runs2" / "20000101-000000", tmp_path / "runs2" / "20000102-000000"
    for d, drop in ((older, None), (newer, "pipeline")):
        d.mkdir(parents=True)
        copy = dict(res, configuration="default")
        copy.pop(drop, None)
        (d / "bench.json").write_text(json.dumps(copy))
    table2 = tmp_path / "table2.md"
    assert bench_cli.main(["--render", str(newer), "--readme-table", str(table2)]) == 0
    merged = table2.read_text()
    assert older.name in merged and newer.name in merged and "| lite / torch | 1 |" in merged
    _assert_pngs(newer, ["model_latency_vs_steps.png"])
    assert not (newer / "pipeline_stages.png").exists()


def test_official_style_sampler_gives_our_maps():
    """With weights that make the map vary, the official-style loop (deep copies, noise slot
    written into the copied list, its own DDIM arithmetic) reproduces our window."""
    from salstream.diffsal.inference import predict_window

    model, _ = load_subject("full", quick=True)
    cfg = model.config
    state = {k: v.clone() for k, v in model.decoder_net.state_dict().items()}
    try:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.decoder_net.parameters():   # larger weights than the 0.01 init: maps with structure
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        video, audio = smooth_clip(cfg, cfg.frames)
        audio = audio[:, :, : cfg.audio.n_slices]
        noise = torch.randn((1, 1, *cfg.map_size), generator=g)
        with one_torch_thread():
            ours = predict_window(model, video, audio, "av", 2, noise=noise)
            ref = official_style_window(model, video, audio, 2, noise)
    finally:
        model.decoder_net.load_state_dict(state)
    assert ours.std() > 1e-3, "maps do not vary: the identity check would be vacuous"
    assert (ours - ref).abs().max() < 1e-5


def test_model_bench_on_onnx_runtime_and_a_missing_engine(tmp_path):
    from salstream.export.onnx_export import export_onnx
    from tests.support.tiny_models import tiny_model

    model = tiny_model()
    # the TorchScript exporter takes a fraction of a second on this tiny network (dynamo: ~15 s)
    export_onnx(model, tmp_path / "onnx", modes=("av",), exporter="torchscript")
    opts = ModelBenchOptions(profiles=["tiny"], engines=["torch", "ort-cpu", "ort-cuda"], steps=[1, 2], repeats=2,
                             warmup=1, warm_windows=2, gpu=False, threads=1, cache_root=str(tmp_path / "cache"),
                             models={"tiny": model}, engine_kwargs={"ort-cpu": {"artifacts": str(tmp_path / "onnx")}})
    with one_torch_thread():
        res = run_model_bench(opts, progress=lambda msg: None)
    tiny = res["profiles"]["tiny"]
    ort = tiny["engines"]["ort-cpu"]
    assert ort["describe"]["engine"] == "ort-cpu" and ort["describe"]["providers"]
    assert set(ort["describe"]["providers"].values()) == {"CPUExecutionProvider"}
    for eng in ("torch", "ort-cpu"):
        assert tiny["engines"][eng]["per_map"]["2"]["n"] == 2
    if not torch.cuda.is_available():
        assert "ort-cuda" in tiny["engines"]["ort-cuda"]["skipped"]
    assert "official_style" not in tiny          # not the published architecture
    assert res["gpu"] == {"skipped": "disabled (--no-gpu)"}
    assert tiny["gflops"]["denoise"] > 0
    write_json(res, tmp_path / "tiny.json")
    _strict_json(tmp_path / "tiny.json")


class _FakeLivePublisher:
    """A real ZeroMQ publisher sending well-formed maps whose frames were 'captured' 20 ms earlier."""

    def __init__(self, streams=("cam0", "cam1")):
        from salstream.streamer.wire.publisher import Publisher
        self.pub = Publisher("tcp://127.0.0.1:*")
        self.endpoint = self.pub.endpoint
        self.streams = streams
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.pub.wait_for_subscriber(10.0, stop=self.stop)
        i = 0
        while not self.stop.is_set():
            for sid in self.streams:
                now = time.monotonic()
                header = {"stream": sid, "frame_index": i, "pts": i / 30, "capture_time": now - 0.020, "mode": "av",
                          "latency_ms": {"assemble": 1.0, "wait": 2.0, "video_encoder": 7.0, "audio_encoder": 1.0,
                                         "denoise": [4.0, 4.0], "postprocess": 1.0},
                          "dropped": 0, "profile": "lite", "engine": "test", "steps": 2, "batch": 1, "flags": {}}
                self.pub.publish_map(header, np.full((6, 8), 0.5, np.float32), started=now)
            i += 1
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.pub.close()


def test_subscribe_mode_measures_a_running_publisher_from_headers(tmp_path):
    with _FakeLivePublisher() as live:
        rc = bench_cli.main(["--subscribe", live.endpoint, "--maps", "40", "--out", str(tmp_path)])
    assert rc == 0
    run_dir = _only_run(tmp_path)
    res = _strict_json(run_dir / "bench.json")
    sub = res["subscribe"]
    assert sub["maps"] == 40 and sub["address"] == live.endpoint
    assert set(sub["per_stream"]) == {"cam0", "cam1"}
    assert sub["capture_to_publish_ms"]["p50"] == pytest.approx(20.0, abs=5.0)
    assert 0 <= sub["publish_to_receive_ms"]["p50"] < 1000
    c2r, c2p, p2r = sub["capture_to_receive_ms"], sub["capture_to_publish_ms"], sub["publish_to_receive_ms"]
    assert c2r["mean"] == pytest.approx(c2p["mean"] + p2r["mean"], abs=0.01)
    assert sub["stage_median_ms"]["denoise"] == 8.0 and sub["stage_median_ms"]["video_encoder"] == 7.0
    assert sub["maps_per_s"] > 10
    _assert_pngs(run_dir, res["plots"])
    assert "## Subscriber" in (run_dir / "summary.md").read_text()


def test_subscribe_to_a_silent_address_fails_with_one_clear_line(tmp_path, capsys):
    import socket
    with socket.socket() as s:   # a port with nobody publishing on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = bench_cli.main(["--subscribe", f"tcp://127.0.0.1:{port}", "--connect-timeout", "0.5", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"tcp://127.0.0.1:{port}" in err[0] and "salstream run" in err[0]


def test_salstream_bench_entry_point_and_its_message_outside_a_checkout(tmp_path, monkeypatch, capsys):
    from salstream import cli as cli
    assert cli.main(["bench", "--skip-model", "--skip-pipeline", "--out", str(tmp_path)]) == 0
    res = _strict_json(_only_run(tmp_path) / "bench.json")
    assert res["schema"] == "salstream-bench/1" and res["machine"]["cpu_count"] >= 1

    # Outside a checkout there are no benchmarks to start: the command says what to do.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_bad_options_are_refused(tmp_path, capsys):
    assert bench_cli.main(["--quick", "--thorough", "--out", str(tmp_path)]) == 2
    assert "contradict" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_cli.main(["--steps", "0,2"])
    assert "integers >= 1" in capsys.readouterr().err


def test_stats_and_goal_explanation():
    vals = list(np.linspace(1.0, 100.0, 100))
    s = stats(vals + [float("nan"), None])
    assert s["n"] == 100 and s["p50"] == pytest.approx(np.percentile(vals, 50), abs=1e-3)
    assert s["p99"] == pytest.approx(np.percentile(vals, 99), abs=1e-3)
    assert stats([])["p50"] is None

    run = {"profile": "lite", "engine": "ort-cpu", "fps": 30.0, "steps": [2], "maps_per_s_per_stream": 12.0,
           "maps_per_frame": 0.4, "capture_to_publish_ms": {"p95": 180.0},
           "stage_median_ms": {"video_encoder": 40.0, "audio_encoder": 1.0, "denoise": 60.0, "postprocess": 0.5,
                               "wait": 5.0},
           "resources": {"cpu_percent_mean": 190.0}, "load_average_start": [0.5, 0.5, 0.5],
           "load_average_end": [1.0, 1.0, 1.0]}
    g = explain_goal(run)
    assert g["met"] is False and not g["maps_per_s_ok"] and not g["p95_ok"]
    assert "denoise 60.0 ms" in g["explanation"] and "101.5 ms" in g["explanation"]
    assert "+ 2 step(s)" in g["explanation"]
    ok = dict(run, maps_per_s_per_stream=29.97, maps_per_frame=1.0, capture_to_publish_ms={"p95": 70.0})
    assert explain_goal(ok)["met"] is True
