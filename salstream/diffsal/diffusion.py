"""Diffusion schedule and DDIM sampler, kept apart from the network.

The network only ever sees ``denoise(x_t, t) -> x0``; the sampler decides which
timesteps are visited and how the next ``x_t`` is formed (the ``set_timesteps`` /
``step`` split of diffusers' schedulers). One loop, :func:`sample`, drives every
engine: eager PyTorch, ONNX Runtime, TensorRT all hand in their own ``denoise``.

Facts (spec §5): improved-DDPM cosine schedule, s = 0.008, T = 1000, betas
clipped at 0.999, computed in float64 and cast to float32; x0 prediction;
DDIM timesteps ``range(0, T, T // S)`` visited in reverse ("leading" spacing, the
official choice). "Trailing" spacing (``T - 1, T - 1 - T/S, …``; Lin et al., "Common
Diffusion Noise Schedules and Sample Steps are Flawed", 2024) starts at t = T - 1, where
the network was trained on nearly pure noise, which is what sampling feeds it; with
leading spacing a 1- or 2-step sampler hands pure noise to the network at t = 0 or 500,
where it expects a half-clean map. A profile picks its spacing in its config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_SPACINGS = ("leading", "trailing")


def cosine_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008,
                          max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t for t = 0 … num_steps-1 as the official code forms it (float32 cumprod)."""
    def g(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - g((k + 1) / num_steps) / g(k / num_steps), max_beta) for k in range(num_steps)],
        dtype=torch.float64,
    ).float()
    return torch.cumprod(1 - betas, dim=0)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              alphas_cumprod: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward process q(x_t | x0): √ᾱ_t·x0 + √(1−ᾱ_t)·ε, ``t`` of shape (B,) or scalar."""
    ac = cosine_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    a = ac.to(x0.device)[t.long()].float()
    a = a.reshape(-1, *([1] * (x0.dim() - 1))) if a.dim() else a
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDIMScheduler:
    """Deterministic (eta = 0 by default) DDIM for an x0-predicting network."""

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, eta: float = 0.0,
                 timestep_spacing: str = "leading"):
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, "
                             f"got {timestep_spacing!r}")
        self.num_train_timesteps = num_train_timesteps
        self.eta = float(eta)
        self.timestep_spacing = timestep_spacing
        self.alphas_cumprod = cosine_alphas_cumprod(num_train_timesteps)
        self.timesteps: list[int] = []

    def set_timesteps(self, num_inference_steps: int, start_timestep: Optional[int] = None) -> list[int]:
        """Choose the visited timesteps, high to low.

        ``start_timestep`` (warm start) keeps only the steps at or below it, so a
        sample that begins from a re-noised previous map skips the noisiest steps. When
        that leaves no step above t = 0, the sample runs one step at ``start_timestep``
        itself: at t = 0 the network trusts its input almost fully, so a warm start there
        would freeze the map on the first window's.
        """
        n = int(num_inference_steps)
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1…{self.num_train_timesteps}, got {num_inference_steps}")
        T = self.num_train_timesteps
        if self.timestep_spacing == "trailing":
            ts = sorted({int(round(T - k * T / n)) - 1 for k in range(n)}, reverse=True)
        else:
            ts = list(range(0, T, T // n))[::-1]
        if start_timestep is not None:
            ts = [t for t in ts if t <= start_timestep]
            if not ts or ts[0] == 0:
                ts = [int(start_timestep)]
        self.timesteps = ts
        return ts

    def next_timestep(self, t: int) -> int:
        i = self.timesteps.index(t)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def step(self, x0_pred: torch.Tensor, t: int, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> StepOutput:
        """One DDIM update from ``sample`` at time ``t`` given the network's x0."""
        t_next = self.next_timestep(t)
        if t_next < 0:
            return StepOutput(x0_pred, x0_pred)
        ac = self.alphas_cumprod.to(sample.device)
        a_t, a_next = ac[t], ac[t_next]
        eps = (sample / a_t.sqrt() - x0_pred) / (1 / a_t - 1).sqrt()
        c1 = self.eta * ((1 - a_t / a_next) * (1 - a_next) / (1 - a_t)).sqrt()
        c2 = (1 - a_next - c1 ** 2).sqrt()
        prev = a_next.sqrt() * x0_pred + c2 * eps
        if self.eta > 0:
            prev = prev + c1 * _randn_like(sample, generator)
        return StepOutput(prev, x0_pred)


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample(denoise: DenoiseFn, shape: Sequence[int], steps: int = 4, *, eta: float = 0.0,
           generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
           warm_start: Optional[torch.Tensor] = None, warm_start_timestep: int = 250,
           step_callback: Optional[Callable[[int, torch.Tensor], None]] = None,
           device: torch.device | str = "cpu", timestep_spacing: str = "leading") -> torch.Tensor:
    """Run DDIM and return the final x0 clamped to [0, 1].

    ``denoise(x_t, t)`` closes over the window's encoder features, so the encoders
    run once per window whatever the step count. ``warm_start`` (a previous map,
    shape ``shape``) is noised to ``warm_start_timestep`` and only the steps at or
    below that time are run: fewer network calls and temporally steadier maps.
    """
    sched = DDIMScheduler(eta=eta, timestep_spacing=timestep_spacing)
    sched.set_timesteps(steps, start_timestep=warm_start_timestep if warm_start is not None else None)
    if noise is None:
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)
    if warm_start is not None:
        t0 = torch.tensor([sched.timesteps[0]])
        x = add_noise(warm_start.to(noise), noise, t0, sched.alphas_cumprod)
    else:
        x = noise
    x0 = x
    for t in sched.timesteps:
        tt = torch.full((shape[0],), t, dtype=torch.int64, device=x.device)
        x0 = denoise(x, tt)
        if step_callback is not None:
            step_callback(t, x0)
        x = sched.step(x0, t, x, generator).prev_sample
    return x0.clamp(0, 1)
