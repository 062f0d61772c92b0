"""``salstream train``: fit a profile on the synthetic benchmark or a dataset directory.

Objective (spec §5–§6): the network predicts x0 from x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with x0
the ground-truth map (+ N(0, 0.01²) jitter), one t ~ U{0…999} per batch, loss = squared
error summed over pixels and averaged over the batch, Adam (lr 1e-4, betas 0.9/0.999),
global gradient-norm clip 1.0, lr ×0.1 after 50 % and 75 % of the epochs.

Modality dropout: each batch is trained as audio-visual, video-only or audio-only (by
default with probabilities 0.6 / 0.2 / 0.2), so one checkpoint serves every mode.

Speed on a CPU: when the per-frame video encoder has no trainable parameters (lite's
frozen pretrained backbone), every frame's features are computed once and kept in
memory (float16), and each training step runs only the audio encoder and the
denoiser. Per-slice log-mel features are likewise computed once per clip.

Each epoch writes ``epoch_NNN.safetensors`` and ``last.safetensors`` (loadable with
:func:`diffsal.checkpoint.load_model`), ``best.safetensors`` when the validation CC
(audio-visual, else video-only) improved, plus ``train_state.pt`` (optimiser, scheduler,
random state) so ``--resume OUT_DIR`` continues where it stopped, and appends one line
per epoch to ``history.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from salstream.cli.numbers import COUNT, SEED, THREADS, number
from salstream.diffsal.config import MODES
from salstream.diffsal.datasets.layout import Video
from salstream.diffsal.datasets.windows import (
    WindowSource,
    first_full_target,
    last_full_target,
    lite_slice_indices,
    window_frame_indices,
)
from salstream.diffsal.diffusion import NUM_TRAIN_TIMESTEPS, add_noise, cosine_alphas_cumprod
from salstream.diffsal.features import FeatureCache
from salstream.diffsal.models.base import stack_time
from salstream.errors import SalstreamError

GT_JITTER = 0.01


@dataclass
class TrainOptions:
    profile: str = "lite"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-4
    grad_clip: float = 1.0
    mode_probs: tuple[float, float, float] = (0.6, 0.2, 0.2)   # av, video, audio
    target_stride: int = 2          # a training window every N-th frame of every clip
    seed: int = 0
    threads: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    val_windows: int = 48
    train_only: tuple[str, ...] = ()   # parameter-name prefixes; empty: everything trainable
    select_mode: Optional[str] = None  # model selection by this mode's val CC (default av, else video)
    high_t_share: float = 0.0       # share of batches drawn from the noisiest tenth of the timesteps

    def validate(self) -> None:
        """Refuse settings that would train nothing or diverge at once (the CLI checks them earlier)."""
        checks = [("epochs", self.epochs, 1, 100_000), ("batch_size", self.batch_size, 1, 4096),
                  ("target_stride", self.target_stride, 1, 10_000)]
        for name, v, lo, hi in checks:
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise SalstreamError(f"--{name.replace('_', '-')} {v!r}: must be an integer from {lo} to {hi}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or not 0 < self.lr <= 1:
            raise SalstreamError(f"--lr {self.lr!r}: must be a learning rate above 0 and at most 1 (e.g. 1e-4)")
        if not isinstance(self.high_t_share, (int, float)) or not 0 <= self.high_t_share <= 1:
            raise SalstreamError(f"--high-t-share {self.high_t_share!r}: must be a share from 0 to 1")
        if not math.isfinite(self.grad_clip) or self.grad_clip <= 0:
            raise SalstreamError(f"gradient clip {self.grad_clip!r}: must be a positive number")


# --------------------------------------------------------------------------- samples
def training_targets(cfg, videos: Sequence[Video], stride: int) -> list[tuple[int, int]]:
    """(video index, target frame) for every stride-th frame whose window fits the clip."""
    out = []
    for vi, v in enumerate(videos):
        lo, hi = first_full_target(cfg), last_full_target(cfg, v.n_frames)
        out += [(vi, t) for t in range(lo, hi + 1, stride)]
    if not out:
        raise SalstreamError("no training window fits in the clips: they are shorter than one window")
    return out


def _has_trainable(module_fn, model, x: torch.Tensor) -> bool:
    """Does ``module_fn(x)`` touch any parameter of ``model`` that requires a gradient?"""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return False
    with torch.enable_grad():
        feats = module_fn(x)
        feats = feats if isinstance(feats, (tuple, list)) else (feats,)
        outs = [f for f in feats if f.requires_grad]
        if not outs:
            return False
        grads = torch.autograd.grad(sum(f.float().sum() for f in outs), params, allow_unused=True)
    return any(g is not None for g in grads)


def frozen_frame_encoder(model):
    """The cacheable part of a per-frame video encoder, or ``None``.

    A model may split ``encode_video`` into a frozen ``backbone_features`` and a trainable
    ``project_video`` (lite does); otherwise the whole ``encode_video`` is cacheable when
    it has no trainable parameters. Returns ``(cached_fn, trainable_fn_or_None)``.
    """
    cfg = model.config
    if not cfg.per_frame_video:
        return None
    x = torch.zeros(1, 3, *cfg.input_size)
    if hasattr(model, "backbone_features") and hasattr(model, "project_video") \
            and not _has_trainable(model.backbone_features, model, x):
        return model.backbone_features, model.project_video
    if not _has_trainable(model.encode_video, model, x):
        return model.encode_video, None
    return None


def _half(feats) -> tuple[torch.Tensor, ...]:
    """One frame's features without the batch axis, as float16 copies (a training set held in memory)."""
    return tuple(f[0].to(torch.float16).clone() for f in (feats if isinstance(feats, (tuple, list)) else (feats,)))


