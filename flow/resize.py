"""Resampling a flow field to another resolution (e.g. a latent grid) with its vectors rescaled."""

import torch
import torch.nn.functional as F


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a flow field and scale its vectors to the new pixel units.

    A displacement of ``dx`` pixels at width ``W`` is ``dx * w / W`` pixels at width ``w`` (same
    for y), so a flow computed on frames still describes the same motion on a latent grid.
    Bilinear with ``align_corners=False`` (pixel areas map onto pixel areas, which is what
    makes the plain ratio the right scale); antialiased when shrinking so a latent cell gets
    the mean motion of the pixels it covers rather than one sample of it.

    Args:
        flow: ``[B, H, W, 2]`` pixel displacements (dx, dy).
        size: target ``(height, width)``.

    Returns:
        ``[B, height, width, 2]`` float, device/dtype of ``flow``.
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"resize_flow: size must be positive, got {size}")
    _, in_h, in_w, _ = flow.shape
    if (height, width) == (in_h, in_w):
        return flow
    shrinking = height < in_h or width < in_w
    resized = F.interpolate(
        flow.permute(0, 3, 1, 2).float(),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=shrinking,
    )
    scale = torch.tensor([width / in_w, height / in_h], device=flow.device, dtype=resized.dtype)
    return (resized.permute(0, 2, 3, 1) * scale).to(flow.dtype)
