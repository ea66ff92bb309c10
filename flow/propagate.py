"""Keyframes → every frame: each in-between frame gets its two neighbouring rendered keyframes
warped along the chained optical flow, blended per pixel by temporal distance and by how
reliable each warp is (forward–backward occlusion along the chain, and the photometric error
of the *source* keyframe warped the same way), with the keyframes' colour statistics kept.

This is the training-free, dependency-free stand-in for EbSynth in Rerender-A-Video's full-video
stage (``shared/reference/methods.md`` §4.3): it warps pixels instead of synthesising patches, so
it cannot invent content that neither keyframe shows (such pixels take the less unreliable
side), but it is vectorised torch and runs at tens of frames per second at 512² on a CPU.

Speed: flows are chained and masks/weights computed on an analysis grid (``analysis_scale`` of
the frame, whose pixels sit on the frame's corner-aligned lattice so that a bilinear upsample of
the sampling grid is exact for the identity part); only the two keyframe warps, the blend and
the colour transform run at full resolution, a chunk of frames at a time.

Flows follow ``flow/__init__``: forward[i] = frame i → i+1 on frame i's grid, backward[i] =
frame i+1 → i on frame i+1's grid, pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .warp import warp_backward

BLEND_MODES = ("moments", "histogram", "linear")
COLOUR_SPACES = ("ycbcr", "lab")

# ITU-R BT.601 RGB → YCbCr (offsets dropped: only the linear part matters for moment matching)
_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def chain_flow(
    forward: torch.Tensor, backward: torch.Tensor, start: int, end: int, padding_mode: str = "border"
) -> torch.Tensor:
    """Flow from frame ``start`` to frame ``end`` (on ``start``'s grid) composed from adjacent flows.

    ``f_{s→e}(p) = f_{s→s±1}(p) + f_{s±1→e}(p + f_{s→s±1}(p))``, evaluated as a running sum in
    which the flow still to go is sampled at the position reached so far (one bilinear sample of
    each adjacent flow, no resampling of images). Errors of the adjacent flows add up along the
    chain; where a direct estimate between the two frames is available it is usually better.

    Args:
        forward: ``[F-1, H, W, 2]`` forward flows; backward: ``[F-1, H, W, 2]`` backward flows.
        start, end: frame indices (``start == end`` gives a zero flow).
        padding_mode: how flows are read past the border (``warp_backward``).

    Returns:
        ``[1, H, W, 2]``, device/dtype of ``forward``.
    """
    count = forward.shape[0] + 1
    if not (0 <= start < count and 0 <= end < count):
        raise ValueError(f"chain_flow: frames {start} → {end} outside a clip of {count} frames")
    total = torch.zeros_like(forward[:1])
    step = 1 if end > start else -1
    for frame in range(start, end, step):
        adjacent = forward[frame : frame + 1] if step > 0 else backward[frame - 1 : frame]
        if frame == start:
            total = adjacent.clone()
        else:
            total = total + warp_backward(adjacent.permute(0, 3, 1, 2), total, padding_mode).permute(0, 2, 3, 1)
    return total


def neighbouring_keys(frame_count: int, key_indices: Sequence[int]) -> tuple[list[int | None], list[int | None]]:
    """For every frame, the nearest keyframe at or before it and at or after it (None if none)."""
    keys = sorted(key_indices)
    before: list[int | None] = []
    after: list[int | None] = []
    for t in range(frame_count):
        le = [k for k in keys if k <= t]
        ge = [k for k in keys if k >= t]
        before.append(le[-1] if le else None)
        after.append(ge[0] if ge else None)
    return before, after


def _analysis_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(2, round(height * scale)), max(2, round(width * scale))


def _lattice_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sample ``[B, H, W, 2]`` flows at the analysis lattice (corner-aligned) with vectors in
    analysis pixels: lattice pixel j sits at frame position ``j·(W−1)/(w−1)``."""
    _, height, width, _ = flow.shape
    h, w = size
    if (h, w) == (height, width):
        return flow.float()
    sampled = F.interpolate(flow.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=True)
    scale = torch.tensor([(w - 1) / (width - 1), (h - 1) / (height - 1)], device=flow.device)
    return sampled.permute(0, 2, 3, 1) * scale


def _lattice_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]`` → analysis lattice, smoothed first so the samples are not aliased."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    return F.interpolate(image.float(), size=size, mode="bilinear", align_corners=True, antialias=True)