def frame_feature_cache(encode, sources: list[WindowSource], needed: dict[int, set[int]], batch: int = 16,
                        progress: bool = True, cache: Optional[FeatureCache] = None) -> FeatureCache:
    """The frozen per-frame video features of every frame some training window uses, keyed by video index."""
    cache = cache or FeatureCache(encode, batch_size=batch, keep=_half)
    total = sum(len(s) for s in needed.values())
    bar = _bar(total, "video features", "frame") if progress else None
    for vi, frames in needed.items():
        src = sources[vi]
        cache.need([(vi, i, lambda i=i, src=src: src.frame_tensor(i)) for i in sorted(frames)],
                   on_batch=bar.update if bar else None)
        src._frames.clear()
    if bar:
        bar.close()
    return cache


class SliceStore:
    """Per-slice log-mel features (float16) of every audio slice some training window uses."""

    def __init__(self, cfg, sources: list[WindowSource], needed: dict[int, set[int]]):
        from salstream.diffsal.audio import grid_slices
        self.mel: dict[tuple[int, int], torch.Tensor] = {}
        for vi, idx in needed.items():
            order = sorted(idx)
            a = sources[vi].audio_16k()
            mel = grid_slices(torch.from_numpy(a), order, cfg.audio)[0]
            for j, k in enumerate(order):
                self.mel[(vi, k)] = mel[j].to(torch.float16)

    def window(self, cfg, vi: int, target: int, fps: float) -> torch.Tensor:
        """(1, S, h, w) slices of one window."""
        return torch.stack([self.mel[(vi, k)].float() for k in lite_slice_indices(cfg, target, fps)])[None]


def _bar(total: int, desc: str, unit: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=2.0)


