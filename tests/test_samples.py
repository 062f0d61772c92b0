"""K draws per window: one batched denoiser call per step, encoders once, mean map and per-pixel spread."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from salstream.artifacts.graphs import example_window
from salstream.diffsal.inference import (
    draw_stats,
    encode_window,
    predict_from_features,
    predict_samples,
    repeat_batch,
)
from salstream.engines import create_engine
from tests.support.tiny_models import tiny_model


class Counting:
    """A real runner whose graph calls are counted (with the batch each call got)."""

    def __init__(self, inner):
        self.inner, self.config = inner, inner.config
        self.calls: dict[str, list[int]] = {"encode_video": [], "encode_audio": [], "denoise": []}

    def encode_video(self, x):
        self.calls["encode_video"].append(x.shape[0])
        return self.inner.encode_video(x)

    def encode_audio(self, x):
        self.calls["encode_audio"].append(x.shape[0])
        return self.inner.encode_audio(x)

    def denoise(self, x_t, t, v, a):
        self.calls["denoise"].append(x_t.shape[0])
        return self.inner.denoise(x_t, t, v, a)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(per_frame=False)
    video, audio = example_window(model.config, batch=2, seed=3)
    with torch.inference_mode():
        feats = encode_window(model, video, audio, "av")
    return model, feats


def test_one_sample_is_bit_identical_to_the_single_draw_path(tiny):
    model, (v, a) = tiny
    ref = predict_from_features(model, v, a, 2, 4, generator=torch.Generator().manual_seed(5))
    out = predict_samples(model, v, a, 2, 1, 4, generator=torch.Generator().manual_seed(5))
    assert out.shape == (2, 1, 1, *model.config.map_size)
    assert torch.equal(out[:, 0], ref)
    mean, spread = draw_stats(out)
    assert torch.equal(mean, ref) and spread is None


def test_k_draws_are_one_batched_call_per_step_and_equal_k_single_draws(tiny):
    model, (v, a) = tiny
    k, steps = 4, 2
    runner = Counting(model)
    noise = torch.randn((2 * k, 1, *model.config.map_size), generator=torch.Generator().manual_seed(9))
    draws = predict_samples(runner, v, a, 2, k, steps, noise=noise)
    assert draws.shape == (2, k, 1, *model.config.map_size)
    # the encoders are not run by sampling at all, and the denoiser once per step for all 2×K draws
    assert runner.calls["encode_video"] == runner.calls["encode_audio"] == []
    assert runner.calls["denoise"] == [2 * k] * steps
    # draw j of window b is exactly what one single-draw call with that noise gives
    for b in range(2):
        vb = tuple(f[b:b + 1] for f in v)
        for j in range(k):
            one = predict_from_features(model, vb, a[b:b + 1], 1, steps, noise=noise[b * k + j:b * k + j + 1])
            torch.testing.assert_close(draws[b, j], one[0], atol=1e-6, rtol=0)
    # different noise, different maps: the spread is real, and mean/std are those of the draws
    mean, spread = draw_stats(draws)
    assert mean.shape == spread.shape == (2, 1, *model.config.map_size)
    assert spread.max() > 1e-3 and spread.min() >= 0
    torch.testing.assert_close(spread[1, 0], draws[1, :, 0].std(dim=0))
    torch.testing.assert_close(mean[0, 0], draws[0, :, 0].mean(dim=0))


def test_warm_start_is_shared_by_a_windows_draws(tiny):
    model, (v, a) = tiny
    prev = torch.rand((2, 1, *model.config.map_size), generator=torch.Generator().manual_seed(1))
    draws = predict_samples(model, v, a, 2, 3, 4, generator=torch.Generator().manual_seed(2),
                            warm_start=prev, warm_start_timestep=250)
    assert draws.shape == (2, 3, 1, *model.config.map_size)
    with pytest.raises(ValueError, match="samples"):
        predict_samples(model, v, a, 2, 0)
    with pytest.raises(ValueError, match="needs batch 6"):
        predict_samples(model, v, a, 2, 3, noise=torch.zeros((2, 1, *model.config.map_size)))


def test_repeat_batch_keeps_each_windows_copies_together():
    x = torch.arange(3).reshape(3, 1)
    assert repeat_batch(x, 2).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert repeat_batch(None, 2) is None
    assert [t.flatten().tolist() for t in repeat_batch((x, x + 10), 2)] == [[0, 0, 1, 1, 2, 2],
                                                                          [10, 10, 11, 11, 12, 12]]


@pytest.mark.parametrize("per_frame", [True, False])
def test_exported_denoiser_takes_the_k_draw_batch(tiny_exports, per_frame):
    """The exported graphs have a dynamic batch axis: K draws need no new export, and ONNX Runtime's
    batched draws equal PyTorch's."""
    model, d = tiny_exports[per_frame]
    engine = create_engine("ort-cpu", model=model, artifacts=d)
    video, audio = example_window(model.config, batch=2, seed=4)
    k = 5
    noise = torch.randn((2 * k, 1, *model.config.map_size), generator=torch.Generator().manual_seed(6))
    for mode in ("av", "video", "audio"):
        with torch.inference_mode():
            v, a = encode_window(model, video if mode != "audio" else None, audio if mode != "video" else None, mode)
        ref = predict_samples(model, v, a, 2, k, 2, noise=noise)
        out = predict_samples(engine, v, a, 2, k, 2, noise=noise)
        assert out.shape == ref.shape == (2, k, 1, *model.config.map_size)
        assert (out - ref).abs().max().item() <= 1e-5, mode


