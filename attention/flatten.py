"""FLATTEN's attention, as pure tensor functions.

A FLATTEN self-attention layer is "Combination II" of the paper: first a spatio-temporal
attention over the frames of each cond/uncond chunk produces ``H`` (before ``to_out``), then
flow-guided attention mixes ``H`` along patch trajectories: each token attends to the tokens
of its own trajectory (itself and at most one token in each other frame), with ``q = k = v =
H`` split into the layer's heads (or q, k from the layer's own projections, ``old_qk``).

Layout follows ComfyUI's attention replace patches: ``[G*F, N, heads*dim_head]``, group-major
(G cond/uncond chunks of F frames, N tokens per frame). Token ``j`` of a chunk is
``frame_position * N + cell``.

- :func:`trajectory_groups` turns the trajectory ids of the call's cells into index tables,
  one per trajectory length ``L`` (``[T_L, L]``), so the flow step is a gather of exactly
  ``F*N`` tokens and a softmax over ``L`` entries, chunked: never the official
  ``(2F, HW, F, C)`` padded gather.
- :func:`trajectory_attention` is the flow step.
- :func:`anchor_positions`, :func:`anchor_sets` and :func:`bounded_attention` are the
  memory-bounded replacement of the dense part: each frame attends to a fixed set of anchor
  frames plus its neighbours, so cost grows linearly with the frame count.

One official edge case is deliberately not copied. yrcong/flatten stores, per token, [self,
spatial-window neighbours, trajectory members padded to the longest trajectory] and keeps
``[self] + the last F − 1`` slots as keys. That slice is the token's trajectory only while some
trajectory spans all F frames; when none does (fast pans, occlusions, long clips) the padding
is shorter than F − 1 and the slice reaches back into the spatial-neighbour slots, so tokens
also attend to neighbouring cells of their own frame (on a 12×12, 6-frame test 600 of 864
tokens, outputs up to 1.13 away from in-trajectory attention). The paper describes attention
along trajectories only, so here a token always attends to exactly its trajectory's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .extended import AttnFn, sdpa_attention, split_groups

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # elements of one gathered q/k/v chunk (32 MB in fp16)


def trajectory_groups(traj_ids: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Tokens of each trajectory, bucketed by how many tokens the trajectory has in the call.

    Args:
        traj_ids: ``[Fc, N]`` int trajectory id of every cell of the call's frames (rows in
            call order; a window of a clip keeps only the trajectories' cells in it).

    Returns:
        ``[(L, idx)]`` with ``idx`` ``[T_L, L]`` int64: the token indices (``row * N + cell``)
        of the ``T_L`` trajectories that have ``L`` tokens. Every token appears exactly once.
    """
    ids = traj_ids.reshape(-1)
    order = torch.argsort(ids, stable=True)
    _, counts = torch.unique_consecutive(ids[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    groups = []
    for length in torch.unique(counts).tolist():
        first = starts[counts == length]
        idx = order[first[:, None] + torch.arange(length, device=ids.device)]
        groups.append((int(length), idx))
    return groups


def _heads_of(x: torch.Tensor, tokens: torch.Tensor, length: int, heads: int) -> torch.Tensor:
    """Gather ``[G, M, C]`` at ``tokens`` (``T*L``) → ``[G*T, heads, L, d]``."""
    g, _, c = x.shape
    return (
        x[:, tokens]
        .reshape(g, -1, length, heads, c // heads)
        .permute(0, 1, 3, 2, 4)
        .reshape(-1, heads, length, c // heads)
    )


def trajectory_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups_by_length: Sequence[tuple[int, torch.Tensor]],
    heads: int,
    groups: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Attention among the tokens of each trajectory.

    Args:
        q, k, v: ``[G*Fc, N, heads*d]`` (FLATTEN: all three are ``H``, or q/k the layer's
            projections with ``old_qk``).
        groups_by_length: :func:`trajectory_groups` of the call's cells (same device as v).
        heads: attention heads; scale ``1/sqrt(d)``.
        groups: G, the cond/uncond chunks (each attends within itself).
        chunk_elements: bound on the elements of one gathered q/k/v chunk.

    Returns:
        ``[G*Fc, N, heads*d]``, dtype/device of ``v``: for every token, softmax over the
        tokens of its trajectory of ``q·k/sqrt(d)``, applied to their ``v``.
    """
    b, n, c = v.shape
    qf, kf, vf = (t.reshape(groups, (b // groups) * n, c) for t in (q, k, v))
    out = torch.empty_like(vf)
    for length, idx in groups_by_length:
        if length == 1:  # a softmax over one entry: the token's own value
            own = idx[:, 0]
            out[:, own] = vf[:, own]
            continue
        per_chunk = max(1, chunk_elements // (groups * length * c))
        for chunk in idx.split(per_chunk):
            tokens = chunk.reshape(-1)
            qh = _heads_of(qf, tokens, length, heads)
            kh = qh if k is q else _heads_of(kf, tokens, length, heads)
            vh = qh if v is q else _heads_of(vf, tokens, length, heads)
            o = F.scaled_dot_product_attention(qh, kh, vh)  # [G*T, heads, L, d]
            out[:, tokens] = (
                o.reshape(groups, -1, heads, length, c // heads).permute(0, 1, 3, 2, 4).reshape(groups, -1, c)
            )
    return out.reshape(b, n, c)


def anchor_positions(frames: torch.Tensor, stride: int, max_anchors: int = 0) -> torch.Tensor:
    """Positions (in the call) of the anchor frames of the bounded mode.

    Anchors are the frames whose global index is a multiple of ``stride``; when there are more
    than ``max_anchors`` (> 0) of them, that many evenly spread ones, so the anchor count
    (hence the cost per frame) does not grow with the clip. A call without any (a context
    window between anchors) uses its first frame.

    Args:
        frames: ``[Fc]`` global frame indices of the call.
    """
    positions = (frames % max(int(stride), 1) == 0).nonzero(as_tuple=True)[0]
    if len(positions) == 0:
        return torch.zeros(1, dtype=torch.long)
    if 0 < max_anchors < len(positions):
        pick = torch.linspace(0, len(positions) - 1, max_anchors).round().long()
        positions = positions[pick]
    return positions


def anchor_sets(count: int, anchors: torch.Tensor, radius: int = 1) -> list[torch.Tensor]:
    """Key frames (positions) of each of ``count`` query frames: the anchors plus the frame
    and its neighbours within ``radius`` positions, sorted, without repeats."""
    sets = []
    anchors = anchors.cpu()
    for i in range(count):
        near = torch.arange(max(0, i - radius), min(count, i + radius + 1))
        sets.append(torch.unique(torch.cat([anchors, near])))
    return sets


def bounded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    groups: int,
    frame_sets: Sequence[torch.Tensor],
    attn_fn: AttnFn = sdpa_attention,
    chunk_elements: int = 1 << 26,
) -> torch.Tensor:
    """Each frame's queries attend to the keys/values of its own set of frames (same chunk).

    Args:
        q, k, v: ``[G*F, N, C]``.
        frame_sets: ``F`` int tensors, the frame positions frame ``i`` attends to.
        attn_fn: kernel with ``optimized_attention(q, k, v, heads)``'s signature.
        chunk_elements: bound on the elements of one gathered key (or value) chunk; frames
            with equally many keys are batched up to it, and never beyond the size of ``k``
            itself, so the temporary memory stays proportional to the frame count.

    Returns:
        ``[G*F, N, C]``. With every set = all frames this is dense spatio-temporal attention
        (``extended_attention`` with all frames as keyframes).
    """
    qg, kg, vg = split_groups(q, groups), split_groups(k, groups), split_groups(v, groups)
    g, f, n, c = qg.shape
    if len(frame_sets) != f:
        raise ValueError(f"bounded_attention: {len(frame_sets)} frame sets for {f} frames")
    out = torch.empty_like(qg)
    sizes = torch.tensor([len(s) for s in frame_sets])
    for size in torch.unique(sizes).tolist():
        members = (sizes == size).nonzero(as_tuple=True)[0]
        table = torch.stack([frame_sets[i] for i in members.tolist()]).to(q.device)  # [m, size]
        members = members.to(q.device)
        per_chunk = max(1, min(chunk_elements, kg.numel()) // (g * size * n * c))
        for rows, sets in zip(members.split(per_chunk), table.split(per_chunk)):
            m = len(rows)
            qq = qg[:, rows].reshape(g * m, n, c)
            kk = kg[:, sets].reshape(g * m, size * n, c)
            vv = vg[:, sets].reshape(g * m, size * n, c)
            out[:, rows] = attn_fn(qq, kk, vv, heads).reshape(g, m, n, c)
    return out.reshape(g * f, n, c)