class _Lattice:
    """Backward warping on the analysis lattice with ``grid_sample`` and a cached base grid.

    Same maths as ``warp.warp_backward(..., "border")`` and ``consistency.occlusion_mask(...,
    squared=False)`` (the unit tests check both), without rebuilding the pixel mesh on every
    call, which dominates at these sizes on a CPU.
    """

    def __init__(self, size: tuple[int, int], device, dtype=torch.float32):
        h, w = size
        self.size = size
        ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
        self.base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, h, w, 2] (x, y)
        self.scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], device=device, dtype=dtype)

    def warp(self, field: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """``out[p] = field[p + flow[p]]``: field ``[n, C, h, w]``, flow ``[n, h, w, 2]`` (lattice px)."""
        grid = self.base + flow * self.scale
        return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def outside(self, flow: torch.Tensor) -> torch.Tensor:
        """``[n, 1, h, w]`` 1 where ``p + flow[p]`` leaves the frame."""
        grid = self.base + flow * self.scale
        return (grid.abs() > 1.0 + 1e-6).any(dim=-1, keepdim=True).permute(0, 3, 1, 2).float()

    def occlusion(self, flow: torch.Tensor, reverse: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        """Forward–backward check (GMFlow/Rerender criterion) plus out-of-frame → ``[n, 1, h, w]``."""
        r_hat = self.warp(reverse.permute(0, 3, 1, 2), flow).permute(0, 2, 3, 1)
        err = (flow + r_hat).square().sum(-1).sqrt()
        bound = alpha * (flow.square().sum(-1).sqrt() + r_hat.square().sum(-1).sqrt()) + beta
        return torch.maximum((err > bound).float()[:, None], self.outside(flow))


def _chains(lattice: _Lattice, flows: torch.Tensor, occlusions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running compositions for frames moving away from a keyframe, one step at a time.

    ``flows[i]``/``occlusions[i]`` are the adjacent flow and occlusion of the i-th frame away
    from the keyframe towards the frame before it in the chain (``[n, h, w, 2]`` /
    ``[n, 1, h, w]``). Returns the composed flows ``[n, h, w, 2]`` (to the keyframe) and the
    accumulated occlusions ``[n, 1, h, w]`` (occluded at any step).
    """
    chained, occluded = [], []
    for i in range(flows.shape[0]):
        step, occ = flows[i : i + 1], occlusions[i : i + 1]
        if i == 0:
            chained.append(step)
            occluded.append(occ)
            continue
        carried = lattice.warp(torch.cat([chained[-1].permute(0, 3, 1, 2), occluded[-1]], dim=1), step)
        chained.append(step + carried[:, :2].permute(0, 2, 3, 1))
        occluded.append(torch.maximum(occ, carried[:, 2:]))
    return torch.cat(chained), torch.cat(occluded)


def _reliability(
    lattice: _Lattice,
    key_source_lo: torch.Tensor,
    frames_lo: torch.Tensor,
    chained: torch.Tensor,
    occluded: torch.Tensor,
    error_scale: float,
) -> torch.Tensor:
    """Per-pixel confidence in 0..1 of a keyframe warped onto frames: not occluded along the
    chain (grown by one analysis pixel), inside the keyframe, and photometrically consistent
    (the *source* keyframe warped the same way matches the source frame)."""
    warped = lattice.warp(key_source_lo.expand(chained.shape[0], -1, -1, -1), chained)
    err = (warped - frames_lo).abs().mean(dim=1, keepdim=True)
    bad = torch.maximum(F.max_pool2d(occluded, 3, 1, 1), lattice.outside(chained))
    return (1.0 - bad) * torch.exp(-(err / error_scale).square())


def _sampling_grid(lattice: _Lattice, chained: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised grid ``[n, H, W, 2]`` for ``grid_sample(align_corners=True)`` from lattice
    flows: built on the lattice and upsampled bilinearly (exact for the identity part)."""
    lattice_grid = (lattice.base + chained * lattice.scale).permute(0, 3, 1, 2)
    return F.interpolate(lattice_grid, size=size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


def _ycbcr(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t = _YCBCR.to(device=device, dtype=dtype)
    return t, torch.linalg.inv(t)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame, per-channel mean and std of ``[n, 3, P]``."""
    var, mean = torch.var_mean(x, dim=2, correction=0)
    return mean, var.sqrt()


def _match_affine(blended_s: torch.Tensor, reference_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB affine map ``x ↦ M x + c`` that gives ``blended``'s YCbCr moments those of ``reference``
    (per frame; samples ``[n, 3, P]``). YCbCr is linear in RGB, so the per-channel moment match
    there is one 3×3 matrix in RGB."""
    t, t_inv = _ycbcr(blended_s.device, blended_s.dtype)
    mean_b, std_b = _moments(torch.einsum("ij,njp->nip", t, blended_s))
    mean_r, std_r = _moments(torch.einsum("ij,njp->nip", t, reference_s))
    gain = torch.where(std_b > 1e-4, std_r / std_b.clamp_min(1e-4), torch.ones_like(std_b)).clamp(0.25, 4.0)
    matrix = t_inv @ torch.diag_embed(gain) @ t  # [n, 3, 3]
    offset = torch.einsum("ij,nj->ni", t_inv, mean_r - gain * mean_b)
    return matrix, offset


def _apply_affine_hwc(image: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]`` → ``[n, H, W, 3]`` with ``M x + c`` applied, clamped to 0..1."""
    n, _, height, width = image.shape
    out = torch.bmm(matrix, image.reshape(n, 3, -1)) + offset[..., None]
    return out.view(n, 3, height, width).permute(0, 2, 3, 1).clamp_(0.0, 1.0)


def _lab_match_hwc(blended: torch.Tensor, reference_s: torch.Tensor, blended_s: torch.Tensor) -> torch.Tensor:
    """CIELAB per-channel moment match (the official histogram transform's colour space); slow."""
    from kornia.color import lab_to_rgb, rgb_to_lab

    def lab_samples(s):
        return rgb_to_lab(s.clamp(0, 1)[..., None]).squeeze(-1)

    mean_b, std_b = _moments(lab_samples(blended_s))
    mean_r, std_r = _moments(lab_samples(reference_s))
    gain = torch.where(std_b > 1e-3, std_r / std_b.clamp_min(1e-3), torch.ones_like(std_b)).clamp(0.25, 4.0)
    lab = rgb_to_lab(blended.clamp(0, 1))
    lab = (lab - mean_b[..., None, None]) * gain[..., None, None] + mean_r[..., None, None]
    return lab_to_rgb(lab).permute(0, 2, 3, 1).clamp_(0.0, 1.0)


def propagate_keyframes(
    frames: torch.Tensor,
    keyframes: torch.Tensor,
    key_indices: Sequence[int],
    forward: torch.Tensor,
    backward: torch.Tensor,
    analysis_scale: float = 0.5,
    error_scale: float = 0.1,
    blend: str = "moments",
    colour_space: str = "ycbcr",
    chunk: int = 8,
    alpha: float = 0.01,
    beta: float = 0.5,
    on_frames: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Fill every frame of a clip from its rendered keyframes.

    For an in-between frame t with keyframes a < t < b: ``A`` = keyframe a warped along the
    chained backward flow t → a, ``B`` = keyframe b along the chained forward flow t → b;
    weights ``w_a = (b − t)/(b − a)·(c_a + ε)``, ``w_b = (t − a)/(b − a)·(c_b + ε)`` with
    confidences ``c`` = (not occluded along the chain, forward–backward check with α, β, the
    GMFlow/Rerender criterion) × ``exp(−(e/error_scale)²)``, ``e`` = mean |source keyframe warped
    the same way − source frame|. Frames before the first / after the last keyframe take the one
    keyframe they have. Keyframes are returned unchanged.

    Colour (``blend``):

    - ``"moments"`` (default): per-pixel linear blend, then the frame's per-channel mean/std
      (in ``colour_space``) matched to those of the lower-error selection (the image that takes,
      per pixel, the side with the larger weight) — the final step of Rerender's histogram blend;
      restores the contrast a blend of slightly misaligned warps loses;
    - ``"histogram"``: histogram-preserving blend (Heitz & Neyret: ``μ + Σ w_i (I_i − μ_i) /
      sqrt(Σ w_i²)``, per pixel) followed by the same moment match;
    - ``"linear"``: the per-pixel blend only.

    ``colour_space``: ``"ycbcr"`` (linear in RGB, so the match is one 3×3 matrix: fast) or
    ``"lab"`` (CIELAB as the official code; about 0.1 s more per 512² frame on a CPU).

    Args:
        frames: ``[F, H, W, C]`` source frames 0..1 (C ≥ 3; RGB used).
        keyframes: ``[K, H, W, C]`` rendered keyframes 0..1, in the order of ``key_indices``.
        key_indices: K distinct frame indices.
        forward, backward: ``[F-1, H, W, 2]`` adjacent flows of the *source* frames.
        analysis_scale: resolution (fraction of H, W) of flow chaining, masks and weights.
        error_scale: photometric error (0..1 units) at which a warp's weight falls to e⁻¹.
        chunk: frames per full-resolution batch (memory ≈ chunk × 40 bytes × H × W).
        alpha, beta: forward–backward consistency tolerances.
        on_frames: called with the number of frames finished (progress/interruption).

    Returns:
        ``[F, H, W, 3]`` float32 in 0..1 on ``frames``' device.
    """
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if colour_space not in COLOUR_SPACES:
        raise ValueError(f"colour_space must be one of {COLOUR_SPACES}, got {colour_space!r}")
    count, height, width = frames.shape[:3]
    keys = [int(k) for k in key_indices]
    if len(keys) != keyframes.shape[0] or len(set(keys)) != len(keys):
        raise ValueError(f"{keyframes.shape[0]} keyframes but key indices {keys} (need one distinct index each)")
    if any(k < 0 or k >= count for k in keys):
        raise ValueError(f"key indices {keys} outside a clip of {count} frames")
    if tuple(keyframes.shape[1:3]) != (height, width):
        raise ValueError(f"keyframes {tuple(keyframes.shape)} and frames {tuple(frames.shape)} differ in size")
    if count > 1 and (forward.shape != (count - 1, height, width, 2) or backward.shape != forward.shape):
        raise ValueError(
            f"flows {tuple(forward.shape)}/{tuple(backward.shape)} do not match {count} frames of {height}×{width}"
        )

    device = frames.device
    key_of = dict(zip(keys, range(len(keys))))
    key_rgb = keyframes[..., :3].to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
    out = torch.empty(count, height, width, 3, device=device, dtype=torch.float32)
    for k, i in key_of.items():
        out[k] = keyframes[i, ..., :3].to(out)
    if count == len(keys):
        return out

    size = _analysis_size(height, width, analysis_scale)
    frames_lo = _lattice_image(frames[..., :3].permute(0, 3, 1, 2), size)
    fwd_lo, bwd_lo = _lattice_flow(forward, size), _lattice_flow(backward, size)
    lattice = _Lattice(size, device)
    occ_fwd = lattice.occlusion(fwd_lo, bwd_lo, alpha, beta)  # pixels of frame i without a match in i+1
    occ_bwd = lattice.occlusion(bwd_lo, fwd_lo, alpha, beta)  # pixels of frame i+1 without a match in i

    before, after = neighbouring_keys(count, keys)
    spans: dict[tuple[int | None, int | None], list[int]] = {}
    for t in range(count):
        if t not in key_of:
            spans.setdefault((before[t], after[t]), []).append(t)

    eps = 1e-3
    for (a, b), members in spans.items():
        side = {}
        if a is not None:  # chain t → a along backward flows, t = a+1, a+2, ...
            chained, occluded = _chains(
                lattice, bwd_lo[members[0] - 1 : members[-1]], occ_bwd[members[0] - 1 : members[-1]]
            )
            conf = _reliability(lattice, frames_lo[a : a + 1], frames_lo[members], chained, occluded, error_scale)
            side["a"] = (chained, conf)
        if b is not None:  # chain t → b along forward flows, t = b-1, b-2, ...
            rev = members[::-1]
            chained, occluded = _chains(lattice, fwd_lo[rev], occ_fwd[rev])
            conf = _reliability(lattice, frames_lo[b : b + 1], frames_lo[rev], chained, occluded, error_scale)
            side["b"] = (chained.flip(0), conf.flip(0))
        if a is not None and b is not None:
            t = torch.tensor(members, device=device, dtype=torch.float32).view(-1, 1, 1, 1)
            w_a = (b - t) / (b - a) * (side["a"][1] + eps)
            w_b = (t - a) / (b - a) * (side["b"][1] + eps)
            weight_a = w_a / (w_a + w_b)
        for start in range(0, len(members), chunk):
            sel = slice(start, start + chunk)
            idx = members[sel]
            if b is None or a is None:
                key, chained = (a, side["a"][0]) if b is None else (b, side["b"][0])
                grid = _sampling_grid(lattice, chained[sel], (height, width))
                warped = F.grid_sample(
                    key_rgb[key_of[key]][None].expand(len(idx), -1, -1, -1),
                    grid,
                    mode="bilinear",
                    padding_mode="border",
                    align_corners=True,
                )
                out[idx] = warped.permute(0, 2, 3, 1).clamp_(0.0, 1.0)
            else:
                grids = [_sampling_grid(lattice, side[s][0][sel], (height, width)) for s in ("a", "b")]
                out[idx] = _blend_chunk(
                    key_rgb[key_of[a]], key_rgb[key_of[b]], *grids, weight_a[sel], (height, width), blend, colour_space
                )
            if on_frames is not None:
                on_frames(len(idx))
    return out


def _blend_chunk(
    key_a: torch.Tensor,
    key_b: torch.Tensor,
    grid_a: torch.Tensor,
    grid_b: torch.Tensor,
    weight_a_lo: torch.Tensor,
    size: tuple[int, int],
    blend: str,
    colour_space: str,
) -> torch.Tensor:
    """Warp both keyframes (``[3, H, W]``) onto a chunk of frames and blend → ``[n, H, W, 3]``."""
    n = grid_a.shape[0]
    warped_a = F.grid_sample(
        key_a[None].expand(n, -1, -1, -1), grid_a, mode="bilinear", padding_mode="border", align_corners=True
    )
    warped_b = F.grid_sample(
        key_b[None].expand(n, -1, -1, -1), grid_b, mode="bilinear", padding_mode="border", align_corners=True
    )
    weight = F.interpolate(weight_a_lo, size=size, mode="bilinear", align_corners=True)
    if blend == "histogram":
        mean_a = warped_a.mean(dim=(2, 3), keepdim=True)
        mean_b = warped_b.mean(dim=(2, 3), keepdim=True)
        norm = torch.rsqrt(weight.square() + (1.0 - weight).square())
        blended = torch.lerp(mean_b, mean_a, weight) + (torch.lerp(warped_b - mean_b, warped_a - mean_a, weight) * norm)
    else:
        blended = torch.lerp(warped_b, warped_a, weight)
    if blend == "linear":
        return blended.permute(0, 2, 3, 1).clamp_(0.0, 1.0)
    # moment statistics on a strided subsample: the match is global per frame
    stride = max(1, min(size) // 128)
    sub = (slice(None), slice(None), slice(None, None, stride), slice(None, None, stride))
    reference_s = torch.where(weight[sub] >= 0.5, warped_a[sub], warped_b[sub]).flatten(2)
    blended_s = blended[sub].flatten(2)
    if colour_space == "lab":
        return _lab_match_hwc(blended, reference_s, blended_s)
    matrix, offset = _match_affine(blended_s, reference_s)
    return _apply_affine_hwc(blended, matrix, offset)
