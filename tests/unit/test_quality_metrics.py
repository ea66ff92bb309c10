"""Edit-quality metrics (media/quality.py) against hand-computed values and kornia."""

import kornia
import pytest
import torch

from comfyui_videoedit.media.quality import (
    ClipEmbeddings,
    check_mask,
    consecutive_cosine,
    edge_magnitude,
    edit_quality,
    luminance,
    warp_errors,
)
from comfyui_videoedit.media.quality_plot import plot_report

STEP = (2, 1)  # content moves 2 px right and 1 px down per frame


def _texture(seed: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8 + 2, width // 8 + 2, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)[0]


def _moving(texture: torch.Tensor, count: int, height: int, width: int) -> torch.Tensor:
    """Frame k = the texture window shifted by -k·STEP, i.e. content moving +STEP per frame:
    frame_{k+1}(p + STEP) = frame_k(p), so the forward flow is STEP everywhere."""
    dx, dy = STEP
    x0, y0 = dx * count, dy * count
    return (
        torch.stack(
            [texture[:, y0 - k * dy : y0 - k * dy + height, x0 - k * dx : x0 - k * dx + width] for k in range(count)]
        )
        .permute(0, 2, 3, 1)
        .contiguous()
    )


def _clip_pair(count=6, height=40, width=48):
    big = (height + 2 * count, width + 3 * count)
    source = _moving(_texture(0, *big), count, height, width)
    style = _texture(1, *big)
    edited = _moving(1.0 - style.square(), count, height, width)  # another picture, the same motion
    forward = torch.tensor(STEP, dtype=torch.float32).expand(count - 1, height, width, 2).contiguous()
    return source, edited, forward, -forward


def test_an_exactly_flow_warped_edit_has_zero_warp_error_away_from_occlusions():
    source, edited, forward, backward = _clip_pair()
    # content entering the last frame (left and top strips) has no match in the frame before:
    # garbage there must not count
    edited[-1, :, : STEP[0]] = torch.rand(edited.shape[1], STEP[0], 3)
    edited[-1, : STEP[1]] = torch.rand(STEP[1], edited.shape[2], 3)
    report = edit_quality(source, edited, forward, backward)
    assert report.warp_edit.shape == (5,)
    assert report.warp_edit.abs().max() < 1e-10
    assert report.warp_source.abs().max() < 1e-10
    # the pixels whose match leaves the frame (right 2 columns, bottom row) were left out
    h, w = source.shape[1:3]
    expected_cover = (h - STEP[1]) * (w - STEP[0]) / (h * w)
    assert torch.allclose(report.coverage, torch.full((5,), expected_cover, dtype=torch.float64), atol=1e-9)


def test_per_frame_jitter_raises_warp_error_by_the_squared_step_of_the_jitter():
    source, edited, forward, backward = _clip_pair()
    jitter = torch.tensor([0.0, 0.05, -0.03, 0.02, 0.02, -0.04])
    shaken = edited + jitter.view(-1, 1, 1, 1)  # brightness flicker, one offset per frame
    report = edit_quality(source, shaken, forward, backward)
    expected = (jitter[:-1] - jitter[1:]).double().square()  # (c_i - c_{i+1})², every channel alike
    assert torch.allclose(report.warp_edit, expected, rtol=1e-4, atol=1e-9)
    assert report.warp_source.abs().max() < 1e-10  # the floor does not move
    assert report.headline()["warp_error"] == pytest.approx(float(expected.mean()), rel=1e-4)


def test_warp_error_reads_the_source_flow_not_the_edit_motion():
    source, edited, forward, backward = _clip_pair()
    frozen = edited[:1].expand_as(edited).contiguous()  # the edit ignores the motion
    (err,) = warp_errors([frozen], forward, torch.ones(forward.shape[:3]))
    assert (err > 1e-4).all()


def test_ssim_equals_kornia_on_written_out_frames():
    source, edited, forward, backward = _clip_pair()
    noisy = edited * 0.5 + source * 0.5 + 0.05 * torch.randn(edited.shape, generator=torch.Generator().manual_seed(3))
    noisy = noisy.clamp(0, 1)
    mask = torch.zeros(source.shape[:3])
    mask[:, 10:30, 5:25] = 1.0
    report = edit_quality(source, noisy, forward, backward, mask=mask)

    def gray(frames):  # Rec. 601 luma written out, [F,1,H,W]
        r, g, b = frames.permute(3, 0, 1, 2)
        return (0.299 * r + 0.587 * g + 0.114 * b)[:, None]

    luma_map = kornia.metrics.ssim(gray(source), gray(noisy), 11)
    edge_map = kornia.metrics.ssim(kornia.filters.sobel(gray(source)), kornia.filters.sobel(gray(noisy)), 11)
    assert torch.allclose(report.ssim_luma, luma_map.mean(dim=(1, 2, 3)).double(), atol=1e-5)
    assert torch.allclose(report.ssim_edges, edge_map.mean(dim=(1, 2, 3)).double(), atol=1e-5)
    m = mask[:, None]
    inside = (luma_map * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))
    outside = (edge_map * (1 - m)).sum(dim=(1, 2, 3)) / (1 - m).sum(dim=(1, 2, 3))
    assert torch.allclose(report.ssim_inside[0], inside.double(), atol=1e-5)
    assert torch.allclose(report.ssim_outside[1], outside.double(), atol=1e-5)
    assert report.headline()["ssim_luma"] < 0.99


