"""FLATTEN as attn1 replace patches (duck-typed on ComfyUI's ``extra_options``; no ComfyUI
imports), for any sampler, during inversion and sampling alike.

Every self-attention layer gets a :class:`FlattenAttention`:

1. PnP q/k injection (:func:`.pnp.pnp_qk`; a no-op unless a ``PnPWrapper`` runs the call);
2. the spatio-temporal part over the frames of each cond/uncond chunk: ``dense`` (every frame
   attends to all frames of its chunk, the paper) or ``bounded`` (anchor frames plus the
   frame's neighbours, :func:`.flatten.bounded_attention`);
3. at the chosen resolutions, the flow step along the trajectories of the call's frames
   (:func:`.flatten.trajectory_attention`), q = k = v = H (``old_qk``: q, k of the layer).

The result is H' before ``to_out``, which ComfyUI applies next. Frames are identified by
their global index (:func:`.frames.call_frame_indices`), so split cond/uncond batches,
core context windows and AnimateDiff ``sub_idxs`` select the right trajectory rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..flow.trajectories import TrajectorySet, latent_grid_sizes
from .extended import extended_attention, sdpa_attention
from .flatten import (
    DEFAULT_CHUNK_ELEMENTS,
    anchor_positions,
    anchor_sets,
    bounded_attention,
    trajectory_attention,
    trajectory_groups,
)
from .frames import call_frame_indices, frame_window, groups_of
from .keys import FRAME_TOTAL_KEY, LATENT_INPUT_KEY
from .patching import kernel_from
from .pnp import pnp_qk
from .unet_blocks import BlockKey, unet_sections

MODES = ("dense", "bounded")


@dataclass(frozen=True)
class FlattenConfig:
    mode: str = "dense"  # "dense" (paper) or "bounded"
    old_qk: bool = False  # flow step with the layer's q/k instead of H
    anchor_stride: int = 4  # bounded: every k-th frame is an anchor
    max_anchors: int = 4  # bounded: at most this many anchors, spread evenly (0 = no limit)
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: '{self.mode}' is not one of {MODES}")
        if self.anchor_stride < 1:
            raise ValueError(f"anchor_stride must be >= 1, got {self.anchor_stride}")
        if self.max_anchors < 0:
            raise ValueError(f"max_anchors must be >= 0 (0 = no limit), got {self.max_anchors}")


def attention_levels(diffusion_model: torch.nn.Module) -> dict[BlockKey, int]:
    """Resolution level (0 = the latent, 1 = one ``Downsample`` deeper, ...) of every
    self-attention layer, from the UNet's structure (``Downsample``/``Upsample`` layers)."""
    levels: dict[BlockKey, int] = {}
    level = 0
    for name, block_id, block in unet_sections(diffusion_model):
        for layer in block:
            kind = type(layer).__name__
            blocks = getattr(layer, "transformer_blocks", None)
            if blocks is not None:
                levels.update({(name, block_id, j): level for j in range(len(blocks))})
            elif kind == "Downsample":
                level += 1
            elif kind == "Upsample":
                level -= 1
    return levels


def token_grid(extra_options: dict, tokens: int) -> tuple[int, int]:
    """``(h, w)`` of the layer's token grid (``activations_shape``, else from the UNet input)."""
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) >= 4 and int(shape[-2]) * int(shape[-1]) == tokens:
        return int(shape[-2]), int(shape[-1])
    original = extra_options.get("original_shape")
    if original is not None and len(original) >= 4:
        for size in latent_grid_sizes(int(original[-2]), int(original[-1]), 8):
            if size[0] * size[1] == tokens:
                return size
    raise ValueError(
        f"FLATTEN: cannot tell the token grid of a self-attention layer with {tokens} tokens "
        "(no activations_shape / original_shape in the attention options)"
    )


