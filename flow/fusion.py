"""Rerender-A-Video's flow-based fusion maths (Yang et al., SIGGRAPH Asia 2023), tensors only.

- shape-aware latent fusion: warp the anchor's predicted x0 onto the current frame and keep
  it where the flow is reliable (:func:`shape_fusion_mask`, :func:`warp_latent`,
  :func:`shape_fusion`);
- AdaIN of a predicted x0 to a reference's per-channel statistics (:func:`adain`);
- pixel-aware fusion: overlay the warped previous and anchor keyframes on a first-pass render
  (:func:`soft_occlusion`, :func:`pixel_fusion`), the inpainting mask
  (:func:`inpaint_mask`), the fidelity-oriented encoder (:func:`fidelity_encode`) and the
  blended-latent step of the second pass (:func:`blended_latent_step`).

Layouts: images ``[B, C, H, W]`` (values 0..1 unless stated), pixel masks ``[B, 1, H, W]`` or
``[B, H, W]``, latents ``[B, c, h, w]``, flows ``[B, H, W, 2]`` in pixels (``flow/__init__``).
Masks called *occlusion* are 1 where unreliable; masks called *keep* are 1 where the
reference is used. Device and dtype follow the inputs.

Defaults follow the official code (williamyang1991/Rerender_A_Video @dfaf9d8); where the paper
differs the difference is an argument (see ``shared/reference/methods.md`` §4), and so is each
alternative the pack offers (``flow_resize="antialiased"`` in :func:`warp_latent`,
``formula="exact"`` in :func:`adain`), with its measured size in the README ("Differences from
the official code").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from .resize import resize_flow
from .warp import warp_backward

FIDELITY_MODES = ("code", "paper")
# flow → latent grid for the shape-aware fusion: ids → ``flow.resize`` modes
LATENT_FLOW_RESIZE = {"official": "bilinear", "antialiased": "antialiased"}
ADAIN_FORMULAS = ("official", "exact")
OFFICIAL_ADAIN_EPS = 1e-5


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` → float ``[B, 1, H, W]``."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected a mask [B,H,W] or [B,1,H,W], got {tuple(mask.shape)}")
    return mask if mask.is_floating_point() else mask.float()


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary/soft dilation by a ``kernel``×``kernel`` max filter (odd kernel, same size)."""
    if kernel <= 1:
        return mask
    return F.max_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2)


def soft_occlusion(
    occlusion: torch.Tensor, grow: int = 9, blur_kernel: int = 9, blur_sigma: float = 18.0
) -> torch.Tensor:
    """Occlusion grown and feathered: ``clamp(blur(maxpool_grow(occ)) + occ, 0, 1)``.

    The official code's blend mask (9×9 max filter, 9×9 Gaussian with σ = 18, i.e. nearly a
    box filter): 1 inside the occlusion, fading to 0 about ``grow`` pixels outside it.

    Args:
        occlusion: ``[B, H, W]`` or ``[B, 1, H, W]``, 1 = occluded.

    Returns:
        ``[B, 1, H, W]`` in 0..1.
    """
    occ = _as_mask(occlusion)
    grown = dilate(occ, grow)
    if blur_kernel > 1:
        grown = gaussian_blur2d(grown, (blur_kernel, blur_kernel), (blur_sigma, blur_sigma), border_type="reflect")
    return (grown + occ).clamp(0.0, 1.0)