# ---------------------------------------------------------------------------------- wire
def _conf_parts(**changes):
    from salstream.streamer.wire import format as wire
    h = wire.MapHeader(stream="cam0", frame_index=7, pts=0.25, capture_time=1.0, seq=3, dtype="uint8",
                       extra={"samples": 4})
    spread = np.linspace(0, 0.3, 12, dtype=np.float32).reshape(3, 4)
    return wire.encode_conf(h, spread), spread


def test_conf_message_round_trip_has_the_maps_header():
    from salstream.streamer.wire import format as wire
    parts, spread = _conf_parts()
    assert parts[0] == b"conf/cam0"
    msg = wire.decode(parts)
    assert isinstance(msg, wire.ConfMessage) and msg.kind == "conf" and msg.stream == "cam0"
    assert msg.seq == 3 and msg.frame_index == 7 and msg.header.shape == (3, 4)
    assert msg.header.dtype == "float32"          # a spread is never quantised, whatever the map's payload
    assert msg.header.extra == {"samples": 4}
    np.testing.assert_array_equal(msg.spread, spread)


@pytest.mark.parametrize("bad, needle", [
    (lambda p: [p[0], p[1], p[2][:-4]], "payload"),
    (lambda p: [p[0], p[1], np.full((3, 4), -1, "<f4").tobytes()], "negative"),
    (lambda p: [p[0], p[1], np.full((3, 4), np.nan, "<f4").tobytes()], "NaN"),
    (lambda p: [p[0], p[1].replace(b'"shape":[3,4]', b'"shape":[4096,4097]'), p[2]], "shape"),
    (lambda p: [b"conf/other", p[1], p[2]], "does not match"),
])
def test_bad_conf_messages_are_refused(bad, needle):
    from salstream.streamer.wire import format as wire
    parts, _ = _conf_parts()
    with pytest.raises(wire.WireError, match=needle):
        wire.decode(bad(parts))


