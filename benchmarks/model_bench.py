"""Model-level latency: per graph, per map vs DDIM steps, the official-style sampler, warm start, GPU.

What one *map* costs is what the live pipeline pays for it:

* per-frame profiles (``lite``): encode the one new frame and one new audio slice, stack
  them with the cached features of the rest of the window, run ``steps`` denoiser calls;
* window profiles (``full``): encode the 16-frame clip and the window's audio, then the
  denoiser calls.

Per-graph figures (``encode_video`` / ``encode_audio`` / ``denoise``) are the individual
calls inside those timed maps, so both views come from the same runs.

**Several draws per map** (``samples``, K = 1, 2, 4): the K draws of a window as one
batched denoiser call (what ``salstream run --samples K`` does) against K separate
single-draw calls on the same features; both include encoding the new frame once.

The **official-style sampler** reproduces how the released code samples a window (eager
PyTorch under ``no_grad``; the encoders once; the four-map video feature list
deep-copied before the loop and again at every step, with the noisy map's features
appended into that copy) using this repository's modules and weights, so it runs in the
same process on the same inputs and its maps can be compared with ours for identity.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from salstream.diffsal.diffusion import NUM_TRAIN_TIMESTEPS, cosine_alphas_cumprod
from salstream.diffsal.features import FeatureCache, cat_batch
from salstream.diffsal.inference import predict_from_features, predict_samples
from salstream.errors import SalstreamError

from .report import load_average, stats

log = logging.getLogger("salstream.bench")

CPU_ENGINES = ("torch", "ort-cpu")
GPU_ENGINES = ("torch-cuda", "tensorrt", "ort-trt", "ort-cuda")


@dataclass
class ModelBenchOptions:
    profiles: Sequence[str] = ("lite", "full")
    engines: Sequence[str] = CPU_ENGINES          # engines for every profile except full
    full_engines: Sequence[str] = ("torch",)      # full is seconds per window on a CPU: few engines by default
    steps: Sequence[int] = (1, 2, 4, 8)
    full_steps: Sequence[int] = (1, 4)
    repeats: int = 20
    full_repeats: int = 2
    warmup: int = 2
    full_warmup: int = 1                          # full's first window: allocations, rel-pos tables
    flops: Optional[bool] = None                  # count GFLOPs per graph (None: all but full, which costs a window)
    threads: Optional[int] = None
    quick: bool = False                           # tiny input sizes: checks the machinery, not the speed
    warm_windows: int = 8                         # consecutive windows for warm vs cold start (0: skip)
    full_warm_start: bool = False
    gpu: bool = True
    gpu_batches: Sequence[int] = (1, 4)
    gpu_repeats: int = 20
    cache_root: Optional[str] = None              # where ONNX exports are cached (default: the user cache)
    samples: Sequence[int] = (1, 2, 4)            # draws per map to compare, batched vs one call each (() = skip)
    samples_engines: Sequence[str] = ("ort-cpu",)  # engines of that comparison (not run for full)
    seed: int = 0
    models: dict[str, torch.nn.Module] = field(default_factory=dict)  # profile -> ready model (tests, embedding)
    engine_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)  # engine -> extra factory arguments


# ---------------------------------------------------------------------- models

def quick_config(profile: str):
    """A small configuration of ``profile`` that runs in milliseconds (same code paths)."""
    from salstream.diffsal import default_config
    from salstream.diffsal.config import AudioConfig
    cfg = default_config(profile)
    if profile == "lite":
        return dataclasses.replace(cfg, input_size=(64, 96), map_size=(16, 24),
                                   arch=dict(cfg.arch, kv_kernels=[1, 2, 4]))
    if profile == "full":
        return dataclasses.replace(cfg, input_size=(64, 128), map_size=(64, 128),
                                   audio=AudioConfig(slice_size=(32, 64)))
    return cfg


@functools.lru_cache(maxsize=4)
def load_subject(profile: str, quick: bool) -> tuple[torch.nn.Module, str]:
    """The model to measure and where its weights came from (speed does not depend on training)."""
    from salstream.diffsal.registry import create_model
    if not quick and profile == "lite":
        from salstream.diffsal.registry import bundled_weights
        bundled = bundled_weights("lite")
        if bundled is not None:
            from salstream.diffsal.checkpoint import load_model
            return load_model(str(bundled), profile="lite"), bundled.name
    torch.manual_seed(0)
    model = create_model(quick_config(profile) if quick else profile)
    return model.requires_grad_(False), "untrained (random initialisation)"


def build_engine(name: str, model: torch.nn.Module, threads: Optional[int], cache_root: Optional[str],
                 extra: Optional[dict[str, Any]] = None):
    """``(engine, None)`` or ``(None, reason)`` when the engine's runtime or device is absent."""
    from salstream.errors import EngineUnavailable
    from salstream.runtime import make_engine
    kwargs: dict[str, Any] = {"threads": threads, "cache_root": cache_root}
    kwargs.update(extra or {})
    try:
        return make_engine(name, model, **kwargs), None
    except (EngineUnavailable, ImportError) as exc:
        return None, str(exc).splitlines()[0]
    except (SalstreamError, ValueError, RuntimeError) as exc:   # e.g. an export this runtime cannot do
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


