"""Shared null-text optimisation with a toy differentiable model (pure torch)."""

import torch

from comfyui_videoedit.inversion import ddim
from comfyui_videoedit.inversion.nulltext import NullTextSettings, cfg_trajectory_losses, optimize_null_text

C, H, W, T, D = 2, 4, 4, 6, 8  # T*D >= C*H*W: an exact null embedding exists


def toy_model(seed=0, a=0.05):
    """eps_cond(x) = a x + c0; eps_uncond(x, e) = a x + P(e) with P linear in the embedding:
    the CFG prediction equals eps_cond (what the cfg-1 inversion used) iff P(e) = c0, so a
    perfect null embedding exists and the plain one is off."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(T * D, C * H * W, generator=g) / (T * D) ** 0.5
    c0 = torch.randn(C, H, W, generator=g)

    def eps_cond(x, sigma, frames):
        return a * x / torch.sqrt(1 + sigma**2) + c0

    def eps_uncond(x, sigma, emb, frames):
        return a * x / torch.sqrt(1 + sigma**2) + (emb.reshape(1, -1) @ proj).reshape(1, C, H, W)

    eps_cond.exact_embedding = torch.linalg.lstsq(proj.T, c0.reshape(-1, 1)).solution.reshape(1, T, D)
    return eps_cond, eps_uncond


def cfg1_inversion(eps_cond, x0, sigmas):
    def denoise(x, s):
        return x - s * eps_cond(x / torch.sqrt(1 + s**2) * torch.sqrt(1 + s**2), s, None)

    kept = []
    x_T = ddim.invert(denoise, x0, sigmas.flip(0), on_step=lambda i, x: kept.append(ddim.to_vp(x, sigmas.flip(0)[i])))
    return x_T, torch.stack(kept[::-1])


SIGMAS = torch.tensor([6.0, 3.0, 1.5, 0.6, 0.2, 0.0])


def setup(frames=3, seed=0, a=0.05):
    eps_cond, eps_uncond = toy_model(seed, a)
    x0 = torch.randn(frames, C, H, W, generator=torch.Generator().manual_seed(seed + 10))
    x_T, targets = cfg1_inversion(eps_cond, x0, SIGMAS)
    init = torch.randn(1, T, D, generator=torch.Generator().manual_seed(seed + 20))
    return eps_cond, eps_uncond, x_T, targets, init


def test_optimised_embeddings_pull_the_cfg_trajectory_back_onto_the_inversion():
    eps_cond, eps_uncond, x_T, targets, init = setup()
    settings = NullTextSettings(cfg=7.5, inner_steps=30, lr=5e-2)
    emb, reports = optimize_null_text(eps_cond, eps_uncond, x_T, targets, SIGMAS, init, settings)
    assert emb.shape == (len(SIGMAS) - 1, T, D)  # one per step, whatever the frame count
    plain = cfg_trajectory_losses(eps_cond, eps_uncond, x_T, targets, SIGMAS, init, 7.5)
    tuned = cfg_trajectory_losses(eps_cond, eps_uncond, x_T, targets, SIGMAS, emb, 7.5)
    assert sum(tuned) < 0.1 * sum(plain)
    assert all(r.last_loss <= r.first_loss for r in reports)
    assert reports[0].first_loss > 0


def test_chunked_gradient_accumulation_equals_whole_batch():
    eps_cond, eps_uncond, x_T, targets, init = setup(frames=5, seed=1)
    settings = NullTextSettings(cfg=3.0, inner_steps=3)
    whole, _ = optimize_null_text(eps_cond, eps_uncond, x_T, targets, SIGMAS, init, settings)
    chunked, _ = optimize_null_text(eps_cond, eps_uncond, x_T, targets, SIGMAS, init, settings, frame_chunk=2)
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_early_stop_and_schedule_scaling():
    s = NullTextSettings()
    assert s.lr_at(10, 50) == 1e-2 * (1 - 10 / 100)
    assert abs(s.threshold_at(10, 50) - (1e-5 + 10 * 2e-5)) < 1e-12
    assert s.lr_at(199, 200) > 0  # long schedules keep a positive learning rate
    # eps independent of x (exact inversion) and the exact solution P(e) = c0 as the start: the
    # first loss is ~0, so every step stops after one iteration
    eps_cond, eps_uncond, x_T, targets, _ = setup(a=0.0)
    exact = eps_cond.exact_embedding
    _, reports = optimize_null_text(eps_cond, eps_uncond, x_T, targets, SIGMAS, exact, NullTextSettings(inner_steps=10))
    assert all(r.iterations == 1 for r in reports)


def test_runs_inside_inference_mode_with_inference_inputs():
    eps_cond, eps_uncond, x_T, targets, init = setup()
    with torch.inference_mode():
        x_inf, t_inf, i_inf = x_T.clone(), targets.clone(), init.clone()
        emb, _ = optimize_null_text(eps_cond, eps_uncond, x_inf, t_inf, SIGMAS, i_inf, NullTextSettings(inner_steps=2))
    assert torch.isfinite(emb).all() and not torch.equal(emb[0], init[0])
