"""Video-P2P's shared null-text optimisation (Mokady et al.'s null-text inversion, one
unconditional embedding per step shared by every frame).

Walking the editing schedule from the inverted ``x_T``, at step i (sigma_i -> sigma_{i+1}) the
unconditional embedding ``u_i`` (initialised from the previous step's, the first from the
negative prompt) is optimised with Adam so that the classifier-free-guided DDIM step from the
current latent lands on the cached inversion latent of step i+1; the latent is then advanced
with the optimised ``u_i``. Memory: ``S`` embeddings ``[T, D]`` — not one per frame.

Settings follow the paper's 50-step schedule: lr ``1e-2 * (1 - i/100)``, at most 10 inner
iterations, early stop when the loss < ``1e-5 + i * 2e-5``. For other step counts ``i`` is put
on that 50-step scale (``i * 50 / S``) so the curve spans the trajectory the same way (and the
learning rate never reaches 0). A step whose loss is already under the threshold keeps its
embedding (the reference code still applies one Adam step, whose size does not shrink with the
gradient). The loss is the MSE of VP latents ``x / sqrt(1+sigma^2)``
(diffusers' latents, the scale the thresholds were set for), over all frames.

The model is injected: ``eps_cond(x, sigma, frames)`` and ``eps_uncond(x, sigma, embedding,
frames)`` return the implied noise ``[n, C, h, w]`` for the VE latents ``x`` of the frames
``frames`` (a ``slice``); ``eps_uncond`` must be differentiable w.r.t. ``embedding``.
Frames are processed in chunks with gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ddim import ddim_step, to_vp

EpsCond = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]
EpsUncond = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], torch.Tensor]


@dataclass(frozen=True)
class NullTextSettings:
    cfg: float = 7.5
    inner_steps: int = 10
    lr: float = 1e-2
    early_stop: float = 1e-5
    early_stop_slope: float = 2e-5
    reference_steps: int = 50  # the paper's schedule length the lr/threshold formulas assume

    def step_scale(self, i: int, steps: int) -> float:
        return i * self.reference_steps / max(steps, 1)

    def lr_at(self, i: int, steps: int) -> float:
        return self.lr * (1.0 - self.step_scale(i, steps) / 100.0)

    def threshold_at(self, i: int, steps: int) -> float:
        return self.early_stop + self.step_scale(i, steps) * self.early_stop_slope


@dataclass
class StepReport:
    step: int
    sigma: float
    first_loss: float  # loss with the embedding the step started from
    last_loss: float  # loss at the last evaluated iteration (before its update)
    iterations: int


def _chunks(frames: int, chunk: int) -> list[slice]:
    chunk = frames if chunk <= 0 else chunk
    return [slice(a, min(a + chunk, frames)) for a in range(0, frames, chunk)]


def cfg_eps(eps_c: torch.Tensor, eps_u: torch.Tensor, cfg: float) -> torch.Tensor:
    return eps_u + cfg * (eps_c - eps_u)


def optimize_null_text(
    eps_cond: EpsCond,
    eps_uncond: EpsUncond,
    x_T: torch.Tensor,
    targets_vp: torch.Tensor,
    sigmas: torch.Tensor,
    init_embedding: torch.Tensor,
    settings: NullTextSettings = NullTextSettings(),
    frame_chunk: int = 0,
    on_step: Callable[[StepReport], None] | None = None,
) -> tuple[torch.Tensor, list[StepReport]]:
    """Optimise one unconditional embedding per step.

    Args:
        x_T: ``[F, C, h, w]`` VE latent at ``sigmas[0]`` (the inversion's exact x_T).
        targets_vp: ``[S+1, F, C, h, w]`` cached VP latents, row k at ``sigmas[k]`` (any dtype, any device).
        sigmas: ``[S+1]`` descending editing schedule ending in 0.
        init_embedding: ``[1, T, D]`` (the negative prompt's cross-attention tensor).
        frame_chunk: frames per model call (0 = all); gradients are accumulated over chunks.

    Returns:
        ``(embeddings [S, T, D] float32 on init_embedding's device, per-step reports)``.
    """
    steps = int(sigmas.numel() - 1)
    frames = int(x_T.shape[0])
    parts = _chunks(frames, frame_chunk)
    out, reports = [], []
    with torch.inference_mode(False), torch.enable_grad():
        # fresh (non-inference) tensors: these take part in autograd graphs
        embedding = init_embedding.detach().clone().float()
        x = x_T.detach().clone().float()
        for i in range(steps):
            sigma, sigma_next = sigmas[i].clone().to(x.device), sigmas[i + 1].clone().to(x.device)
            target = targets_vp[i + 1].detach().to(x.device, torch.float32).clone()
            with torch.no_grad():
                eps_c = torch.cat([eps_cond(x[p], sigma, p).float() for p in parts])
            embedding = embedding.detach().requires_grad_(True)
            opt = torch.optim.Adam([embedding], lr=settings.lr_at(i, steps))
            first = last = float("nan")
            used = 0
            for j in range(settings.inner_steps):
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for p in parts:
                    eps = cfg_eps(eps_c[p], eps_uncond(x[p], sigma, embedding, p).float(), settings.cfg)
                    z = to_vp(ddim_step(x[p], eps, sigma, sigma_next), sigma_next)
                    loss = ((z - target[p]) ** 2).sum() / target.numel()
                    loss.backward()
                    total += float(loss.detach())
                used = j + 1
                last = total
                if j == 0:
                    first = total
                if total < settings.threshold_at(i, steps):
                    break  # converged: unlike the reference code, do not take Adam's (normalised) step
                opt.step()
            embedding = embedding.detach()
            with torch.no_grad():  # advance with the optimised embedding
                moved = []
                for p in parts:
                    eps = cfg_eps(eps_c[p], eps_uncond(x[p], sigma, embedding, p).float(), settings.cfg)
                    moved.append(ddim_step(x[p], eps, sigma, sigma_next))
                x = torch.cat(moved)
            out.append(embedding[0].clone())
            report = StepReport(i, float(sigma), first, last, used)
            reports.append(report)
            if on_step is not None:
                on_step(report)
    return torch.stack(out), reports


def cfg_trajectory_losses(
    eps_cond: EpsCond,
    eps_uncond: EpsUncond,
    x_T: torch.Tensor,
    targets_vp: torch.Tensor,
    sigmas: torch.Tensor,
    embeddings: torch.Tensor,
    cfg: float,
    frame_chunk: int = 0,
) -> list[float]:
    """Per-step MSE (VP) between a CFG DDIM trajectory from ``x_T`` and the cached inversion
    latents, using ``embeddings`` ``[S, T, D]`` (one per step) or ``[1, T, D]`` (the same at every
    step, e.g. the plain negative prompt). Loss k compares the latent after step k."""
    steps = int(sigmas.numel() - 1)
    parts = _chunks(int(x_T.shape[0]), frame_chunk)
    losses = []
    with torch.no_grad():
        x = x_T.float()
        for i in range(steps):
            sigma, sigma_next = sigmas[i].to(x.device), sigmas[i + 1].to(x.device)
            emb = embeddings[i if embeddings.shape[0] > 1 else 0][None].to(x.device)
            moved = []
            for p in parts:
                eps = cfg_eps(eps_cond(x[p], sigma, p).float(), eps_uncond(x[p], sigma, emb, p).float(), cfg)
                moved.append(ddim_step(x[p], eps, sigma, sigma_next))
            x = torch.cat(moved)
            target = targets_vp[i + 1].to(x.device, torch.float32)
            losses.append(float(((to_vp(x, sigma_next) - target) ** 2).mean()))
    return losses