# ------------------------------------------------------------------------------ pipeline
def _run_and_listen(opts, engine):
    """Run the real pipeline (file → scheduler → ZeroMQ on loopback); a subscriber to maps and
    spreads joins before the first map and collects everything."""
    import threading

    from salstream.streamer.live.pipeline import Pipeline
    from salstream.streamer.wire.subscriber import Subscriber
    opts.publish, opts.wait_subscriber, opts.send_frames = "tcp://127.0.0.1:*", 30.0, False
    pipe = Pipeline(opts, engine=engine)
    out: dict = {}

    def target():
        try:
            out["summary"] = pipe.run()
        except BaseException as exc:   # re-raised in the test thread
            out["error"] = exc
    th = threading.Thread(target=target)
    th.start()
    assert pipe.bound.wait(30), "publisher never bound"
    msgs = []
    with Subscriber(pipe.endpoint, ["0"], kinds={"map", "conf"}) as sub:
        while True:
            m = sub.recv(timeout=1.0)
            if m is None and not th.is_alive():
                break
            if m is not None:
                msgs.append(m)
        bad = sub.bad_messages
    th.join(60)
    if "error" in out:
        raise out["error"]
    assert bad == 0
    return out["summary"], pipe, msgs


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    from tests.support.media import write_test_clip
    return write_test_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=0.5, fps=20, audio_rate=48000)


def test_subscriber_gets_a_spread_next_to_every_map(engine, short_clip):
    from salstream.streamer.live.pipeline import PipelineOptions
    from salstream.streamer.wire import format as wire
    counting = Counting(engine)
    counting.name = "torch"
    opts = PipelineOptions(sources=[str(short_clip.path)], paced=False, steps=2, samples=4, max_batch=1)
    summary, pipe, msgs = _run_and_listen(opts, counting)
    maps = [m for m in msgs if isinstance(m, wire.MapMessage)]
    confs = [m for m in msgs if isinstance(m, wire.ConfMessage)]
    n = short_clip.n_frames
    assert summary.maps == n == len(maps) == len(confs)
    # each spread follows its own map, under the same header
    for m, c in zip(maps, confs):
        assert msgs.index(c) == msgs.index(m) + 1
        assert (c.header.seq, c.frame_index, c.header.shape) == (m.header.seq, m.frame_index, m.header.shape)
        assert c.spread.shape == m.saliency.shape == tuple(engine.config.map_size)
        assert m.header["samples"] == 4 and len(m.header["latency_ms"]["denoise"]) == 2
        assert c.spread.min() >= 0 and c.spread.max() <= 0.5 + 1e-6     # std of values in [0, 1]
    assert max(float(c.spread.max()) for c in confs) > 1e-4          # draws really differ
    # encoders once per window: every frame is encoded exactly once (the per-frame cache), every
    # audio slice at most once, and each denoiser call carries the window's 4 draws
    assert sum(counting.calls["encode_video"]) == n == pipe.scheduler.frames_encoded
    assert sum(counting.calls["encode_audio"]) == pipe.scheduler.slices_encoded
    assert set(counting.calls["denoise"]) == {4} and len(counting.calls["denoise"]) == 2 * n


def test_one_sample_publishes_no_spread_and_the_usual_header(engine, short_clip):
    from salstream.streamer.live.pipeline import PipelineOptions
    from salstream.streamer.wire import format as wire
    counting = Counting(engine)
    opts = PipelineOptions(sources=[str(short_clip.path)], paced=False, steps=1)
    summary, _, msgs = _run_and_listen(opts, counting)
    assert summary.maps == short_clip.n_frames == len(msgs)
    assert all(isinstance(m, wire.MapMessage) and "samples" not in m.header for m in msgs)
    assert set(counting.calls["denoise"]) == {1}


@pytest.mark.parametrize("value", [0, 65])
def test_out_of_range_samples_is_a_clear_error(value, engine):
    from salstream.errors import SalstreamError
    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    with pytest.raises(SalstreamError, match="--samples"):
        Pipeline(PipelineOptions(samples=value), engine)


