"""The physical-limit model: the FLOPs each method cannot avoid, from the UNet's own shapes.

Every model is ``fn(shapes, ctx) -> FLOPs of one run of the case`` with ``shapes`` the
:class:`bench.flops.UNetShapes` of one UNet row at the benchmark's latent size. The modelled
ratio of a case is its FLOPs over its baseline's; a method cannot run faster than that ratio
without skipping work its definition asks for (on hardware whose speed is proportional to
FLOPs; attention kernels usually run below the convolutions' FLOP rate, so measured ratios of
attention-heavy methods sit above their model).

Notation (per UNet row = one frame of one chunk): ``U`` the row's FLOPs, ``A`` its
self-attention cores (every layer, a frame attending to itself: 4·N²·inner).
"""

from __future__ import annotations

import math

from .flops import UNetShapes


def _steps(ctx) -> int:
    return int(ctx.steps)


def _frames(ctx) -> int:
    return int(ctx.latent.shape[0])


def plain(shapes: UNetShapes, ctx, rows_per_frame: int = 2, frames: int | None = None) -> float:
    """Plain sampling: ``rows_per_frame`` UNet rows (2 with CFG, 1 with cfg 1) per frame per step."""
    return _steps(ctx) * rows_per_frame * (frames or _frames(ctx)) * shapes.row_flops


def keyframe_attention(shapes: UNetShapes, ctx, keyframes: int, frames: int | None = None) -> float:
    """Extended attention: each of the 2F rows' self-attention reads ``keyframes`` frames' keys
    instead of its own: + (keyframes − 1)·A per row."""
    rows = 2 * (frames or _frames(ctx))
    return _steps(ctx) * rows * (shapes.row_flops + (keyframes - 1) * shapes.self_core_flops)


def extended_attention(shapes, ctx, stride: int = 4) -> float:
    return keyframe_attention(shapes, ctx, len(range(0, _frames(ctx), stride)))


def tokenflow(shapes: UNetShapes, ctx, frames: int | None = None, window: int = 8, cached: bool = False) -> float:
    """TokenFlow per step, as the official code batches it (K = ceil(F / window) keyframes):

    - keyframe pass: K source rows (ordinary attention, U) + 2K edit rows with extended
      attention over the K keyframes (U + (K − 1)·A);
    - propagation passes: F source rows and 2F edit rows whose self-attention core is replaced
      by a gather along the NN fields (U − A), plus the NN fields: each source frame's tokens
      against those of its (1 or 2 distinct) blend keyframes, 2·N²·inner per keyframe and
      layer (A/2 each).
    Plain CFG is 2F·U, so with one keyframe the rows alone give (3K + 3F)/2F = 1.69× at F=8,
    and the skipped attention brings it below that. ``cached``: a second edit served by the
    feature cache: no source rows and no NN fields (2K extended-attention keyframe rows + 2F
    propagated rows: about 1.0x plain CFG)."""
    f = frames or _frames(ctx)
    k = math.ceil(f / window)
    u, a = shapes.row_flops, shapes.self_core_flops
    distinct = 1 if k == 1 else 2
    edit = 2 * k * (u + (k - 1) * a) + 2 * f * (u - a)
    source = k * u + f * (u - a) + f * distinct * a / 2
    return _steps(ctx) * (edit + (0 if cached else source))


def _trajectory_flops(shapes: UNetShapes, frames: int) -> float:
    """The flow step per row, at most: every token of a top-resolution layer attends to at most
    one token per frame of its trajectory (4·N·F·inner)."""
    return sum(4.0 * layer.tokens * frames * layer.inner for layer in shapes.top_layers)


def flatten(shapes: UNetShapes, ctx, mode: str = "dense", frames: int | None = None) -> float:
    """FLATTEN per step: the spatio-temporal part reads the keys of ``|S_i|`` frames for frame
    i (dense: all F; bounded: anchors + neighbours, from the pack's own
    :func:`anchor_sets`), + the flow step at the highest resolution."""
    import torch

    from comfyui_videoedit.attention.flatten import anchor_positions, anchor_sets
    from comfyui_videoedit.attention.flatten_patch import FlattenConfig

    f = frames or _frames(ctx)
    if mode == "dense":
        sizes = [f] * f
    else:
        cfg = FlattenConfig(mode=mode)
        idx = torch.arange(f)
        sizes = [len(s) for s in anchor_sets(f, anchor_positions(idx, cfg.anchor_stride, cfg.max_anchors))]
    u, a = shapes.row_flops, shapes.self_core_flops
    per_step = 2 * sum(u + (size - 1) * a + _trajectory_flops(shapes, f) for size in sizes)
    return _steps(ctx) * per_step


def flatten_pnp(shapes: UNetShapes, ctx, inject: float = 0.8, cached: bool = False) -> float:
    """FLATTEN dense with PnP injection: during the first ``inject`` of the steps a source pass
    (F rows through the same FLATTEN attention) runs before the edit's 2F rows; served by the
    feature cache (``cached``), only the edit rows remain (= FLATTEN dense)."""
    base = flatten(shapes, ctx, mode="dense")
    return base if cached else base * (1 + 0.5 * inject)


def inversion(shapes: UNetShapes, ctx) -> float:
    """DDIM inversion: one cfg-1 UNet call per step (F rows), as plain cfg-1 sampling."""
    return plain(shapes, ctx, rows_per_frame=1)


def p2p(shapes: UNetShapes, ctx) -> float:
    """Video-P2P / Prompt-to-Prompt: the source prompt's cond rows run beside the edit's cond and
    uncond rows (3F rows per step instead of 2F: 1.5×); the attention-map edits are
    element-wise."""
    return plain(shapes, ctx, rows_per_frame=3)