def test_identical_clips_score_ssim_one_and_edges_match_kornia_sobel():
    source, _, forward, backward = _clip_pair()
    report = edit_quality(source, source.clone(), forward, backward)
    assert torch.allclose(report.ssim_luma, torch.ones(6, dtype=torch.float64), atol=1e-4)
    gray = luminance(source)
    assert torch.allclose(edge_magnitude(gray), kornia.filters.sobel(gray[:, None])[:, 0], atol=1e-6)


def test_without_flows_dis_runs_on_the_source_and_the_note_says_so():
    source, edited, _, _ = _clip_pair(count=4, height=64, width=64)
    report = edit_quality(source, edited, flow_scale=1.0)
    assert "DIS" in report.flow_note
    # DIS is close to exact on this smooth translation: both errors are tiny and alike
    assert report.headline()["warp_error_source"] < 2e-3
    assert report.headline()["warp_error"] < 2e-3


def test_consecutive_cosine_matches_a_loop():
    e = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    loop = [float(e[i] @ e[i + 1] / (e[i].norm() * e[i + 1].norm())) for i in range(4)]
    assert consecutive_cosine(e).tolist() == pytest.approx(loop, abs=1e-6)


def test_report_names_skipped_metrics_and_the_plot_is_an_image():
    source, edited, forward, backward = _clip_pair()
    clip = ClipEmbeddings(skipped={"CLIP frame consistency": "no clip_vision connected"})
    report = edit_quality(source, edited, forward, backward, clip=clip, label="TokenFlow")
    text = report.text()
    assert "TokenFlow" in text and "CLIP frame consistency: skipped — no clip_vision connected" in text
    plot = plot_report(report)
    assert plot.shape == (1, 640, 720, 3) and plot.dtype == torch.float32
    assert 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0 and float(plot.std()) > 0.01


def test_masks_are_broadcast_and_resized_or_refused():
    assert check_mask(torch.ones(8, 8), 3, 16, 16).shape == (3, 16, 16)
    assert check_mask(torch.ones(3, 16, 16), 3, 16, 16).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="mask"):
        check_mask(torch.ones(2, 16, 16), 3, 16, 16)


def test_chunked_report_equals_whole_clip_computation_and_counts_its_steps():
    from comfyui_videoedit.media.quality import masked_mean, progress_steps, reliable_pixels, ssim_maps

    source, edited, forward, backward = _clip_pair(count=11, height=24, width=32)  # > one chunk of 8
    edited = (edited + 0.02 * torch.randn(edited.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    mask = (torch.rand(11, 24, 32, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    steps = []
    report = edit_quality(source, edited, forward, backward, mask=mask, on_step=lambda: steps.append(1))
    assert len(steps) == progress_steps(11, flows_given=True) == 2 + 2

    weight = reliable_pixels(forward, backward)
    whole = warp_errors([edited, source], forward, weight, chunk=100)
    assert torch.allclose(report.warp_edit, whole[0]) and torch.allclose(report.warp_source, whole[1])
    luma_map = ssim_maps(luminance(source), luminance(edited))
    assert torch.allclose(report.ssim_luma, masked_mean(luma_map))
    assert torch.allclose(report.ssim_inside[0], masked_mean(luma_map, mask), equal_nan=True)

    steps.clear()
    edit_quality(source, edited, on_step=lambda: steps.append(1))
    assert len(steps) == progress_steps(11, flows_given=False) == 3 + 2 + 2
