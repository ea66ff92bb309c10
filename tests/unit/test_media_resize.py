"""Output-size computation (aspect ratio, rounding to a multiple) and per-frame resizing."""

import random

import numpy as np
import pytest

from comfyui_videoedit.media.resize import resize_frame, target_size


def nearest_multiple_reference(value: float, multiple: int) -> int:
    """Scan the multiples; the closest wins, ties go to the larger one; at least one multiple."""
    best = multiple
    for k in range(1, int(value / multiple) + 3):
        candidate = k * multiple
        if abs(candidate - value) < abs(best - value) or (
            abs(candidate - value) == abs(best - value) and candidate > best
        ):
            best = candidate
    return best


def size_reference(src_w, src_h, custom_w, custom_h, multiple):
    w = custom_w if custom_w else (src_w * custom_h / src_h if custom_h else src_w)
    h = custom_h if custom_h else (src_h * custom_w / src_w if custom_w else src_h)
    return nearest_multiple_reference(w, multiple), nearest_multiple_reference(h, multiple)


@pytest.mark.parametrize(
    "source, custom, multiple, expected",
    [
        ((1920, 1080), (0, 0), 8, (1920, 1080)),  # already aligned: unchanged
        ((1920, 1080), (512, 0), 8, (512, 288)),  # height follows the aspect ratio
        ((1920, 1080), (0, 512), 8, (912, 512)),  # 910.2 → 912
        ((1366, 768), (0, 0), 8, (1368, 768)),  # 1366 → nearest multiple of 8
        ((640, 360), (0, 300), 64, (512, 320)),  # 533.3 → 512, 300 → 320
        ((100, 100), (12, 20), 8, (16, 24)),  # halves round up: 12 → 16, 20 → 24
        ((1000, 10), (64, 0), 8, (64, 8)),  # a derived side never drops below one multiple
        ((97, 65), (0, 0), 1, (97, 65)),  # multiple 1 keeps exact sizes
    ],
)
def test_target_size_examples(source, custom, multiple, expected):
    assert target_size(*source, *custom, multiple) == expected


def test_target_size_matches_reference_on_random_cases():
    rng = random.Random(0)
    for _ in range(500):
        src = (rng.randint(16, 4000), rng.randint(16, 4000))
        multiple = rng.choice([1, 2, 8, 16, 64])
        custom = [rng.choice([0, rng.randint(multiple, 2048)]) for _ in range(2)]
        assert target_size(*src, *custom, multiple) == size_reference(*src, *custom, multiple), (src, custom, multiple)


@pytest.mark.parametrize("src", [(1280, 720), (720, 1280), (333, 1000)])
def test_one_custom_side_keeps_the_aspect_ratio(src):
    width, height = target_size(*src, 640, 0, 1)
    assert width == 640 and abs(width / height - src[0] / src[1]) < 1.0 / height + 1e-9


@pytest.mark.parametrize(
    "custom, multiple, match",
    [
        ((4, 0), 8, r"custom_width=4 is smaller than size_multiple=8.*at least 8"),
        ((0, 30), 64, r"custom_height=30 is smaller than size_multiple=64"),
        ((-8, 0), 8, r"custom_width must be 0"),
        ((0, 0), 0, r"size_multiple must be at least 1"),
    ],
)
def test_unreachable_sizes_raise_naming_the_input(custom, multiple, match):
    with pytest.raises(ValueError, match=match):
        target_size(640, 480, *custom, multiple)


def test_resize_keeps_same_size_frame_untouched():
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert resize_frame(frame, (32, 24)) is frame


def test_shrinking_averages_areas():
    """Halving with area filtering = the mean of each 2x2 block (no aliasing of fine detail)."""
    frame = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = resize_frame(frame, (12, 8))
    block_means = frame.reshape(8, 2, 12, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.shape == (8, 12, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - block_means).max() <= 1.0


def test_a_fine_checkerboard_shrinks_to_grey_not_to_stripes():
    y, x = np.mgrid[0:60, 0:60]
    frame = np.repeat((((x + y) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = resize_frame(frame, (20, 20)).astype(np.float64)  # 3x: area filter averages 9 pixels
    assert np.abs(out - 127.5).max() < 30


@pytest.mark.parametrize("size", [(48, 40), (20, 50), (7, 5)])
def test_resize_gives_the_requested_shape_and_keeps_flat_colour(size):
    frame = np.full((30, 40, 3), (200, 40, 90), dtype=np.uint8)
    out = resize_frame(frame, size)
    assert out.shape == (size[1], size[0], 3)
    assert np.abs(out.astype(int) - (200, 40, 90)).max() <= 1
    assert out.flags.c_contiguous
