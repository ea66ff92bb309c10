"""DDIM inversion algebra in ComfyUI's sigma space (pure torch, analytic denoisers)."""

import math

import pytest
import torch

from comfyui_videoedit.inversion import ddim, schedule


def sd_sigmas(steps: int) -> torch.Tensor:
    """SD's scaled-linear schedule at DDIM's "leading" timesteps (offset 1), descending + 0,
    written out here as the naive reference (ComfyUI's ddim_uniform gives the same)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    all_sigmas = ((1 - alphas) / alphas) ** 0.5
    ts = list(range(1, 1000, 1000 // steps))
    return torch.tensor([float(all_sigmas[t]) for t in reversed(ts)] + [0.0], dtype=torch.float32)


def analytic_denoiser(field: torch.Tensor, prediction: str, x_coeff: float = 0.0):
    """Closed-form model in ComfyUI's convention: returns denoised x0 for VE input x at sigma.

    eps(z, sigma) = field * g(sigma) + x_coeff * z, z = x / sqrt(1 + sigma^2) (the UNet input).
    For v-prediction the "network" outputs the v implying that eps, and the denoised value is
    formed with the v formula (written out naively, as ComfyUI's V_PREDICTION does).
    """

    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        z = x / torch.sqrt(1 + sigma**2)
        eps = field * (1.0 / (1.0 + 0.1 * sigma) + 0.3 * torch.cos(sigma)) + x_coeff * z
        if prediction == "eps":
            return x - sigma * eps
        a = 1 / torch.sqrt(1 + sigma**2)
        v = (eps - sigma * a * z) / a
        return x / (sigma**2 + 1) - v * sigma / torch.sqrt(sigma**2 + 1)

    return denoise


def naive_ddim_sample(denoise, x, sigmas_down):
    """DDIM eta=0 written as diffusers does it, on VP latents: x0 and eps from the model at t,
    then z_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps (a = 1/(1+sigma^2))."""
    z = x / torch.sqrt(1 + sigmas_down[0] ** 2)
    for i in range(len(sigmas_down) - 1):
        s, s_prev = sigmas_down[i], sigmas_down[i + 1]
        x_ve = z * torch.sqrt(1 + s**2)
        x0 = denoise(x_ve, s)
        eps = (x_ve - x0) / s
        a_prev = 1 / (1 + s_prev**2)
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return z  # sigma 0: VP == VE


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_inversion_then_ddim_sampling_round_trips_when_eps_ignores_x(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    field = torch.randn(1, 4, 8, 8, generator=g)
    denoise = analytic_denoiser(field, prediction)
    sigmas = sd_sigmas(50)
    x_T = ddim.invert(denoise, x0, sigmas.flip(0))
    back = naive_ddim_sample(denoise, x_T, sigmas)
    assert (back - x0).abs().max() < 1e-4
    # the pack's own sampler (ComfyUI's euler) agrees with the naive DDIM
    assert torch.allclose(ddim.sample(denoise, x_T, sigmas), back, atol=1e-4)
    assert x_T.abs().mean() > 3 * x0.abs().mean()  # it really went to high noise


def test_euler_on_flipped_sigmas_does_not_round_trip():
    """Evaluating the model at the *current* (lower) sigma — plain euler on flipped sigmas —
    is not DDIM inversion: with the same analytic model it misses by far."""
    g = torch.Generator().manual_seed(1)
    x0, field = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    denoise = analytic_denoiser(field, "eps")
    sigmas = sd_sigmas(20)
    x = x0
    up = sigmas.flip(0)
    for i in range(len(up) - 1):
        s = up[i].clamp_min(1e-4)  # ComfyUI's FlipSigmas sets a first sigma of 0 to 1e-4
        eps = (x - denoise(x, s)) / s
        x = x + (up[i + 1] - up[i]) * eps
    back = ddim.sample(denoise, x, sigmas)
    assert (back - x0).abs().max() > 1e-2
    exact = ddim.sample(denoise, ddim.invert(denoise, x0, up), sigmas)
    assert (exact - x0).abs().max() < 1e-4


def test_inversion_step_matches_the_official_vp_update():
    """One step in sigma space equals TokenFlow's update on VP latents with alphas 1/(1+sigma^2):
    x0 = (z - sqrt(1-a_prev) eps)/sqrt(a_prev); z' = sqrt(a_t) x0 + sqrt(1-a_t) eps, eps at t."""
    g = torch.Generator().manual_seed(2)
    field = torch.randn(1, 4, 4, 4, generator=g)
    denoise = analytic_denoiser(field, "eps", x_coeff=0.2)  # x-dependent on purpose
    s0, s1 = torch.tensor(0.7), torch.tensor(1.9)
    z = torch.randn(2, 4, 4, 4, generator=g)
    x = z * torch.sqrt(1 + s0**2)
    out = ddim.inversion_step(denoise, x, s0, s1)
    x_in = z * torch.sqrt(1 + s1**2)
    eps = (x_in - denoise(x_in, s1)) / s1
    a_prev, a_t = 1 / (1 + s0**2), 1 / (1 + s1**2)
    x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
    z_next = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    assert torch.allclose(ddim.to_vp(out, s1), z_next, atol=1e-5)


def test_x_dependent_eps_is_approximate(capsys):
    """DDIM inversion is approximate when eps depends on x: measured, not asserted exact."""
    g = torch.Generator().manual_seed(3)
    x0, field = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    sigmas = sd_sigmas(50)
    errors = {}
    for coeff in (0.01, 0.1, 0.3):
        denoise = analytic_denoiser(field, "eps", x_coeff=coeff)
        back = ddim.sample(denoise, ddim.invert(denoise, x0, sigmas.flip(0)), sigmas)
        errors[coeff] = float((back - x0).abs().max())
    print("x-dependent eps round-trip max error:", errors)
    assert all(math.isfinite(e) for e in errors.values())
    assert errors[0.01] < errors[0.3]  # the error grows with the x-dependence


def test_fine_schedule_union_hits_every_editing_sigma_exactly():
    edit, fine = sd_sigmas(50), sd_sigmas(500)
    up, keep = schedule.inversion_schedule(edit, fine)
    assert up[0] == 0 and bool((up[1:] > up[:-1]).all())
    assert torch.equal(up[keep], edit.flip(0))
    assert len(up) == 492  # t = 0 | 1, 3, …, 981: the 50 leading timesteps are among the 500; none above 981
    # a fine schedule that does not contain the editing sigmas still hits them exactly
    up2, keep2 = schedule.inversion_schedule(edit, sd_sigmas(7))
    assert torch.equal(up2[keep2], edit.flip(0))
    assert len(up2) > len(edit)
    # a fine schedule reaching higher than the editing one stops at the editing sigma_max
    up4, keep4 = schedule.inversion_schedule(sd_sigmas(4), sd_sigmas(8))
    assert up4[-1] == sd_sigmas(4)[0] and int(keep4[-1]) == len(up4) - 1
    assert len(up4) == 8  # t = 0 | 1, 126, 251, 376, 501, 626, 751
    # no fine schedule: just the flipped editing schedule
    up3, keep3 = schedule.inversion_schedule(edit)
    assert torch.equal(up3, edit.flip(0)) and torch.equal(keep3, torch.arange(len(edit)))


def test_fine_inversion_round_trips_through_the_fine_schedule():
    g = torch.Generator().manual_seed(4)
    x0, field = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    denoise = analytic_denoiser(field, "v")
    up, keep = schedule.inversion_schedule(sd_sigmas(10), sd_sigmas(100))
    kept = {}
    ddim.invert(denoise, x0, up, on_step=lambda i, x: kept.__setitem__(i, x))
    assert sorted(kept) == list(range(len(up)))
    assert torch.equal(kept[int(keep[0])], x0)
    back = ddim.sample(denoise, kept[len(up) - 1], up.flip(0))
    assert (back - x0).abs().max() < 1e-4


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([1.0]), "at least 2"),
        (torch.tensor([2.0, 1.0]), "end in 0"),
        (torch.tensor([1.0, 2.0, 0.0]), "descending"),
    ],
)
def test_bad_schedules_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        schedule.check_editing_sigmas(bad)


def test_find_sigma_tolerates_float_round_trips_only():
    s = sd_sigmas(10)
    assert schedule.find_sigma(s, float(s[3]) * (1 + 1e-6)) == 3
    assert schedule.find_sigma(s, float(s[3]) * 1.01) is None
    assert schedule.find_sigma(s, 0.0) == len(s) - 1
