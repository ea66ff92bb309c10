"""Resampling a flow field to another resolution (e.g. a latent grid) with its vectors rescaled."""

import torch
import torch.nn.functional as F

# How a flow is sampled onto a smaller grid:
# - "antialiased": bilinear with antialiasing when shrinking, so a cell gets the mean motion of
#   the pixels it covers (the pack's choice where no official code dictates one);
# - "bilinear": plain bilinear, align_corners=False, no antialiasing: Rerender's official
#   ``F.interpolate(flow / 8, scale_factor=1/8, mode="bilinear")``, i.e. the mean of the 2×2
#   pixels around each cell's centre;
# - "nearest": FLATTEN's official ``F.interpolate(flow, scale_factor=r/512)`` (nearest), i.e.
#   the pixel at each cell's top-left corner when the sizes divide.
RESIZE_MODES = ("antialiased", "bilinear", "nearest")


def resize_flow(flow: torch.Tensor, size: tuple[int, int], mode: str = "antialiased") -> torch.Tensor:
    """Resize a flow field and scale its vectors to the new pixel units.

    A displacement of ``dx`` pixels at width ``W`` is ``dx * w / W`` pixels at width ``w`` (same
    for y), so a flow computed on frames still describes the same motion on a latent grid.
    Interpolation with ``align_corners=False`` (pixel areas map onto pixel areas, which is what
    makes the plain ratio the right scale). ``mode`` (see ``RESIZE_MODES``): ``"antialiased"``
    (default) averages the motion of the pixels a cell covers when shrinking; ``"bilinear"``
    and ``"nearest"`` are the official Rerender and FLATTEN samplings. For sizes that divide,
    sampling by ``size`` equals the official code's sampling by ``scale_factor``.

    Args:
        flow: ``[B, H, W, 2]`` pixel displacements (dx, dy).
        size: target ``(height, width)``.
        mode: ``"antialiased"``, ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``[B, height, width, 2]`` float, device/dtype of ``flow``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_flow: mode must be one of {RESIZE_MODES}, got {mode!r}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"resize_flow: size must be positive, got {size}")
    _, in_h, in_w, _ = flow.shape
    if (height, width) == (in_h, in_w):
        return flow
    channels_first = flow.permute(0, 3, 1, 2).float()
    if mode == "nearest":
        resized = F.interpolate(channels_first, size=(height, width), mode="nearest")
    else:
        shrinking = height < in_h or width < in_w
        resized = F.interpolate(
            channels_first,
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=mode == "antialiased" and shrinking,
        )
    scale = torch.tensor([width / in_w, height / in_h], device=flow.device, dtype=resized.dtype)
    return (resized.permute(0, 2, 3, 1) * scale).to(flow.dtype)