def test_python_api_gives_the_spread_with_each_map(engine):
    from salstream import Saliency
    frames = np.random.default_rng(0).integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
    preds = list(Saliency(engine=engine, samples=3, steps=1).predict_frames(frames, fps=20))
    assert len(preds) == 6
    for p in preds:
        assert p.spread is not None and p.spread.shape == p.saliency.shape and p.spread.min() >= 0
        assert p.header["samples"] == 3
    assert all(p.spread is None for p in Saliency(engine=engine, steps=1).predict_frames(frames[:3], fps=20))


# ---------------------------------------------------------------------------------- eval
def test_sample_counts_and_calibration_helpers():
    from salstream.diffsal.evaluate import calibration, sample_counts, spread_error_spearman
    assert sample_counts(8) == [1, 2, 4, 8] and sample_counts(6) == [1, 2, 4, 6] and sample_counts(2) == [1, 2]
    # windows whose CC falls as their spread grows: the thirds come out low → high spread, CC high → low
    windows = [(s, 1.0 - s, 0.5) for s in np.linspace(0.0, 0.9, 9)][::-1]
    cal = calibration(windows)
    assert cal["windows"] == 9 and cal["windows_per_bin"] == [3, 3, 3] and cal["spearman_mean"] == 0.5
    assert cal["cc_by_spread_bin"][0] > cal["cc_by_spread_bin"][1] > cal["cc_by_spread_bin"][2]
    assert cal["spread_bins"][0][1] <= cal["spread_bins"][1][0]
    # a spread that ranks pixels exactly like the error is perfectly calibrated; a constant one says nothing
    yy, xx = np.mgrid[0:8, 0:12]
    gt = np.exp(-((xx - 6) ** 2 + (yy - 4) ** 2) / 8.0)
    pred = np.exp(-((xx - 3) ** 2 + (yy - 4) ** 2) / 8.0)
    from salstream.diffsal.maps import normalize_map
    err = np.abs(normalize_map(pred) - normalize_map(gt))
    assert spread_error_spearman(pred, err, gt) == pytest.approx(1.0)
    assert spread_error_spearman(pred, -err, gt) == pytest.approx(-1.0)
    assert spread_error_spearman(pred, np.zeros_like(err), gt) is None


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from salstream.diffsal.datasets.layout import load_videos
    from salstream.diffsal.datasets.synthetic import write_synthetic
    root = tmp_path_factory.mktemp("syn")
    write_synthetic(root, {"test": 2}, n_frames=12, width=128, height=64)
    return {"Synthetic": load_videos(root, "test", datasets=["Synthetic"])["Synthetic"]}


def _eval_model():
    from salstream.diffsal.registry import create_model, default_config
    torch.manual_seed(0)
    return create_model(default_config("lite", frames=8, frame_stride=1, target_index=7, input_size=(64, 128),
                                       map_size=(16, 32)))


def test_eval_with_samples_reports_quality_vs_k_and_calibration(tmp_path, eval_data):
    from PIL import Image

    from salstream.diffsal.evaluate import evaluate, write_report
    from tests.support.pipeline import one_torch_thread
    with one_torch_thread():
        model = _eval_model()
        runner = Counting(model)
        res = evaluate(runner, eval_data, modes=("av", "video"), frame_step=3, progress=False, samples=4,
                       n_examples=1)
    # the encoders ran once per frame / slice, never per draw; each denoiser call carries 4 draws per window
    assert all(b % 4 == 0 for b in runner.calls["denoise"])
    assert sum(runner.calls["encode_video"]) <= sum(v.n_frames for v in eval_data["Synthetic"])
    smp = res["sampling"]
    assert smp["samples"] == 4 and smp["k"] == [1, 2, 4]
    modes = res["datasets"]["Synthetic"]["modes"]
    for mode in ("av", "video"):
        d = smp["datasets"]["Synthetic"][mode]
        assert set(d["by_k"]) == {"1", "2", "4"}
        assert d["by_k"]["4"] == modes[mode]                 # the scored map is the mean of all K draws
        assert d["by_k"]["1"] != d["by_k"]["4"]
        cal = d["calibration"]
        assert cal["windows"] == sum(cal["windows_per_bin"]) >= 3 and len(cal["cc_by_spread_bin"]) == 3
        assert cal["mean_spread"] > 0 and -1 <= cal["spearman_mean"] <= 1
    paths = write_report(res, tmp_path / "rep")
    assert "k=4 CC / NSS" in paths["md"].read_text()
    with Image.open(paths["samples"]) as im:
        assert im.size[0] > 600 and im.size[1] > 150


