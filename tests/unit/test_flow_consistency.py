"""Forward–backward consistency and out-of-frame masks on analytic flows."""

import math

import pytest
import torch

from comfyui_videoedit.flow.consistency import consistency_mask, occlusion_mask, out_of_frame_mask


def _constant(dx, dy, height=6, width=8):
    return torch.tensor([dx, dy], dtype=torch.float32).expand(1, height, width, 2).clone()


def _bilinear_border(field, x, y):
    """field [H,W,2] read at (x, y), coordinates clamped to the frame (naive reference)."""
    height, width, _ = field.shape
    x, y = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x0, y0 = min(int(math.floor(x)), width - 2), min(int(math.floor(y)), height - 2)
    ax, ay = x - x0, y - y0
    return (
        field[y0, x0] * (1 - ax) * (1 - ay)
        + field[y0, x0 + 1] * ax * (1 - ay)
        + field[y0 + 1, x0] * (1 - ax) * ay
        + field[y0 + 1, x0 + 1] * ax * ay
    )


@pytest.mark.parametrize("squared", [True, False])
def test_consistency_matches_a_per_pixel_reference(squared):
    g = torch.Generator().manual_seed(3)
    fwd = torch.randn(2, 6, 7, 2, generator=g) * 1.5
    bwd = -fwd.flip(2) + torch.randn(2, 6, 7, 2, generator=g) * 0.6  # partly consistent, partly not
    alpha, beta = 0.05, 0.4
    got = consistency_mask(fwd, bwd, alpha, beta, squared)
    expected = torch.zeros(2, 6, 7)
    for b in range(2):
        for y in range(6):
            for x in range(7):
                f = fwd[b, y, x]
                r = _bilinear_border(bwd[b], x + float(f[0]), y + float(f[1]))
                if squared:
                    bad = float(((f + r) ** 2).sum()) > alpha * float((f**2).sum() + (r**2).sum()) + beta
                else:
                    bad = float((f + r).norm()) > alpha * float(f.norm() + r.norm()) + beta
                expected[b, y, x] = float(bad)
    assert 0 < expected.sum() < expected.numel()  # the case exercises both outcomes
    torch.testing.assert_close(got, expected)


def test_opposite_constant_flows_are_consistent_and_leaving_pixels_are_out_of_frame():
    fwd, bwd = _constant(2.0, 1.0), _constant(-2.0, -1.0)
    assert consistency_mask(fwd, bwd).sum() == 0
    out = out_of_frame_mask(fwd)[0]
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    torch.testing.assert_close(out, ((xs + 2 > 7) | (ys + 1 > 5)).float())
    torch.testing.assert_close(occlusion_mask(fwd, bwd)[0], out)


def test_threshold_is_squared_by_default():
    """|f + b|² = 0.36 and 0.01·(|f|² + |b|²) + 0.5 ≈ 0.5: consistent in the squared test,
    inconsistent in the plain-norm one (0.6 > 0.01·(|f| + |b|) + 0.5 ≈ 0.51)."""
    fwd, bwd = _constant(0.0, 0.0), _constant(0.6, 0.0)
    assert consistency_mask(fwd, bwd).sum() == 0
    assert consistency_mask(fwd, bwd, squared=False).min() == 1


def test_moving_square_occludes_what_it_covers_and_uncovers():
    """A 4×4 square moves 3 px right over a still background. In frame i the background it
    is about to cover is occluded; in frame i+1 the background it uncovered is."""
    height, width = 12, 16
    fwd = torch.zeros(1, height, width, 2)
    bwd = torch.zeros(1, height, width, 2)
    fwd[0, 4:8, 4:8, 0] = 3.0  # the square in frame i (columns 4..7)
    bwd[0, 4:8, 7:11, 0] = -3.0  # the square in frame i+1 (columns 7..10)
    occ_i = occlusion_mask(fwd, bwd)[0]
    occ_next = occlusion_mask(bwd, fwd)[0]
    covered = torch.zeros(height, width)
    covered[4:8, 8:11] = 1  # background of frame i under the square in frame i+1
    uncovered = torch.zeros(height, width)
    uncovered[4:8, 4:7] = 1  # background of frame i+1 where the square was
    torch.testing.assert_close(occ_i, covered)
    torch.testing.assert_close(occ_next, uncovered)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="differ in shape"):
        consistency_mask(torch.zeros(1, 4, 4, 2), torch.zeros(2, 4, 4, 2))
