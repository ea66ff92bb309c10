"""Backward warping of images (or any per-pixel field) by a flow."""

import functools

import torch
import torch.nn.functional as F

PADDING_MODES = ("zeros", "border", "reflection")
SAMPLE_MODES = ("bilinear", "nearest")


def sample_grid(flow: torch.Tensor) -> torch.Tensor:
    """Absolute sampling positions ``p + flow[p]`` in pixels.

    Args:
        flow: ``[B, H, W, 2]`` pixel displacements (dx, dy).

    Returns:
        ``[B, H, W, 2]`` (x, y) positions, same device/dtype as ``flow``.
    """
    _, height, width, _ = flow.shape
    return _base_grid(height, width, flow.device, flow.dtype) + flow


@functools.lru_cache(maxsize=16)
def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[1, H, W, 2]`` pixel positions (x, y), built once per size/device/dtype: a warp runs per
    frame and step, and building the grid each time cost as much as the sampling (bench). Never
    written to (callers add to it)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1)[None]


def warp_backward(
    image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Backward warp: ``out[p] = image[p + flow[p]]``, bilinear (or nearest).

    The output lives on the flow's grid. To bring frame i+1 onto frame i's grid, pass frame i+1
    and the forward flow i → i+1 (defined on frame i). To bring frame i onto frame i+1's grid,
    pass frame i and the backward flow i+1 → i.

    Args:
        image: ``[B, C, H, W]`` any float values (images, flows, features).
        flow: ``[B, H, W, 2]`` pixel displacements (dx, dy) on the output grid.
        padding_mode: value for samples that land outside the image: ``"zeros"`` (0),
            ``"border"`` (nearest edge pixel) or ``"reflection"`` (mirrored about the edge
            pixel centres).
        mode: ``"bilinear"`` or ``"nearest"`` (no blur, e.g. for latents).

    Returns:
        ``[B, C, H, W]``, dtype and device of ``image``.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if mode not in SAMPLE_MODES:
        raise ValueError(f"warp mode must be one of {SAMPLE_MODES}, got {mode!r}")
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(
            f"expected image [B,C,H,W] and flow [B,H,W,2], got {tuple(image.shape)} and {tuple(flow.shape)}"
        )
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[1:3]:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in batch size or H×W")
    # Sample in float32 at least: half-precision positions are off by ~0.1 px at 512 px.
    work = image if image.dtype in (torch.float32, torch.float64) else image.float()
    grid = sample_grid(flow.to(device=image.device, dtype=work.dtype))
    # pixel → [-1, 1] with the align_corners=True convention (pixel centres on the corners of
    # the normalised range), so grid_sample is told the same; one fused sampling call (kornia's
    # remap did the same maths in several passes, ~20x slower at 256² on CPU)
    height, width = grid.shape[1:3]
    scale = torch.tensor(
        [2.0 / max(width - 1, 1e-14), 2.0 / max(height - 1, 1e-14)], device=grid.device, dtype=grid.dtype
    )
    out = F.grid_sample(work, grid * scale - 1.0, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(image.dtype)
