"""Rerender's fusion maths (flow/fusion.py) against naive references written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_videoedit.flow.fusion import (
    adain,
    blended_latent_step,
    dilate,
    fidelity_encode,
    flat_region,
    inpaint_mask,
    inpaint_rescale,
    latent_keep_mask,
    pixel_fusion,
    shape_fusion,
    shape_fusion_mask,
    soft_occlusion,
    warp_latent,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- AdaIN ------------------------------------------------------------------------------------------


def test_adain_exact_output_has_exactly_the_reference_channel_moments():
    x = torch.randn(3, 4, 9, 7, generator=_gen(1)) * 3.0 + 2.0
    ref = torch.randn(1, 4, 5, 6, generator=_gen(2)) * torch.tensor([0.5, 2.0, 1.0, 0.1]).view(1, 4, 1, 1) - 1.0
    out = adain(x, ref, "exact")
    var_o, mean_o = torch.var_mean(out.flatten(2), dim=2, correction=0)
    var_r, mean_r = torch.var_mean(ref.flatten(2), dim=2, correction=0)
    assert torch.allclose(mean_o, mean_r.expand_as(mean_o), atol=1e-5)
    assert torch.allclose(var_o.sqrt(), var_r.sqrt().expand_as(var_o), rtol=1e-5, atol=1e-6)
    # the normalised pattern is kept: per channel, out is an increasing affine map of x
    corr = torch.stack([torch.corrcoef(torch.stack([x[0, c].flatten(), out[0, c].flatten()]))[0, 1] for c in range(4)])
    assert torch.allclose(corr, torch.ones(4), atol=1e-5)


def test_adain_per_sample_reference_and_dtype():
    x = torch.randn(2, 3, 4, 4, generator=_gen(3)).half()
    ref = torch.randn(2, 3, 4, 4, generator=_gen(4)) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    out = adain(x, ref, "exact")
    assert out.dtype == torch.float16
    std_o = out.float().flatten(2).std(dim=2, correction=0)
    std_r = ref.flatten(2).std(dim=2, correction=0)
    assert torch.allclose(std_o, std_r, rtol=5e-3)


# -- shape-aware fusion ------------------------------------------------------------------------------


def test_shape_fusion_with_zero_flow_and_no_occlusion_returns_the_anchor_x0():
    x0 = torch.randn(1, 4, 8, 8, generator=_gen(5))
    anchor = torch.randn(1, 4, 8, 8, generator=_gen(6))
    keep = shape_fusion_mask(torch.zeros(1, 64, 64), (8, 8))
    assert torch.equal(keep, torch.ones(1, 1, 8, 8))
    warped = warp_latent(anchor, torch.zeros(1, 64, 64, 2))
    assert torch.equal(warped, anchor)
    assert torch.equal(shape_fusion(x0, warped, keep), anchor)


def test_shape_fusion_keeps_the_own_x0_around_an_occlusion():
    occ = torch.zeros(1, 64, 64)
    occ[:, 28:36, 28:36] = 1.0  # an 8×8 px occluded blob in the middle
    keep = shape_fusion_mask(occ, (8, 8))[0, 0]
    # grown by the 9×9 max filter to pixels 24..39 (cells 3-4: fully unreliable), feathered by the
    # blur into pixels 20..43 (cells 2 and 5: partly), untouched elsewhere
    assert torch.equal(keep[3:5, 3:5], torch.zeros(2, 2))
    ring = torch.zeros(8, 8, dtype=torch.bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False
    assert ((keep[ring] > 0) & (keep[ring] < 1)).all()
    assert (keep[~torch.zeros(8, 8, dtype=torch.bool).index_fill_(0, torch.arange(2, 6), True)] == 1).all()
    x0, anchor = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    fused = shape_fusion(x0, anchor, keep[None, None])
    assert torch.allclose(fused[0, 0], keep)


def test_warp_latent_follows_a_translation_at_latent_scale():
    latent = torch.arange(64.0).view(1, 1, 8, 8)
    flow = torch.zeros(1, 64, 64, 2)
    flow[..., 0] = 16.0  # 16 px right = 2 latent cells
    out = warp_latent(latent, flow, mode="nearest")
    assert torch.equal(out[0, 0, :, :6], latent[0, 0, :, 2:])
    assert torch.equal(out[0, 0, :, 6:], torch.zeros(8, 2))  # sampled outside: zeros
    with pytest.raises(ValueError, match="warp mode"):
        warp_latent(latent, flow, mode="bicubic")


def test_soft_occlusion_matches_the_official_recipe():
    occ = (torch.rand(2, 40, 48, generator=_gen(7)) > 0.97).float()
    soft = soft_occlusion(occ)
    grown = F.max_pool2d(occ[:, None], 9, 1, 4)
    # reference blur: separable 9-tap Gaussian, sigma 18, reflect padding (torchvision's GaussianBlur)
    taps = torch.tensor([math.exp(-(i * i) / (2 * 18.0**2)) for i in range(-4, 5)])
    taps = taps / taps.sum()
    padded = F.pad(grown, (4, 4, 4, 4), mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, 9)), taps.view(1, 1, 9, 1))
    assert torch.allclose(soft, (blurred + occ[:, None]).clamp(0, 1), atol=1e-5)
    assert soft.min() >= 0 and soft.max() <= 1


def test_latent_keep_mask_erodes_to_whole_cells():
    soft = torch.zeros(1, 1, 16, 16)
    soft[..., 9, 3] = 0.2  # one partly unreliable pixel in latent cell (1, 0)
    keep = latent_keep_mask(soft, (2, 2))
    assert torch.allclose(keep[0, 0], torch.tensor([[1.0, 1.0], [0.8, 1.0]]))


# -- pixel-aware fusion --------------------------------------------------------------------------------


def test_pixel_fusion_anchor_has_priority_over_previous():
    direct = torch.full((1, 3, 4, 4), 0.1)
    prev = torch.full((1, 3, 4, 4), 0.5)
    anchor = torch.full((1, 3, 4, 4), 0.9)
    soft_prev = torch.zeros(1, 1, 4, 4)
    soft_prev[..., :, 2:] = 1.0  # previous unreliable on the right half
    soft_anchor = torch.zeros(1, 1, 4, 4)
    soft_anchor[..., 2:, :] = 1.0  # anchor unreliable on the bottom half
    fused = pixel_fusion(direct, prev, soft_prev, anchor, soft_anchor)
    # naive reference, the paper's Eq. 10
    ref = soft_anchor * (soft_prev * direct + (1 - soft_prev) * prev) + (1 - soft_anchor) * anchor
    assert torch.allclose(fused, ref)
    assert torch.allclose(fused[0, 0], torch.tensor([[0.9] * 4, [0.9] * 4, [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]))
    assert torch.equal(pixel_fusion(direct, None, None, None, None), direct)


def test_inpaint_mask_keeps_what_either_reference_sees():
    occ_prev = torch.zeros(1, 64, 64)
    occ_anchor = torch.zeros(1, 64, 64)
    occ_prev[:, 0:40, 0:24] = 1.0
    occ_anchor[:, 24:64, 0:24] = 1.0  # both occluded only in rows 24..39 of the left band
    known = inpaint_mask(occ_prev, occ_anchor, (8, 8))
    both = occ_prev * occ_anchor
    ref = 1.0 - F.adaptive_max_pool2d(soft_occlusion(both), (8, 8))
    assert torch.equal(known, ref)
    assert known[0, 0, 0, 7] == 1.0 and known[0, 0, 4, 1] == 0.0
    assert torch.equal(inpaint_mask(occ_prev, torch.zeros(1, 64, 64), (8, 8)), torch.ones(1, 1, 8, 8))


# -- fidelity-oriented encoding -----------------------------------------------------------------------


class LinearAutoencoder:
    """An autoencoder whose round trip loses a *consistent* part of the signal, the method's
    premise: E = 8×8 average pooling, D = nearest upsampling of S·x, S a 3-tap latent blur with
    taps (a, 1 − 2a, a). Since E∘U is the identity, E(D(x)) = S x: every round trip multiplies
    a latent frequency by the same factor s = 1 − 4a·sin²(ω/2), so the loss of the second trip
    predicts the first. With a > 0.25 the Nyquist factor is negative (the sign flips every trip):
    there the premise fails and compensation makes things worse."""

    def __init__(self, a: float):
        self.kernel = torch.tensor([a, 1 - 2 * a, a])

    def encode(self, image):
        return F.avg_pool2d(image, 8)

    def decode(self, latent):
        c = latent.shape[1]
        kx = self.kernel.view(1, 1, 1, 3).repeat(c, 1, 1, 1)
        ky = self.kernel.view(1, 1, 3, 1).repeat(c, 1, 1, 1)
        blurred = F.conv2d(F.pad(latent, (1, 1, 0, 0), mode="replicate"), kx, groups=c)
        blurred = F.conv2d(F.pad(blurred, (0, 0, 1, 1), mode="replicate"), ky, groups=c)
        return F.interpolate(blurred, scale_factor=8, mode="nearest")


def _textured_image(seed=0, size=128, detail=0.4):
    g = _gen(seed)
    coarse = F.interpolate(
        torch.rand(1, 3, size // 16, size // 16, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )
    mid = F.interpolate(
        torch.rand(1, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear", align_corners=False
    )
    return ((1 - detail) * coarse + detail * mid).clamp(0, 1)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_fidelity_encoding_reduces_round_trip_error_when_the_loss_is_consistent(mode):
    ae = LinearAutoencoder(0.15)
    image = _textured_image(1)
    plain = ae.decode(ae.encode(image))
    latent, compensated = fidelity_encode(image, ae.encode, ae.decode, threshold=0.25, mode=mode)
    star = ae.decode(latent)
    err_plain = (plain - image).abs().mean()
    err_star = (star - image).abs().mean()
    assert err_star < err_plain, (float(err_star), float(err_plain))
    # the part of the error the latent round trip causes (beyond what 8×8 pooling loses anyway)
    lossless = F.interpolate(ae.encode(image), scale_factor=8, mode="nearest")
    assert float((star - lossless).abs().mean()) < 0.6 * float((plain - lossless).abs().mean())
    assert compensated.mean() > 0.9  # the compensation is on almost everywhere
    # naive reference: x_r + (x_r - x_rr) where compensated
    x_r = ae.encode(image)
    x_rr = ae.encode(ae.decode(x_r))
    assert torch.allclose(latent, x_r + compensated * (x_r - x_rr), atol=1e-6)


def test_fidelity_mask_switches_compensation_off_where_it_hurts():
    ae = LinearAutoencoder(0.3)  # Nyquist factor -0.2: compensation hurts on latent-scale stripes
    image = _textured_image(2, detail=0.0)
    ys, xs = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    stripes = ((xs // 8) % 2).float() * 0.6 + 0.2  # one latent column each: the latent Nyquist frequency
    right = xs >= 64
    image = torch.where(right, stripes, image)  # left: smooth texture; right: latent-scale stripes
    x_r = ae.encode(image)
    x_rr = ae.encode(ae.decode(x_r))
    unmasked = ae.decode(x_r + (x_r - x_rr))
    plain = ae.decode(x_r)
    inner_right = right & (xs >= 80) & (xs < 120) & (ys >= 16) & (ys < 112)
    inner_left = (xs < 48) & (ys >= 16) & (ys < 112)
    # the premise fails on the stripes: unmasked compensation is worse than none there
    err = lambda rec: (rec - image).abs().mean(dim=1)[0]  # noqa: E731
    assert err(unmasked)[inner_right].mean() > 1.1 * err(plain)[inner_right].mean()

    latent, compensated = fidelity_encode(image, ae.encode, ae.decode, threshold=0.25, mode="code")
    comp = F.interpolate(compensated, scale_factor=8, mode="nearest")[0, 0]
    assert (comp[inner_right] == 0).all()  # off where it hurts
    assert (comp[inner_left] == 1).all()  # on where it helps
    star = ae.decode(latent)
    assert torch.allclose(star[..., inner_right], plain[..., inner_right], atol=1e-6)
    assert err(star)[inner_left].mean() < err(plain)[inner_left].mean()
    assert err(star).mean() < err(unmasked).mean()


def test_fidelity_strength_zero_is_plain_encoding_and_bad_mode_raises():
    ae = LinearAutoencoder(0.15)
    image = _textured_image(3)
    latent, _ = fidelity_encode(image, ae.encode, ae.decode, strength=0.0)
    assert torch.equal(latent, ae.encode(image))
    with pytest.raises(ValueError, match="fidelity mode"):
        fidelity_encode(image, ae.encode, ae.decode, mode="both")


# -- blended-latent inpainting step ------------------------------------------------------------------


def test_flat_region_matches_a_naive_gradient_check():
    mask = torch.zeros(1, 1, 6, 7)
    mask[..., 2:5, 3:6] = 1.0
    out = flat_region(mask)
    m = F.pad(mask, (1, 1, 1, 1), mode="replicate")[0, 0]
    ref = torch.zeros(6, 7)
    for i in range(6):
        for j in range(7):
            patch = m[i : i + 3, j : j + 3]
            gx = (patch[:, 2] - patch[:, 0]).sum()
            gy = (patch[2, :] - patch[0, :]).sum()
            ref[i, j] = float(gx.abs() + gy.abs() == 0)
    assert torch.equal(out[0, 0], ref)


def test_inpaint_rescale_values():
    w = torch.tensor([0.0, 0.5, 1.0])
    r = inpaint_rescale(w, 0.9)
    assert torch.allclose(r, torch.tensor([1.0, max(0.5, math.sqrt(0.75) * 0.9), 0.0]))
    flat = torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(inpaint_rescale(w, 0.9, flat), torch.tensor([1.0, 0.5, 0.0]))


def test_blended_latent_step_matches_the_formula_and_is_identity_at_zero_weight():
    g = _gen(9)
    x_t, x0, target = (torch.randn(1, 4, 6, 6, generator=g) for _ in range(3))
    weight = torch.rand(1, 1, 6, 6, generator=g)
    flat = (torch.rand(1, 1, 6, 6, generator=g) > 0.5).float()
    out = blended_latent_step(x_t, x0, target, weight, 0.9, flat)
    r = torch.maximum(1 - weight, torch.sqrt(1 - weight**2) * 0.9)
    r = (1 - weight) * (1 - flat) + r * flat
    ref = target * weight + (1 - weight) * (x_t - (x_t - x0)) + r * (x_t - x0)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(blended_latent_step(x_t, x0, target, torch.zeros(1, 1, 6, 6)), x_t, atol=1e-6)
    full = blended_latent_step(x_t, x0, target, torch.ones(1, 1, 6, 6))
    assert torch.allclose(full, target, atol=1e-6)


def test_dilate_is_a_max_filter():
    m = torch.zeros(1, 1, 5, 5)
    m[..., 2, 2] = 1.0
    assert torch.equal(dilate(m, 3)[0, 0], F.pad(torch.ones(3, 3), (1, 1, 1, 1)))
    assert torch.equal(dilate(m, 1), m)
