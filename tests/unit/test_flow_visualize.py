"""Flow colour coding: one scale per clip, saturation linear in speed, white at rest."""

import torch
from torchvision.utils import flow_to_image

from comfyui_videoedit.flow.visualize import flow_to_rgb


def _field(vectors, height=4, width=5):
    return torch.stack([torch.tensor(v, dtype=torch.float32).expand(height, width, 2) for v in vectors])


def test_layout_range_and_white_at_rest():
    flow = torch.zeros(3, 6, 7, 2)
    flow[1, 2:, 3:] = torch.tensor([1.5, -0.5])
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (3, 6, 7, 3) and rgb.dtype == torch.float32
    assert 0 <= rgb.min() and rgb.max() <= 1
    torch.testing.assert_close(rgb[0], torch.ones(6, 7, 3))  # still everywhere
    assert (rgb[1, 3, 4] < 1).any()  # moving pixels are coloured


def test_full_speed_matches_torchvision_colour_wheel():
    directions = [(1.0, 0.0), (0.0, 1.0), (-0.6, 0.8)]
    rgb = flow_to_rgb(_field(directions) * 5.0, max_magnitude=5.0)
    for i, d in enumerate(directions):
        reference = flow_to_image(torch.tensor(d).view(2, 1, 1)).float().view(3) / 255  # unit vector: full colour
        torch.testing.assert_close(rgb[i, 0, 0], reference, atol=1e-6, rtol=0)


def test_clip_shares_one_scale_and_saturation_is_linear_in_speed():
    """Middlebury colour: c(r) = 1 - r (1 - c(1)) for speed fraction r. Half the clip's top
    speed gives the midpoint between white and the full colour (within uint8 rounding)."""
    rgb = flow_to_rgb(_field([(1.0, 1.0), (2.0, 2.0)]))  # auto scale = clip max = |(2, 2)|
    full, half = rgb[1, 0, 0], rgb[0, 0, 0]
    torch.testing.assert_close(half, 1 - 0.5 * (1 - full), atol=1.5 / 255, rtol=0)
    assert (half > full).any()


def test_fixed_scale_saturates_longer_vectors_and_is_independent_of_the_batch():
    a = flow_to_rgb(_field([(0.0, -8.0)]), max_magnitude=4.0)
    b = flow_to_rgb(_field([(0.0, -4.0)]), max_magnitude=4.0)
    torch.testing.assert_close(a, b)
    alone = flow_to_rgb(_field([(1.0, 0.0)]), max_magnitude=4.0)
    together = flow_to_rgb(_field([(1.0, 0.0), (4.0, 0.0)]), max_magnitude=4.0)
    torch.testing.assert_close(together[:1], alone)