def test_eval_with_one_sample_has_no_sampling_part(eval_data):
    from salstream.diffsal.evaluate import evaluate
    from tests.support.pipeline import one_torch_thread
    with one_torch_thread():
        res = evaluate(_eval_model(), eval_data, modes=("video",), frame_step=6, progress=False, n_examples=0)
    assert "sampling" not in res and res["samples"] == 1


def test_eval_cli_refuses_bad_samples_in_one_line(capsys):
    from salstream.cli import main
    assert main(["eval", "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples 0" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- bench
def test_bench_times_k_draws_batched_against_k_separate_calls(tmp_path):
    from benchmarks.model_bench import ModelBenchOptions, run_model_bench, samples_bench
    from benchmarks.plots import samples_cost
    from benchmarks.report import markdown_summary
    from tests.support.pipeline import one_torch_thread
    model = tiny_model()
    runner = Counting(create_engine("torch", model=model))
    with one_torch_thread():
        res = samples_bench(runner, 2, [1, 3], repeats=2, warmup=0)
    assert set(res["per_k"]) == {"1", "3"}
    for e in res["per_k"].values():
        assert e["batched"]["n"] == e["separate"]["n"] == 2 and e["batched"]["p50"] > 0
    assert res["per_k"]["1"]["batched_vs_one_draw"] == 1.0
    # batched: 2 steps × a batch of K; separate: K loops of 2 steps at batch 1 (K = 1: both the same)
    assert runner.calls["denoise"] == [1] * 2 * 2 * 2 + ([3] * 2 + [1] * 3 * 2) * 2
    # the frame is encoded once per map in both (one new frame each)
    assert runner.calls["encode_video"].count(1) >= 2 * 2 * 2
    # wired into the model bench, its summary table and a plot
    opts = ModelBenchOptions(profiles=["tiny"], engines=["torch"], steps=[1], repeats=2, warmup=0, warm_windows=0,
                             gpu=False, threads=1, models={"tiny": model}, samples=(1, 2), samples_engines=["torch"],
                             flops=False)
    with one_torch_thread():
        out = run_model_bench(opts, progress=lambda msg: None)
    per_k = out["profiles"]["tiny"]["samples"]["torch"]["per_k"]
    assert set(per_k) == {"1", "2"}
    text = markdown_summary({"machine": {"versions": {"torch": "t", "onnxruntime": "o"}}, "model": out})
    assert "a map of K draws" in text and "batched / separate" in text
    png = samples_cost(out, tmp_path / "samples.png")
    assert png is not None and png.stat().st_size > 1000


# ------------------------------------------------------------------------------- viewer
def test_web_bridge_pairs_each_map_with_its_spread():
    """A real publisher sends maps of 3 draws with their spreads, and one plain map: the bridge
    keeps each map with its own spread (scaled ×2 to uint8) and never holds a plain map back."""
    import time

    from salstream.streamer.web.bridge import MapBridge
    from salstream.streamer.wire import format as wire
    from salstream.streamer.wire.publisher import Publisher
    with Publisher("tcp://127.0.0.1:*") as pub:
        changes: list[str] = []
        bridge = MapBridge(pub.endpoint, on_change=changes.append).start()
        try:
            assert pub.wait_for_subscriber(10.0)
            rng = np.random.default_rng(0)
            sent = []
            for i in range(3):
                m = rng.random((6, 8)).astype(np.float32)
                spread = (rng.random((6, 8)) * 0.4).astype(np.float32)
                h = pub.publish_map(wire.MapHeader(stream="0", frame_index=i, pts=i / 30, capture_time=time.monotonic(),
                                                   extra={"samples": 3}), m)
                assert pub.publish_conf(h, spread)
                sent.append((m, spread))
                deadline = time.monotonic() + 10
                while len(changes) < i + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                latest = bridge.latest("0")
                assert latest.map_info["frame_index"] == i and latest.map_info["samples"] == 3
                assert latest.map_u8 == wire.encode_map_payload(m, "uint8")
                assert latest.spread_u8 == wire.encode_map_payload(np.minimum(1, 2 * spread), "uint8")
            pub.publish_map(wire.MapHeader(stream="1", frame_index=0, pts=0.0, capture_time=time.monotonic()),
                            np.zeros((6, 8), np.float32))
            deadline = time.monotonic() + 10
            while bridge.latest("1") is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bridge.latest("1").spread_u8 is None and "samples" not in bridge.latest("1").map_info
            # a map whose spread never comes is still shown (after a short wait)
            pub.publish_map(wire.MapHeader(stream="0", frame_index=9, pts=0.3, capture_time=time.monotonic(),
                                           extra={"samples": 3}), np.zeros((6, 8), np.float32))
            deadline = time.monotonic() + 10
            while bridge.latest("0").map_info["frame_index"] != 9 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bridge.latest("0").map_info["frame_index"] == 9 and bridge.latest("0").spread_u8 is None
        finally:
            bridge.stop()


def test_viewer_page_shows_the_spread_of_a_sampled_run(engine, tmp_path):
    from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
    from salstream.streamer.live.sources.synthetic import SyntheticSource
    from salstream.streamer.web.server import WebViewer
    from tests.support.browser import Chromium, chromium_path
    from tests.support.pipeline import RunningPipeline
    if chromium_path() is None:
        pytest.skip("needs Debian's chromium (scripts/install-system-deps installs it)")
    source = SyntheticSource(3, stream_id="0", width=192, height=112)
    opts = PipelineOptions(publish="tcp://127.0.0.1:*", samples=4, steps=1)
    pixels = ("(() => { const c = document.querySelector('.tile[data-stream=\"0\"] canvas'); "
              "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()")
    paint = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
    with RunningPipeline(Pipeline(opts, engine, sources=[source])) as run, WebViewer("127.0.0.1:0") as viewer:
        viewer.connect(run.endpoint).start()
        with Chromium(viewer.url, tmp_path) as browser:
            browser.wait_for("window.salstreamViewer && window.salstreamViewer.shown['0'] && "
                             "window.salstreamViewer.shown['0'].has_spread", 90, "a map with its spread drawn")
            browser.evaluate("document.getElementById('pause').click()")
            browser.evaluate(paint)
            browser.evaluate("(() => { const e = document.getElementById('opacity'); e.value = '1'; "
                             "e.dispatchEvent(new Event('input')); })()")
            browser.evaluate(paint)
            as_map = np.array(browser.evaluate(pixels), np.int16)
            assert browser.evaluate("window.salstreamViewer.shown['0'].layer") == "map"
            browser.evaluate("(() => { const e = document.getElementById('show'); e.value = 'spread'; "
                             "e.dispatchEvent(new Event('change')); })()")
            browser.evaluate(paint)
            as_spread = np.array(browser.evaluate(pixels), np.int16)
            assert browser.evaluate("window.salstreamViewer.shown['0'].layer") == "spread"
            assert "spread of 4 draws" in browser.evaluate(
                "document.querySelector('.tile[data-stream=\"0\"] figcaption').textContent")
            assert np.abs(as_map - as_spread).mean() > 1, "the spread layer looks like the map"