# --------------------------------------------------------------------------- batches
class Batcher:
    """Assembles (video features | clips, audio inputs, target maps) for lists of samples."""

    def __init__(self, model, videos: list[Video], samples: list[tuple[int, int]], progress: bool = True,
                 video: bool = True):
        self.model, self.cfg, self.videos = model, model.config, videos
        self.sources = [WindowSource(v, self.cfg) for v in videos]
        self.use_video = video   # False: audio-only training, no frame features to compute
        split = frozen_frame_encoder(model) if video else None
        self.cache_video = split is not None
        self.cached_fn, self.trainable_fn = split if split else (None, None)
        self.has_audio = all(v.has_audio for v in videos)
        self.frames: Optional[FeatureCache] = None
        self.slices: Optional[SliceStore] = None
        self.maps: dict[tuple[int, int], torch.Tensor] = {}
        self.add(samples, progress)

    def add(self, samples: list[tuple[int, int]], progress: bool = True) -> None:
        """Precompute what ``samples`` need (frames, slices, maps)."""
        cfg = self.cfg
        frames: dict[int, set[int]] = {}
        slices: dict[int, set[int]] = {}
        for vi, t in samples:
            v = self.videos[vi]
            frames.setdefault(vi, set()).update(window_frame_indices(cfg, t, v.n_frames))
            if self.has_audio and cfg.per_frame_video:
                slices.setdefault(vi, set()).update(lite_slice_indices(cfg, t, v.fps))
            if (vi, t) not in self.maps:
                self.maps[(vi, t)] = self.sources[vi].target_map(t).to(torch.float16)
        if self.cache_video:
            self.frames = frame_feature_cache(self.cached_fn, self.sources, frames, progress=progress,
                                              cache=self.frames)
        if slices:
            store = SliceStore(cfg, self.sources, slices)
            if self.slices is None:
                self.slices = store
            else:
                self.slices.mel.update(store.mel)

    def video(self, batch: list[tuple[int, int]], grad: bool) -> Any:
        cfg = self.cfg
        if not self.use_video:
            raise SalstreamError("this batcher was built for audio-only training: it holds no video")
        if self.cache_video:
            # (B·T) cached frames -> trainable per-frame part -> (B, C, T, h, w) per level
            items = [f for vi, t in batch
                     for f in self.frames.items(vi, window_frame_indices(cfg, t, self.videos[vi].n_frames))]
            flat = tuple(torch.stack([it[k] for it in items]).float() for k in range(len(items[0])))
            with torch.set_grad_enabled(grad):
                out = self.trainable_fn(flat) if self.trainable_fn is not None else flat
                b, t = len(batch), cfg.frames
                return tuple(o.reshape(b, t, *o.shape[1:]).transpose(1, 2) for o in out)
        clips = torch.stack([self.sources[vi].video_input(t) for vi, t in batch])
        with torch.set_grad_enabled(grad):
            if cfg.per_frame_video:
                return stack_time([self.model.encode_video(clips[:, :, i]) for i in range(clips.shape[2])])
            return self.model.encode_video(clips)

    def audio(self, batch: list[tuple[int, int]], grad: bool) -> torch.Tensor:
        cfg = self.cfg
        if cfg.per_frame_video:
            mel = torch.stack([self.slices.window(cfg, vi, t, self.videos[vi].fps) for vi, t in batch])
        else:
            mel = torch.stack([self.sources[vi].audio_input(t) for vi, t in batch])
        with torch.set_grad_enabled(grad):
            if cfg.per_frame_video:
                b, _, s = mel.shape[:3]
                flat = self.model.encode_audio(mel.reshape(b * s, 1, *mel.shape[-2:]))
                # (B·S, ...) -> (B, ..., S, ...): per-slice features stacked on dim 2
                return torch.stack(list(flat.reshape(b, s, *flat.shape[1:]).unbind(1)), dim=2)
            return self.model.encode_audio(mel)

    def targets(self, batch: list[tuple[int, int]]) -> torch.Tensor:
        return torch.stack([self.maps[s].float() for s in batch])


# --------------------------------------------------------------------------- loop
def diffusion_loss(model, x0: torch.Tensor, video_feats, audio_feats, generator: torch.Generator,
                   alphas_cumprod: torch.Tensor, high_t_share: float = 0.0) -> torch.Tensor:
    """Spec §5: one t per batch, x0 target, squared error summed over pixels, mean over batch.

    ``high_t_share``: that share of batches draws t from the noisiest tenth instead of all
    timesteps. A few-step sampler starts there (the bundled one-step default only ever runs
    t = 999), where the map must come from the conditions alone; uniform t spends 90 % of the
    steps where x_t already shows most of the answer."""
    b = x0.shape[0]
    x0 = x0 + GT_JITTER * torch.randn(x0.shape, generator=generator)
    lo = 0
    if high_t_share > 0 and torch.rand((), generator=generator).item() < high_t_share:
        lo = NUM_TRAIN_TIMESTEPS - NUM_TRAIN_TIMESTEPS // 10
    t = torch.randint(lo, NUM_TRAIN_TIMESTEPS, (1,), generator=generator).expand(b)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = add_noise(x0, eps, t, alphas_cumprod)
    pred = model.denoise(x_t, t, video_feats, audio_feats)
    return ((pred - x0) ** 2).flatten(1).sum(1).mean()


def pick_mode(rng: random.Random, probs: Sequence[float], has_audio: bool) -> str:
    if not has_audio:
        return "video"
    return rng.choices(MODES, weights=probs)[0]