# ---------------------------------------------------------------------- timing

def _sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TimedRunner:
    """Wraps an engine and records the wall time of every graph call (ms)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.config = engine.config
        self.device = getattr(engine, "device", "cpu")
        self.calls: dict[str, list[float]] = {"encode_video": [], "encode_audio": [], "denoise": []}
        self.recording = True

    def _timed(self, name: str, fn: Callable, *args):
        _sync(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        _sync(self.device)
        if self.recording:
            self.calls[name].append((time.perf_counter() - t0) * 1000.0)
        return out

    def encode_video(self, x):
        return self._timed("encode_video", self.engine.encode_video, x)

    def encode_audio(self, x):
        return self._timed("encode_audio", self.engine.encode_audio, x)

    def denoise(self, x_t, t, v, a):
        return self._timed("denoise", self.engine.denoise, x_t, t, v, a)


def smooth_clip(cfg, n_frames: int, seed: int = 0, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised video (B, 3, N, H, W) and log-mel-like slices (B, 1, N, h, w) that change slowly,
    like consecutive camera frames (consecutive windows then overlap as they do live)."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.input_size
    ah, aw = cfg.audio.slice_size
    base = torch.randn((batch, 3, 1, h, w), generator=g)
    drift = torch.randn((batch, 3, n_frames, h, w), generator=g).cumsum(dim=2) * 0.05
    video = (base + drift).clamp(-3, 3)
    a_base = torch.randn((batch, 1, 1, ah, aw), generator=g)
    audio = a_base + torch.randn((batch, 1, n_frames, ah, aw), generator=g).cumsum(dim=2) * 0.05
    return video, audio


class MapMaker:
    """Produces maps the way the live pipeline does for ``runner``'s profile (see module doc)."""

    def __init__(self, runner: Any, seed: int = 0, batch: int = 1):
        self.runner = runner
        self.cfg = runner.config
        self.batch = batch
        self.device = getattr(runner, "device", "cpu")
        self.per_frame = bool(self.cfg.per_frame_video)
        n = self.cfg.frames + 64
        self.video, self.audio = smooth_clip(self.cfg, n, seed, batch)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.i = 0
        self.video_cache = FeatureCache(runner.encode_video)
        self.audio_cache = FeatureCache(runner.encode_audio)

    def _next_inputs(self):
        n = self.video.shape[2]
        i = self.i % (n - self.cfg.frames)
        self.i += 1
        return i

    @torch.inference_mode()
    def features(self):
        """Encode what a new map needs; returns (video feats, audio feats)."""
        i = self._next_inputs()
        cfg = self.cfg
        if self.per_frame:
            # Map number t of each of the ``batch`` streams: window frames t … t+T-1 (slices t … t+S-1);
            # all but the newest come from the cache, as in a live stream.
            t = self.i - 1
            frames, slices = range(t, t + cfg.frames), range(t, t + cfg.audio.n_slices)

            def requests(data, indices):
                return [(b, j, data[b, :, j % data.shape[2]]) for b in range(self.batch) for j in indices]
            if not len(self.video_cache):           # fill the window once, like a stream's first window
                was = getattr(self.runner, "recording", None)
                if was is not None:
                    self.runner.recording = False
                self.video_cache.need(requests(self.video, frames[:-1]))
                self.audio_cache.need(requests(self.audio, slices[:-1]))
                if was is not None:
                    self.runner.recording = was
            self.video_cache.need(requests(self.video, frames[-1:]))
            self.audio_cache.need(requests(self.audio, slices[-1:]))
            for b in range(self.batch):
                self.video_cache.forget(b, before=t)
                self.audio_cache.forget(b, before=t)
            return (cat_batch([self.video_cache.stack(b, frames) for b in range(self.batch)]),
                    cat_batch([self.audio_cache.stack(b, slices) for b in range(self.batch)]))
        clip = self.video[:, :, i:i + cfg.frames]
        slices = self.audio[:, :, i:i + cfg.audio.n_slices]
        return self.runner.encode_video(clip), self.runner.encode_audio(slices)

    def noise(self) -> torch.Tensor:
        return torch.randn((self.batch, 1, *self.cfg.map_size), generator=self.gen)

    @torch.inference_mode()
    def make(self, steps: int, noise: Optional[torch.Tensor] = None, **kw) -> torch.Tensor:
        v, a = self.features()
        noise = self.noise() if noise is None else noise
        return predict_from_features(self.runner, v, a, self.batch, steps, noise=noise.to(self.device),
                                     device=self.device, **kw)