def check_call(trajectories: TrajectorySet, extra_options: dict, frames: torch.Tensor) -> None:
    """Raise a ValueError naming both shapes when the call's latent is not the one the
    trajectories were sampled for (frame count or latent size)."""
    want = f"the trajectories were sampled for {trajectories.describe()}"
    fix = (
        "Sample the trajectories (VideoEdit Sample Trajectories) from the flow of this video, with the latent "
        "being sampled."
    )
    original = extra_options.get("original_shape")
    size = (int(original[-2]), int(original[-1])) if original is not None and len(original) >= 4 else None
    window = frame_window(extra_options)
    total = getattr(window, "total_frames", 0) if window is not None else len(frames)
    total = int(extra_options.get(FRAME_TOTAL_KEY) or total)
    name = extra_options.get(LATENT_INPUT_KEY, "latent_image")
    if (size is not None and size != trajectories.latent_size) or (total and total != trajectories.frames):
        got = f"{total or '?'} frames at latent {size[0]}x{size[1]}" if size else f"{total} frames"
        chunked = (
            " (A node that runs the UNet on chunks of the frames without passing their indices, e.g. DDIM "
            "Inversion with frame_batch_size below the frame count, also gives this.)"
            if window is None and total < trajectories.frames
            else ""
        )
        raise ValueError(f"{name} (FLATTEN): {want}, but the latent being sampled has {got}. {fix}{chunked}")
    if len(frames) and int(frames.max()) >= trajectories.frames:
        raise ValueError(f"{name} (FLATTEN): {want}, but a context window holds frame {int(frames.max())}. {fix}")


class FlattenRuntime:
    """State shared by the patches of one model clone: the trajectories, the config, the
    attention kernel, and per-call token tables (cached by grid, frames and device).
    Shared, not copied, when ComfyUI deep-copies model options."""

    MAX_CACHED = 64

    def __init__(self, trajectories: TrajectorySet, config: FlattenConfig, attn_fn: Callable = sdpa_attention):
        self.trajectories = trajectories
        self.config = config
        self.attn_fn = attn_fn
        self._groups: dict = {}
        self._sets: dict = {}

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        t = self.trajectories
        return f"flatten({self.config}, {t.describe()}, seed={t.seed}, trajectories={t.content_digest[:16]})"

    def groups(self, size: tuple[int, int], frames: torch.Tensor, device: torch.device):
        """:func:`trajectory_groups` of the call's frames at grid ``size``, on ``device``."""
        key = (size, tuple(frames.tolist()), str(device))
        if key not in self._groups:
            if len(self._groups) >= self.MAX_CACHED:
                self._groups.clear()
            ids = self.trajectories.at(size).traj_id[frames.cpu()].reshape(len(frames), -1)
            self._groups[key] = [(length, idx.to(device)) for length, idx in trajectory_groups(ids)]
        return self._groups[key]

    def frame_sets(self, frames: torch.Tensor) -> list[torch.Tensor] | None:
        """Bounded mode: the key frames of each query frame (None when that is every frame)."""
        key = tuple(frames.tolist())
        if key not in self._sets:
            if len(self._sets) >= self.MAX_CACHED:
                self._sets.clear()
            cfg = self.config
            sets = anchor_sets(len(frames), anchor_positions(frames.cpu(), cfg.anchor_stride, cfg.max_anchors))
            self._sets[key] = None if all(len(s) == len(frames) for s in sets) else sets
        return self._sets[key]


class FlattenAttention:
    """attn1 replace patch ``(q, k, v, extra_options) -> H'`` for one self-attention layer;
    q/k/v ``[G*F, N, heads*dim_head]``."""

    def __init__(self, runtime: FlattenRuntime, key: BlockKey, flow_step: bool, previous: Callable | None = None):
        self.runtime = runtime
        self.key = key
        self.flow_step = flow_step
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return f"{self.runtime.cache_key()}@{self.key}:{int(self.flow_step)}"

    def __call__(self, q, k, v, extra_options):
        rt, cfg = self.runtime, self.runtime.config
        q, k = pnp_qk(q, k, extra_options)
        heads = extra_options["n_heads"]
        groups = groups_of(extra_options, q.shape[0])
        frames = call_frame_indices(extra_options, q.shape[0] // groups)
        check_call(rt.trajectories, extra_options, frames)
        size = token_grid(extra_options, q.shape[1])
        kernel = kernel_from(self.previous, extra_options, rt.attn_fn)

        sets = rt.frame_sets(frames) if cfg.mode == "bounded" else None
        if sets is None:
            hidden = extended_attention(q, k, v, heads, groups, None, attn_fn=kernel)
        else:
            hidden = bounded_attention(q, k, v, heads, groups, sets, attn_fn=kernel)
        if not self.flow_step:
            return hidden
        tables = rt.groups(size, frames, hidden.device)
        if cfg.old_qk:
            return trajectory_attention(q, k, hidden, tables, heads, groups, cfg.chunk_elements)
        return trajectory_attention(hidden, hidden, hidden, tables, heads, groups, cfg.chunk_elements)
