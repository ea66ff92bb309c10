"""RAFT inference with torchvision's architectures (weights handled in ``raft_checkpoint``)."""

import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import RAFT, raft_large, raft_small

RAFT_ARCHITECTURES = ("raft_large", "raft_small")
# torchvision's default number of recurrent refinements. The original repository's demo uses 20
# and its benchmarks 24-32: more refines large motion a little, at a cost linear in the count.
DEFAULT_FLOW_UPDATES = 12
# torchvision's correlation pyramid wants feature maps (1/8 resolution) of at least 2**4 = 16
# cells per side, i.e. frames of at least 128 px: smaller frames are padded up to that.
_MIN_SIDE = 128


def build_raft(arch: str) -> RAFT:
    """An uninitialised torchvision RAFT (``weights=None``: never downloads), in eval mode."""
    if arch not in RAFT_ARCHITECTURES:
        raise ValueError(f"unknown RAFT architecture {arch!r}; expected one of {RAFT_ARCHITECTURES}")
    # Built outside inference mode so the cached module's tensors stay ordinary tensors, usable
    # both inside ComfyUI's inference mode and outside it.
    with torch.inference_mode(False):
        model = raft_large(weights=None) if arch == "raft_large" else raft_small(weights=None)
    return model.eval()


def _padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) to reach a multiple of 8 (at least 128), split evenly."""
    pad_h = max(-(-height // 8) * 8, _MIN_SIDE) - height
    pad_w = max(-(-width // 8) * 8, _MIN_SIDE) - width
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


@torch.no_grad()
def raft_flow(
    model: RAFT, source: torch.Tensor, target: torch.Tensor, num_flow_updates: int = DEFAULT_FLOW_UPDATES
) -> torch.Tensor:
    """Flow from each source frame to the matching target frame with a RAFT model.

    Frames are scaled to [-1, 1] (what RAFT was trained on), replicate-padded to a multiple of
    8 (at least 128 px), run on the model's device in float32, and the last refinement is cropped
    back to the input size.

    Args:
        model: a torchvision ``RAFT`` in eval mode, on the device to run on.
        source: ``[B, H, W, C]`` frames in 0..1 (C ≥ 3; RGB used).
        target: ``[B, H, W, C]`` frames in 0..1, same shape.
        num_flow_updates: recurrent refinement iterations.

    Returns:
        ``[B, H, W, 2]`` float32 source → target flow (on the source grid), on ``source``'s
        device.
    """
    if source.shape != target.shape:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} differ in shape")
    _, height, width, _ = source.shape
    device = next(model.parameters()).device
    left, right, top, bottom = _padding(height, width)

    def prepare(frames: torch.Tensor) -> torch.Tensor:
        x = frames[..., :3].to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * 2.0 - 1.0
        return F.pad(x, (left, right, top, bottom), mode="replicate")

    flow = model(prepare(source), prepare(target), num_flow_updates=num_flow_updates)[-1]
    flow = flow[:, :, top : top + height, left : left + width]
    return flow.permute(0, 2, 3, 1).to(device=source.device, dtype=torch.float32)
