"""Deterministic DDIM (eta = 0) inversion and sampling in ComfyUI's sigma space.

ComfyUI's latents are VE-scaled: ``x = x0 + sigma * eps``; the UNet sees the VP latent
``z = x / sqrt(1 + sigma^2)`` (diffusers' x_t), and a denoiser returns ``x0`` ("denoised").
For any parameterisation (eps, v, EDM) the implied noise is ``eps = (x - denoised) / sigma``
and a DDIM step from sigma to sigma' is ``x' = x + (sigma' - sigma) * eps`` — exactly what
ComfyUI's ``euler`` sampler does.

Inversion step sigma_i -> sigma_{i+1} (ascending) evaluates the model at the *target* sigma
on the current VP latent, as the official TokenFlow/diffusers inversion does: the UNet gets
``z_i`` at timestep t(sigma_{i+1}). Sampling back sigma_{i+1} -> sigma_i also evaluates at
sigma_{i+1}, so when eps does not depend on x the round trip is exact. (Euler on flipped
sigmas evaluates at sigma_i instead and does not round-trip.) When eps depends on x, DDIM
inversion is approximate by nature.

Everything here is tensors in, tensors out; ``denoise`` is any callable
``denoise(x [B,C,h,w] VE, sigma 0-d tensor) -> x0 [B,C,h,w]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


def vp_scale(sigma: torch.Tensor | float) -> torch.Tensor:
    """``1 / sqrt(1 + sigma^2)``: VE latent -> VP latent factor."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return torch.rsqrt(1.0 + sigma * sigma)


def to_vp(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """VE latent ``x0 + sigma eps`` -> VP latent ``x / sqrt(1 + sigma^2)`` (magnitude ~1)."""
    return x * vp_scale(sigma).to(x.device, x.dtype)


def to_ve(z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """VP latent -> VE latent (inverse of :func:`to_vp`)."""
    return z / vp_scale(sigma).to(z.device, z.dtype)


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Implied noise ``(x - x0) / sigma`` (sigma > 0), valid for eps, v and EDM models."""
    return (x - denoised) / sigma


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """DDIM (eta 0) move of ``x`` from ``sigma`` to ``sigma_next`` with noise ``eps``, either way."""
    return x + (sigma_next - sigma) * eps


def inversion_step(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One inversion step ``sigma -> sigma_next > sigma``, model evaluated at ``sigma_next``.

    The model gets the *same* VP latent ``z = x / sqrt(1+sigma^2)`` re-expressed in VE scale at
    the target level, ``x' = z * sqrt(1+sigma_next^2)``, so the UNet input is ``z`` at
    timestep t(sigma_next).
    """
    x_in = x * (vp_scale(sigma) / vp_scale(sigma_next)).to(x.device, x.dtype)
    eps = eps_from_denoised(x_in, denoise(x_in, sigma_next), sigma_next)
    return ddim_step(x, eps, sigma, sigma_next)


def invert(
    denoise: Denoiser, x0: torch.Tensor, sigmas_up: torch.Tensor, on_step: StepCallback | None = None
) -> torch.Tensor:
    """DDIM inversion of ``x0`` along ascending ``sigmas_up`` (``[K+1]``, first 0).

    ``on_step(i, x)`` is called with ``x`` at ``sigmas_up[i]`` for every i (0 = the input).
    Returns the latent at ``sigmas_up[-1]`` (same shape/dtype as ``x0``).
    """
    x = x0
    if on_step is not None:
        on_step(0, x)
    for i in range(len(sigmas_up) - 1):
        x = inversion_step(denoise, x, sigmas_up[i], sigmas_up[i + 1])
        if on_step is not None:
            on_step(i + 1, x)
    return x


def sample(
    denoise: Denoiser, x: torch.Tensor, sigmas_down: torch.Tensor, on_step: StepCallback | None = None
) -> torch.Tensor:
    """DDIM sampling along descending ``sigmas_down`` (ComfyUI's ``euler``): model at the
    current sigma. ``on_step(i, x)`` gets ``x`` at ``sigmas_down[i]`` after each move."""
    for i in range(len(sigmas_down) - 1):
        sigma, sigma_next = sigmas_down[i], sigmas_down[i + 1]
        eps = eps_from_denoised(x, denoise(x, sigma), sigma)
        x = ddim_step(x, eps, sigma, sigma_next)
        if on_step is not None:
            on_step(i + 1, x)
    return x
