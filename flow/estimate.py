"""Forward and backward flow of a whole clip, in batches of frame pairs, with any estimator."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .resize import resize_flow

# source [B,H,W,3], target [B,H,W,3] (0..1) -> source → target flow [B,H,W,2]
PairFlow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _downscale(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = frames.permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).permute(0, 2, 3, 1)


def bidirectional_flow(
    frames: torch.Tensor,
    pair_flow: PairFlow,
    batch_size: int = 4,
    scale: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (i → i+1) and backward (i+1 → i) flow of a clip.

    Each batch of ``batch_size`` consecutive pairs goes to ``pair_flow`` as one call holding
    both directions (``2 × batch_size`` flows), so a batched estimator sees every frame once
    as source and once as target.

    Args:
        frames: ``[F, H, W, C]`` in 0..1, F ≥ 2.
        pair_flow: the estimator (``dis_flow``, or ``raft_flow`` bound to a model).
        batch_size: frame pairs per estimator call.
        scale: < 1 estimates at ``round(H·scale) × round(W·scale)`` (faster, coarser) and
            resizes the flow back with its vectors rescaled; 1 = full resolution.
        on_batch: called with the number of pairs just finished (progress, interruption).

    Returns:
        ``(forward, backward)``, each ``[F-1, H, W, 2]`` float32 on ``frames``' device;
        ``forward[i]`` lives on frame i's grid, ``backward[i]`` on frame i+1's.
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need at least 2 frames [F,H,W,C] to estimate flow, got shape {tuple(frames.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    count, height, width, _ = frames.shape
    work_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    forward, backward = [], []
    for start in range(0, count - 1, batch_size):
        stop = min(start + batch_size, count - 1)
        src, tgt = frames[start:stop], frames[start + 1 : stop + 1]
        if work_size != (height, width):
            src, tgt = _downscale(src, work_size), _downscale(tgt, work_size)
        flows = pair_flow(torch.cat([src, tgt]), torch.cat([tgt, src]))
        flows = resize_flow(flows, (height, width)).to(device=frames.device, dtype=torch.float32)
        n = stop - start
        forward.append(flows[:n])
        backward.append(flows[n:])
        if on_batch is not None:
            on_batch(n)
    return torch.cat(forward), torch.cat(backward)
