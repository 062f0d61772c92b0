"""The `full` profile: Saliency-UNet building blocks, MViT, audio encoder, whole model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salstream.diffsal.models.unet import MAMBlock, Readout, SaliencyUNet, timestep_embedding

# Small decoder inputs: map 64×128 -> grids 2×4 (/32), 4×8 (/16), 8×16 (/8). At least two
# keys per frame at every stage (a 1×1 key grid would make the attention ignore its keys).
H, W = 64, 128


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that every path visibly moves the output (the training init,
    N(0, 0.01²), leaves the map almost constant)."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for mname, mod in module.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norms):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if pname == "weight" else 0.0))
                    continue
                fan_in = p[0].numel() if p.dim() > 1 else 1
                std = 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
                if mname.endswith("align_conv"):
                    std *= 10  # the MIM path that carries x_t in AV mode is weak; make it show
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def _video_maps(b: int, g: torch.Generator, h: int = H, w: int = W, slots: int = 8):
    return (torch.randn(b, 768, slots, h // 32, w // 32, generator=g),
            torch.randn(b, 384, slots, h // 16, w // 16, generator=g),
            torch.randn(b, 192, slots, h // 8, w // 8, generator=g))


@pytest.fixture(scope="module")
def unet() -> SaliencyUNet:
    torch.manual_seed(0)
    m = SaliencyUNet(skip_unread_slots=False).eval()
    _randomize(m)
    return m


# ---------------------------------------------------------------- timestep embedding

def test_timestep_embedding_is_sines_then_cosines_of_48_frequencies():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 96)
    assert emb.shape == (3, 96)
    freqs = np.exp(-np.arange(48) * math.log(1e4) / 47)
    angles = t.double().numpy()[:, None] * freqs[None]
    np.testing.assert_allclose(emb[:, :48].numpy(), np.sin(angles), atol=2e-4)
    np.testing.assert_allclose(emb[:, 48:].numpy(), np.cos(angles), atol=2e-4)
    # t = 0: all sines 0, all cosines 1 (so the order really is sin first)
    assert torch.equal(emb[0, :48], torch.zeros(48)) and torch.equal(emb[0, 48:], torch.ones(48))


# ---------------------------------------------------------------- MIM raw-reshape scramble

def test_mim_keys_are_the_weighted_audio_buffer_reread_without_permute():
    torch.manual_seed(1)
    b, c, s, h, w, ca = 2, 6, 3, 4, 6, 5
    blk = MAMBlock(c, num_heads=2, kv_kernel=2, audio_channels=ca).eval()
    x = torch.randn(b, c, s, h, w)
    audio = torch.randn(b, ca, s, h // 2, w // 2)          # upsampled ×2 (nearest) inside
    keys = blk.interaction_keys(x, audio)
    assert keys.shape == (b * s, c, h, w)

    # Independent derivation with numpy.
    wt = blk.align_conv.weight.detach().numpy()[:, :, 0, 0]
    bias = blk.align_conv.bias.detach().numpy()
    a = np.einsum("oc,bcshw->boshw", wt, audio.numpy()) + bias[None, :, None, None, None]
    a = a.repeat(2, axis=3).repeat(2, axis=4)                # nearest ×2
    p = (a * x.numpy()).mean(axis=2, keepdims=True)
    m = np.exp(p - p.max(axis=-1, keepdims=True))
    m = m / m.sum(axis=-1, keepdims=True)                    # softmax over width only
    buf = np.ascontiguousarray(a * m).ravel()                # (B, C, S, H, W) memory order
    expected = np.empty((b * s, c, h, w))
    for n in range(b * s):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    expected[n, ch, i, j] = buf[n * h * w * c + (i * w + j) * c + ch]
    np.testing.assert_allclose(keys.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # and it is not the "natural" (b t) c h w regrouping
    natural = torch.from_numpy(a * m).float().transpose(1, 2).reshape(b * s, c, h, w)
    assert not torch.allclose(keys, natural, atol=1e-3)


def test_mim_rejects_mismatched_slots_and_grids():
    from salstream.errors import SalstreamError
    blk = MAMBlock(8, audio_channels=4).eval()
    x = torch.randn(1, 8, 3, 4, 6)
    with pytest.raises(SalstreamError, match="slices"):
        blk.interaction_keys(x, torch.randn(1, 4, 2, 4, 6))
    with pytest.raises(SalstreamError, match="grid"):
        blk.interaction_keys(x, torch.randn(1, 4, 3, 3, 5))


# ---------------------------------------------------------------- readout

def test_readout_reads_slots_zero_to_four_only():
    torch.manual_seed(2)
    r = Readout(6, 4, kernel=5).eval()
    x = torch.randn(1, 6, 9, 3, 5)
    y = r(x)
    assert y.shape == (1, 4, 1, 3, 5)
    wt = r.proj[0].weight[:, :, :, 0, 0]                     # (out, in, 5)
    expected = torch.relu(torch.einsum("oik,bikhw->bohw", wt, x[:, :, :5]))
    torch.testing.assert_close(y[:, :, 0], expected, rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:, :, 5:] = torch.randn(1, 6, 4, 3, 5)
    assert torch.equal(r(x2), y)                              # slots 5-8: no effect
    x2[:, :, 4] += 1.0
    assert not torch.allclose(r(x2), y)                       # slot 4: read


# ---------------------------------------------------------------- spec §4.5

@torch.no_grad()
def test_video_only_output_ignores_noisy_map_and_timestep(unet):
    g = torch.Generator().manual_seed(3)
    video = _video_maps(1, g)
    a = unet(torch.randn(1, 1, H, W, generator=g), torch.tensor([999]), video, None)
    b = unet(torch.randn(1, 1, H, W, generator=g) * 3, torch.tensor([3]), video, None)
    assert a.shape == (1, 1, H, W)
    assert torch.equal(a, b)                                  # exactly, not approximately


@torch.no_grad()
def test_av_output_depends_on_noisy_map(unet):
    g = torch.Generator().manual_seed(4)
    video = _video_maps(1, g)
    audio = torch.randn(1, 512, 9, H // 32, W // 32, generator=g)
    t = torch.tensor([500])
    x1, x2 = torch.randn(2, 1, 1, H, W, generator=g)
    a = unet(x1, t, video, audio)
    b = unet(x2, t, video, audio)
    assert torch.equal(unet(x1, t, video, audio), a)          # deterministic: noise floor 0
    # Weak by construction (x_t reaches the map only through the MIM mean, §4.5 b),
    # but far above float rounding.
    assert (a - b).abs().max() > 1e-6
    assert ((a > 0) & (a < 1)).all()


@torch.no_grad()
def test_video_only_shortcut_equals_the_full_nine_slot_decoder(unet):
    g = torch.Generator().manual_seed(5)
    video = _video_maps(2, g)
    x_t = torch.randn(2, 1, H, W, generator=g)
    t = torch.tensor([250, 250])
    full = unet(x_t, t, video, None)
    unet.skip_unread_slots = True
    try:
        short = unet(x_t, t, video, None)
    finally:
        unet.skip_unread_slots = False
    torch.testing.assert_close(short, full, rtol=0, atol=1e-6)


@torch.no_grad()
def test_unet_does_not_modify_its_inputs_and_checks_sizes(unet):
    from salstream.errors import SalstreamError
    g = torch.Generator().manual_seed(6)
    video = _video_maps(1, g)
    audio = torch.randn(1, 512, 9, H // 32, W // 32, generator=g)
    copies = [v.clone() for v in video] + [audio.clone()]
    unet(torch.randn(1, 1, H, W, generator=g), torch.tensor([0]), video, audio)
    assert all(torch.equal(a, b) for a, b in zip(list(video) + [audio], copies))
    assert all(v.shape[2] == 8 for v in video)
    with pytest.raises(SalstreamError, match="map size"):
        unet(torch.randn(1, 1, 2 * H, W), torch.tensor([0]), video, audio)
    with pytest.raises(SalstreamError, match="neither"):
        unet(torch.randn(1, 1, H, W), torch.tensor([0]), None, None)


# ================================================================ MViT details

def _naive_rel_index(q: int, k: int) -> np.ndarray:
    qr, kr = max(k / q, 1.0), max(q / k, 1.0)
    return np.array([[math.floor(i * qr - j * kr + (k - 1) * kr) for j in range(k)] for i in range(q)])


def _linear_resize(table: np.ndarray, n: int) -> np.ndarray:
    """1-D linear resampling, align_corners False (half-pixel centres, edge clamped)."""
    m = table.shape[0]
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    frac = (pos - lo)[:, None]
    return table[lo] * (1 - frac) + table[hi] * frac


@pytest.mark.parametrize("q,k,stored", [(56, 7, 111),    # block 0, h at 224×384: table used as is
                                        (96, 12, 111),   # block 0, w: stretched 111 -> 191
                                        (7, 14, 27),     # block 14, w at 224×224: q shorter than k
                                        (4, 2, 13)])     # a small clip: shrunk
def test_decomposed_rel_pos_lookup(q, k, stored):
    from salstream.diffsal.models.mvit import _rel_pos_gather
    table = torch.randn(stored, 5, generator=torch.Generator().manual_seed(q * k))
    got = _rel_pos_gather(table, q, k).numpy()
    length = 2 * max(q, k) - 1
    resized = table.numpy() if stored == length else _linear_resize(table.numpy().astype(np.float64), length)
    idx = _naive_rel_index(q, k)
    assert idx.min() >= 0 and idx.max() < length
    # (torch computes the resampling positions in float32: ~1e-5 off the float64 ones)
    np.testing.assert_allclose(got, resized[idx], rtol=0, atol=1e-4)
    if (q, k) == (56, 7):
        assert idx[0, 0] == 48 and idx[55, 6] == 55 and idx[3, 2] == 35   # i − 8j + 48


def test_pooling_attention_against_a_naive_implementation():
    """Per-head q/k/v pooling, decomposed rel-pos from the unscaled q, residual pooling
    (class token excluded), written out token by token."""
    from salstream.diffsal.models.mvit import MultiScaleAttention
    torch.manual_seed(7)
    attn = MultiScaleAttention(4, 8, 2, stride_q=(1, 2, 2), stride_kv=(1, 2, 2), rel_len_t=3, rel_len_hw=5).eval()
    with torch.no_grad():
        for p in (attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_t):
            p.normal_()
        for n in (attn.norm_q, attn.norm_k, attn.norm_v):
            n.weight.uniform_(0.5, 1.5)
            n.bias.normal_(0, 0.1)
    thw = (2, 4, 6)
    x = torch.randn(1, 1 + 2 * 4 * 6, 4)
    with torch.no_grad():
        out, q_thw = attn(x, thw)
    assert q_thw == (2, 2, 3) and out.shape == (1, 1 + 12, 8)

    d, heads = 4, 2
    W = attn.qkv.weight.detach().numpy().astype(np.float64)
    b = attn.qkv.bias.detach().numpy().astype(np.float64)
    xq = x[0].numpy().astype(np.float64) @ W.T + b              # (N, 3·8)

    def pool(tokens, conv, norm, stride):
        cls, grid = tokens[:1], tokens[1:].reshape(*thw, d)
        wgt = conv.weight.detach().numpy()[:, 0]                  # (d, 3, 3, 3) depth-wise
        pad = np.pad(grid, ((1, 1), (1, 1), (1, 1), (0, 0)))
        T, Hh, Ww = thw[0] // stride[0], (thw[1] - 1) // stride[1] + 1, (thw[2] - 1) // stride[2] + 1
        out_grid = np.zeros((T, Hh, Ww, d))
        for t in range(T):
            for i in range(Hh):
                for j in range(Ww):
                    patch = pad[t * stride[0]:t * stride[0] + 3, i * stride[1]:i * stride[1] + 3,
                                j * stride[2]:j * stride[2] + 3]
                    out_grid[t, i, j] = np.einsum("tyxc,ctyx->c", patch, wgt)
        y = np.concatenate([cls, out_grid.reshape(-1, d)])
        mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        y = (y - mu) / np.sqrt(var + 1e-5) * norm.weight.detach().numpy() + norm.bias.detach().numpy()
        return y, (T, Hh, Ww)

    R = {a: getattr(attn, f"rel_pos_{a}").detach().numpy().astype(np.float64) for a in "thw"}
    outs = []
    for h in range(heads):
        qh, kh, vh = (xq[:, s * 8 + h * d: s * 8 + (h + 1) * d] for s in range(3))
        q, qs = pool(qh, attn.pool_q, attn.norm_q, (1, 2, 2))
        k, ks = pool(kh, attn.pool_k, attn.norm_k, (1, 2, 2))
        v, _ = pool(vh, attn.pool_v, attn.norm_v, (1, 2, 2))
        logits = (q * d ** -0.5) @ k.T
        qpos = [(t, i, j) for t in range(qs[0]) for i in range(qs[1]) for j in range(qs[2])]
        kpos = [(t, i, j) for t in range(ks[0]) for i in range(ks[1]) for j in range(ks[2])]
        for a, axis in enumerate("thw"):
            table = R[axis]
            length = 2 * max(qs[a], ks[a]) - 1
            if table.shape[0] != length:
                table = _linear_resize(table, length)
            idx = _naive_rel_index(qs[a], ks[a])
            for n, qp in enumerate(qpos):
                for m, kp in enumerate(kpos):
                    logits[1 + n, 1 + m] += q[1 + n] @ table[idx[qp[a], kp[a]]]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = p @ v
        o[1:] += q[1:]                                           # residual pooling, not the cls row
        outs.append(o)
    merged = np.concatenate(outs, axis=1)
    expected = merged @ attn.proj.weight.detach().numpy().T + attn.proj.bias.detach().numpy()
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_rel_pos_cache_follows_weight_updates():
    from salstream.diffsal.models.mvit import MultiScaleAttention
    attn = MultiScaleAttention(4, 4, 1, (1, 1, 1), (1, 2, 2), 3, 7).eval()
    with torch.inference_mode():
        a = attn._rel("rel_pos_h", 4, 2).clone()
        assert attn._rel("rel_pos_h", 4, 2) is attn._rel("rel_pos_h", 4, 2)   # cached
    attn.load_state_dict({k: v + 1 for k, v in attn.state_dict().items()})
    with torch.inference_mode():
        torch.testing.assert_close(attn._rel("rel_pos_h", 4, 2), a + 1)


# ================================================================ whole model

def test_state_dict_names_and_shapes_equal_the_official_checkpoint():
    import json
    from pathlib import Path

    from salstream.diffsal.models.full import FullDiffSal, full_config
    ref = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())
    with torch.device("meta"):
        model = FullDiffSal(full_config())
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == ref


def test_parameter_counts_match_the_spec():
    from salstream.diffsal.models.full import FullDiffSal, full_config
    with torch.device("meta"):
        m = FullDiffSal(full_config())

    def count(*mods):
        return sum(p.numel() for mod in mods for p in mod.parameters())

    d, dec = m.decoder_net, m.decoder_net.invpt_decoder
    assert count(m.visual_net) == 34_231_488
    rel = sum(p.numel() for n, p in m.visual_net.named_parameters() if "rel_pos" in n) + m.visual_net.cls_token.numel()
    assert rel == 130_272
    assert count(m.audio_net.features) == 4_499_712
    assert count(m.audio_net.embeddings) == 67_641_472
    assert count(m.spatiotemp_net.transformer) == 528_640
    assert count(m.spatiotemp_net.to_patch_embedding) + m.spatiotemp_net.pos_embedding.numel() == 264_713
    assert count(m.fc) == 460_032
    assert [count(d.temb), count(d.conv_in), count(d.down1), count(d.res_encoder)] == \
        [185_088, 960, 83_040, 18_332_160]
    assert [count(s) for s in dec.mid_stages] == [5_152_512, 5_388_672, 1_422_528, 425_568]
    assert [count(dec.norm_mts), count(dec.redu_chan_up), count(dec.mt_proj), count(d.logits)] == \
        [2_880, 5_529_600, 663_840, 97]
    assert count(m) == 144_813_002
    assert len(m.state_dict()) == 658


def _small_config():
    import dataclasses

    from salstream.diffsal.config import AudioConfig
    from salstream.diffsal.models.full import full_config
    return dataclasses.replace(full_config(), input_size=(H, W), map_size=(H, W),
                               audio=AudioConfig(slice_size=(H // 2, W // 2)))


@pytest.fixture(scope="module")
def small_model():
    from salstream.diffsal.models.full import FullDiffSal
    torch.manual_seed(0)
    m = FullDiffSal(_small_config()).eval()
    _randomize(m, seed=11)
    return m


@pytest.fixture(scope="module")
def small_inputs():
    g = torch.Generator().manual_seed(12)
    return (torch.randn(1, 3, 16, H, W, generator=g), torch.randn(1, 1, 9, H // 2, W // 2, generator=g))


class _Counting:
    """Wraps a model and counts encoder/denoiser calls (same interface as an engine)."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.calls = {"encode_video": 0, "encode_audio": 0, "denoise": 0}

    def __getattr__(self, name):
        fn = getattr(self.model, name)
        if name in self.calls:
            def counted(*a, **k):
                self.calls[name] += 1
                return fn(*a, **k)
            return counted
        return fn


