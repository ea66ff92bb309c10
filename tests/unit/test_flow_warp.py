"""Backward warping and flow resizing against naive references."""

import pytest
import torch

from comfyui_videoedit.flow.resize import resize_flow
from comfyui_videoedit.flow.warp import warp_backward


def _constant_flow(batch_shifts, height, width):
    return torch.stack([torch.tensor(s, dtype=torch.float32).expand(height, width, 2) for s in batch_shifts])


def _naive_index(i: int, n: int, padding_mode: str) -> int | None:
    """Where an integer sample position i reads from in a row of n pixels (None = zero)."""
    if 0 <= i < n:
        return i
    if padding_mode == "zeros":
        return None
    if padding_mode == "border":
        return min(max(i, 0), n - 1)
    # reflection about the outermost pixel centres: -1 -> 1, n -> n-2
    period = 2 * (n - 1)
    i = abs(i) % period
    return i if i < n else period - i


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_integer_translation_matches_naive_lookup(padding_mode):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 7, 9, generator=g)
    shifts = [(2.0, -1.0), (-3.0, 2.0)]
    out = warp_backward(image, _constant_flow(shifts, 7, 9), padding_mode)
    expected = torch.zeros_like(image)
    for b, (dx, dy) in enumerate(shifts):
        for y in range(7):
            for x in range(9):
                sy, sx = _naive_index(y + int(dy), 7, padding_mode), _naive_index(x + int(dx), 9, padding_mode)
                if sy is not None and sx is not None:
                    expected[b, :, y, x] = image[b, :, sy, sx]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_integer_translation_matches_roll_inside_the_frame():
    image = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    out = warp_backward(image, _constant_flow([(3.0, -2.0)], 16, 20))
    # out[y, x] = image[y - 2, x + 3]  <=>  roll by (+2 rows, -3 columns); valid where y >= 2, x < 17
    rolled = torch.roll(image, shifts=(2, -3), dims=(2, 3))
    torch.testing.assert_close(out[..., 2:, :17], rolled[..., 2:, :17], atol=1e-5, rtol=0)
    assert out[..., :2, :].abs().max() < 1e-5 and out[..., :, 17:].abs().max() < 1e-5  # zeros padding


def test_subpixel_warp_of_a_linear_ramp_is_exact():
    """Bilinear interpolation reproduces affine images exactly: a ramp shifted by 0.25 px."""
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    ramp = (0.3 * xs + 0.7 * ys)[None, None]
    out = warp_backward(ramp, _constant_flow([(0.25, -0.5)], 10, 12), "border")
    expected = 0.3 * (xs + 0.25) + 0.7 * (ys - 0.5)
    torch.testing.assert_close(out[0, 0, 1:, :-1], expected[1:, :-1], atol=1e-5, rtol=0)


def test_warp_follows_image_dtype():
    image = torch.rand(1, 2, 5, 6).half()
    assert warp_backward(image, torch.zeros(1, 5, 6, 2)).dtype == torch.float16


def test_warp_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="differ in batch size or H×W"):
        warp_backward(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 9, 2))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        warp_backward(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, 2), "wrap")


@pytest.mark.parametrize("size", [(8, 12), (128, 192), (16, 48)])
def test_resize_scales_constant_flow_vectors(size):
    flow = _constant_flow([(3.0, -2.0), (-1.5, 4.0)], 64, 96)
    out = resize_flow(flow, size)
    assert out.shape == (2, *size, 2)
    for b, (dx, dy) in enumerate([(3.0, -2.0), (-1.5, 4.0)]):
        torch.testing.assert_close(out[b, ..., 0], torch.full(size, dx * size[1] / 96), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b, ..., 1], torch.full(size, dy * size[0] / 64), atol=1e-5, rtol=0)


def test_resize_keeps_an_affine_flow_field_consistent():
    """A zoom about c, f(p) = k (p - c) at full resolution, is the same motion on a grid half
    the size: f'(p') = k (p' - c') with pixel areas aligned, p = 2 p' + 0.5."""
    height, width, k = 32, 40, 0.1
    ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    cx, cy = 17.0, 11.0
    flow = torch.stack([k * (xs - cx), k * (ys - cy)], -1)[None]
    out = resize_flow(flow, (height // 2, width // 2))[0]
    ys2, xs2 = torch.meshgrid(torch.arange(height / 2), torch.arange(width / 2), indexing="ij")
    cx2, cy2 = (cx - 0.5) / 2, (cy - 0.5) / 2
    expected = torch.stack([k * (xs2 - cx2), k * (ys2 - cy2)], -1)
    torch.testing.assert_close(out[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-4, rtol=0)


def test_resize_to_same_size_is_identity():
    flow = torch.randn(1, 5, 7, 2)
    assert torch.equal(resize_flow(flow, (5, 7)), flow)
