"""Scheduler: cached per-frame features equal fresh encoding, latest wins, streams batch together."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from salstream.diffsal.diffusion import DDIMScheduler
from salstream.diffsal.inference import predict_window
from salstream.streamer.live.assembler import AUDIO_RATE, WindowAssembler
from salstream.streamer.live.scheduler import Scheduler
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame
from tests.support.pipeline import SlowEngine

FPS = 30.0


def make_windows(cfg, n_frames: int, stream="0", seed=0, audio=True, hop=1):
    """Real windows from the assembler: random frames and noise audio on one media clock."""
    rng = np.random.default_rng(seed)
    signal = (0.2 * rng.standard_normal(int((n_frames / FPS + 1) * AUDIO_RATE))).astype(np.float32)
    asm = WindowAssembler(cfg, stream, hop=hop, has_audio=audio, audio_wait=10.0)
    if audio:
        asm.push(AudioChunk(signal, 0.0, time.monotonic(), 0, AUDIO_RATE, stream))
    out = []
    for i in range(n_frames):
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        out += asm.push(VideoFrame(img, i / FPS, time.monotonic(), i, stream))
    out += asm.push(StreamEvent("end", stream_id=stream))
    return out


def collect(sched: Scheduler):
    results = []
    lock = threading.Lock()

    def on_result(r):
        with lock:
            results.append(r)
    sched.on_result = on_result
    return results


def test_cached_features_give_the_same_maps_as_fresh_encoding(engine):
    cfg = engine.config
    windows = make_windows(cfg, 8)
    sched = Scheduler(engine, steps=2, seed=123)
    results = collect(sched)
    sched.add_stream("0", lossless=True)
    sched.start()
    for w in windows:
        sched.submit(w)
    sched.close(drain=True)
    assert [r.window.target_index for r in results] == list(range(8))
    # each distinct frame / slice went through an encoder exactly once
    assert sched.frames_encoded == len({i for w in windows for i in w.frame_indices})
    assert sched.slices_encoded == len({k for w in windows for k in w.slice_indices})
    gen = torch.Generator().manual_seed(123)
    for r in results:
        w = r.window
        noise = torch.randn((1, 1, *cfg.map_size), generator=gen)
        video = torch.stack(w.frames, dim=1).unsqueeze(0)                  # (1, 3, T, H, W)
        audio = torch.stack(w.audio, dim=1).unsqueeze(0)                   # (1, 1, S, h, w)
        ref = predict_window(engine, video, audio, mode="av", steps=2, noise=noise)
        np.testing.assert_allclose(r.saliency, ref[0, 0].numpy(), atol=1e-5)
        assert r.saliency.shape == tuple(cfg.map_size) and r.steps == 2 and r.batch == 1


def test_latency_stages_are_contiguous(engine):
    windows = make_windows(engine.config, 3)
    sched = Scheduler(engine, steps=3)
    results = collect(sched)
    sched.add_stream("0", lossless=True)
    sched.start()
    for w in windows:
        sched.submit(w)
    sched.close()
    for r in results:
        lat = r.latency_ms
        # the sampler's real call count is reported (leading spacing would make 3 steps 4 calls:
        # 1000 // 3 = 333 gives t = 999, 666, 333, 0)
        spacing = engine.config.timestep_spacing
        assert len(lat["denoise"]) == len(DDIMScheduler(timestep_spacing=spacing).set_timesteps(3)) == r.steps
        parts = [lat["assemble"], lat["wait"], lat["video_encoder"], lat["audio_encoder"], *lat["denoise"],
                 lat["postprocess"]]
        assert all(p >= 0 for p in parts)
        total = (r.done_time - r.window.target_capture) * 1000
        assert sum(parts) == pytest.approx(total, abs=1e-3)


def test_latest_wins_bounds_latency_and_counts_drops(engine):
    slow = SlowEngine(engine, delay=0.1)                     # ≈0.2 s per map with 2 steps: 6× too slow
    windows = make_windows(engine.config, 45)
    sched = Scheduler(slow, steps=2)
    results = collect(sched)
    sched.add_stream("0")
    sched.start()
    t0 = time.monotonic()
    for i, w in enumerate(windows):                          # a live feed: one window per frame at 30 fps
        time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))
        now = time.monotonic()
        w.target_capture = w.ready_time = w.due_time = now
        sched.submit(w)
    sched.close(drain=True)
    n = len(results)
    dropped = sum(sched.dropped.values())
    assert dropped > 0 and n + dropped == len(windows)
    assert n < len(windows) / 2
    targets = [r.window.target_index for r in results]
    assert targets == sorted(targets)
    assert targets[-1] >= len(windows) - 1 - 1               # the newest window (or its phase twin) ran
    compute = max(sum(r.latency_ms["denoise"]) + r.latency_ms["video_encoder"] for r in results) / 1000
    # Never waits behind a backlog: the two stages hold one window each at most, so a wait is
    # about two windows' compute, while a queue would grow by one per frame (seconds by the end).
    # A third window of slack: other tests' threads in this process may still be winding down.
    for r in results:
        assert r.latency_ms["wait"] / 1000 <= 3 * compute + 2 / FPS + 0.05
        assert r.done_time - r.window.target_capture <= 4 * compute + 2 / FPS + 0.1


def test_latest_wins_keeps_the_frame_phase_of_the_last_window(engine):
    windows = {w.target_index: w for w in make_windows(engine.config, 14)}
    sched = Scheduler(engine, steps=1)
    results = collect(sched)
    sched.add_stream("0")
    sched.submit(windows[10])
    sched.start()
    sched.close(drain=True)
    sched2 = Scheduler(engine, steps=1)
    results = collect(sched2)
    sched2.add_stream("0")
    sched2._last_target["0"] = 10
    for t in (11, 12, 13):                                   # stride 2: 12 shares frames with 10
        sched2.submit(windows[t])
    sched2.start()
    sched2.close(drain=True)
    assert [r.window.target_index for r in results] == [12]
    assert sched2.dropped["0"] == 2


def test_two_streams_are_batched_into_one_call(engine):
    slow = SlowEngine(engine, delay=0.0)
    wa = make_windows(engine.config, 4, stream="a", seed=1)
    wb = make_windows(engine.config, 4, stream="b", seed=2)
    sched = Scheduler(slow, steps=1, max_batch=4, batch_deadline=0.5)
    results = collect(sched)
    sched.add_stream("a", lossless=True)
    sched.add_stream("b", lossless=True)
    sched.start()
    ta = threading.Thread(target=lambda: [sched.submit(w) for w in wa])
    tb = threading.Thread(target=lambda: [sched.submit(w) for w in wb])
    ta.start(), tb.start(), ta.join(), tb.join()
    sched.close(drain=True)
    assert sched.batch_sizes.get(2, 0) >= 3                 # windows ready together went through as one
    assert max(slow.batches) == 2
    by_stream = {s: [r.window.target_index for r in results if r.window.stream_id == s] for s in "ab"}
    assert by_stream == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
    assert all(r.batch == 2 for r in results if r.window.target_index > 0)
    # batched maps are the two windows' own maps, not mixed up: different inputs, different maps
    last = [r for r in results if r.window.target_index == 3]
    assert not np.allclose(last[0].saliency, last[1].saliency)


def test_modes_run_as_separate_batches(engine):
    slow = SlowEngine(engine, delay=0.0)
    wa = make_windows(engine.config, 1, stream="a", audio=True)
    wb = make_windows(engine.config, 1, stream="b", audio=False)
    sched = Scheduler(slow, steps=1, max_batch=4, batch_deadline=0.5)
    results = collect(sched)
    for s in "ab":
        sched.add_stream(s)
    sched.submit(wa[0]), sched.submit(wb[0])
    sched.start()
    sched.close(drain=True)
    assert sorted(r.window.mode for r in results) == ["av", "video"]
    assert slow.batches == [1, 1]


def test_max_batch_one_never_batches(engine):
    slow = SlowEngine(engine, delay=0.0)
    sched = Scheduler(slow, steps=1, max_batch=1, batch_deadline=0.5)
    results = collect(sched)
    for s in "ab":
        sched.add_stream(s)
        sched.submit(make_windows(engine.config, 1, stream=s)[0])
    sched.start()
    sched.close(drain=True)
    assert len(results) == 2 and slow.batches == [1, 1]


def test_far_behind_window_encodes_at_most_max_new_frames(engine):
    w = make_windows(engine.config, 41)[40]                     # frames 10, 12, …, 40: none encoded yet
    assert len(set(w.frame_indices)) == 16
    capped = Scheduler(engine, steps=1, max_new_frames=4)
    results = collect(capped)
    capped.add_stream("0")
    capped.submit(w)
    capped.start()
    capped.close()
    assert capped.frames_encoded == 4 and results[0].window.flags["approx_frames"] == 12
    assert capped.video_cache.indices("0") == [34, 36, 38, 40]                    # the newest frames were the ones encoded

    w2 = make_windows(engine.config, 41)[40]
    full = Scheduler(engine, steps=1, max_new_frames=None)
    collect(full)
    full.add_stream("0")
    full.submit(w2)
    full.start()
    full.close()
    assert full.frames_encoded == 16 and "approx_frames" not in w2.flags


def test_window_level_profile_runs_whole_clips():
    """A `full`-style model (per_frame_video=False, centred target): clips and window audio go in whole."""
    from salstream.engines import create_engine
    from tests.support.tiny_models import tiny_model

    eng = create_engine("torch", model=tiny_model(per_frame=False))
    cfg = eng.config
    windows = make_windows(cfg, 6)
    assert all(w.frame_indices[cfg.target_index] == w.target_index for w in windows)
    assert windows[0].audio.shape == (1, cfg.audio.n_slices, *cfg.audio.slice_size)
    sched = Scheduler(eng, steps=2, seed=5)
    results = collect(sched)
    sched.add_stream("0", lossless=True)
    sched.start()
    for w in windows:
        sched.submit(w)
    sched.close()
    assert [r.window.target_index for r in results] == list(range(len(windows)))
    gen = torch.Generator().manual_seed(5)
    for r in results:
        noise = torch.randn((1, 1, *cfg.map_size), generator=gen)
        video = torch.stack(r.window.frames, dim=1).unsqueeze(0)
        ref = predict_window(eng, video, r.window.audio.unsqueeze(0), mode="av", steps=2, noise=noise)
        np.testing.assert_allclose(r.saliency, ref[0, 0].numpy(), atol=1e-5)


def test_warm_start_runs_fewer_steps_from_the_previous_map(engine):
    windows = make_windows(engine.config, 4)
    sched = Scheduler(engine, steps=4, warm_start=250)
    results = collect(sched)
    sched.add_stream("0", lossless=True)
    sched.start()
    for w in windows:
        sched.submit(w)
    sched.close()
    # warm-started windows keep only the steps at or below t = 250 (lite's trailing
    # spacing: 999, 749, 499, 249 -> 249)
    warm = DDIMScheduler(timestep_spacing=engine.config.timestep_spacing).set_timesteps(4, start_timestep=250)
    assert len(warm) < 4
    assert [r.steps for r in results] == [4] + [len(warm)] * 3
    assert [bool(r.window.flags.get("warm_start")) for r in results] == [False, True, True, True]