def time_maps(maker: MapMaker, steps: int, repeats: int, warmup: int,
              between: Optional[Callable[[], None]] = None) -> tuple[list[float], list[float]]:
    """Wall and process-CPU milliseconds of ``repeats`` maps. ``between`` runs after each timed map
    (an A/B partner such as the official-style sampler), so drifting machine load hits both alike."""
    runner = maker.runner
    for _ in range(warmup):
        if hasattr(runner, "recording"):
            runner.recording = False
        maker.make(steps)
    if hasattr(runner, "recording"):
        runner.recording = True
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(maker.device)
        t0, c0 = time.perf_counter(), time.process_time()
        maker.make(steps)
        _sync(maker.device)
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
        if between is not None:
            between()
    return wall, cpu


def per_map_stats(times_ms: list[float], batch: int = 1, cpu_ms: Optional[list[float]] = None) -> dict[str, Any]:
    """Wall-time statistics of maps (``maps_per_s`` from the wall p50), plus process CPU time when given:
    with one engine thread the CPU time is what the map costs an idle core, whatever else runs."""
    s = stats(times_ms)
    s["maps_per_s"] = round(1000.0 * batch / s["p50"], 3) if s["p50"] else None
    s["samples_ms"] = [round(x, 3) for x in times_ms]
    if cpu_ms is not None:
        s["cpu_ms"] = stats(cpu_ms)
    return s


# ---------------------------------------------------------------------- official-style sampler

def _stage0_hook(model: torch.nn.Module, store: list):
    """Capture MViT stage 0's normalised map: the official encoder returns it as a 4th map
    (never read by the UNet, but it sits in the list the sampler deep-copies each step)."""
    net = getattr(model, "visual_net", None)
    norm0 = getattr(net, "norm0", None)
    if norm0 is None:
        return None
    return norm0.register_forward_hook(lambda mod, inp, out: store.append(out))