def latent_keep_mask(soft: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Keep mask at latent resolution: ``1 - maxpool(soft)`` over each latent cell.

    A latent cell is kept only if no pixel it covers is (softly) unreliable, i.e. the reliable
    region is eroded by one cell. The official code uses ``max_pool2d(kernel_size=8)``; an
    adaptive pool gives the same cells for sizes that are multiples of the latent size and
    stays defined otherwise.

    Args:
        soft: ``[B, 1, H, W]`` in 0..1 (1 = unreliable).
        latent_size: ``(h, w)``.

    Returns:
        ``[B, 1, h, w]`` in 0..1.
    """
    return 1.0 - F.adaptive_max_pool2d(soft, tuple(int(s) for s in latent_size))


def shape_fusion_mask(occlusion: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Where shape-aware fusion takes the warped anchor x0: the non-occluded region, grown
    occlusion removed, eroded to latent cells (``m`` of the official code).

    Args:
        occlusion: ``[B, H, W]``/``[B, 1, H, W]`` occlusion of the current frame relative to the
            anchor (1 = no reliable match).
        latent_size: ``(h, w)``.

    Returns:
        ``[B, 1, h, w]`` keep mask in 0..1.
    """
    return latent_keep_mask(soft_occlusion(occlusion), latent_size)


def warp_latent(
    latent: torch.Tensor, flow: torch.Tensor, mode: str = "nearest", flow_resize: str = "official"
) -> torch.Tensor:
    """Backward-warp a latent by a pixel-resolution flow: ``out[p] = latent[p + flow_lat[p]]``.

    The flow is resized to the latent grid with its vectors scaled (``resize_flow``):
    ``flow_resize="official"`` samples it bilinearly without antialiasing, as the official
    ``interpolate(flow / 8, scale_factor=1/8, mode="bilinear")`` (each cell reads the 2×2 pixels
    around its centre); ``"antialiased"`` averages the motion of all pixels a cell covers. The
    official code samples the anchor x0 with ``nearest`` (no blur of the latent); ``bilinear``
    is offered too. Samples outside the latent are 0 (the fusion mask excludes them).

    Args:
        latent: ``[B, c, h, w]``.
        flow: ``[B, H, W, 2]`` from the output frame to the latent's frame, on the output
            frame's grid, in pixels (or already ``[B, h, w, 2]`` in latent cells).
        mode: ``"nearest"`` or ``"bilinear"``.
        flow_resize: ``"official"`` or ``"antialiased"`` (:data:`LATENT_FLOW_RESIZE`).

    Returns:
        ``[B, c, h, w]``, dtype of ``latent``.
    """
    if flow_resize not in LATENT_FLOW_RESIZE:
        raise ValueError(f"latent_flow_resize: expected one of {list(LATENT_FLOW_RESIZE)}, got {flow_resize!r}")
    flow_lat = resize_flow(flow.float(), latent.shape[-2:], LATENT_FLOW_RESIZE[flow_resize]).to(latent.device)
    return warp_backward(latent, flow_lat, padding_mode="zeros", mode=mode)


def shape_fusion(x0: torch.Tensor, warped_reference: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x0 ← keep·warped_reference + (1 − keep)·x0`` (paper Eq. 7, code ``update_x0``).

    Args:
        x0: ``[B, c, h, w]`` predicted clean latent of the current frame.
        warped_reference: ``[B, c, h, w]`` the anchor's x0 at the same step, warped.
        keep: ``[B or 1, 1, h, w]`` in 0..1.
    """
    keep = keep.to(device=x0.device, dtype=x0.dtype)
    return torch.lerp(x0, warped_reference.to(x0), keep)


def channel_stats(x: torch.Tensor, correction: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and variance: ``([B, c, 1, 1], [B, c, 1, 1])``, float32.

    ``correction=0`` is the biased (population) variance, ``1`` the unbiased one."""
    flat = x.float().flatten(2)
    var, mean = torch.var_mean(flat, dim=2, correction=correction)
    return mean[..., None, None], var[..., None, None]


def adain(x: torch.Tensor, reference: torch.Tensor, formula: str = "official") -> torch.Tensor:
    """Adaptive instance normalisation: ``x`` normalised per channel, then given the
    reference's per-channel mean and standard deviation.

    - ``formula="official"`` (Rerender's ``update_x0``): ``F.instance_norm(x)·σ_ref + μ_ref``
      with ``F.instance_norm`` = ``(x − μ_x)/sqrt(var_x + 1e-5)`` (biased variance) and
      ``σ_ref = sqrt(var_ref + 1e-5)`` with the *unbiased* reference variance. The output's
      std is then about ``1 + 1/(2n)`` times the reference's over ``n = h·w`` cells (less the
      eps terms): 1.2e-4 relative at 64×64, 2.0e-3 at 16×16; on unit-variance Gaussian
      latents ``"exact"`` differs from it by up to 5.0e-4 (64×64) and 7.4e-3 (16×16) max abs
      (README, "Differences from the official code").
    - ``formula="exact"``: biased std on both sides (eps 1e-12 on the input's variance), so
      the output's per-channel mean/std equal the reference's to rounding.

    Args:
        x: ``[B, c, h, w]``.
        reference: ``[B or 1, c, h', w']``.
        formula: ``"official"`` or ``"exact"``.

    Returns:
        ``[B, c, h, w]``, dtype of ``x``.
    """
    if formula not in ADAIN_FORMULAS:
        raise ValueError(f"adain formula must be one of {ADAIN_FORMULAS}, got {formula!r}")
    mean_x, var_x = channel_stats(x)
    if formula == "official":
        # unbiased, as the official ``var()``; a one-cell reference has no unbiased variance
        mean_r, var_r = channel_stats(reference, correction=1 if reference[0, 0].numel() > 1 else 0)
        eps_x = eps_r = OFFICIAL_ADAIN_EPS
    else:
        mean_r, var_r = channel_stats(reference)
        eps_x, eps_r = 1e-12, 0.0
    out = (x.float() - mean_x) / torch.sqrt(var_x + eps_x) * torch.sqrt(var_r + eps_r) + mean_r
    return out.to(x.dtype)


def pixel_fusion(
    direct: torch.Tensor,
    warped_previous: torch.Tensor | None,
    soft_previous: torch.Tensor | None,
    warped_anchor: torch.Tensor | None,
    soft_anchor: torch.Tensor | None,
) -> torch.Tensor:
    """Overlay the warped previous keyframe, then the warped anchor, on the first-pass render.

    ``Ĩ = (1 − m_pre)·warped_pre + m_pre·direct``; ``Ĩ ← (1 − m_0)·warped_0 + m_0·Ĩ``, where the
    ``m`` are soft occlusions (:func:`soft_occlusion`, 1 = unreliable): the anchor has the
    last word wherever it is reliable (paper Eq. 10). A missing reference is skipped.

    Args:
        direct: ``[B, C, H, W]`` the first pass's decoded frame.
        warped_previous, warped_anchor: ``[B, C, H, W]`` references warped onto this frame.
        soft_previous, soft_anchor: ``[B, 1, H, W]`` their soft occlusions.

    Returns:
        ``[B, C, H, W]``.
    """
    fused = direct
    for warped, soft in ((warped_previous, soft_previous), (warped_anchor, soft_anchor)):
        if warped is not None:
            fused = torch.lerp(warped.to(fused), fused, soft.to(fused))
    return fused


def inpaint_mask(
    occlusion_previous: torch.Tensor, occlusion_anchor: torch.Tensor, latent_size: tuple[int, int]
) -> torch.Tensor:
    """Known region of the structure-guided inpainting, at latent resolution (``M`` of the code).

    Pixels occluded in both references (``occ_pre ∧ occ_0``, paper ``M_i = M_0 ∩ M_{i-1}``) are
    left to the model; the rest is grown/feathered (:func:`soft_occlusion`) and eroded to
    latent cells (:func:`latent_keep_mask`).

    Returns:
        ``[B, 1, h, w]`` in 0..1, 1 = take the fused frame's latent.
    """
    both = _as_mask(occlusion_previous) * _as_mask(occlusion_anchor)
    return latent_keep_mask(soft_occlusion(both), latent_size)


def _downsample_code(bad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # The code's `F.interpolate(tmp, scale_factor=1/8, mode='bilinear') > 0`, then a 3×3
    # dilation: a latent cell is flagged from the 2×2 pixels bilinear sampling reads near its
    # centre, and the flag is grown by one cell.
    sampled = F.interpolate(bad, size=size, mode="bilinear", align_corners=False) > 0
    return dilate(sampled.to(bad.dtype), 3)


def fidelity_encode(
    image: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    threshold: float = 0.25,
    strength: float = 1.0,
    mode: str = "code",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fidelity-oriented encoding E*(I) (paper §4.1.3, Eqs. 8–9).

    With ``x_r = E(I)`` and ``x_rr = E(D(x_r))``, the loss of one more round trip predicts the
    loss of the first, so ``x' = x_r + λ(x_r − x_rr)`` compensates it. Where the compensated
    decode ``D(x')`` errs from ``I`` by more than ``threshold`` (mean over channels of
    ``|D(x') − I|`` on the [-1, 1] image scale the official code uses, i.e. ``threshold/2`` on
    0..1 images), compensation is switched off:

    - ``mode="code"`` (default): the flagged pixels are sampled to latent cells bilinearly and
      grown by one cell (``M_E``), and ``E* = x_r + (1 − M_E)·λ·(x_r − x_rr)``;
    - ``mode="paper"``: ``M_E`` is the under-threshold region (a latent cell counts when all its
      pixels are under), and ``E* = x_r + M_E·λ·(x_r − x_rr)``. Same sense, no growing.

    Costs two encodes and two decodes.

    Args:
        image: ``[B, C, H, W]`` in 0..1.
        encode: ``[B, C, H, W]`` 0..1 → latent ``[B, c, h, w]``.
        decode: latent → ``[B, C, H, W]`` 0..1.
        threshold: error threshold on the [-1, 1] scale (code 0.25).
        strength: λ (code and paper 1).
        mode: ``"code"`` or ``"paper"``.

    Returns:
        ``(latent [B, c, h, w], compensated [B, 1, h, w])``; ``compensated`` is 1 where the
        compensation was applied.
    """
    if mode not in FIDELITY_MODES:
        raise ValueError(f"fidelity mode must be one of {FIDELITY_MODES}, got {mode!r}")
    x_r = encode(image)
    x_rr = encode(decode(x_r))
    delta = (x_r - x_rr) * strength
    recon = decode(x_r + delta)
    err = (recon.float() - image.float().to(recon.device)).abs().mean(dim=1, keepdim=True) * 2.0
    bad = (err > threshold).float()
    size = tuple(x_r.shape[-2:])
    if mode == "code":
        compensated = 1.0 - _downsample_code(bad, size)
    else:
        compensated = 1.0 - F.adaptive_max_pool2d(bad, size)
    compensated = compensated.to(device=x_r.device, dtype=x_r.dtype)
    return x_r + compensated * delta, compensated


def flat_region(mask: torch.Tensor) -> torch.Tensor:
    """1 where a mask has no 3×3 Prewitt gradient (edge-replicated border), else 0.

    The official ``find_flat_region``: the inpainting keeps its noise rescale only inside flat
    regions of the mask and falls back to ``1 − w`` on its boundary (``smooth_boundary``).

    Args:
        mask: ``[B, 1, h, w]``.

    Returns:
        ``[B, 1, h, w]`` 0/1.
    """
    m = _as_mask(mask)
    padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0]] * 3, device=m.device, dtype=m.dtype)[None, None]
    gx = F.conv2d(padded, kx)
    gy = F.conv2d(padded, kx.transpose(-1, -2))
    return ((gx.abs() + gy.abs()) == 0).to(m.dtype)


def inpaint_rescale(
    weight: torch.Tensor, inner_strength: float = 0.9, flat: torch.Tensor | None = None
) -> torch.Tensor:
    """Scale of the noise part kept by the blended-latent step.

    ``r = max(1 − w, sqrt(1 − w²)·inner_strength)``; with ``flat`` (smooth boundary),
    ``r ← (1 − w)(1 − flat) + r·flat``.
    """
    rescale = torch.maximum(1.0 - weight, torch.sqrt((1.0 - weight.square()).clamp_min(0.0)) * inner_strength)
    if flat is not None:
        flat = flat.to(weight)
        rescale = (1.0 - weight) * (1.0 - flat) + rescale * flat
    return rescale


def blended_latent_step(
    x_t: torch.Tensor,
    x0_part: torch.Tensor,
    target_noisy: torch.Tensor,
    weight: torch.Tensor,
    inner_strength: float = 0.9,
    flat: torch.Tensor | None = None,
) -> torch.Tensor:
    """Structure-guided inpainting on the sampler's latent before a step (Blended Latent
    Diffusion as Rerender's code does it):

    ``x_t ← w·q(x_trg, t) + (1 − w)·s + r·(x_t − s)``, ``w = M·mask_strength``,

    where ``s`` is the signal part of ``x_t`` (the previous step's x0 in the sampler's
    scaling, ``√ᾱ_t·x̂0`` in DDPM terms, ``x̂0`` in ComfyUI's VE terms), ``x_t − s`` its noise
    part (DDIM's ``dir_xt``) and ``r`` from :func:`inpaint_rescale`. With ``w = 0`` this is the
    identity.

    Args:
        x_t: ``[B, c, h, w]`` the sampler's latent at step t.
        x0_part: ``[B, c, h, w]`` signal part of ``x_t``.
        target_noisy: ``[B, c, h, w]`` the inpainting target noised to step t (fresh noise).
        weight: ``[B or 1, 1, h, w]`` in 0..1.
        inner_strength: noise kept inside the known region (code 0.9).
        flat: optional :func:`flat_region` of the mask (smooth boundary).
    """
    w = weight.to(device=x_t.device, dtype=x_t.dtype)
    r = inpaint_rescale(w, inner_strength, None if flat is None else flat.to(x_t))
    return w * target_noisy.to(x_t) + (1.0 - w) * x0_part + r * (x_t - x0_part)
