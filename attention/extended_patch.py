"""``VideoEdit_ApplyExtendedAttention``'s patch: every frame's self-attention attends to the
keys/values of a fixed set of keyframes (Text2Video-Zero / Tune-A-Video-style cross-frame
attention; TokenFlow's keyframe stage when the keyframes are all frames)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .extended import extended_attention, sdpa_attention
from .frames import call_frame_indices, groups_of
from .patching import kernel_from


def keyframes_in_call(frames: torch.Tensor, stride: int, listed: Sequence[int] | None) -> torch.Tensor:
    """Positions (within the call) of the keyframes among ``frames`` (global indices).

    ``listed`` (global indices) wins over ``stride``. A window that holds no keyframe falls
    back to its first frame, so attention stays well defined under context windows.
    """
    if listed:
        wanted = torch.as_tensor(list(listed), dtype=torch.long)
        mask = torch.isin(frames, wanted)
    else:
        mask = frames % max(stride, 1) == 0
    positions = mask.nonzero(as_tuple=True)[0]
    return positions if len(positions) else torch.zeros(1, dtype=torch.long)


class ExtendedAttentionPatch:
    """attn1 replace patch ``(q, k, v, extra_options) -> out``; q/k/v ``[G*F, N, h*d]``."""

    def __init__(
        self,
        stride: int = 1,
        keyframes: Sequence[int] | None = None,
        previous: Callable | None = None,
        attn_fn: Callable = sdpa_attention,
        query_chunk_frames: int = 0,
    ):
        self.stride = stride
        self.keyframes = list(keyframes) if keyframes else None
        self.previous = previous
        self.attn_fn = attn_fn
        self.query_chunk_frames = query_chunk_frames

    def __call__(self, q, k, v, extra_options):
        groups = groups_of(extra_options, q.shape[0])
        frames = call_frame_indices(extra_options, q.shape[0] // groups)
        kf = keyframes_in_call(frames, self.stride, self.keyframes).to(q.device)
        kernel = kernel_from(self.previous, extra_options, self.attn_fn)
        return extended_attention(
            q, k, v, extra_options["n_heads"], groups, kf, attn_fn=kernel, query_chunk_frames=self.query_chunk_frames
        )

    def cache_key(self) -> str:
        return f"extended(stride={self.stride},keyframes={self.keyframes})"
