"""TokenFlow's propagation, as tensor functions (no ComfyUI objects).

At each denoising step a random keyframe is drawn in every window of ``window`` frames; the
keyframes are denoised jointly with extended attention and each self-attention layer's
keyframe outputs ``T_base`` are kept. Every frame then takes, instead of its own
self-attention output, a blend of ``T_base`` rows of two keyframes, picked by the nearest
neighbour (cosine) of each of its *source* tokens among the keyframes' source tokens:

    out_i = w_i * T_base[a_i][nn_a(i)] + (1 - w_i) * T_base[b_i][nn_b(i)]

Two weightings (``blend_plan``): ``official`` (the released code: own window's keyframe and
the previous window's, w = sigmoid(d_prev / (d_own + d_prev)) of distances to the window
centres, so w ∈ [0.62, 0.73]; window 0 uses its own keyframe only) and ``paper`` (the nearest
keyframes before and after the frame, w linear in the distance; a keyframe takes itself).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_keyframes(n_frames: int, window: int, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random frame inside each consecutive window of ``window`` frames (the
    last window may be shorter). Returns int64 ``[ceil(n_frames / window)]``, ascending."""
    if n_frames < 1 or window < 1:
        raise ValueError(f"need n_frames >= 1 and window >= 1, got {n_frames}, {window}")
    starts = torch.arange(0, n_frames, window)
    sizes = torch.clamp(n_frames - starts, max=window)
    offsets = (torch.rand(len(starts), generator=generator) * sizes).long().clamp(max=sizes - 1)
    return starts + offsets


def blend_plan(frames: torch.Tensor, keyframes: torch.Tensor, window: int, mode: str = "official"):
    """Which two keyframes each frame blends from, and the weight of the first.

    Args:
        frames: int64 ``[M]`` frame indices (in the whole video).
        keyframes: int64 ``[K]`` keyframe indices, one per window, ascending.
        window: the window (TokenFlow ``batch_size``) the keyframes were drawn in.
        mode: ``"official"`` or ``"paper"`` (see module docstring).

    Returns:
        slots ``[M, 2]`` int64 indices into ``keyframes``, weights ``[M]`` float32: the weight
        of ``slots[:, 0]``; ``slots[:, 1]`` gets ``1 - w`` (equal slots when w == 1).
    """
    frames = frames.long()
    if mode == "official":
        own = frames // window
        prev = (own - 1).clamp(min=0)
        half = window // 2
        d_own = (frames - (own * window + half)).abs().float()
        d_prev = (frames - ((own - 1) * window + half)).abs().float()
        w = torch.sigmoid(d_prev / (d_own + d_prev))
        w = torch.where(own == 0, torch.ones_like(w), w)
        return torch.stack([own, prev], dim=1), w
    if mode == "paper":
        kf = keyframes.long()
        # index of the last keyframe <= frame, and of the first keyframe >= frame
        before = torch.searchsorted(kf, frames, right=True) - 1
        after = torch.searchsorted(kf, frames, right=False)
        has_before, has_after = before >= 0, after < len(kf)
        before_c, after_c = before.clamp(min=0), after.clamp(max=len(kf) - 1)
        span = (kf[after_c] - kf[before_c]).float()
        w_after = torch.where(span > 0, (frames - kf[before_c]).float() / span.clamp(min=1), torch.ones_like(span))
        both = has_before & has_after
        slots = torch.where(
            both[:, None],
            torch.stack([after_c, before_c], 1),
            torch.where(has_after[:, None], torch.stack([after_c, after_c], 1), torch.stack([before_c, before_c], 1)),
        )
        w = torch.where(both, w_after, torch.ones_like(w_after))
        return slots, w
    raise ValueError(f"unknown blend mode {mode!r}: use 'official' or 'paper'")


def nearest_neighbours(query: torch.Tensor, keys: torch.Tensor, chunk_tokens: int = 4096) -> torch.Tensor:
    """Cosine nearest neighbour of every query token among ``keys``.

    Args:
        query: ``[M, C]``; keys: ``[Nk, C]``.
        chunk_tokens: query rows per matmul, so memory is O(chunk_tokens * Nk).

    Returns:
        int64 ``[M]`` indices into ``keys``.
    """
    k = F.normalize(keys, dim=-1)
    out = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    for start in range(0, query.shape[0], chunk_tokens):
        q = F.normalize(query[start : start + chunk_tokens], dim=-1)
        out[start : start + chunk_tokens] = (q @ k.transpose(0, 1)).argmax(dim=-1)
    return out


def nn_fields(
    frame_feats: torch.Tensor, kf_feats: torch.Tensor, slots: torch.Tensor, chunk_tokens: int = 4096
) -> torch.Tensor:
    """Nearest-neighbour fields of each frame onto its two blend keyframes.

    Args:
        frame_feats: ``[M, N, C]`` source features of M frames (N tokens each).
        kf_feats: ``[K, Nk, C]`` source features of the keyframes.
        slots: ``[M, 2]`` keyframe slots per frame (from ``blend_plan``).

    Returns:
        int64 ``[M, 2, N]``: for each frame and slot, the token index in that keyframe.
        Memory is O(chunk_tokens * Nk), never O((M*N)^2).
    """
    m, n, _ = frame_feats.shape
    out = torch.empty(m, 2, n, dtype=torch.long, device=frame_feats.device)
    for s in torch.unique(slots).tolist():
        rows, cols = (slots == s).nonzero(as_tuple=True)
        frames_needing = torch.unique(rows)
        q = frame_feats[frames_needing].reshape(-1, frame_feats.shape[-1])
        idx = nearest_neighbours(q, kf_feats[s], chunk_tokens).reshape(len(frames_needing), n)
        lookup = {int(f): i for i, f in enumerate(frames_needing.tolist())}
        for r, c in zip(rows.tolist(), cols.tolist()):
            out[r, c] = idx[lookup[r]]
    return out


def propagate(t_base: torch.Tensor, fields: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Blend keyframe outputs along the NN fields.

    Args:
        t_base: ``[G, K, Nk, C]`` keyframe self-attention outputs per group (cond/uncond/source).
        fields: ``[M, 2, N]`` token indices (from ``nn_fields``).
        slots: ``[M, 2]`` keyframe slots; weights: ``[M]`` weight of slot 0.

    Returns:
        ``[G, M, N, C]``: w * T[slot0][field0] + (1 - w) * T[slot1][field1].
    """
    g, _, nk, c = t_base.shape
    m, _, n = fields.shape
    flat = t_base.reshape(g, -1, c)  # [G, K*Nk, C]: index = slot * Nk + token, no per-frame copies
    w = weights.to(t_base.dtype).view(1, m, 1, 1)
    out = None
    for j, wj in ((0, w), (1, 1 - w)):
        index = (slots[:, j].view(m, 1) * nk + fields[:, j]).reshape(1, m * n, 1).expand(g, m * n, c)
        part = torch.gather(flat, 1, index).reshape(g, m, n, c) * wj
        out = part if out is None else out + part
    return out


def official_weight_range(window: int) -> tuple[float, float]:
    """Min and max of the official weight over frames of windows after the first."""
    frames = torch.arange(window, 2 * window)
    _, w = blend_plan(frames, torch.arange(0, 2 * window, window), window, "official")
    return float(w.min()), float(w.max())


def expected_cost_ratio(window: int) -> float:
    """UNet work per step relative to plain CFG sampling (two branches): source, uncond and
    cond for the keyframes (3/window) and for every frame (3) over plain's 2 — attention
    of the propagation pass is skipped, so this is an upper bound."""
    return (3 + 3 / window) / 2 if window > 0 else math.inf
