"""Occlusion masks from forward–backward flow consistency and out-of-frame motion."""

import torch

from .warp import sample_grid, warp_backward


def consistency_mask(
    flow: torch.Tensor,
    reverse_flow: torch.Tensor,
    alpha: float = 0.01,
    beta: float = 0.5,
    squared: bool = True,
) -> torch.Tensor:
    """Forward–backward check on ``flow``'s grid (1 = inconsistent, i.e. occluded or wrong).

    With ``f = flow`` (source → target, on the source grid) and ``r = reverse_flow`` (target →
    source, on the target grid), ``r̂(x) = r(x + f(x))`` sampled bilinearly. A pixel whose motion
    is right comes back to itself, ``f(x) + r̂(x) ≈ 0``. It is marked when

    - ``squared=True`` (Sundaram et al. 2010, the usual α = 0.01, β = 0.5):
      ``|f + r̂|² > α (|f|² + |r̂|²) + β`` — β is in px², so the tolerance at zero motion is
      √0.5 ≈ 0.71 px;
    - ``squared=False`` (GMFlow's check, which Rerender-A-Video uses with the same α, β):
      ``|f + r̂| > α (|f| + |r̂|) + β`` — β is in px (0.5 px at zero motion). GMFlow takes ``|r|``
      at ``x`` rather than ``|r̂|``; the two agree wherever the flow is smooth.

    For the mask of frame i relative to i+1 pass (forward, backward); for frame i+1 relative to
    i pass (backward, forward). Motion that leaves the frame is not judged here (``r̂`` is read
    at the border there); combine with :func:`out_of_frame_mask` (see :func:`occlusion_mask`).

    Args:
        flow: ``[B, H, W, 2]`` source → target, on the source grid.
        reverse_flow: ``[B, H, W, 2]`` target → source, on the target grid.
        alpha: tolerance relative to the motion magnitude.
        beta: constant tolerance (px² when ``squared``, else px).
        squared: which of the two criteria above.

    Returns:
        ``[B, H, W]`` float 0/1, device/dtype of ``flow``.
    """
    if flow.shape != reverse_flow.shape:
        raise ValueError(f"flow {tuple(flow.shape)} and reverse flow {tuple(reverse_flow.shape)} differ in shape")
    f = flow.float()
    r_hat = warp_backward(reverse_flow.float().permute(0, 3, 1, 2), f, padding_mode="border").permute(0, 2, 3, 1)
    if squared:
        err = (f + r_hat).square().sum(-1)
        bound = alpha * (f.square().sum(-1) + r_hat.square().sum(-1)) + beta
    else:
        err = torch.linalg.vector_norm(f + r_hat, dim=-1)
        bound = alpha * (torch.linalg.vector_norm(f, dim=-1) + torch.linalg.vector_norm(r_hat, dim=-1)) + beta
    return (err > bound).to(flow.dtype)


def out_of_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """1 where ``p + flow[p]`` falls outside the target frame (content that leaves the picture).

    Inside means within the outermost pixel centres, ``0 <= x <= W-1`` and ``0 <= y <= H-1``
    (where bilinear sampling reads only real pixels).

    Args:
        flow: ``[B, H, W, 2]`` source → target, on the source grid.

    Returns:
        ``[B, H, W]`` float 0/1, device/dtype of ``flow``.
    """
    _, height, width, _ = flow.shape
    pos = sample_grid(flow.float())
    x, y = pos[..., 0], pos[..., 1]
    outside = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    return outside.to(flow.dtype)


def occlusion_mask(
    flow: torch.Tensor,
    reverse_flow: torch.Tensor,
    alpha: float = 0.01,
    beta: float = 0.5,
    squared: bool = True,
) -> torch.Tensor:
    """Unreliable pixels of ``flow``'s source frame: inconsistent under the forward–backward
    check or moving out of the frame. Same arguments and result as :func:`consistency_mask`."""
    return torch.maximum(consistency_mask(flow, reverse_flow, alpha, beta, squared), out_of_frame_mask(flow))