def official_style_encode(model: torch.nn.Module, video: torch.Tensor, audio: torch.Tensor):
    stage0: list = []
    hook = _stage0_hook(model, stage0)
    try:
        maps = list(model.encode_video(video))
    finally:
        if hook is not None:
            hook.remove()
    if stage0:
        b, _, t, h, w = video.shape
        tokens = stage0[-1][:, 1:]                 # drop the class token
        maps.append(tokens.transpose(1, 2).reshape(b, tokens.shape[-1], t // 2, h // 4, w // 4).contiguous())
    return maps, model.encode_audio(audio)


def official_style_denoise(unet: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, feats: list,
                           audio: torch.Tensor) -> torch.Tensor:
    """One UNet call that, like the released decoder, writes the noise slot into the list it gets."""
    noise = unet.noise_features(x_t, t)
    n_joined = len(noise)
    for i in range(n_joined):
        feats[i] = torch.cat([feats[i], noise[i].unsqueeze(2)], dim=2)
    out = unet.logits(unet.invpt_decoder(feats[:n_joined], audio))
    return F.interpolate(out, size=tuple(x_t.shape[-2:]), mode="bilinear", align_corners=False)


def supports_official_style(model: torch.nn.Module) -> bool:
    unet = getattr(model, "decoder_net", None)
    return unet is not None and hasattr(unet, "noise_features") and hasattr(unet, "invpt_decoder")


@torch.no_grad()
def official_style_window(model: torch.nn.Module, video: torch.Tensor, audio: torch.Tensor, steps: int,
                          noise: torch.Tensor) -> torch.Tensor:
    """A window sampled the official way (eager, deep copies, encoders once, DDIM eta = 0)."""
    feats, a = official_style_encode(model, video, audio)
    kept = copy.deepcopy(feats)
    ac = cosine_alphas_cumprod().to(noise.device)
    skip = NUM_TRAIN_TIMESTEPS // steps
    seq = list(range(0, NUM_TRAIN_TIMESTEPS, skip))
    nxt = [-1] + seq[:-1]
    x = noise
    for t, t_next in zip(reversed(seq), reversed(nxt)):
        tt = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        img = copy.deepcopy(kept)
        x0 = official_style_denoise(model.decoder_net, x, tt, img, a)
        if t_next < 0:
            x = x0
            continue
        a_t, a_n = ac[t], ac[t_next]
        eps = ((1.0 / a_t).sqrt() * x - x0) / (1.0 / a_t - 1).sqrt()
        x = a_n.sqrt() * x0 + (1 - a_n).sqrt() * eps
    return x.clamp(0, 1)


class OfficialStyle:
    """Times official-style windows on fixed inputs, per step count, and checks them against ``ours``."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", seed: int = 0, batch: int = 1):
        cfg = model.config
        self.model, self.device, self.batch = model, device, batch
        video, audio = smooth_clip(cfg, cfg.frames, seed, batch)
        self.video = video.to(device)
        self.audio = audio[:, :, : cfg.audio.n_slices].to(device)
        g = torch.Generator().manual_seed(seed + 7)
        self.noise = torch.randn((batch, 1, *cfg.map_size), generator=g).to(device)
        self.wall: dict[int, list[float]] = {}
        self.cpu: dict[int, list[float]] = {}
        self.identity: dict[str, dict[str, Any]] = {}
        self.last: dict[int, torch.Tensor] = {}

    def run(self, steps: int, record: bool = True) -> None:
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.last[steps] = official_style_window(self.model, self.video, self.audio, steps, self.noise)
        _sync(self.device)
        if record:
            self.wall.setdefault(steps, []).append((time.perf_counter() - t0) * 1000.0)
            self.cpu.setdefault(steps, []).append((time.process_time() - c0) * 1000.0)

    def check(self, ours: Any, steps: int, key: Optional[str] = None) -> None:
        """Our window on the same inputs and noise through ``ours`` (an engine) vs the last official map."""
        from salstream.diffsal.inference import predict_window
        if steps not in self.last:
            self.run(steps, record=False)
        mine = predict_window(ours, self.video, self.audio, "av", steps, noise=self.noise, device=self.device)
        ref = self.last[steps]
        self.identity[key or str(steps)] = {
            "steps": steps, "engine": getattr(ours, "name", "?"), "map_std": float(mine.float().std()),
            "max_abs_diff": (mine.float().cpu() - ref.float().cpu()).abs().max().item()}

    def result(self) -> dict[str, Any]:
        return {"per_map": {str(s): per_map_stats(w, self.batch, self.cpu[s]) for s, w in sorted(self.wall.items())},
                "identity": self.identity}


def official_style_bench(model: torch.nn.Module, steps_list: Sequence[int], repeats: int, warmup: int,
                         ours: Optional[Any], device: str = "cpu", seed: int = 0, batch: int = 1) -> dict:
    """The official-style sampler on its own (no A/B partner), with the identity check against ``ours``."""
    off = OfficialStyle(model, device, seed, batch)
    for i, steps in enumerate(steps_list):
        for _ in range(warmup if i == 0 else 0):
            off.run(steps, record=False)
        for _ in range(repeats):
            off.run(steps)
        if ours is not None:
            off.check(ours, steps)
    return off.result()


# ---------------------------------------------------------------------- warm start

def warm_start_bench(engine: Any, steps: int, windows: int, seed: int = 0, timestep: int = 250) -> dict:
    """Consecutive windows sampled cold (from noise) and warm (previous map re-noised to ``timestep``):
    DDIM-loop latency of each and the CC between their maps (encoders are the same for both)."""
    from salstream.diffsal.diffusion import DDIMScheduler
    from salstream.diffsal.metrics import cc

    maker = MapMaker(engine, seed=seed)
    device = maker.device
    sched = DDIMScheduler()
    steps_run = len(sched.set_timesteps(steps, start_timestep=timestep))
    cold_ms, warm_ms, ccs = [], [], []
    prev = None
    with torch.inference_mode():
        for _ in range(windows + 1):          # window 0 only seeds the warm chain
            v, a = maker.features()
            noise = maker.noise().to(device)
            _sync(device)
            t0 = time.perf_counter()
            cold = predict_from_features(engine, v, a, 1, steps, noise=noise, device=device)
            _sync(device)
            t1 = time.perf_counter()
            warm = cold if prev is None else predict_from_features(
                engine, v, a, 1, steps, noise=noise, device=device, warm_start=prev, warm_start_timestep=timestep)
            _sync(device)
            t2 = time.perf_counter()
            if prev is not None:
                cold_ms.append((t1 - t0) * 1000.0)
                warm_ms.append((t2 - t1) * 1000.0)
                ccs.append(cc(warm[0, 0].float().cpu().numpy(), cold[0, 0].float().cpu().numpy()))
            prev = warm
    return {"steps": steps, "steps_run": steps_run, "warm_start_timestep": timestep, "windows": windows,
            "cold_ms": stats(cold_ms), "warm_ms": stats(warm_ms),
            "speedup_p50": (stats(cold_ms)["p50"] / stats(warm_ms)["p50"]) if warm_ms else None,
            "cc_mean": float(np.mean(ccs)) if ccs else None, "cc_min": float(np.min(ccs)) if ccs else None,
            "cc_per_window": [round(float(c), 5) for c in ccs]}


# ---------------------------------------------------------------------- several draws per map

def samples_bench(engine: Any, steps: int, ks: Sequence[int], repeats: int, warmup: int, seed: int = 0) -> dict:
    """Cost of one map made of K draws: batched (one denoiser call per step for all K draws) vs K
    single-draw sampling loops, both after encoding the map's new frame once. The two are timed
    alternately (A/B), so drifting machine load hits both alike. With one engine thread the process
    CPU time per map (``cpu_ms``) is what the map costs an idle core, whatever else runs."""
    maker = MapMaker(engine, seed=seed)
    device = maker.device
    gen = torch.Generator().manual_seed(seed + 2)
    out: dict[str, Any] = {"steps": steps, "repeats": repeats, "per_k": {}}

    def batched(k: int) -> None:
        v, a = maker.features()
        predict_samples(engine, v, a, 1, k, steps, generator=gen, device=device)

    def one_by_one(k: int) -> None:
        v, a = maker.features()
        for _ in range(k):
            predict_from_features(engine, v, a, 1, steps, generator=gen, device=device)

    with torch.inference_mode():
        for k in ks:
            for _ in range(warmup):
                batched(k)
                one_by_one(k)
            times: dict[str, list[float]] = {"batched": [], "separate": []}
            cpu: dict[str, list[float]] = {"batched": [], "separate": []}
            for _ in range(repeats):
                for name, fn in (("batched", batched), ("separate", one_by_one)):
                    _sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn(k)
                    _sync(device)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
                    cpu[name].append((time.process_time() - c0) * 1000.0)
            b = per_map_stats(times["batched"], cpu_ms=cpu["batched"])
            sep = per_map_stats(times["separate"], cpu_ms=cpu["separate"])
            out["per_k"][str(k)] = {"batched": b, "separate": sep,
                                    "batched_vs_separate": round(b["p50"] / sep["p50"], 3) if sep["p50"] else None}
    base = out["per_k"].get("1", {}).get("batched", {}).get("p50")
    for e in out["per_k"].values():
        e["batched_vs_one_draw"] = round(e["batched"]["p50"] / base, 3) if base else None
    return out


# ---------------------------------------------------------------------- per profile

def _flops(model: torch.nn.Module) -> dict[str, float]:
    """GFLOPs of one call of each graph at batch 1 (torch FLOP counter, as benchmarks/lite_cost.py)."""
    from salstream.artifacts.graphs import example_window
    from salstream.diffsal.inference import encode_window

    from .lite_cost import count_gflops
    cfg = model.config
    video, audio = example_window(cfg, 1)
    with torch.no_grad():
        v, a = encode_window(model, video, audio, "av")
        frame = video[:, :, 0] if cfg.per_frame_video else video
        clip = audio[:, :, 0] if cfg.per_frame_video else audio
        x_t = torch.randn(1, 1, *cfg.map_size)
        t = torch.tensor([500])
        return {"encode_video": round(count_gflops(lambda: model.encode_video(frame)), 4),
                "encode_audio": round(count_gflops(lambda: model.encode_audio(clip)), 4),
                "denoise": round(count_gflops(lambda: model.denoise(x_t, t, v, a)), 4)}


def bench_profile(profile: str, opts: ModelBenchOptions, progress: Callable[[str], None]) -> dict:
    if profile in opts.models:
        model, weights = opts.models[profile].requires_grad_(False).eval(), "given"
    else:
        t0 = time.perf_counter()
        model, weights = load_subject(profile, opts.quick)
        progress(f"{profile}: model ready in {time.perf_counter() - t0:.1f} s ({weights})")
    cfg = model.config
    is_full = cfg.profile == "full"
    engines = opts.full_engines if is_full else opts.engines
    steps_list = list(opts.full_steps if is_full else opts.steps)
    repeats = opts.full_repeats if is_full else opts.repeats
    warmup = opts.full_warmup if is_full else opts.warmup
    res: dict[str, Any] = {
        "profile": cfg.profile, "weights": weights, "input_size": list(cfg.input_size),
        "map_size": list(cfg.map_size), "frames": cfg.frames, "per_frame_video": cfg.per_frame_video,
        "default_steps": cfg.default_steps, "steps": steps_list, "repeats": repeats,
        "note": ("per map = 1 new frame + 1 new audio slice encoded, window features from the cache, then "
                 "the DDIM steps" if cfg.per_frame_video else
                 "per map = the whole 16-frame clip and its audio encoded, then the DDIM steps"),
        "engines": {},
    }
    if opts.flops or (opts.flops is None and not is_full):
        try:
            res["gflops"] = _flops(model)
        except Exception as exc:  # FLOP counting is informative only
            res["gflops"] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
    official = OfficialStyle(model, seed=opts.seed) if supports_official_style(model) else None
    torch_engine = None
    built: dict[str, Any] = {}
    engine_kwargs = dict(opts.engine_kwargs)
    if profile not in opts.models and not opts.quick:
        from salstream.diffsal.registry import bundled_weights
        bundled = bundled_weights(profile)
        if bundled is not None and bundled.name == weights:
            # Exported graphs keyed by the checkpoint file: the ones `salstream run` already exported.
            for name in (*engines, *opts.samples_engines):
                engine_kwargs[name] = {"checkpoint": str(bundled), **(engine_kwargs.get(name) or {})}
    for name in engines:
        t0 = time.perf_counter()
        engine, why = build_engine(name, model, opts.threads, opts.cache_root, engine_kwargs.get(name))
        if engine is None:
            res["engines"][name] = {"skipped": why}
            progress(f"{profile}/{name}: skipped ({why})")
            continue
        if name == "torch":
            torch_engine = engine
        built[name] = engine
        entry: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 2), "load_average_start": load_average(),
                                 "per_map": {}}
        runner = TimedRunner(engine)
        maker = MapMaker(runner, seed=opts.seed)
        # The official-style sampler alternates with our eager windows (A/B), so load drift hits both.
        paired = official is not None and name == "torch"
        for i, steps in enumerate(steps_list):
            t1 = time.perf_counter()
            n_warm = warmup if i == 0 or not is_full else 0
            if paired:
                for _ in range(n_warm):
                    official.run(steps, record=False)
            wall, cpu = time_maps(maker, steps, repeats, n_warm,
                                  between=(lambda s=steps: official.run(s)) if paired else None)
            entry["per_map"][str(steps)] = per_map_stats(wall, cpu_ms=cpu)
            msg = f"{profile}/{name}: {steps} step(s): p50 {entry['per_map'][str(steps)]['p50']:.1f} ms"
            if paired:
                msg += f", official-style p50 {stats(official.wall[steps])['p50']:.1f} ms"
            progress(msg + f" ({time.perf_counter() - t1:.0f} s)")
        entry["graphs"] = {g: stats(v) for g, v in runner.calls.items()}
        entry["graphs_unit"] = "per frame / per slice" if cfg.per_frame_video else "per window"
        if hasattr(engine, "describe"):
            try:
                entry["describe"] = describe_portably(engine.describe())
            except Exception:  # noqa: BLE001 - description is informative only
                pass
        entry["load_average_end"] = load_average()
        res["engines"][name] = entry
    # Several draws per map, batched vs one call each (cheap profiles only: full is seconds per draw).
    if opts.samples and not is_full:
        res["samples"] = {}
        for name in opts.samples_engines:
            engine = built.get(name)
            if engine is None:
                engine, why = build_engine(name, model, opts.threads, opts.cache_root, engine_kwargs.get(name))
                if engine is None:
                    res["samples"][name] = {"skipped": why}
                    continue
            t0 = time.perf_counter()
            steps = cfg.default_steps
            res["samples"][name] = samples_bench(engine, steps, list(opts.samples), repeats, warmup, opts.seed)
            per_k = res["samples"][name]["per_k"]
            progress(f"{profile}/{name}: {steps}-step map of K draws, batched vs separate p50 ms: " + ", ".join(
                f"K={k} {e['batched']['p50']:.1f} vs {e['separate']['p50']:.1f}" for k, e in per_k.items())
                + f" ({time.perf_counter() - t0:.0f} s)")
    # Warm vs cold start on the first engine that ran.
    ran = [n for n, e in res["engines"].items() if "skipped" not in e]
    if opts.warm_windows > 0 and ran and (not is_full or opts.full_warm_start):
        engine, _ = build_engine(ran[0], model, opts.threads, opts.cache_root, engine_kwargs.get(ran[0])) \
            if ran[0] != "torch" or torch_engine is None else (torch_engine, None)
        steps = max(cfg.default_steps, 2)
        t0 = time.perf_counter()
        res["warm_start"] = dict(warm_start_bench(engine, steps, opts.warm_windows, opts.seed), engine=ran[0])
        progress(f"{profile}: warm vs cold start done ({time.perf_counter() - t0:.0f} s)")
    elif is_full and not opts.full_warm_start:
        res["warm_start"] = {"skipped": "full profile: run with --thorough (or --full-warm-start) to include it"}
    # The official-style sampler for the published architecture.
    if official is not None:
        t0 = time.perf_counter()
        if torch_engine is None:              # our eager engine did not run: time the sampler on its own
            torch_engine, _ = build_engine("torch", model, opts.threads, None)
            for i, steps in enumerate(steps_list):
                for _ in range(warmup if i == 0 else 0):
                    official.run(steps, record=False)
                for _ in range(repeats):
                    official.run(steps)
        ref_steps = 4 if 4 in steps_list else max(steps_list)
        for steps in steps_list:
            official.check(torch_engine, steps)
        for name, eng in built.items():        # every other engine's map too, at the compared step count
            if name != "torch":
                official.check(eng, ref_steps, key=f"{ref_steps}:{name}")
        off = official.result()
        progress(f"{profile}: official-style sampler checked ({time.perf_counter() - t0:.0f} s)")
        one_thread = torch.get_num_threads() == 1
        clock = "cpu" if one_thread else "wall"

        def p50(entry: dict) -> Optional[float]:
            return (entry.get("cpu_ms") or {}).get("p50") if one_thread else entry.get("p50")
        ours = {n: p50(e["per_map"][str(ref_steps)]) for n, e in res["engines"].items()
                if "skipped" not in e and str(ref_steps) in e["per_map"]}
        ours = {n: v for n, v in ours.items() if v}
        o_entry = off["per_map"].get(str(ref_steps))
        if ours and o_entry:
            best = min(ours, key=ours.get)
            o_p50 = p50(o_entry)
            off["comparison"] = {
                "steps": ref_steps, "clock": clock,
                "clock_note": ("process CPU time per window (1 engine thread: independent of other load on the "
                               "machine)" if one_thread else "wall time per window"),
                "ours_engine": best, "ours_p50_ms": ours[best], "official_p50_ms": o_p50,
                "speedup": round(o_p50 / ours[best], 3),
                "speedup_by_engine": {n: round(o_p50 / v, 3) for n, v in ours.items()},
                "wall_speedup_torch_interleaved": (round(o_entry["p50"] / res["engines"]["torch"]["per_map"]
                                                         [str(ref_steps)]["p50"], 3)
                                                   if "per_map" in res["engines"].get("torch", {}) else None),
                "max_abs_diff": max((d["max_abs_diff"] for d in off["identity"].values()
                                     if d["engine"] in ("torch", best)), default=None),
                "max_abs_diff_by_engine": {d["engine"]: max(x["max_abs_diff"] for x in off["identity"].values()
                                                            if x["engine"] == d["engine"])
                                           for d in off["identity"].values()},
                "goal": ">= 1.5x faster per 4-step window on the CPU, identical maps",
            }
        res["official_style"] = off
    return res


# ---------------------------------------------------------------------- GPU

def gpu_bench(opts: ModelBenchOptions, progress: Callable[[str], None]) -> dict:
    """``full`` on the GPU: official-style eager FP32 vs every GPU engine, one stream and batched."""
    if not opts.gpu:
        return {"skipped": "disabled (--no-gpu)"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False on this machine)"}
    device = "cuda"
    profile = "full" if "full" in opts.profiles else list(opts.profiles)[0]
    model = opts.models.get(profile) or load_subject(profile, opts.quick)[0]
    steps = 4
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "profile": profile, "steps": steps,
                           "batches": list(opts.gpu_batches), "engines": {}, "official_style": {}}
    model_gpu = copy.deepcopy(model).to(device).eval()
    for b in opts.gpu_batches:
        off = official_style_bench(model_gpu, [steps], max(3, opts.gpu_repeats // 2), 2, None, device=device,
                                   batch=b)
        res["official_style"][str(b)] = off["per_map"][str(steps)]
        progress(f"gpu: official-style batch {b}: p50 {off['per_map'][str(steps)]['p50']:.1f} ms")
    del model_gpu
    torch.cuda.empty_cache()
    for name in GPU_ENGINES:
        engine, why = build_engine(name, model, None, opts.cache_root, opts.engine_kwargs.get(name))
        if engine is None:
            res["engines"][name] = {"skipped": why}
            continue
        entry: dict[str, Any] = {}
        for b in opts.gpu_batches:
            try:
                maker = MapMaker(engine, seed=opts.seed, batch=b)
                times, _ = time_maps(maker, steps, opts.gpu_repeats, 3)
            except Exception as exc:  # one engine failing must not lose the others' figures
                entry[str(b)] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                continue
            entry[str(b)] = per_map_stats(times, b)
            o = res["official_style"][str(b)]["p50"]
            entry[str(b)]["speedup_vs_official"] = round(o / entry[str(b)]["p50"], 2)
            progress(f"gpu: {name} batch {b}: p50 {entry[str(b)]['p50']:.2f} ms")
        res["engines"][name] = entry
        del engine
        torch.cuda.empty_cache()
    best = [(e["1"]["p50"], n) for n, e in res["engines"].items() if isinstance(e.get("1"), dict) and e["1"].get("p50")]
    if best and "1" in res["official_style"]:
        p50, name = min(best)
        res["goal"] = {"goal": "p50 <= 10 ms per 4-step window and >= 10x the official-style eager loop",
                       "fastest_engine": name, "p50_ms": p50,
                       "speedup": round(res["official_style"]["1"]["p50"] / p50, 2),
                       "met": p50 <= 10.0 and res["official_style"]["1"]["p50"] / p50 >= 10.0}
    return res


def run_model_bench(opts: ModelBenchOptions, progress: Callable[[str], None] = print) -> dict:
    from salstream.diffsal.registry import available_profiles
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    have = set(available_profiles()) | set(opts.models)
    out: dict[str, Any] = {"profiles": {}, "threads": torch.get_num_threads()}
    for profile in opts.profiles:
        if profile not in have:
            out["profiles"][profile] = {"skipped": f"profile {profile!r} is not available in this checkout"}
            continue
        out["profiles"][profile] = bench_profile(profile, opts, progress)
    out["gpu"] = gpu_bench(opts, progress)
    return out


def describe_portably(info: dict) -> dict:
    """An engine's description for a committed result: folders by name, not this machine's paths."""
    return {k: (os.path.basename(str(v).rstrip(os.sep)) if k == "artifacts" and v else v) for k, v in info.items()}