@torch.inference_mode()
def quick_validation(model, batcher: Batcher, samples: list[tuple[int, int]], steps: Optional[int],
                     has_audio: bool, seed: int = 0, **sample_kwargs) -> dict[str, float]:
    """Mean CC per mode on fixed validation windows (the same DDIM loop as inference;
    ``sample_kwargs`` go to the sampler, e.g. ``timestep_spacing``)."""
    from salstream.diffsal import metrics as M
    from salstream.diffsal.inference import predict_from_features
    from salstream.diffsal.preprocess import postprocess_map
    model.eval()
    modes = MODES if has_audio else ("video",)
    scores = {m: [] for m in modes}
    for b0 in range(0, len(samples), 8):
        batch = samples[b0:b0 + 8]
        v = batcher.video(batch, False)
        a = batcher.audio(batch, False) if has_audio else None
        gts = batcher.targets(batch)
        for m in modes:
            g = torch.Generator().manual_seed(seed + b0)
            x0 = predict_from_features(model, v if m != "audio" else None, a if m != "video" else None,
                                       len(batch), steps, generator=g, **sample_kwargs)
            for p, gt in zip(postprocess_map(x0), gts):
                if gt.sum() > 0:
                    scores[m].append(M.cc(p, gt[0].numpy()))
    return {f"val_cc_{m}": float(np.mean(s)) for m, s in scores.items() if s}


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def freeze_all_but(model, prefixes: Sequence[str]) -> list[str]:
    """Train only parameters inside the modules named by ``prefixes`` (dotted names: ``a.b``
    covers ``a.b.*``, not ``a.bc.*``); returns the trained parameters' names."""
    kept = []
    for name, p in model.named_parameters():
        keep = any(name == pre or name.startswith(pre.rstrip(".") + ".") for pre in prefixes)
        p.requires_grad_(keep and p.requires_grad)
        if p.requires_grad:
            kept.append(name)
    if not kept:
        raise SalstreamError(f"--train-only {','.join(prefixes)}: no trainable parameter has that name prefix; "
                             "the model's top-level modules are: "
                             + ", ".join(sorted({n.split('.')[0] for n, _ in model.named_parameters()})))
    return kept


def load_initial_weights(model, path: Path, log=print) -> None:
    """Copy every tensor of checkpoint ``path`` whose name and shape match into ``model``.

    For staged training (``--init``): the parts the checkpoint lacks must all be trainable,
    so nothing frozen is left at its random initial value. A weight that only gained input
    channels (axis 1; an input added *last*, as the timing pathway's tracked channels are) is
    copied into the first ones and the new ones start at zero: the layer computes what it
    did until training gives the new inputs a weight.
    """
    from salstream.diffsal.checkpoint import load_state
    _, state = load_state(path)
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    widened = [k for k, v in state.items() if k in own and k not in taken and v.dim() >= 2
               and own[k].shape[0] == v.shape[0] and own[k].shape[2:] == v.shape[2:] and own[k].shape[1] > v.shape[1]]
    for k in widened:
        w = torch.zeros_like(own[k])
        w[:, :state[k].shape[1]] = state[k]
        taken[k] = w
    model.load_state_dict(taken, strict=False)
    params = dict(model.named_parameters())
    untouched = [k for k in own if k not in taken]
    frozen_untouched = [k for k in untouched if k in params and not params[k].requires_grad]
    if frozen_untouched:
        raise SalstreamError(f"--init {path}: {len(frozen_untouched)} frozen parameters are not in the checkpoint "
                             f"(e.g. {', '.join(frozen_untouched[:3])}); train them too (--train-only) or init "
                             "from a checkpoint of the same profile")
    ignored = [k for k in state if k not in taken]
    log(f"[train] initialised {len(taken)} tensors from {path}; {len(untouched)} start fresh"
        + (f"; {len(widened)} gained zero-weighted inputs ({', '.join(widened[:4])})" if widened else "")
        + (f" ({', '.join(untouched[:4])}{', …' if len(untouched) > 4 else ''})" if untouched else "")
        + (f"; ignored {len(ignored)} checkpoint tensors ({', '.join(ignored[:4])})" if ignored else ""))


def set_training_mode(model) -> None:
    """``model.train()``, but every sub-module with only frozen parameters stays in eval mode,
    so its BatchNorm statistics (and dropout) cannot change what frozen parts compute."""
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()


