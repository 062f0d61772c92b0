"""Window assembly: frame/audio alignment, hop, audio lag fallback, video-only streams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from salstream.diffsal import audio as afeat
from salstream.diffsal.config import AudioConfig, ModelConfig
from salstream.diffsal.preprocess import preprocess_frame
from salstream.errors import SalstreamError
from salstream.streamer.live.assembler import AUDIO_RATE, AudioRing, WindowAssembler
from salstream.streamer.live.units import AudioChunk, StreamEvent, VideoFrame

FPS = 30.0
HOP_S = afeat.slice_hop_samples() / AUDIO_RATE     # one audio slice hop (0.11 s)


def lite_cfg(**kw) -> ModelConfig:
    base = dict(profile="lite", frames=16, frame_stride=2, target_index=15, input_size=(32, 48),
                map_size=(16, 24), pixel_norm="tf", per_frame_video=True, audio=AudioConfig(slice_size=(64, 64)))
    base.update(kw)
    return ModelConfig(**base)


def full_cfg() -> ModelConfig:
    return ModelConfig(profile="full", frames=16, frame_stride=1, target_index=8, input_size=(32, 48),
                       map_size=(32, 48), audio=AudioConfig(slice_size=(32, 48)))


class Clock:
    """Controllable monotonic time, so audio-wait bounds are tested without sleeping."""
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(i: int, clock: Clock, stream="0") -> VideoFrame:
    img = np.full((24, 32, 3), i % 256, np.uint8)
    return VideoFrame(image=img, pts=i / FPS, capture_time=clock(), index=i, stream_id=stream)


def chunk(signal: np.ndarray, start: int, n: int, clock: Clock) -> AudioChunk:
    return AudioChunk(samples=signal[start:start + n].astype(np.float32), pts=start / AUDIO_RATE,
                      capture_time=clock(), sample_index=start, sample_rate=AUDIO_RATE)


def interleaved(n_frames: int, signal: np.ndarray, clock: Clock, chunk_n: int = 1600, audio_delay: float = 0.0):
    """Units in capture order: audio chunk k is available at (k+1)·chunk_n/16000 + audio_delay."""
    units = [(i / FPS, frame(i, clock)) for i in range(n_frames)]
    for s in range(0, len(signal), chunk_n):
        units.append(((s + chunk_n) / AUDIO_RATE + audio_delay, ("audio", s)))
    units.sort(key=lambda u: u[0])
    for t, u in units:
        clock.t = 100.0 + t
        if isinstance(u, VideoFrame):
            u.capture_time = clock()
            yield u
        else:
            yield chunk(signal, u[1], chunk_n, clock)


def test_audio_ring_wraps_and_reads_silence_outside():
    ring = AudioRing(10)
    ring.write(5, np.arange(5, 12, dtype=np.float32))          # samples 5..11
    assert ring.read(3, 8).tolist() == [0, 0, 5, 6, 7]
    ring.write(12, np.arange(12, 20, dtype=np.float32))         # wraps; 5..9 overwritten
    assert ring.read(8, 22).tolist() == [0, 0] + list(range(10, 20)) + [0, 0]
    ring.write(25, np.ones(3, np.float32))                      # a hole 20..24 reads as silence
    assert ring.read(18, 28).tolist() == [18, 19, 0, 0, 0, 0, 0, 1, 1, 1]


def test_lite_windows_align_frames_and_audio_slices():
    cfg = lite_cfg()
    clock = Clock()
    rng = np.random.default_rng(0)
    seconds = 2.5
    signal = (0.3 * rng.standard_normal(int(seconds * AUDIO_RATE))).astype(np.float32)
    calls = []

    def counting_preprocess(rgb, c):
        calls.append(1)
        return preprocess_frame(rgb, c)

    asm = WindowAssembler(cfg, hop=1, has_audio=True, audio_wait=0.5, preprocess=counting_preprocess, clock=clock)
    n_frames = int(seconds * FPS) - 3
    windows = []
    for u in interleaved(n_frames, signal, clock):
        windows.extend(asm.push(u))
    windows.extend(asm.push(StreamEvent("end")))
    assert len(calls) == n_frames                                # each frame preprocessed exactly once
    assert [w.target_index for w in windows] == list(range(n_frames))  # hop 1: one window per frame
    for w in windows:
        assert w.mode == "av" and w.target_index == w.frame_indices[-1]
        assert len(w.frames) == 16 and w.frames[0].shape == (3, 32, 48)
        expected = [max(0, w.target_index - 2 * (15 - j)) for j in range(16)]
        assert w.frame_indices == expected
        assert w.flags.get("warmup", False) == (w.target_index < 30)
        # the newest audio slice ends at the target frame's time, within one slice hop
        assert len(w.audio) == 9 and w.slice_indices == list(range(w.slice_indices[0], w.slice_indices[0] + 9))
        assert w.target_pts - HOP_S < w.audio_end_pts <= w.target_pts + 1e-9
        # the frames' PTS end at the target's PTS; the audio spans the window's recent past
        assert w.frame_pts[-1] == pytest.approx(w.target_pts)
    # slice features are exactly the log-mel of the samples they cover
    w = windows[-1]
    for k, feat in zip(w.slice_indices, w.audio):
        lo, hi = afeat.slice_span(k, cfg.audio)
        ref = afeat.slice_log_mel(torch.from_numpy(signal[lo:hi].copy()), cfg.audio.slice_size)
        torch.testing.assert_close(feat, ref)
    # each slice's features are computed once and shared by overlapping windows
    a, b = windows[-4], windows[-1]
    shared = set(a.slice_indices) & set(b.slice_indices)
    assert len(shared) >= 7, "windows 3 frames apart share most of their slices"
    for k in shared:
        assert a.audio[a.slice_indices.index(k)] is b.audio[b.slice_indices.index(k)]
    # the target frame's image travels with the window for overlays
    assert int(windows[5].image[0, 0, 0]) == 5


def test_hop_emits_every_nth_target():
    cfg = lite_cfg()
    clock = Clock()
    asm = WindowAssembler(cfg, hop=3, has_audio=False, clock=clock)
    targets = [w.target_index for i in range(20) for w in asm.push(frame(i, clock))]
    assert targets == [0, 3, 6, 9, 12, 15, 18]


def test_source_without_audio_is_video_only_without_waiting():
    cfg = lite_cfg()
    clock = Clock()
    asm = WindowAssembler(cfg, has_audio=False, audio_wait=10.0, clock=clock)
    out = [w for i in range(5) for w in asm.push(frame(i, clock))]
    assert len(out) == 5 and all(w.mode == "video" and w.audio is None for w in out)
    assert not any(w.flags.get("audio_lagging") for w in out)


def test_audio_lag_waits_then_falls_back_and_recovers():
    cfg = lite_cfg()
    clock = Clock()
    signal = np.random.default_rng(1).uniform(-0.5, 0.5, 3 * AUDIO_RATE).astype(np.float32)
    asm = WindowAssembler(cfg, has_audio=True, audio_wait=0.1, clock=clock)
    out = []
    # 1 s of video, no audio yet; frames 33 ms apart, so a window waits ~3 frames then goes video-only
    for i in range(30):
        clock.t = 100 + i / FPS
        out += asm.push(frame(i, clock))
    early = [w for w in out if w.target_pts > 0.7]      # windows whose slices need real audio
    assert early and all(w.mode == "video" and w.flags.get("audio_lagging") for w in early)
    assert asm.lagging and asm.lagged_windows >= len(early)
    pending_before = asm.pending
    assert 1 <= pending_before <= 4                      # waiting at most ~audio_wait worth of frames
    for w in out:                                        # waited no longer than the bound (+1 frame)
        assert w.ready_time - w.due_time <= 0.1 + 1 / FPS + 1e-9
    # the audio catches up: the waiting windows and the following ones are audio-visual again
    clock.t += 0.01
    got = asm.push(chunk(signal, 0, 2 * AUDIO_RATE, clock))
    assert len(got) == pending_before and all(w.mode == "av" for w in got)
    clock.t += 0.02
    nxt = asm.push(frame(30, clock))
    assert [w.mode for w in nxt] == ["av"] and not asm.lagging


def test_audio_lost_and_back_events():
    cfg = lite_cfg()
    clock = Clock()
    signal = np.zeros(4 * AUDIO_RATE, np.float32)
    asm = WindowAssembler(cfg, has_audio=True, audio_wait=10.0, clock=clock)
    asm.push(chunk(signal, 0, 4 * AUDIO_RATE, clock))
    assert asm.push(frame(0, clock))[0].mode == "av"
    asm.push(StreamEvent("audio_lost"))
    w = asm.push(frame(1, clock))[0]
    assert w.mode == "video" and w.flags.get("audio_lost")     # no waiting for audio that is gone
    asm.push(StreamEvent("audio_back"))
    assert asm.push(frame(2, clock))[0].mode == "av"


def test_end_releases_waiting_windows():
    cfg = lite_cfg()
    clock = Clock()
    asm = WindowAssembler(cfg, has_audio=True, audio_wait=10.0, clock=clock)
    out = []
    for i in range(40):
        out += asm.push(frame(i, clock))
    assert asm.pending > 0
    out += asm.push(StreamEvent("end"))
    assert asm.pending == 0 and [w.target_index for w in out] == list(range(40))


def test_gap_restarts_history():
    cfg = lite_cfg()
    clock = Clock()
    asm = WindowAssembler(cfg, has_audio=False, clock=clock)
    for i in range(40):
        asm.push(frame(i, clock))
    asm.push(StreamEvent("gap"))
    w = asm.push(frame(40, clock))[0]
    assert w.flags.get("warmup") and set(w.frame_indices) == {40}


def test_full_profile_centre_target_and_window_audio():
    cfg = full_cfg()
    clock = Clock()
    signal = np.random.default_rng(2).uniform(-0.5, 0.5, 3 * AUDIO_RATE).astype(np.float32)
    asm = WindowAssembler(cfg, has_audio=True, audio_wait=1.0, clock=clock)
    windows = []
    for u in interleaved(60, signal, clock):
        got = asm.push(u)
        if isinstance(u, VideoFrame) and got:
            assert all(w.target_index <= u.index - 7 for w in got)   # 7 frames of look-ahead
        windows += got
    w = [w for w in windows if w.target_index == 30][0]
    assert w.frame_indices == list(range(22, 38)) and w.frame_indices[8] == w.target_index
    assert w.mode == "av" and tuple(w.audio.shape) == (1, 9, 32, 48)
    ref = afeat.full_window_slices(torch.from_numpy(signal), 30 / FPS - 0.5 / FPS, 16 / FPS, cfg.audio)
    torch.testing.assert_close(w.audio, ref, atol=1e-4, rtol=1e-4)


def test_bad_arguments_are_clear():
    with pytest.raises(SalstreamError, match="--hop"):
        WindowAssembler(lite_cfg(), hop=0)
    with pytest.raises(SalstreamError, match="audio-only"):
        WindowAssembler(lite_cfg(), has_audio=False, mode="audio")
