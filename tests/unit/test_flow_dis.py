"""DIS flow, occlusion masks and warping on a synthetic clip with a known translation."""

import pytest
import torch

from comfyui_videoedit.flow.consistency import occlusion_mask
from comfyui_videoedit.flow.dis import dis_flow
from comfyui_videoedit.flow.estimate import bidirectional_flow
from comfyui_videoedit.flow.warp import warp_backward

HEIGHT, WIDTH, MARGIN = 96, 128, 8


def translating_clip(shift, frames=4, seed=0, pad=24, cutoff=0.12):
    """Band-limited noise moving by ``shift`` = (dx, dy) px per frame: frame k (x) = I(x - k·shift).

    The texture is a random spectrum under a Gaussian low-pass on a larger periodic canvas;
    each frame is translated exactly (a phase ramp in the Fourier domain, so sub-pixel shifts
    are exact too) and the centre is cropped, so new texture enters at the borders."""
    g = torch.Generator().manual_seed(seed)
    ch, cw = HEIGHT + 2 * pad, WIDTH + 2 * pad
    spectrum = torch.complex(torch.randn(ch, cw, generator=g), torch.randn(ch, cw, generator=g))
    fy, fx = torch.fft.fftfreq(ch).view(-1, 1), torch.fft.fftfreq(cw).view(1, -1)
    spectrum = spectrum * torch.exp(-(fx**2 + fy**2) / (2 * cutoff**2))
    base = torch.fft.ifft2(spectrum).real
    out = []
    for k in range(frames):
        phase = torch.exp(-2j * torch.pi * (fx * shift[0] * k + fy * shift[1] * k))
        out.append(torch.fft.ifft2(spectrum * phase).real[pad : pad + HEIGHT, pad : pad + WIDTH])
    gray = ((torch.stack(out) - base.mean()) / (6 * base.std()) + 0.5).clamp(0, 1)
    tint = torch.tensor([1.0, 0.9, 0.8])  # a coloured clip: DIS must go through grayscale
    return gray[..., None] * tint


def interior(t: torch.Tensor) -> torch.Tensor:
    return t[:, MARGIN:-MARGIN, MARGIN:-MARGIN]


def epe(flow: torch.Tensor, truth) -> float:
    return float(interior(torch.linalg.vector_norm(flow - torch.tensor(truth), dim=-1)).mean())


@pytest.fixture(scope="module")
def clip_and_flows():
    clip = translating_clip((3.0, -2.0))
    forward, backward = bidirectional_flow(clip, dis_flow, batch_size=2)
    return clip, forward, backward


def test_dis_recovers_the_translation(clip_and_flows):
    clip, forward, backward = clip_and_flows
    assert forward.shape == backward.shape == (3, HEIGHT, WIDTH, 2)
    assert forward.dtype == torch.float32
    assert epe(forward, (3.0, -2.0)) < 0.5
    assert epe(backward, (-3.0, 2.0)) < 0.5


def test_dis_recovers_a_subpixel_translation():
    clip = translating_clip((2.6, -1.3), frames=3, seed=1)
    forward = dis_flow(clip[:-1], clip[1:])
    assert epe(forward, (2.6, -1.3)) < 0.5


def test_occlusion_marks_the_borders_content_crosses_and_little_else(clip_and_flows):
    _, forward, backward = clip_and_flows
    leaving = occlusion_mask(forward, backward)  # frame i: content moving out of the frame
    entering = occlusion_mask(backward, forward)  # frame i+1: content that was not in frame i
    # motion (+3, -2): content leaves through the right/top, enters through the left/bottom
    assert leaving[:, :, -3:].min() == 1 and leaving[:, :2, :].min() == 1
    assert entering[:, :, :3].min() == 1 and entering[:, -2:, :].min() == 1
    assert float(interior(leaving).mean()) < 0.02
    assert float(interior(entering).mean()) < 0.02


def test_warping_the_next_frame_back_reproduces_the_frame(clip_and_flows):
    clip, forward, _ = clip_and_flows
    chw = clip.permute(0, 3, 1, 2)
    warped = warp_backward(chw[1:], forward, "border")
    error = interior((warped - chw[:-1]).abs().mean(1))
    assert float(error.mean()) < 0.02


def test_lower_scale_still_recovers_the_translation():
    clip = translating_clip((3.0, -2.0), frames=3)
    forward, _ = bidirectional_flow(clip, dis_flow, scale=0.5)
    assert forward.shape == (2, HEIGHT, WIDTH, 2)
    assert epe(forward, (3.0, -2.0)) < 0.5


def test_flow_of_a_single_frame_is_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        bidirectional_flow(torch.rand(1, 16, 16, 3), dis_flow)
