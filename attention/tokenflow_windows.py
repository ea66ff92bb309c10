"""TokenFlow's keyframes when the sampler hands the UNet a window of the clip (ComfyUI core's
context windows, AnimateDiff-Evolved's ``sub_idxs``).

TokenFlow draws one keyframe in every ``window`` frames of the *clip* at each step. Under
context windows the keyframes stay those of the whole clip: they are drawn over the clip's
frame count (the same draw as without windows, so overlapping context windows agree on which
frames are keyframes), each context window attends among the keyframes it holds, and a frame
whose blend keyframe lies outside its context window blends from the nearest keyframe inside
it. A context window that holds no keyframe of the clip draws its own (TokenFlow's rule on
the window), so attention stays defined. Without a window the result is exactly TokenFlow's.
"""

from __future__ import annotations

import torch

from .tokenflow import blend_plan, sample_keyframes


def keyframes_for_call(
    frames: torch.Tensor, total_frames: int, window: int, blend: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keyframes and blend plan for the frames of one UNet call.

    Args:
        frames: int64 ``[M]`` absolute frame indices of the call (ascending or wrapped).
        total_frames: frames in the clip (``>= frames.max() + 1``).
        window: TokenFlow's window (one keyframe per ``window`` frames of the clip).
        blend: ``"official"`` or ``"paper"`` (see :func:`.tokenflow.blend_plan`).
        generator: the step's generator (consumed exactly as without windows).

    Returns:
        ``kf_pos`` int64 ``[K]`` positions (within the call) of the keyframes, ``slots`` int64
        ``[M, 2]`` indices into ``kf_pos``, ``weights`` float32 ``[M]`` (of ``slots[:, 0]``).

    >>> g = torch.Generator().manual_seed(0)
    >>> kf, slots, w = keyframes_for_call(torch.arange(4), 4, 2, "paper", g)
    >>> kf.shape, slots.shape
    (torch.Size([2]), torch.Size([4, 2]))
    """
    frames = frames.long()
    m = len(frames)
    total = max(int(total_frames), int(frames.max()) + 1)
    if total == m and torch.equal(frames, torch.arange(m)):  # the whole clip: TokenFlow as published
        kf_pos = sample_keyframes(m, window, generator)
        slots, weights = blend_plan(frames, kf_pos, window, blend)
        return kf_pos, slots, weights
    clip_kf = sample_keyframes(total, window, generator)
    inside = torch.isin(clip_kf, frames)
    if not inside.any():  # no keyframe of the clip here: draw within the window
        kf_pos = sample_keyframes(m, window, generator)
        slots, weights = blend_plan(torch.arange(m), kf_pos, window, blend)
        return kf_pos, slots, weights
    held = clip_kf[inside]  # [K] the clip's keyframes this call holds, ascending
    kf_pos = torch.stack([(frames == f).nonzero()[0, 0] for f in held])
    clip_slots, weights = blend_plan(frames, clip_kf, window, blend)
    nearest = (clip_kf[:, None] - held[None, :]).abs().argmin(dim=1)  # clip keyframe -> held keyframe
    return kf_pos, nearest[clip_slots], weights