def train(model, train_videos: list[Video], val_videos: list[Video], opts: TrainOptions, out: Path,
          resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train ``model`` in place; returns the last epoch's record."""
    from salstream.diffsal.checkpoint import save_checkpoint
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    cfg = model.config
    samples = training_targets(cfg, train_videos, opts.target_stride)
    t0 = time.perf_counter()
    with_audio = all(v.has_audio for v in train_videos)
    if not with_audio and opts.mode_probs[0] == opts.mode_probs[1] == 0:
        raise SalstreamError("--mode-probs asks for audio-only training, but some training videos have no audio")
    batcher = Batcher(model, train_videos, samples, progress=progress,
                      video=not with_audio or opts.mode_probs[0] > 0 or opts.mode_probs[1] > 0)
    has_audio = batcher.has_audio
    val_batcher = None
    val_samples: list[tuple[int, int]] = []
    if val_videos and opts.val_windows > 0:
        all_val = training_targets(cfg, val_videos, 1)
        pick = np.linspace(0, len(all_val) - 1, min(opts.val_windows, len(all_val))).round().astype(int)
        val_samples = [all_val[i] for i in pick]
        val_batcher = Batcher(model, val_videos, val_samples, progress=False)
    prep_s = time.perf_counter() - t0
    if batcher.frames is not None:
        log(f"[train] cached features of {len(batcher.frames)} frames "
            f"({batcher.frames.nbytes() / 2**20:.0f} MiB) in {prep_s:.0f} s")

    opts.validate()
    params = trainable_parameters(model)
    if not params:
        raise SalstreamError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=opts.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    milestones = sorted({max(1, int(0.5 * opts.epochs)), max(1, int(0.75 * opts.epochs))})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    steps_per_epoch = math.ceil(len(samples) / opts.batch_size)
    if opts.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, opts.max_steps_per_epoch)
    gen = torch.Generator().manual_seed(opts.seed)
    py_rng = random.Random(opts.seed)
    ac = cosine_alphas_cumprod()
    start_epoch, train_seconds = 0, 0.0
    best: Optional[float] = None
    state_path = out / "train_state.pt"
    if resume:
        if not state_path.is_file() or not (out / "last.safetensors").is_file():
            raise SalstreamError(f"--resume: {out} holds no train_state.pt + last.safetensors to continue from")
        from salstream.diffsal.checkpoint import load_state
        _, sd = load_state(out / "last.safetensors")
        model.load_state_dict(sd, strict=True)
        st = load_train_state(state_path)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        gen.set_state(st["generator"])
        py_rng.setstate(st["py_rng"])
        start_epoch, train_seconds, best = st["epoch"], st.get("train_seconds", 0.0), st.get("best")
        log(f"[train] resumed after epoch {start_epoch} ({train_seconds / 60:.1f} min trained)")
    record: dict = {}
    order_rng = np.random.default_rng(opts.seed)
    for _ in range(start_epoch):  # keep the shuffles identical to an uninterrupted run
        order_rng.permutation(len(samples))
    for epoch in range(start_epoch, opts.epochs):
        set_training_mode(model)
        order = order_rng.permutation(len(samples))
        bar = _bar(steps_per_epoch, f"epoch {epoch + 1}/{opts.epochs}", "step") if progress else None
        e_start = time.perf_counter()
        losses: list[float] = []
        mode_losses: dict[str, list[float]] = {m: [] for m in MODES}
        for step in range(steps_per_epoch):
            batch = [samples[i] for i in order[step * opts.batch_size:(step + 1) * opts.batch_size]]
            mode = pick_mode(py_rng, opts.mode_probs, has_audio)
            v = batcher.video(batch, True) if mode in ("av", "video") else None
            a = batcher.audio(batch, True) if mode in ("av", "audio") else None
            loss = diffusion_loss(model, batcher.targets(batch), v, a, gen, ac, opts.high_t_share)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            mode_losses[mode].append(losses[-1])
            if bar:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.1f}", mode=mode, refresh=False)
                bar.update(1)
        if bar:
            bar.close()
        sched.step()
        train_seconds += time.perf_counter() - e_start
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                  **{f"loss_{m}": float(np.mean(v)) for m, v in mode_losses.items() if v},
                  "lr": opt.param_groups[0]["lr"], "train_minutes": round(train_seconds / 60, 2)}
        if val_batcher is not None:
            record.update(quick_validation(model, val_batcher, val_samples, None, has_audio, opts.seed))
        meta = {"epoch": str(epoch + 1), "train_minutes": f"{train_seconds / 60:.1f}",
                "train_options": json.dumps(opts.__dict__)}
        model.eval()
        save_checkpoint(model, out / f"epoch_{epoch + 1:03d}.safetensors", metadata=meta)
        save_checkpoint(model, out / "last.safetensors", metadata=meta)
        # Model selection on the validation split (never the test split): best AV (else video)
        # CC, or that of --select-mode.
        score = record.get(f"val_cc_{opts.select_mode}") if opts.select_mode else \
            record.get("val_cc_av", record.get("val_cc_video"))
        if score is not None and (best is None or score > best):
            best = score
            save_checkpoint(model, out / "best.safetensors", metadata=meta)
            record["best"] = True
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
                    "py_rng": py_rng.getstate(), "epoch": epoch + 1, "train_seconds": train_seconds,
                    "best": best}, state_path)
        with open(out / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log("[train] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    return record


def load_train_state(path: Path) -> dict:
    """The optimiser/scheduler/RNG state of ``--resume``, read without running code from the file.

    ``weights_only=True`` unpickles tensors and plain values only (what :func:`train` saves);
    anything else — a crafted file that would import and call something — is refused.
    """
    import pickle
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SalstreamError(f"--resume: {path} is not a training state salstream wrote (it holds objects other "
                             f"than tensors and plain values, or is damaged: {first}); nothing in it was run. "
                             "Delete it to start the run afresh, or resume from a folder you trust") from None
    keys = {"optimizer", "scheduler", "generator", "py_rng", "epoch"}
    if not isinstance(st, dict) or not keys <= set(st) or not isinstance(st["epoch"], int) or st["epoch"] < 0:
        raise SalstreamError(f"--resume: {path} lacks {', '.join(sorted(keys))} (not a salstream training state); "
                             "delete it to start the run afresh")
    return st


# --------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a profile (x0 diffusion objective, modality dropout)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="lite", help="model profile: lite or full (default lite)")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the benchmark), 'cross-style' (domain-randomised clips of the in-style "
                   "families, rendered in memory; see salstream eval --data cross-style) or a dataset directory "
                   "(AV or DHF1K layout)")
    p.add_argument("--fold", type=number(int, 1, 3), default=1, help="AV datasets: fold 1-3")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this checkpoint's weights (tensors matching by name and shape; the rest "
                        "start fresh and must be trainable): the second stage of a staged run")
    p.add_argument("--train-only", default=None,
                   help="comma-separated module names to train, everything under each (audio_prior covers "
                        "audio_prior.*, not audio_prior_proj.*); everything else stays frozen, BatchNorm "
                        "statistics included")
    p.add_argument("--select-mode", choices=MODES, default=None,
                   help="keep best.safetensors by this mode's validation CC (default: av, else video)")
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="override one architecture setting of the profile (VALUE is JSON: "
                        "--arch timing=false builds lite v3's network); repeatable")
    p.add_argument("--epochs", type=number(int, 1, 100_000), default=TrainOptions.epochs)
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=TrainOptions.batch_size)
    p.add_argument("--lr", type=number(float, 0, 1, lo_open=True), default=TrainOptions.lr)
    p.add_argument("--mode-probs", default="0.6,0.2,0.2", help="probabilities of av,video,audio batches")
    p.add_argument("--high-t-share", type=number(float, 0, 1), default=TrainOptions.high_t_share, metavar="P",
                   help="train this share of batches on the noisiest tenth of the timesteps, where a one- or "
                        "few-step sampler starts (default 0: all timesteps alike)")
    p.add_argument("--target-stride", type=number(int, 1, 10_000), default=TrainOptions.target_stride,
                   help="one training window every N frames of each clip")
    p.add_argument("--max-steps-per-epoch", type=COUNT, default=None)
    p.add_argument("--train-clips", type=number(int, 1, 100_000), default=120, help="synthetic, cross-style: training clips")
    p.add_argument("--val-clips", type=number(int, 0, 100_000), default=8, help="synthetic, cross-style: validation clips")
    p.add_argument("--off-screen-every", type=number(int, 1, 100_000), default=None, metavar="N",
                   help="cross-style: every N-th training clip has its sound off screen (default: the "
                        "generator's, every 5th; validation clips always keep it)")
    p.add_argument("--clip-frames", type=number(int, 1, 100_000), default=150, help="synthetic, cross-style: frames per clip")
    p.add_argument("--val-windows", type=number(int, 0, 1_000_000), default=TrainOptions.val_windows,
                   help="validation windows scored after each epoch (0: none)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="where synthetic data is written (default $SALSTREAM_DATA or ~/.cache/salstream)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run)
    return p