@torch.inference_mode()
def test_cached_features_equal_recomputing_encoders_every_step(small_model, small_inputs):
    from salstream.diffsal.diffusion import sample
    from salstream.diffsal.inference import predict_window
    video, audio = small_inputs
    runner = _Counting(small_model)
    cached = predict_window(runner, video, audio, "av", steps=4, generator=torch.Generator().manual_seed(5))
    assert runner.calls == {"encode_video": 1, "encode_audio": 1, "denoise": 4}

    def recompute(x_t, t):  # the official training-time forward: encoders on every call
        return small_model.denoise(x_t, t, small_model.encode_video(video), small_model.encode_audio(audio))

    reference = sample(recompute, (1, 1, H, W), 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cached, reference, rtol=0, atol=1e-6)


@torch.inference_mode()
def test_ddim_is_deterministic_given_a_seed_and_runs_any_step_count(small_model, small_inputs):
    from salstream.diffsal.inference import encode_window, predict_from_features
    video, audio = small_inputs
    v, a = encode_window(small_model, video, audio, "av")
    frozen = [x.clone() for x in v] + [a.clone()]
    maps = {}
    for steps in (1, 2, 4, 10):
        runner = _Counting(small_model)
        maps[steps] = predict_from_features(runner, v, a, 1, steps, generator=torch.Generator().manual_seed(9))
        assert runner.calls["denoise"] == steps
        assert maps[steps].shape == (1, 1, H, W)
        assert ((maps[steps] >= 0) & (maps[steps] <= 1)).all()
    again = predict_from_features(small_model, v, a, 1, 2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(again, maps[2])
    other = predict_from_features(small_model, v, a, 1, 2, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(other, maps[2])                      # AV mode: the noise matters
    assert all(torch.equal(x, y) for x, y in zip(list(v) + [a], frozen))   # features never modified


@torch.inference_mode()
def test_modes_and_input_errors(small_model, small_inputs):
    from salstream.diffsal.inference import predict_window
    from salstream.errors import SalstreamError
    video, audio = small_inputs
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    v_only = predict_window(small_model, video, None, "video", steps=4, generator=g())
    v_one = predict_window(small_model, video, None, "video", steps=1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(v_only, v_one, rtol=0, atol=1e-6)  # §4.5: steps cannot change it
    a_only = predict_window(small_model, None, audio, "audio", steps=2, generator=g())
    assert a_only.shape == (1, 1, H, W) and not torch.allclose(a_only, v_only)
    with pytest.raises(SalstreamError, match="neither"):
        small_model.denoise(torch.zeros(1, 1, H, W), torch.tensor([0]), None, None)
    with pytest.raises(SalstreamError, match="video has shape"):
        small_model.encode_video(torch.zeros(1, 3, 8, H, W))
    with pytest.raises(SalstreamError, match="multiples of 32"):
        small_model.visual_net(torch.zeros(1, 3, 16, H + 8, W))
    with pytest.raises(SalstreamError, match="audio has shape"):
        small_model.encode_audio(torch.zeros(1, 1, 5, H // 2, W // 2))


def test_registry_builds_the_full_profile():
    from salstream.diffsal.registry import available_profiles, default_config
    assert "full" in available_profiles()
    cfg = default_config("full")
    assert (cfg.frames, cfg.target_index, cfg.input_size, cfg.map_size, cfg.pixel_norm, cfg.default_steps) == \
        (16, 8, (224, 384), (224, 384), "av", 4)
    assert cfg.audio.slice_size == (112, 192) and not cfg.per_frame_video
    with pytest.raises(ValueError, match="half of input_size"):
        import dataclasses

        from salstream.diffsal.models.full import FullDiffSal
        FullDiffSal(dataclasses.replace(cfg, input_size=(64, 128), map_size=(64, 128)))


# ================================================================ spec size (224×384)

@pytest.mark.slow
@torch.inference_mode()
def test_spec_size_shapes_in_all_three_modes():
    from salstream.diffsal.registry import create_model
    torch.manual_seed(0)
    model = create_model("full")
    video = torch.randn(1, 3, 16, 224, 384)
    audio = torch.randn(1, 1, 9, 112, 192)
    v = model.encode_video(video)
    assert [tuple(x.shape) for x in v] == [(1, 768, 8, 7, 12), (1, 384, 8, 14, 24), (1, 192, 8, 28, 48)]
    a = model.encode_audio(audio)
    assert a.shape == (1, 512, 9, 7, 12)
    x_t = torch.randn(1, 1, 224, 384)
    t = torch.tensor([750])
    for vf, af in ((v, a), (v, None), (None, a)):
        y = model.denoise(x_t, t, vf, af)
        assert y.shape == (1, 1, 224, 384)
        assert ((y > 0) & (y < 1)).all()
