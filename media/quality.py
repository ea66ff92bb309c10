"""Edit-quality metrics of an edited clip against its source, the numbers the video-editing papers
report (warp error, structure SSIM, CLIP frame consistency and text alignment).

- **Warp error** (temporal consistency along the *source's* motion): for each pair i, frame i+1
  warped onto frame i with the source's forward flow, squared RGB difference averaged over the
  pixels the source's flow reliably links (the pack's forward–backward occlusion mask), in 0..1
  units. The source's own warp error is the floor an edit is read against: the flow is never
  perfect, so even the source does not reach 0.
- **Structure SSIM**: per-frame SSIM (kornia's definition: Gaussian window 11, σ 1.5, reflect
  padding, c1 = 0.01², c2 = 0.03²) of the luminance and of the Sobel edge magnitude of source
  and edit; with a mask, also its mean inside and outside the mask.
- **CLIP** scores from embeddings computed elsewhere (``adapters/quality.py``): cosine of
  consecutive frames' image embeddings, and image–text cosine.

Pure torch / OpenCV, no ComfyUI import. Frames are IMAGE batches ``[F, H, W, 3]`` in 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.filters import get_gaussian_kernel1d

from ..flow.consistency import occlusion_mask
from ..flow.dis import dis_flow
from ..flow.estimate import bidirectional_flow
from ..flow.warp import warp_backward

DEFAULT_FLOW_SCALE = 0.5  # DIS at half size when no flows are given: ≈4× faster, same flow for edit and source
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5  # kornia.metrics.ssim's window: sampled Gaussian, σ 1.5 whatever the size
_CHUNK = 8  # frames (or pairs) per step: bounds the sampling grids and the SSIM maps held at once
_FLOW_BATCH = 4  # frame pairs per DIS call


def progress_steps(frames: int, flows_given: bool) -> int:
    """How many times :func:`edit_quality` calls ``on_step`` for a clip of ``frames`` frames."""
    flow = 0 if flows_given else -(-(frames - 1) // _FLOW_BATCH)
    return flow + -(-(frames - 1) // _CHUNK) + -(-frames // _CHUNK)


def reliable_pixels(forward: torch.Tensor, backward: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """Pixels of frame i that the flow links reliably to frame i+1 (1 - the pack's occlusion
    mask: forward–backward consistent and not leaving the frame).

    Args:
        forward: ``[F-1, H, W, 2]`` frame i → i+1 on frame i's grid.
        backward: ``[F-1, H, W, 2]`` frame i+1 → i on frame i+1's grid.

    Returns:
        ``[F-1, H, W]`` float32, 1 = compared, 0 = occluded / out of frame.

    >>> still = torch.zeros(2, 4, 4, 2)
    >>> reliable_pixels(still, still).mean().item()
    1.0
    """
    if forward.shape != backward.shape or forward.ndim != 4 or forward.shape[-1] != 2:
        raise ValueError(
            f"forward {tuple(forward.shape)} and backward {tuple(backward.shape)} flows must both be [F-1,H,W,2]"
        )
    parts = [
        1.0 - occlusion_mask(forward[i : i + chunk].float(), backward[i : i + chunk].float())
        for i in range(0, forward.shape[0], chunk)
    ]
    return torch.cat(parts)


def warp_errors(
    clips: Sequence[torch.Tensor], forward: torch.Tensor, weight: torch.Tensor, chunk: int = _CHUNK
) -> list[torch.Tensor]:
    """Warp error of each clip along one flow: for pair i,
    ``Σ_p w_i(p) · mean_c (x_i(p) - x_{i+1}(p + f_i(p)))² / Σ_p w_i(p)`` (bilinear sampling).

    All clips are warped in one call per chunk (their channels side by side), so the source
    and its edit cost one sampling grid.

    Args:
        clips: clips ``[F, H, W, C]`` of one size (C may differ between clips).
        forward: ``[F-1, H, W, 2]`` forward flow (frame i → i+1, on frame i's grid).
        weight: ``[F-1, H, W]`` pixels to compare (e.g. :func:`reliable_pixels`).

    Returns:
        one ``[F-1]`` float64 tensor per clip (NaN for a pair with no weight).

    >>> frozen = torch.rand(1, 8, 8, 3).repeat(3, 1, 1, 1)  # a still clip, zero flow
    >>> (err,) = warp_errors([frozen], torch.zeros(2, 8, 8, 2), torch.ones(2, 8, 8))
    >>> [round(e, 6) for e in err.tolist()]
    [0.0, 0.0]
    """
    count = clips[0].shape[0]
    for c in clips:
        if c.shape[:3] != clips[0].shape[:3]:
            raise ValueError(f"clips {[tuple(x.shape) for x in clips]} differ in frames or size")
    if forward.shape != (count - 1, *clips[0].shape[1:3], 2) or weight.shape != forward.shape[:3]:
        raise ValueError(
            f"flow {tuple(forward.shape)} / weight {tuple(weight.shape)} do not fit clips of {tuple(clips[0].shape)}"
        )
    widths = [c.shape[-1] for c in clips]
    sums = [[] for _ in clips]
    for i in range(0, count - 1, chunk):
        j = min(i + chunk, count - 1)
        # frames i..j of every clip, channels side by side: [j - i + 1, ΣC, H, W] (one chunk at a time)
        frames = torch.cat([c[i : j + 1].float() for c in clips], dim=-1).permute(0, 3, 1, 2)
        warped = warp_backward(frames[1:], forward[i:j].float())
        sq = (frames[:-1] - warped).square()
        w = weight[i:j].float()
        total = w.sum(dim=(1, 2)).double()
        for k, part in enumerate(sq.split(widths, dim=1)):
            err = (part.mean(dim=1) * w).sum(dim=(1, 2)).double()
            sums[k].append(torch.where(total > 0, err / total.clamp_min(1e-12), torch.full_like(err, math.nan)))
    return [torch.cat(s) for s in sums]


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of IMAGE frames ``[F, H, W, C]`` (C ≥ 3) → ``[F, H, W]`` float32 (kornia's
    ``rgb_to_grayscale``)."""
    return rgb_to_grayscale(frames[..., :3].float().permute(0, 3, 1, 2))[:, 0].contiguous()


def edge_magnitude(gray: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sobel gradient magnitude, equal to ``kornia.filters.sobel`` (normalised 3×3 Sobel kernels,
    replicated border, ``sqrt(gx² + gy² + eps)``), computed with OpenCV (several times faster on
    CPU than a 1-channel convolution).

    Args:
        gray: ``[F, H, W]`` float.

    Returns:
        ``[F, H, W]`` float32 (0 … ≈0.71 for values in 0..1).

    >>> edge_magnitude(torch.zeros(1, 4, 4)).max().item() < 1e-2
    True
    """
    out = []
    for g in gray.detach().float().cpu().numpy():
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
        out.append(np.sqrt(gx * gx + gy * gy + eps))
    return torch.from_numpy(np.stack(out)).to(gray.device)


def ssim_maps(
    a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW, max_val: float = 1.0, eps: float = 1e-12
) -> torch.Tensor:
    """SSIM maps of single-channel frames, kornia's ``metrics.ssim`` (``padding="same"``) to
    float rounding: the same Gaussian window and formula, the local moments blurred with
    OpenCV's separable filter (reflect-101 border = torch's ``reflect``), about 8× faster on CPU
    than torch's depthwise convolution.

    Args:
        a, b: ``[F, H, W]`` float, same shape, H and W > ``window // 2``.
        window: odd Gaussian window size.
        max_val: data range L (c1 = (0.01 L)², c2 = (0.03 L)²).

    Returns:
        ``[F, H, W]`` float32 in -1..1 (1 = identical).

    >>> x = torch.rand(1, 16, 16)
    >>> round(ssim_maps(x, x).mean().item(), 4)
    1.0
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"SSIM needs two [F,H,W] stacks of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    kernel = get_gaussian_kernel1d(window, SSIM_SIGMA).flatten().double().numpy().astype(np.float32)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(x, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)

    out = []
    for x, y in zip(a.detach().float().cpu().numpy(), b.detach().float().cpu().numpy()):
        mu1, mu2 = blur(x), blur(y)
        mu1_mu2, mu1_sq, mu2_sq = mu1 * mu2, mu1 * mu1, mu2 * mu2
        sigma1_sq = blur(x * x) - mu1_sq
        sigma2_sq = blur(y * y) - mu2_sq
        sigma12 = blur(x * y) - mu1_mu2
        num = (2.0 * mu1_mu2 + c1) * (2.0 * sigma12 + c2)
        den = (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
        out.append(num / (den + eps))
    return torch.from_numpy(np.stack(out)).to(a.device)


def masked_mean(maps: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame weighted mean of ``[F, H, W]`` maps (weight ``[F, H, W]`` or None = plain
    mean) → ``[F]`` float64, NaN where a frame has no weight."""
    if weight is None:
        return maps.double().mean(dim=(1, 2))
    w = weight.double()
    total = w.sum(dim=(1, 2))
    value = (maps.double() * w).sum(dim=(1, 2)) / total.clamp_min(1e-12)
    return torch.where(total > 0, value, torch.full_like(value, math.nan))


def consecutive_cosine(embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of consecutive rows: ``[F, D]`` → ``[F-1]`` float64.

    >>> consecutive_cosine(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])).tolist()
    [1.0, 0.0]
    """
    e = torch.nn.functional.normalize(embeds.double(), dim=-1)
    return (e[:-1] * e[1:]).sum(-1)


def cosine_to(embeds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``[F, D]`` with one ``[D]`` vector → ``[F]`` float64."""
    e = torch.nn.functional.normalize(embeds.double(), dim=-1)
    t = torch.nn.functional.normalize(target.double().flatten(), dim=0)
    return e @ t


@dataclass
class ClipEmbeddings:
    """CLIP inputs of the report, computed by the ComfyUI side (``adapters/quality.py``).
    ``None`` means not computed; the reason is in ``skipped`` (metric name → why)."""

    edited: torch.Tensor | None = None  # [F, D] image embeddings of the edit
    source: torch.Tensor | None = None  # [F, D] image embeddings of the source
    text: torch.Tensor | None = None  # [D] text embedding in the same space
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class QualityReport:
    """Per-frame series and notes of one edit. Pair series have F-1 entries (pair i = frames
    i, i+1), frame series F; NaN where a value is undefined (nothing to compare)."""

    label: str
    frames: int
    height: int
    width: int
    flow_note: str
    warp_edit: torch.Tensor
    warp_source: torch.Tensor
    coverage: torch.Tensor  # fraction of pixels compared per pair
    ssim_luma: torch.Tensor
    ssim_edges: torch.Tensor
    ssim_inside: tuple[torch.Tensor, torch.Tensor] | None = None  # (luma, edges) inside the mask
    ssim_outside: tuple[torch.Tensor, torch.Tensor] | None = None
    clip_consistency: torch.Tensor | None = None
    clip_consistency_source: torch.Tensor | None = None
    clip_text: torch.Tensor | None = None
    clip_text_source: torch.Tensor | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def headline(self) -> dict[str, float]:
        """Clip means (over pairs or frames, NaN entries left out); NaN for a skipped metric."""

        def mean(x: torch.Tensor | None) -> float:
            if x is None:
                return math.nan
            x = x[~torch.isnan(x)]
            return float(x.mean()) if x.numel() else math.nan

        return {
            "warp_error": mean(self.warp_edit),
            "warp_error_source": mean(self.warp_source),
            "ssim_luma": mean(self.ssim_luma),
            "ssim_edges": mean(self.ssim_edges),
            "clip_consistency": mean(self.clip_consistency),
            "clip_text": mean(self.clip_text),
        }

    def text(self) -> str:
        """The human-readable report (what the node shows and outputs)."""
        h = self.headline()
        title = (
            f"Edit quality{' — ' + self.label if self.label else ''}: {self.frames} frames, {self.width}×{self.height}"
        )
        lines = [title]
        # a ratio to a floor of (almost) zero says nothing: only given above 1e-6 (0.001 ×10⁻³)
        ratio = f" ({h['warp_error'] / h['warp_error_source']:.2f}× the floor)" if h["warp_error_source"] > 1e-6 else ""
        cover = float(self.coverage.mean()) * 100 if self.coverage.numel() else math.nan
        lines.append(
            f"warp error (MSE ×10⁻³ along the source's flow, non-occluded pixels; lower = steadier): edit "
            f"{h['warp_error'] * 1e3:.3f}, source floor {h['warp_error_source'] * 1e3:.3f}{ratio}; "
            f"{cover:.0f}% of pixels compared; flow: {self.flow_note}"
        )
        if self.warp_edit.numel() and not torch.isnan(self.warp_edit).all():
            worst = int(torch.nan_to_num(self.warp_edit, nan=-1.0).argmax())
            lines.append(f"  worst pair: frames {worst}→{worst + 1} ({float(self.warp_edit[worst]) * 1e3:.3f})")
        lines.append(
            f"SSIM to the source (1 = structure kept): luminance {h['ssim_luma']:.3f}, edges {h['ssim_edges']:.3f}"
        )
        for name, pair in (("inside the mask", self.ssim_inside), ("outside the mask", self.ssim_outside)):
            if pair is not None:
                luma, edges = (QualityReport._nanmean(x) for x in pair)
                lines.append(f"  {name}: luminance {luma:.3f}, edges {edges:.3f}")
        if self.clip_consistency is not None:
            src = QualityReport._nanmean(self.clip_consistency_source)
            lines.append(
                f"CLIP frame consistency (cosine of consecutive frames): edit {h['clip_consistency']:.4f}, "
                f"source {src:.4f}"
            )
        if self.clip_text is not None:
            src = QualityReport._nanmean(self.clip_text_source)
            lines.append(f"CLIP text alignment (image–prompt cosine): edit {h['clip_text']:.4f}, source {src:.4f}")
        for name, why in self.skipped.items():
            lines.append(f"{name}: skipped — {why}")
        return "\n".join(lines)

    @staticmethod
    def _nanmean(x: torch.Tensor | None) -> float:
        if x is None:
            return math.nan
        x = x[~torch.isnan(x)]
        return float(x.mean()) if x.numel() else math.nan


def check_mask(mask: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """A MASK (``[H, W]``, ``[1, H, W]`` or ``[F, H, W]``, any size) as ``[F, H, W]`` float32 in
    0..1 at the frames' size (bilinear resize, e.g. for a latent-resolution blend mask)."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] not in (1, frames):
        raise ValueError(f"mask: expected [H,W], [1,H,W] or [{frames},H,W] (one per frame), got {tuple(mask.shape)}")
    if m.shape[1:] != (height, width):
        m = torch.nn.functional.interpolate(m[:, None], size=(height, width), mode="bilinear", align_corners=False)[
            :, 0
        ]
    return m.clamp(0, 1).expand(frames, -1, -1)


def edit_quality(
    source: torch.Tensor,
    edited: torch.Tensor,
    forward: torch.Tensor | None = None,
    backward: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    clip: ClipEmbeddings | None = None,
    flow_scale: float = DEFAULT_FLOW_SCALE,
    label: str = "",
    on_step: Callable[[], None] | None = None,
) -> QualityReport:
    """Every metric of an edit against its source (frames and flows already checked to agree).

    Args:
        source, edited: ``[F, H, W, C]`` in 0..1, same shape, F ≥ 2.
        forward, backward: the source's flows ``[F-1, H, W, 2]``; both None = DIS here at
            ``flow_scale`` of the frame size.
        mask: ``[F, H, W]`` in 0..1 (see :func:`check_mask`) or None.
        clip: embeddings for the CLIP scores, or None (skipped).
        on_step: called after each flow batch and chunk of frames (progress, interruption), as
            many times as :func:`progress_steps` says.

    Returns:
        the :class:`QualityReport`.
    """
    step = on_step or (lambda: None)
    count, height, width = source.shape[:3]
    skipped: dict[str, str] = {}
    if forward is None:
        forward, backward = bidirectional_flow(
            source[..., :3], dis_flow, batch_size=_FLOW_BATCH, scale=flow_scale, on_batch=lambda _: step()
        )
        flow_note = f"DIS on the source at scale {flow_scale:g} (no flows given)"
    else:
        flow_note = "given"
    # chunks of frames, reduced to per-frame numbers at once: memory is bounded by the chunk
    warp_edit, warp_source, coverage = [], [], []
    for i in range(0, count - 1, _CHUNK):
        j = min(i + _CHUNK, count - 1)
        weight = reliable_pixels(forward[i:j], backward[i:j])
        errs = warp_errors([edited[i : j + 1, ..., :3], source[i : j + 1, ..., :3]], forward[i:j], weight)
        warp_edit.append(errs[0])
        warp_source.append(errs[1])
        coverage.append(weight.double().mean(dim=(1, 2)))
        step()
    luma, edges, inside, outside = [], [], [], []
    for i in range(0, count, _CHUNK):
        luma_s, luma_e = luminance(source[i : i + _CHUNK]), luminance(edited[i : i + _CHUNK])
        luma_map = ssim_maps(luma_s, luma_e)
        edge_map = ssim_maps(edge_magnitude(luma_s), edge_magnitude(luma_e))
        luma.append(masked_mean(luma_map))
        edges.append(masked_mean(edge_map))
        if mask is not None:
            m = mask[i : i + _CHUNK]
            inside.append((masked_mean(luma_map, m), masked_mean(edge_map, m)))
            outside.append((masked_mean(luma_map, 1.0 - m), masked_mean(edge_map, 1.0 - m)))
        step()
    report = QualityReport(
        label=label,
        frames=count,
        height=height,
        width=width,
        flow_note=flow_note,
        warp_edit=torch.cat(warp_edit),
        warp_source=torch.cat(warp_source),
        coverage=torch.cat(coverage),
        ssim_luma=torch.cat(luma),
        ssim_edges=torch.cat(edges),
        skipped=skipped,
    )
    if mask is not None:
        report.ssim_inside = tuple(torch.cat(parts) for parts in zip(*inside))
        report.ssim_outside = tuple(torch.cat(parts) for parts in zip(*outside))
    clip = clip or ClipEmbeddings(skipped={"CLIP scores": "no CLIP embeddings were given"})
    if clip.edited is not None and clip.source is not None:
        report.clip_consistency = consecutive_cosine(clip.edited)
        report.clip_consistency_source = consecutive_cosine(clip.source)
        if clip.text is not None:
            report.clip_text = cosine_to(clip.edited, clip.text)
            report.clip_text_source = cosine_to(clip.source, clip.text)
    skipped.update(clip.skipped)
    return report
