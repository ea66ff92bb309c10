"""Reconstruction metrics for checking an inversion before editing."""

from __future__ import annotations

import math

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error of two same-shaped tensors (computed in float32)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float(((a.float() - b.float().to(a.device)) ** 2).mean())


def psnr(images: torch.Tensor, reference: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of IMAGE batches ``[F, H, W, C]`` in 0..``peak`` (inf when identical)."""
    err = mse(images.clamp(0, peak), reference.clamp(0, peak))
    return math.inf if err == 0 else 10.0 * math.log10(peak * peak / err)


def center_crop_like(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop ``[F, H, W, C]`` to ``height x width`` around the centre, as ComfyUI's VAE encode
    crops frames to a multiple of 8. Raises ValueError when the frames are smaller."""
    h, w = images.shape[1:3]
    if h < height or w < width:
        raise ValueError(f"images: frames are {h}x{w}, smaller than the decoded {height}x{width}")
    top, left = (h - height) // 2, (w - width) // 2
    return images[:, top : top + height, left : left + width]


def error_image(a: torch.Tensor, b: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """Per-position latent error ``|a - b|`` (mean over channels) of ``[F, C, h, w]`` latents as
    an IMAGE ``[F, h*scale, w*scale, 3]`` in 0..1, normalised by its maximum."""
    err = (a.float() - b.float().to(a.device)).abs().mean(dim=1, keepdim=True)
    err = err / err.max().clamp_min(1e-12)
    err = torch.nn.functional.interpolate(err, scale_factor=scale, mode="nearest")
    return err.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()
