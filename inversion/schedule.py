"""Sigma schedules for inversion: the editing schedule (what a sampler walks, descending, ending
in 0) and the finer inversion schedule (TokenFlow inverts along 500 steps and keeps only the 50
it samples with), and matching a sampler's sigma against a cached schedule.

Sigmas are ComfyUI's VE noise levels (x = x0 + sigma * eps), float32.
"""

from __future__ import annotations

import torch

# Relative tolerance for "the same sigma": schedules are recomputed from the same
# model_sampling in float32, and samplers pass sigma through a device/dtype round trip.
SIGMA_RTOL = 1e-4
SIGMA_ATOL = 1e-6


def check_editing_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Validate an editing schedule: 1-D, strictly descending, ending in 0, at least one step.

    Returns it as float32 on CPU.
    """
    sigmas = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float32).flatten()
    if sigmas.numel() < 2:
        raise ValueError(f"the sigma schedule has {sigmas.numel()} values; it needs at least 2 (one step)")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"the sigma schedule must end in 0 (a full denoise), it ends in {float(sigmas[-1]):.6g}")
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError("the sigma schedule must be strictly descending")
    return sigmas


def inversion_schedule(editing: torch.Tensor, fine: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ascending schedule the inversion walks and where the editing sigmas sit in it.

    Args:
        editing: ``[S+1]`` descending editing sigmas ending in 0.
        fine: optional ``[M+1]`` descending finer schedule (also ending in 0). The result is the
            union of both, so every editing sigma is hit exactly (its own value is kept where a
            fine sigma is within tolerance of it). Fine sigmas above the noisiest editing sigma
            are dropped: the inversion ends at the editing schedule's first sigma.

    Returns:
        ``(ascending [K+1] starting at 0, keep [S+1] long)`` where ``ascending[keep[j]]`` equals
        ``editing.flip(0)[j]`` bit for bit.
    """
    editing = check_editing_sigmas(editing)
    up = editing.flip(0)
    if fine is None:
        return up.clone(), torch.arange(up.numel())
    fine = check_editing_sigmas(fine).flip(0)
    top = float(up[-1])  # never invert past the noisiest editing sigma: x_T must sit there
    extra = [
        s
        for s in fine.tolist()
        if s < top and not bool(torch.isclose(up, torch.tensor(s), rtol=SIGMA_RTOL, atol=SIGMA_ATOL).any())
    ]
    union, _ = torch.sort(torch.cat([up, torch.tensor(extra, dtype=torch.float32)]))
    keep = torch.stack([torch.nonzero(union == s).flatten()[0] for s in up])
    return union, keep


def find_sigma(schedule: torch.Tensor, sigma: float | torch.Tensor) -> int | None:
    """Index of ``sigma`` in ``schedule`` (closest match within tolerance), or None."""
    s = float(sigma)
    sched = schedule.detach().to(device="cpu", dtype=torch.float64)
    diff = (sched - s).abs()
    i = int(diff.argmin())
    if diff[i] <= SIGMA_ATOL + SIGMA_RTOL * abs(s):
        return i
    return None


def describe(sigmas: torch.Tensor, limit: int = 8) -> str:
    """Short human-readable form of a schedule for error messages."""
    values = [f"{v:.4g}" for v in sigmas.detach().cpu().flatten().tolist()]
    if len(values) > limit:
        values = values[: limit // 2] + ["…"] + values[-limit // 2 :]
    return f"[{', '.join(values)}] ({sigmas.numel()} values)"
