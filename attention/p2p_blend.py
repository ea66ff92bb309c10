"""Prompt-to-Prompt's local blend, per video frame: masks from the cross-attention maps of
chosen words, and the blend of the edited latent into the source latent outside them.

Only what the mask needs is kept while sampling: for each branch (source, target) and frame
the running sum, over steps, layers and heads, of the chosen words' maps at the blend
resolution (``[F, h, w]``, h = latent height / 4: the 16² layers at SD1.5 512 px). P2P
averages over heads and layers and sums over steps before normalising each map by its
maximum; a constant factor does not change the normalised map, so sums are enough.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def downsampled(size: int, levels: int) -> int:
    """A UNet level's side: ``size`` halved ``levels`` times by stride-2 convs (rounding up)."""
    for _ in range(levels):
        size = (size + 1) // 2
    return size


BLEND_LEVEL = 2  # latent / 4: P2P's 16² maps at 64² latents
SELF_REPLACE_LEVEL = 2  # self-attention replaced at latent / 4 and coarser (query length <= 16²)


def blend_resolution(latent_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = latent_hw
    return downsampled(h, BLEND_LEVEL), downsampled(w, BLEND_LEVEL)


def self_replace_max_tokens(latent_hw: tuple[int, int]) -> int:
    """Largest query length (per frame) whose self-attention P2P replaces: the latent / 4 level
    (16² = 256 tokens for a 64² latent), so the 16² and 8² layers."""
    h, w = blend_resolution(latent_hw)
    return h * w


def word_map_sum(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over heads and chosen tokens of cross-attention probabilities.

    Args:
        probs: ``[F, H, N, T]`` softmax maps of F frames, H heads, N queries, T context tokens.
        weights: ``[L]`` token weights (one-hot of the words' tokens) for one ``L``-token
            context; a context of ``T = r * L`` tokens (ComfyUI repeats contexts to a common
            length when batching) uses the weights on every copy.

    Returns ``[F, N]`` float32.
    """
    t, length = probs.shape[-1], weights.shape[0]
    if t % length:
        raise ValueError(f"context of {t} tokens is not a repeat of the prompt's {length}")
    w = weights.to(probs.device, torch.float32).repeat(t // length)
    return torch.einsum("fhnt,t->fn", probs.float(), w)


def word_mask(maps: torch.Tensor, latent_hw: tuple[int, int], threshold: float, pool: bool) -> torch.Tensor:
    """P2P's ``get_mask`` for one branch: ``maps [F, h, w]`` (summed word maps) → bool
    ``[F, H, W]`` at the latent size: 3x3 max-pool (when ``pool``), nearest upsampling, division
    by each frame's maximum, ``> threshold``. An all-zero map gives an empty mask."""
    m = maps.float()[:, None]
    if pool:
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
    m = F.interpolate(m, size=tuple(latent_hw), mode="nearest")
    peak = m.amax(dim=(2, 3), keepdim=True)
    norm = torch.where(peak > 0, m / peak.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    return (norm > threshold)[:, 0]


def local_blend_mask(
    src: torch.Tensor | None,
    tgt: torch.Tensor | None,
    latent_hw: tuple[int, int],
    threshold: float,
    sub_src: torch.Tensor | None = None,
    sub_tgt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-frame blend mask ``[F, 1, H, W]`` float (1 = take the edit).

    Union of the source branch's and the target branch's word masks (pooled), minus the union of
    their subtract-word masks (not pooled), as P2P's ``LocalBlend``. Each argument is a summed
    map ``[F, h, w]`` or None (no words for that branch).
    """

    def union(a, b, pool):
        masks = [word_mask(m, latent_hw, threshold, pool) for m in (a, b) if m is not None]
        if not masks:
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out

    keep = union(src, tgt, True)
    if keep is None:
        raise ValueError("local blend needs the maps of at least one branch")
    sub = union(sub_src, sub_tgt, False)
    if sub is not None:
        keep = keep & ~sub
    return keep[:, None].float()


def blend_active(step: int, num_steps: int, start: float) -> bool:
    """P2P blends after the scheduler step of step ``i`` (0-based) when ``i + 1 > int(start * S)``."""
    return step + 1 > int(start * num_steps)


def blend_denoised(
    denoised: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    x_src_next: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The denoised prediction for which a DDIM (ComfyUI euler) step from ``x`` lands on the
    blended latent ``x_src_next + mask * (x_next - x_src_next)``.

    A DDIM step is ``x_next = d + (x - d) * r`` with ``r = sigma_next / sigma``; solving for the
    blended target gives ``d' = mask * d + (1 - mask) * (x_src_next - r x) / (1 - r)``: inside
    the mask the sampler's own prediction, outside it the prediction that sends ``x`` to the
    source state. Shapes ``[F, C, H, W]`` (``mask`` broadcastable), sigmas scalars or ``[F]``.
    """

    def col(v):
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        return v.reshape(-1, *([1] * (x.ndim - 1))) if v.ndim else v

    r = col(sigma_next) / col(sigma)
    to_source = (x_src_next.to(x) - r * x) / (1 - r)
    mask = mask.to(x)
    return mask * denoised + (1 - mask) * to_source