def load_training_data(args) -> tuple[list[Video], list[Video]]:
    from salstream.diffsal.datasets.layout import load_videos
    from salstream.diffsal.datasets.synthetic import synthetic_root, write_synthetic
    from salstream.diffsal.evaluate import default_data_root
    if args.data == "cross-style":   # domain-randomised, in-style families, rendered in memory
        from salstream.diffsal.datasets.layout import ClipVideo
        from salstream.diffsal.datasets.randomized import OFFSCREEN_EVERY, training_clip
        every = {"train": args.off_screen_every or OFFSCREEN_EVERY, "val": OFFSCREEN_EVERY}   # val stays comparable
        return tuple([ClipVideo(training_clip(split, k, offscreen_every=every[split], n_frames=args.clip_frames),
                                "cross-style", f"{split}_{k:04d}")
                      for k in range(n)] for split, n in (("train", args.train_clips), ("val", args.val_clips)))
    if args.data == "synthetic":
        root = synthetic_root(args.data_root or default_data_root(), n_frames=args.clip_frames)
        write_synthetic(root, {"train": args.train_clips, "val": args.val_clips}, n_frames=args.clip_frames,
                        progress=not args.no_progress)
        tr = load_videos(root, "train", datasets=["Synthetic"])["Synthetic"][:args.train_clips]
        va = load_videos(root, "val", datasets=["Synthetic"])["Synthetic"][:args.val_clips] if args.val_clips else []
        return tr, va
    if not Path(args.data).is_dir():
        raise SalstreamError(f"--data {args.data!r}: not 'synthetic' and not a directory (choose 'synthetic', 'cross-style' or a dataset directory)")
    tr = [v for vs in load_videos(args.data, "train", args.fold).values() for v in vs]
    va = [v for vs in load_videos(args.data, "test", args.fold).values() for v in vs]
    return tr, va


