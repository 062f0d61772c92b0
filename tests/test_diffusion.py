import math

import pytest
import torch

from salstream.diffsal.diffusion import DDIMScheduler, add_noise, cosine_alphas_cumprod, sample


def test_cosine_schedule_matches_spec_values():
    ac = cosine_alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    # spec §5: ᾱ_0 = 0.999959, ᾱ_250 = 0.84589, ᾱ_500 = 0.49229, ᾱ_750 = 0.14318, ᾱ_999 ≈ 2.4e-9
    for t, want in [(0, 0.999959), (250, 0.84589), (500, 0.49229), (750, 0.14318)]:
        assert ac[t].item() == pytest.approx(want, abs=2e-5)
    assert 1e-9 < ac[999].item() < 5e-9
    assert torch.all(ac[1:] < ac[:-1])


@pytest.mark.parametrize("steps,expected", [(1, [0]), (2, [500, 0]), (4, [750, 500, 250, 0]),
                                            (10, list(range(900, -1, -100)))])
def test_ddim_timesteps(steps, expected):
    assert DDIMScheduler().set_timesteps(steps) == expected


@pytest.mark.parametrize("steps,expected", [(1, [999]), (2, [999, 499]), (4, [999, 749, 499, 249]),
                                            (3, [999, 666, 332])])
def test_trailing_timesteps_start_at_pure_noise(steps, expected):
    assert DDIMScheduler(timestep_spacing="trailing").set_timesteps(steps) == expected


def test_one_trailing_step_is_the_networks_x0_guess_from_pure_noise():
    seen = []

    def denoise(x, t):
        seen.append(int(t[0]))
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x) * 0 + 0.25

    out = sample(denoise, (2, 1, 4, 4), 1, timestep_spacing="trailing", generator=torch.Generator().manual_seed(0))
    assert seen == [999] and torch.all(out == 0.25)
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMScheduler(timestep_spacing="middle")


def test_invalid_step_counts_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        DDIMScheduler().set_timesteps(0)


def test_step_with_perfect_denoiser_recovers_x0():
    """If the network always predicts the true x0, every DDIM step lands on q(x_next | x0)."""
    sched = DDIMScheduler()
    sched.set_timesteps(4)
    x0 = torch.rand(1, 1, 8, 8)
    eps = torch.randn_like(x0)
    ac = sched.alphas_cumprod
    x = ac[750].sqrt() * x0 + (1 - ac[750]).sqrt() * eps
    out = sched.step(x0, 750, x).prev_sample
    want = ac[500].sqrt() * x0 + (1 - ac[500]).sqrt() * eps
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.equal(sched.step(x0, 0, x).prev_sample, x0)


def test_sample_is_deterministic_with_seed_and_calls_denoise_once_per_step():
    calls = []

    def denoise(x, t):
        calls.append(int(t[0]))
        return torch.sigmoid(x.mean() + torch.zeros_like(x))

    a = sample(denoise, (2, 1, 4, 6), steps=4, generator=torch.Generator().manual_seed(3))
    b = sample(denoise, (2, 1, 4, 6), steps=4, generator=torch.Generator().manual_seed(3))
    c = sample(denoise, (2, 1, 4, 6), steps=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls == [750, 500, 250, 0] * 3
    assert a.min() >= 0 and a.max() <= 1


def test_warm_start_skips_the_noisy_steps_and_starts_near_previous_map():
    seen = []
    prev = torch.full((1, 1, 4, 4), 0.8)

    def denoise(x, t):
        seen.append((int(t[0]), x.clone()))
        return prev

    out = sample(denoise, (1, 1, 4, 4), steps=4, warm_start=prev, warm_start_timestep=250,
                 generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in seen] == [250, 0]
    # the first input is the previous map noised to t=250: its mean is near √ᾱ_250·0.8
    assert seen[0][1].mean().item() == pytest.approx(math.sqrt(0.84589) * 0.8, abs=0.5)
    assert torch.allclose(out, prev)


@pytest.mark.parametrize("spacing,steps,expected", [("leading", 2, [250]), ("leading", 1, [250]),
                                                    ("trailing", 1, [250]), ("trailing", 4, [249])])
def test_warm_start_never_starts_at_t0(spacing, steps, expected):
    # t = 0 alone would hand the re-noised previous map to a network that trusts its input fully
    assert DDIMScheduler(timestep_spacing=spacing).set_timesteps(steps, start_timestep=250) == expected


def test_add_noise_per_sample_timesteps():
    x0 = torch.ones(2, 1, 2, 2)
    n = torch.zeros_like(x0)
    out = add_noise(x0, n, torch.tensor([0, 999]))
    assert out[0].mean().item() == pytest.approx(0.99998, abs=1e-4)
    assert out[1].mean().item() < 1e-3
