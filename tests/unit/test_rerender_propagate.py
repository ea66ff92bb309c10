"""Keyframe propagation (flow/propagate.py): chained flows against naive composition, the fast
lattice warp against flow/warp + flow/consistency, and a synthetic clip whose "stylisation" is
a known per-pixel colour transform."""

import pytest
import torch
import torch.nn.functional as F

from comfyui_videoedit.flow.consistency import occlusion_mask
from comfyui_videoedit.flow.dis import dis_flow
from comfyui_videoedit.flow.estimate import bidirectional_flow
from comfyui_videoedit.flow.propagate import (
    _Lattice,
    _match_affine,
    chain_flow,
    neighbouring_keys,
    propagate_keyframes,
)
from comfyui_videoedit.flow.warp import warp_backward

SIZE, COUNT, KEYS = 128, 9, [0, 4, 8]
BG_V, FG_V, FG_SIZE, FG_START = (1.5, 0.75), (-2.0, 1.25), 36, (60.0, 30.0)


def _smooth_texture(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(
        torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g), size=(h, w), mode="bicubic", align_corners=False
    )
    fine = F.interpolate(
        torch.rand(1, 3, h // 2, w // 2, generator=g), size=(h, w), mode="bilinear", align_corners=False
    )
    return (0.7 * coarse + 0.3 * fine).clamp(0, 1)


def _sample(tex, x, y):
    _, _, h, w = tex.shape
    grid = torch.stack([x / (w - 1) * 2 - 1, y / (h - 1) * 2 - 1], -1)[None]
    return F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def _fg_pos(t):
    return FG_START[0] + FG_V[0] * t, FG_START[1] + FG_V[1] * t


def synthetic_clip():
    """A textured background translating by BG_V px/frame under a textured square moving by
    FG_V: occlusions and disocclusions on every frame. Returns frames [F, H, W, 3]."""
    pad = 64
    bg = _smooth_texture(SIZE + 2 * pad, SIZE + 2 * pad, 1)
    fg = _smooth_texture(FG_SIZE + 8, FG_SIZE + 8, 2)
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    frames = []
    for t in range(COUNT):
        img = _sample(bg, xs - BG_V[0] * t + pad, ys - BG_V[1] * t + pad)
        fx, fy = _fg_pos(t)
        u, v = xs - fx, ys - fy
        inside = (u >= 0) & (u <= FG_SIZE) & (v >= 0) & (v <= FG_SIZE)
        img = torch.where(inside[None], _sample(fg, u + 4, v + 4), img)
        frames.append(img.permute(1, 2, 0))
    return torch.stack(frames)


def visible_in(t, k, margin=4.0):
    """Pixels of frame t whose content is visible in frame k, ``margin`` px away from any
    occlusion boundary or the frame edge (ground truth from the known motion)."""
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")

    def in_box(x, y, t_box, grow):
        fx, fy = _fg_pos(t_box)
        return (x >= fx - grow) & (x <= fx + FG_SIZE + grow) & (y >= fy - grow) & (y <= fy + FG_SIZE + grow)

    def in_frame(x, y):
        return (x >= margin) & (x <= SIZE - 1 - margin) & (y >= margin) & (y <= SIZE - 1 - margin)

    fg = in_box(xs, ys, t, -margin)
    bg = ~in_box(xs, ys, t, margin)
    (ft, gt), (fk, gk) = _fg_pos(t), _fg_pos(k)
    fg_ok = fg & in_frame(xs + fk - ft, ys + gk - gt)
    bx, by = xs + BG_V[0] * (k - t), ys + BG_V[1] * (k - t)
    bg_ok = bg & in_frame(bx, by) & ~in_box(bx, by, k, margin)
    return fg_ok | bg_ok


def stylise(x):
    """The known 'stylisation': a per-pixel colour transform (gamma, channel mixing, offset)."""
    mix = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    return (x.pow(0.8) @ mix.T * 0.9 + torch.tensor([0.05, 0.0, 0.08])).clamp(0, 1)


@pytest.fixture(scope="module")
def clip_and_flows():
    frames = synthetic_clip()
    forward, backward = bidirectional_flow(frames, dis_flow)
    return frames, forward, backward


# -- flow chaining --------------------------------------------------------------------------------


def _smooth_flow(count, h, w, seed, amplitude=3.0):
    g = torch.Generator().manual_seed(seed)
    return (
        F.interpolate(
            torch.randn(count, 2, 4, 4, generator=g) * amplitude, size=(h, w), mode="bicubic", align_corners=False
        )
        .permute(0, 2, 3, 1)
        .contiguous()
    )


def test_chain_flow_adds_translations_and_matches_a_naive_point_composition():
    h, w = 24, 32
    fwd = torch.zeros(3, h, w, 2)
    fwd[..., 0], fwd[..., 1] = 1.5, -0.5
    bwd = -fwd
    assert torch.allclose(chain_flow(fwd, bwd, 0, 3)[0, h // 2, w // 2], torch.tensor([4.5, -1.5]))
    assert torch.allclose(chain_flow(fwd, bwd, 3, 1)[0, h // 2, w // 2], torch.tensor([-3.0, 1.0]))
    assert torch.equal(chain_flow(fwd, bwd, 2, 2), torch.zeros(1, h, w, 2))

    fwd = _smooth_flow(3, h, w, 1)
    bwd = _smooth_flow(3, h, w, 2)

    def follow(flows, y, x):
        """Naive: follow one pixel through the flows, sampling each bilinearly where it is."""
        pos = torch.tensor([float(x), float(y)])
        for field in flows:
            grid = torch.stack([pos[0] / (w - 1) * 2 - 1, pos[1] / (h - 1) * 2 - 1]).view(1, 1, 1, 2)
            sample = F.grid_sample(
                field.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=True
            )
            pos = pos + sample.view(2)
        return pos - torch.tensor([float(x), float(y)])

    forward_chain, backward_chain = chain_flow(fwd, bwd, 0, 3), chain_flow(fwd, bwd, 3, 0)
    for y, x in ((11, 13), (3, 25), (20, 2)):
        assert torch.allclose(forward_chain[0, y, x], follow([fwd[0], fwd[1], fwd[2]], y, x), atol=1e-4)
        assert torch.allclose(backward_chain[0, y, x], follow([bwd[2], bwd[1], bwd[0]], y, x), atol=1e-4)
    with pytest.raises(ValueError, match="outside a clip"):
        chain_flow(fwd, bwd, 0, 4)


def test_lattice_warp_and_occlusion_equal_the_flow_modules():
    h, w = 20, 28
    lattice = _Lattice((h, w), "cpu")
    flow = _smooth_flow(2, h, w, 3, amplitude=4.0)
    reverse = _smooth_flow(2, h, w, 4, amplitude=4.0)
    field = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(lattice.warp(field, flow), warp_backward(field, flow, "border"), atol=1e-5)
    assert torch.equal(
        lattice.occlusion(flow, reverse, 0.01, 0.5)[:, 0], occlusion_mask(flow, reverse, 0.01, 0.5, squared=False)
    )


def test_neighbouring_keys():
    before, after = neighbouring_keys(7, [5, 2])
    assert before == [None, None, 2, 2, 2, 5, 5]
    assert after == [2, 2, 2, 5, 5, 5, None]


# -- propagation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blend,space", [("moments", "ycbcr"), ("moments", "lab"), ("histogram", "ycbcr"), ("linear", "ycbcr")]
)
def test_propagated_frames_match_the_stylised_ground_truth(clip_and_flows, blend, space):
    frames, forward, backward = clip_and_flows
    truth = stylise(frames)
    out = propagate_keyframes(frames, truth[KEYS], KEYS, forward, backward, blend=blend, colour_space=space)
    assert out.shape == frames.shape and out.dtype == torch.float32
    for k in KEYS:
        assert torch.equal(out[k], truth[k])
    err = (out - truth).abs().mean(-1)
    for t in range(COUNT):
        if t in KEYS:
            continue
        a, b = max(k for k in KEYS if k < t), min(k for k in KEYS if k > t)
        both = visible_in(t, a) & visible_in(t, b)
        either = visible_in(t, a) | visible_in(t, b)
        assert both.float().mean() > 0.5
        assert err[t][both].mean() < 0.03, (t, float(err[t][both].mean()))
        # where only one keyframe sees the content, the occlusion-aware weights pick that one
        assert err[t][either].mean() < 0.03, (t, float(err[t][either].mean()))


def test_the_ground_truth_check_can_fail(clip_and_flows):
    """Copying the nearest keyframe (no warping) is far off on this clip: the check above is not vacuous."""
    frames, _, _ = clip_and_flows
    truth = stylise(frames)
    t, a, b = 2, 0, 4
    both = visible_in(t, a) & visible_in(t, b)
    assert (truth[a] - truth[t]).abs().mean(-1)[both].mean() > 0.03
    # and zero flows (no motion compensation) fail it too
    zero = torch.zeros(COUNT - 1, SIZE, SIZE, 2)
    out = propagate_keyframes(frames, truth[KEYS], KEYS, zero, zero)
    assert (out[t] - truth[t]).abs().mean(-1)[both].mean() > 0.03


def test_frames_outside_the_keyframe_span_take_the_one_keyframe(clip_and_flows):
    frames, forward, backward = clip_and_flows
    truth = stylise(frames)
    keys = [3, 5]
    out = propagate_keyframes(frames, truth[keys], keys, forward, backward)
    for t, k in ((0, 3), (1, 3), (7, 5), (8, 5)):
        vis = visible_in(t, k)
        assert (out[t] - truth[t]).abs().mean(-1)[vis].mean() < 0.03, t
    single = propagate_keyframes(frames[:3], truth[1:2], [1], forward[:2], backward[:2])
    assert torch.equal(single[1], truth[1])


def test_colour_match_gives_the_reference_moments():
    g = torch.Generator().manual_seed(8)
    blended = torch.rand(2, 3, 500, generator=g) * 0.5 + 0.2
    reference = torch.rand(2, 3, 500, generator=g) ** 2
    matrix, offset = _match_affine(blended, reference)
    matched = torch.bmm(matrix, blended) + offset[..., None]
    ycc = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])

    def moments(x):
        y = torch.einsum("ij,njp->nip", ycc, x)
        var, mean = torch.var_mean(y, dim=2, correction=0)
        return mean, var.sqrt()

    (m1, s1), (m2, s2) = moments(matched), moments(reference)
    assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5)


def test_bad_inputs_name_the_problem():
    frames = torch.rand(4, 16, 16, 3)
    flow = torch.zeros(3, 16, 16, 2)
    with pytest.raises(ValueError, match="key indices"):
        propagate_keyframes(frames, frames[:2], [0], flow, flow)
    with pytest.raises(ValueError, match="outside a clip"):
        propagate_keyframes(frames, frames[:1], [4], flow, flow)
    with pytest.raises(ValueError, match="flows"):
        propagate_keyframes(frames, frames[:1], [0], flow[:2], flow[:2])
    with pytest.raises(ValueError, match="blend"):
        propagate_keyframes(frames, frames[:1], [0], flow, flow, blend="poisson")