def run(args: argparse.Namespace) -> int:
    from salstream.diffsal.registry import arch_overrides, create_model
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the initial weights are part of the reproducible run
    try:
        probs = tuple(float(x) for x in args.mode_probs.split(","))
        assert len(probs) == 3 and min(probs) >= 0 and sum(probs) > 0
    except (ValueError, AssertionError):
        raise SalstreamError(f"--mode-probs {args.mode_probs!r}: expected three non-negative numbers "
                             "for av,video,audio, e.g. 0.6,0.2,0.2") from None
    try:
        model = create_model(args.profile, **arch_overrides(args.profile, args.arch))
    except ValueError as exc:
        raise SalstreamError(f"--profile/--arch: {exc}") from None
    opts = TrainOptions(profile=args.profile, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        mode_probs=probs, target_stride=args.target_stride, seed=args.seed, threads=args.threads,
                        max_steps_per_epoch=args.max_steps_per_epoch, val_windows=args.val_windows,
                        train_only=tuple(x for x in (args.train_only or "").split(",") if x),
                        select_mode=args.select_mode, high_t_share=args.high_t_share)
    if opts.train_only:
        kept = freeze_all_but(model, opts.train_only)
        n_values = sum(p.numel() for p in trainable_parameters(model))
        print(f"[train] training {len(kept)} parameter tensors ({n_values} values); the rest is frozen",
              file=sys.stderr)
    if args.init is not None:
        if args.resume:
            raise SalstreamError("--init and --resume exclude each other: --resume continues its own run")
        if not Path(args.init).is_file():
            raise SalstreamError(f"--init {args.init}: no such checkpoint file")
        load_initial_weights(model, args.init, log=lambda s: print(s, file=sys.stderr, flush=True))
    train_videos, val_videos = load_training_data(args)
    print(f"[train] {args.profile}: {len(train_videos)} training videos, {len(val_videos)} validation videos, "
          f"out={args.out}", file=sys.stderr)
    (Path(args.out)).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "command.txt").write_text("salstream " + " ".join(sys.argv[1:]) + "\n")
    train(model, train_videos, val_videos, opts, args.out, resume=args.resume, progress=not args.no_progress,
          log=lambda s: print(s, file=sys.stderr, flush=True))
    return 0
