"""Which video frames a UNet call is looking at.

A sampler may hand the UNet the whole clip, or a window of it (the pack's own chunked passes
set ``transformer_options["ve_frame_indices"]``): ComfyUI core's context
windows put the window in ``transformer_options["context_window"]`` (``index_list``; newer
versions may prepend a causal anchor frame), AnimateDiff-Evolved puts
``transformer_options["ad_params"]["sub_idxs"]``. Per-frame state (trajectories, cached
source latents, keyframes) must be indexed by these global indices, never by batch position.
"""

from __future__ import annotations

import torch

from .keys import FRAME_INDICES_KEY


def frame_window(transformer_options: dict):
    """The windowing information a UNet call carries, or None (the whole clip):
    the pack's own index list, ComfyUI core's ``context_window`` object, or AnimateDiff's
    ``ad_params`` dict, looked up in that order (the one reader of these keys)."""
    if transformer_options.get(FRAME_INDICES_KEY) is not None:
        return list(transformer_options[FRAME_INDICES_KEY])
    window = transformer_options.get("context_window")
    if window is not None and getattr(window, "index_list", None) is not None:
        return window
    ad = transformer_options.get("ad_params") or {}
    return ad if ad.get("sub_idxs") is not None else None


def call_frame_indices(transformer_options: dict, frames_in_call: int) -> torch.Tensor:
    """Global frame indices (int64 ``[frames_in_call]``) of the frames in this UNet call.

    Raises ValueError when the windowing information does not match the batch.
    """
    window = frame_window(transformer_options)
    if window is None:
        return torch.arange(frames_in_call)
    if isinstance(window, list):
        indices = window
    elif isinstance(window, dict):
        indices = list(window["sub_idxs"])
    else:
        indices = list(window.index_list)
        anchor = getattr(window, "causal_anchor_index", None)
        if anchor is not None and anchor != -1 and len(indices) + 1 == frames_in_call:
            indices = [int(anchor)] + indices  # newer core prepends the anchor frame
    if len(indices) != frames_in_call:
        raise ValueError(f"context window lists {len(indices)} frames but the UNet call holds {frames_in_call}")
    return torch.as_tensor(indices, dtype=torch.long)


def groups_of(extra_options: dict, batch: int) -> int:
    """Number of cond/uncond chunks in the batch (``cond_or_uncond`` has one entry each)."""
    groups = len(extra_options.get("cond_or_uncond") or [0])
    if batch % groups:
        raise ValueError(f"batch {batch} is not a multiple of {groups} cond/uncond chunks")
    return groups
