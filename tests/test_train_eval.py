"""Training and evaluation on a tiny synthetic set with a small lite configuration."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from salstream.diffsal import metrics as M
from salstream.diffsal.checkpoint import load_model, save_checkpoint
from salstream.diffsal.datasets.layout import load_videos
from salstream.diffsal.datasets.synthetic import write_synthetic
from salstream.diffsal.evaluate import (
    BASELINE,
    METRIC_NAMES,
    centre_prior,
    evaluate,
    markdown_table,
    write_report,
)
from salstream.diffsal.registry import bundled_weights, create_model, default_config
from salstream.diffsal.train import TrainOptions, pick_mode, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config():
    # 8-frame causal windows, 64×128 input (grids 2×4, 4×8, 8×16), 16×32 maps: seconds per epoch.
    return default_config("lite", frames=8, frame_stride=1, target_index=7, input_size=(64, 128), map_size=(16, 32))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: one thread avoids OpenMP spin-waiting when other processes share the cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic(root, {"train": 2, "val": 1, "test": 2}, n_frames=14, width=128, height=64)
    return root


def _videos(root, split):
    return load_videos(root, split, datasets=["Synthetic"])["Synthetic"]


def test_centre_prior_scores_itself_perfectly():
    g = centre_prior((40, 60))
    assert g.max() == pytest.approx(1.0, abs=5e-3) and np.unravel_index(g.argmax(), g.shape) in ((19, 29), (19, 30), (20, 29), (20, 30))
    assert M.cc(g, g) == pytest.approx(1.0)


def test_mode_dropout_follows_probabilities():
    import random
    rng = random.Random(0)
    picks = [pick_mode(rng, (0.6, 0.2, 0.2), True) for _ in range(5000)]
    share = {m: picks.count(m) / len(picks) for m in ("av", "video", "audio")}
    assert share["av"] == pytest.approx(0.6, abs=0.03) and share["audio"] == pytest.approx(0.2, abs=0.03)
    assert {pick_mode(rng, (0.6, 0.2, 0.2), False) for _ in range(50)} == {"video"}   # no audio track


def _train(tmp, data, epochs, resume=False, steps=3):
    torch.manual_seed(0)
    model = create_model(tiny_config())
    opts = TrainOptions(epochs=epochs, batch_size=4, max_steps_per_epoch=steps, val_windows=4, target_stride=1)
    rec = train(model, _videos(data, "train"), _videos(data, "val"), opts, tmp, resume=resume, progress=False,
                log=lambda s: None)
    return model, rec


def test_training_writes_loadable_checkpoints_and_resumes_exactly(tmp_path, tiny_data):
    straight, rec = _train(tmp_path / "a", tiny_data, epochs=2)
    for f in ("epoch_001.safetensors", "epoch_002.safetensors", "last.safetensors", "best.safetensors",
              "train_state.pt"):
        assert (tmp_path / "a" / f).is_file()
    hist = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(np.isfinite(h["loss"]) and "val_cc_av" in h for h in hist)
    best = max(hist, key=lambda h: h["val_cc_av"])["epoch"]   # best.safetensors is that epoch's
    assert torch.equal(load_model(tmp_path / "a" / "best.safetensors").state_dict()["logits.weight"],
                       load_model(tmp_path / "a" / f"epoch_{best:03d}.safetensors").state_dict()["logits.weight"])
    loaded = load_model(tmp_path / "a" / "last.safetensors")
    for (k, v), (_, w) in zip(straight.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
    # interrupted after epoch 1, then resumed: the same weights as the uninterrupted run
    _train(tmp_path / "b", tiny_data, epochs=1)
    resumed, _ = _train(tmp_path / "b", tiny_data, epochs=2, resume=True)
    for (k, v), (_, w) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    # the frozen backbone did not move, the trainable parts did
    fresh = create_model(tiny_config())
    sd, fs = straight.state_dict(), fresh.state_dict()
    assert all(torch.equal(sd[k], fs[k]) for k in sd if k.startswith("backbone."))
    assert not torch.equal(sd["logits.weight"], fs["logits.weight"])


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path, tiny_data):
    from salstream.diffsal.diffusion import cosine_alphas_cumprod
    from salstream.diffsal.train import Batcher, diffusion_loss, training_targets
    torch.manual_seed(0)
    model = create_model(tiny_config())
    vids = _videos(tiny_data, "train")
    samples = training_targets(model.config, vids, 1)[:4]
    b = Batcher(model, vids, samples, progress=False)
    ac = cosine_alphas_cumprod()

    def loss_at_fixed_noise():
        with torch.no_grad():
            return float(diffusion_loss(model, b.targets(samples), b.video(samples, False), b.audio(samples, False),
                                        torch.Generator().manual_seed(5), ac))
    before = loss_at_fixed_noise()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()
    for i in range(15):
        loss = diffusion_loss(model, b.targets(samples), b.video(samples, True), b.audio(samples, True),
                              torch.Generator().manual_seed(i), ac)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss_at_fixed_noise() < 0.7 * before


def test_high_t_share_trains_that_share_of_batches_where_the_sampler_starts():
    from salstream.artifacts.graphs import example_window
    from salstream.diffsal.diffusion import cosine_alphas_cumprod
    from salstream.diffsal.inference import encode_window
    from salstream.diffsal.train import diffusion_loss
    from salstream.errors import SalstreamError
    model = create_model(tiny_config()).eval()
    seen = []
    denoise = model.denoise
    model.denoise = lambda x_t, t, v, a: (seen.append(int(t[0])), denoise(x_t, t, v, a))[1]   # noqa: E731
    x0 = torch.rand(1, 1, *model.config.map_size)
    with torch.no_grad():
        v, a = encode_window(model, *example_window(model.config))
    ac = cosine_alphas_cumprod()

    def draws(share: float) -> np.ndarray:
        seen.clear()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _ in range(200):
                diffusion_loss(model, x0, v, a, gen, ac, share)
        return np.array(seen)
    uniform, half, high = draws(0.0), draws(0.5), draws(1.0)
    assert 0.05 < np.mean(uniform >= 900) < 0.16 and uniform.min() < 100
    assert 0.45 < np.mean(half >= 900) < 0.65 and half.min() < 100
    assert high.min() >= 900 and high.max() <= 999
    # share 0 draws exactly what training drew before the option existed
    gen = torch.Generator().manual_seed(1)
    torch.randn(x0.shape, generator=gen)
    assert uniform[0] == int(torch.randint(0, 1000, (1,), generator=gen))
    with pytest.raises(SalstreamError, match="high-t-share"):
        TrainOptions(high_t_share=1.5).validate()


def test_evaluation_report_has_every_metric_mode_and_baseline(tmp_path, tiny_data):
    torch.manual_seed(0)
    model = create_model(tiny_config())
    data = {"Synthetic": _videos(tiny_data, "test")}
    res = evaluate(model, data, frame_step=2, progress=False, n_examples=2)
    modes = res["datasets"]["Synthetic"]["modes"]
    assert set(modes) == {"av", "video", "audio", BASELINE}
    for m, vals in modes.items():
        assert set(vals) == set(METRIC_NAMES), m
        assert all(np.isfinite(v) for v in vals.values())
    assert set(res["datasets"]["Synthetic"]["per_video"]) == {"test_0000", "test_0001"}
    # evaluation is reproducible (seeded noise)
    again = evaluate(model, data, frame_step=2, progress=False)
    assert again["datasets"]["Synthetic"]["modes"] == modes
    paths = write_report(res, tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["datasets"]["Synthetic"]["modes"]["av"]["cc"] == modes["av"]["cc"]
    table = paths["md"].read_text()
    assert "| Synthetic | centre prior |" in table and "AUC-SHUFFLED" in table
    from PIL import Image
    for k in ("chart", "examples"):
        with Image.open(paths[k]) as im:
            assert im.size[0] > 200 and im.size[1] > 100


def test_video_only_dataset_is_scored_in_video_mode_only(tmp_path):
    from PIL import Image

    from salstream.diffsal.datasets.layout import load_dhf1k
    from salstream.diffsal.datasets.synthetic import SyntheticClip
    clip = SyntheticClip(1, width=128, height=64, n_frames=10)
    for i in range(10):
        d = tmp_path / "0601"
        for sub in ("images", "maps", "fixation"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(clip.frame(i)).save(d / "images" / f"{i + 1:04d}.png")
        Image.fromarray((clip.density(i) * 255).astype(np.uint8)).save(d / "maps" / f"{i + 1:04d}.png")
        Image.fromarray(clip.fixations(i).astype(np.uint8) * 255).save(d / "fixation" / f"{i + 1:04d}.png")
    model = create_model(tiny_config())
    res = evaluate(model, {"DHF1K": load_dhf1k(tmp_path, "val")}, frame_step=3, progress=False)
    assert set(res["datasets"]["DHF1K"]["modes"]) == {"video", BASELINE}
    assert "| DHF1K | video |" in markdown_table(res)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from salstream.cli import main
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not 'synthetic' and not a directory" in capsys.readouterr().err
    assert main(["train", "--mode-probs", "1,2", "--out", str(tmp_path / "o")]) == 2
    assert "--mode-probs" in capsys.readouterr().err


def test_arch_overrides_build_older_networks_and_name_bad_keys():
    from salstream.diffsal.registry import arch_overrides
    from salstream.errors import SalstreamError
    v3 = create_model("lite", input_size=(128, 192), map_size=(32, 48), **arch_overrides("lite", ["timing=false"]))
    assert v3.timing is None and v3.onset_rows == 0
    assert not any(k.startswith("timing_") for k in v3.state_dict())
    assert arch_overrides("lite", []) == {}
    with pytest.raises(SalstreamError, match="onset_rows"):      # the message lists the valid keys
        arch_overrides("lite", ["timming=false"])
    with pytest.raises(SalstreamError, match="JSON"):
        arch_overrides("lite", ["timing=maybe"])


def test_cli_train_then_eval_round_trip(tmp_path, tiny_data):
    """`salstream train` on a dataset directory, then `salstream eval` on its checkpoint."""
    from salstream.cli import main
    # the tiny config is not a registered profile: save an untrained tiny checkpoint for eval instead
    out = tmp_path / "rep"
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model(tiny_config()), tmp_path / "tiny.safetensors")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tiny_data), "--frame-step", "4",
                 "--modes", "av,video", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["datasets"]["Synthetic"]["modes"]) == {"av", "video", BASELINE}


def _bundled_scores(model, clips, times) -> dict[str, float]:
    """Mean CC of the AV and video-only maps and of the centre prior over fixed windows."""
    from salstream.diffsal.datasets.windows import WindowSource
    from salstream.diffsal.inference import predict_window
    from salstream.diffsal.preprocess import postprocess_map
    scores = {"av": [], "video": [], "centre": []}
    for clip in clips:
        src = WindowSource(clip, model.config)
        for t in times:
            v, a = src.video_input(t)[None], src.audio_input(t)[None]
            gt = src.video.density(t)
            for mode in ("av", "video"):
                pred = predict_window(model, v, a, mode, generator=torch.Generator().manual_seed(0))
                scores[mode].append(M.cc(postprocess_map(pred)[0], gt))
            scores["centre"].append(M.cc(centre_prior(gt.shape), gt))
    return {k: float(np.mean(v)) for k, v in scores.items()}


@pytest.mark.skipif(bundled_weights("lite") is None,
                    reason="bundled diffsal/weights/lite_synthetic.safetensors not present (train it with the "
                           "command in diffsal/weights/README.md)")
def test_bundled_checkpoint_finds_the_sounding_object():
    from salstream.diffsal.datasets.layout import ClipVideo
    from salstream.diffsal.datasets.randomized import cross_style_clip
    from salstream.diffsal.datasets.synthetic import SyntheticClip, split_seed
    model = load_model(bundled_weights("lite"), profile="lite")
    assert bundled_weights("lite").stat().st_size <= 25 * 2**20
    assert model.timing is not None, "the bundled lite weights are v6 (with the timing pathway)"

    # Held-out benchmark clips: the sound tells which of three equally moving objects to mark
    # (README: AV 0.73 vs video-only 0.69 on 800 windows; on these 6 windows 0.81 vs 0.70).
    syn = _bundled_scores(model, [ClipVideo(SyntheticClip(split_seed("test", k), n_frames=90), "Synthetic", f"{k}")
                                  for k in range(3)], (60, 89))
    assert syn["av"] > 0.7
    assert syn["av"] > syn["video"] + 0.05
    assert syn["av"] > syn["centre"] + 0.2

    # Styles it never saw, with a sound from no visible object: the map falls back to the moving
    # objects (README, 24 clips: video-only 0.87, AV 0.85; v3, trained on the benchmark only:
    # 0.53 and 0.51; on these 6 windows v6 scores 0.86 and 0.85).
    off = _bundled_scores(model, [ClipVideo(cross_style_clip("off-screen", k, n_frames=60), "off-screen", f"{k}")
                                  for k in range(3)], (35, 59))
    assert off["video"] > 0.75
    assert off["av"] > off["video"] - 0.05
    assert off["video"] > off["centre"] + 0.4


def test_staged_training_moves_only_the_named_parts(tmp_path, tiny_data):
    """Stage 2 (--init, --train-only, audio-only batches): frozen parts, BatchNorm statistics
    included, stay bit-identical, so audio-visual and video-only maps cannot change."""
    from salstream.diffsal.inference import predict_from_features
    from salstream.diffsal.train import Batcher, freeze_all_but, load_initial_weights, training_targets
    stage1, _ = _train(tmp_path / "s1", tiny_data, epochs=1)
    torch.manual_seed(1)
    model = create_model(tiny_config())
    kept = freeze_all_but(model, ["audio_prior", "audio_prior_proj", "audio_prior_gate"])
    assert kept and all(k.startswith("audio_prior") for k in kept)
    load_initial_weights(model, tmp_path / "s1" / "last.safetensors", log=lambda s: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = TrainOptions(epochs=2, batch_size=4, max_steps_per_epoch=3, val_windows=4, target_stride=1,
                        mode_probs=(0.0, 0.0, 1.0), select_mode="audio")
    train(model, _videos(tiny_data, "train"), _videos(tiny_data, "val"), opts, tmp_path / "s2", progress=False,
          log=lambda s: None)
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("audio_prior") for k in moved), sorted(moved)[:5]
    assert any(k.startswith("mt_proj.1.running") for k in after)   # a BatchNorm that could have drifted
    hist = [json.loads(x) for x in (tmp_path / "s2" / "history.jsonl").read_text().splitlines()]
    best = max(hist, key=lambda h: h["val_cc_audio"])["epoch"]     # selected by the audio-only score
    assert torch.equal(load_model(tmp_path / "s2" / "best.safetensors").state_dict()["audio_prior.position"],
                       load_model(tmp_path / "s2" / f"epoch_{best:03d}.safetensors").state_dict()["audio_prior.position"])
    # maps: audio-visual and video-only identical to stage 1's, audio-only not
    vids = _videos(tiny_data, "val")
    samples = training_targets(model.config, vids, 1)[:2]
    b = Batcher(model, vids, samples, progress=False)
    v, a = b.video(samples, False), b.audio(samples, False)
    stage1.eval()
    model.eval()
    for mv, ma, same in ((v, a, True), (v, None, True), (None, a, False)):
        with torch.no_grad():
            p1 = predict_from_features(stage1, mv, ma, 2, 1, generator=torch.Generator().manual_seed(0))
            p2 = predict_from_features(model, mv, ma, 2, 1, generator=torch.Generator().manual_seed(0))
        # same: equal up to float rounding (the stage-1 object's tensors differ in memory layout)
        diff = float((p1 - p2).abs().max())
        assert (diff < 1e-6) if same else (diff > 1e-4), (mv is None, ma is None, diff)


def test_staged_training_widens_layers_that_gained_inputs(tmp_path, tiny_data):
    """A checkpoint without the tracked timing channels initialises a network with them: the
    layers that read the pathway keep their weights on the old channels, the new ones start
    at zero, so the maps are the checkpoint's until training moves them."""
    import dataclasses

    from salstream.diffsal.inference import predict_from_features
    from salstream.diffsal.train import Batcher, freeze_all_but, load_initial_weights, training_targets
    torch.manual_seed(3)
    src = create_model(tiny_config())
    with torch.no_grad():   # a trained read-out: zero-initialised weights would prove nothing
        for name, prm in src.named_parameters():
            if name.startswith(("timing_proj", "timing_head")):
                prm.normal_(0.0, 0.2)
    path = save_checkpoint(src, tmp_path / "untracked.safetensors")
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, arch={**cfg.arch, "timing_tracked": True, "timing_track_stride": 2})
    model = create_model(cfg)
    freeze_all_but(model, ["timing_head"])
    logged = []
    load_initial_weights(model, path, log=logged.append)
    assert "gained zero-weighted inputs" in logged[0] and "timing_head.0.weight" in logged[0]
    old = src.timing.channels
    assert model.timing.channels == old + 2
    for name in ("timing_proj.0.weight", "timing_head.0.weight"):
        w = model.state_dict()[name]
        assert torch.equal(w[:, :old], src.state_dict()[name]) and w[:, old:].abs().max() == 0
    vids = _videos(tiny_data, "val")
    samples = training_targets(model.config, vids, 1)[:2]
    b = Batcher(model, vids, samples, progress=False)
    v, a = b.video(samples, False), b.audio(samples, False)
    model.eval()
    with torch.no_grad():
        p1 = predict_from_features(src, v, a, 2, 1, generator=torch.Generator().manual_seed(0))
        p2 = predict_from_features(model, v, a, 2, 1, generator=torch.Generator().manual_seed(0))
    assert float((p1 - p2).abs().max()) < 1e-5


def test_staged_training_refuses_frozen_parts_missing_from_the_checkpoint(tmp_path):
    from salstream.diffsal.train import freeze_all_but, load_initial_weights
    from salstream.errors import SalstreamError
    src = create_model(tiny_config())
    path = save_checkpoint(src, tmp_path / "s.safetensors")
    model = create_model(tiny_config())
    freeze_all_but(model, ["logits"])
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("audio_prior.")}
    from safetensors.torch import save_file

    from salstream.diffsal.checkpoint import read_metadata
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"),
              metadata=read_metadata(path))
    with pytest.raises(SalstreamError, match="frozen parameters are not in the checkpoint"):
        load_initial_weights(model, tmp_path / "partial.safetensors", log=lambda s: None)
    with pytest.raises(SalstreamError, match="no trainable parameter has that name prefix"):
        freeze_all_but(create_model(tiny_config()), ["no_such_module"])
