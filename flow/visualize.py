"""Flow fields as colour images (the Middlebury colour wheel, via torchvision)."""

import torch
from torchvision.utils import flow_to_image


def flow_to_rgb(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour-code a flow: hue = direction, saturation = magnitude / ``max_magnitude``.

    Every frame uses the same scale so a preview of a clip is comparable from frame to frame:
    ``max_magnitude`` pixels (longer vectors saturate), or the largest motion in the whole
    batch when it is ``None`` or ≤ 0. Zero motion is white.

    Args:
        flow: ``[B, H, W, 2]`` pixel displacements (dx, dy).
        max_magnitude: displacement (px) shown at full saturation.

    Returns:
        ``[B, H, W, 3]`` float32 in 0..1 (IMAGE layout), on ``flow``'s device.
    """
    flow = flow.float()
    magnitude = torch.linalg.vector_norm(flow, dim=-1, keepdim=True)
    if max_magnitude is None or max_magnitude <= 0:
        max_magnitude = float(magnitude.max()) if flow.numel() else 0.0
    max_magnitude = max(max_magnitude, 1e-6)
    # torchvision divides by the largest vector norm of what it is given. Clamp to the chosen
    # scale and append one column holding a vector of exactly that length, so its divisor is
    # always our scale; the column is cut off again afterwards.
    clamped = flow * (max_magnitude / magnitude.clamp_min(max_magnitude))
    images = []
    for frame in clamped:  # one frame at a time keeps the uint8/temporary memory per frame
        chw = frame.permute(2, 0, 1)
        sentinel = torch.zeros_like(chw[:, :, :1])
        sentinel[0] = max_magnitude
        rgb = flow_to_image(torch.cat([chw, sentinel], dim=2))[:, :, :-1]
        images.append(rgb.permute(1, 2, 0).float() / 255.0)
    return torch.stack(images) if images else flow.new_zeros(*flow.shape[:-1], 3)
