"""The per-frame plot of a :class:`~.quality.QualityReport`, drawn with matplotlib's Agg canvas
(no pyplot, no global backend switch, no display needed)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from .quality import QualityReport

EDIT_COLOUR, SOURCE_COLOUR = "#d62728", "#1f77b4"


def _axis_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35")
    ax.set_yticks([])


def plot_report(report: QualityReport, width_px: int = 720, height_px: int = 640, dpi: int = 100) -> torch.Tensor:
    """Three stacked panels over the frame index: warp error of the edit and of the source
    (pairs i → i+1 plotted at i + ½), SSIM of luminance and edges (and inside / outside the mask),
    CLIP frame consistency and text alignment (or why they were skipped).

    Returns:
        an IMAGE ``[1, height_px, width_px, 3]`` float32 in 0..1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    frames = np.arange(report.frames)
    pairs = frames[:-1] + 0.5

    ax = axes[0]
    ax.plot(pairs, report.warp_edit.numpy() * 1e3, "-o", ms=3, color=EDIT_COLOUR, label="edit")
    ax.plot(pairs, report.warp_source.numpy() * 1e3, "--", color=SOURCE_COLOUR, label="source (floor)")
    ax.set_ylabel("warp error ↓\nMSE ×10⁻³")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)

    ax = axes[1]
    ax.plot(frames, report.ssim_luma.numpy(), "-o", ms=3, color="#2ca02c", label="luminance")
    ax.plot(frames, report.ssim_edges.numpy(), "-o", ms=3, color="#9467bd", label="edges")
    if report.ssim_inside is not None and report.ssim_outside is not None:
        ax.plot(frames, report.ssim_inside[0].numpy(), ":", color="#2ca02c", label="luminance in mask")
        ax.plot(frames, report.ssim_outside[0].numpy(), "-.", color="#2ca02c", label="luminance outside")
    ax.set_ylabel("SSIM to\nsource ↑")
    ax.set_ylim(min(0.0, float(np.nanmin(report.ssim_edges.numpy())) - 0.05), 1.02)
    ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.8)

    ax = axes[2]
    if report.clip_consistency is not None:
        ax.plot(pairs, report.clip_consistency.numpy(), "-o", ms=3, color=EDIT_COLOUR, label="consistency, edit")
        ax.plot(pairs, report.clip_consistency_source.numpy(), "--", color=SOURCE_COLOUR, label="consistency, source")
        if report.clip_text is not None:
            ax.plot(frames, report.clip_text.numpy(), "-s", ms=3, color="#ff7f0e", label="text alignment, edit")
        ax.set_ylabel("CLIP\ncosine ↑")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    else:
        why = [textwrap.fill(f"{k}: {v}", 80) for k, v in report.skipped.items() if k.startswith("CLIP")]
        _axis_note(ax, "\n".join(["CLIP scores skipped", *why]))
        ax.set_ylabel("CLIP")
    ax.set_xlabel("frame")
    ax.set_xlim(-0.3, max(report.frames - 0.7, 0.7))
    for a in axes:
        a.grid(alpha=0.3)
    title = "Edit quality" + (f" — {report.label}" if report.label else "")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0)[None]
