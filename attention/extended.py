"""Extended (keyframe) self-attention: queries of every frame attend to the keys/values of a
set of keyframes, concatenated, within one cond/uncond group.

Layout follows ComfyUI's attention replace patches: q, k, v are ``[B, N, heads*dim_head]``
after ``to_q/to_k/to_v`` with ``B = groups * frames`` (group-major: all frames of group 0,
then group 1, ...). The kernel is any ``attn_fn(q, k, v, heads) -> out`` with ComfyUI's
``optimized_attention`` signature (default: ``sdpa_attention`` below, PyTorch SDPA), so the
softmax over ``n_kf * N`` keys is never materialised: memory per query chunk stays
O(chunk * n_kf * N) at most, and O(chunk * N) with a flash/memory-efficient kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on ``[B, Nq, h*d]`` / ``[B, Nk, h*d]`` tensors → ``[B, Nq, h*d]``."""
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, nq, inner)


def split_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[G*F, N, C]`` → ``[G, F, N, C]`` (batch is group-major, as ComfyUI concatenates chunks)."""
    if x.shape[0] % groups:
        raise ValueError(f"batch of {x.shape[0]} does not split into {groups} cond/uncond groups")
    return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def extended_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    groups: int,
    keyframes: Sequence[int] | torch.Tensor | None = None,
    kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    attn_fn: AttnFn = sdpa_attention,
    query_chunk_frames: int = 0,
    score_budget_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Every frame's queries attend to the keys/values of the keyframes of its own group.

    Args:
        q, k, v: ``[G*F, N, h*d]`` (G groups of F frames, N tokens per frame).
        heads: number of attention heads.
        groups: G, the number of cond/uncond chunks in the batch.
        keyframes: indices (0..F-1) of the frames whose k/v are shared; ``None`` = all frames.
        kv: optional precomputed keyframe keys/values ``([G, n_kf*N, h*d], [G, n_kf*N, h*d])``
            (e.g. from a keyframe pass); overrides ``keyframes``.
        attn_fn: attention kernel with ComfyUI's ``optimized_attention(q, k, v, heads)`` signature.
        query_chunk_frames: process queries this many frames at a time (0 = automatic: as many
            frames as keep a materialised score matrix under ``score_budget_bytes``, since
            some kernels — ComfyUI's CPU paths among them — do materialise it).

    Returns:
        ``[G*F, N, h*d]``. With one keyframe equal to the frame itself this is ordinary
        self-attention of that frame.
    """
    qg = split_groups(q, groups)  # [G, F, N, C]
    g, f, n, c = qg.shape
    if kv is None:
        kg, vg = split_groups(k, groups), split_groups(v, groups)
        if keyframes is not None:
            idx = torch.as_tensor(keyframes, device=q.device, dtype=torch.long)
            kg, vg = kg[:, idx], vg[:, idx]
        k_cat = kg.reshape(g, -1, kg.shape[-1])
        v_cat = vg.reshape(g, -1, vg.shape[-1])
    else:
        k_cat, v_cat = kv
    if query_chunk_frames > 0:
        step = query_chunk_frames
    else:
        scores_per_frame = n * k_cat.shape[1] * heads * q.element_size()
        step = max(1, min(f, score_budget_bytes // max(scores_per_frame, 1)))
    outs = []
    for start in range(0, f, step):
        q_chunk = qg[:, start : start + step].reshape(g, -1, c)  # [G, chunk*N, C]
        outs.append(attn_fn(q_chunk, k_cat, v_cat, heads).reshape(g, -1, n, c))
    return torch.cat(outs, dim=1).reshape(g * f, n, c)


def keyframe_kv(k: torch.Tensor, v: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the keys/values of all frames of each group: ``[G*K, N, C]`` → ``[G, K*N, C]``."""
    kg, vg = split_groups(k, groups), split_groups(v, groups)
    return kg.reshape(kg.shape[0], -1, kg.shape[-1]), vg.reshape(vg.shape[0], -1, vg.shape[-1])
