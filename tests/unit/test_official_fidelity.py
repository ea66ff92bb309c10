"""Issue #16: each remaining difference from the official TokenFlow / FLATTEN / Rerender code
is an option that reproduces the official behaviour (pinned here against naive transcriptions
of the official formulas, written in this file) or a documented choice whose size is pinned."""

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_videoedit.attention.crossframe import STORE_PRECISIONS, CrossFrameStore, SigmaSchedule
from comfyui_videoedit.attention.flatten import trajectory_attention, trajectory_groups
from comfyui_videoedit.attention.resnet_hooks import residual_branch_end, residual_hooks
from comfyui_videoedit.flow.fusion import adain, warp_latent
from comfyui_videoedit.flow.keyframes import keyframe_indices, updates_previous_style
from comfyui_videoedit.flow.resize import resize_flow
from comfyui_videoedit.flow.trajectories import cell_displacements, sample_trajectories
from comfyui_videoedit.flow.warp import warp_backward


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rough_flow(frames, size, seed, amplitude=12.0):
    """A flow with structure at every scale: a smooth motion field plus per-pixel detail, so
    the resampling modes disagree somewhere (pixels [frames, H, W, 2])."""
    g = _gen(seed)
    smooth = (
        F.interpolate(
            torch.randn(frames, 2, size // 16, size // 16, generator=g),
            size=(size, size),
            mode="bicubic",
            align_corners=False,
        )
        * amplitude
    )
    detail = torch.randn(frames, 2, size, size, generator=g) * amplitude / 4
    return (smooth + detail).permute(0, 2, 3, 1).contiguous()


# -- 1 + 2: Rerender keyframe layout and style_update_freq ---------------------------------------


def _official_keyframe_loop(frame_count, interval, style_update_freq):
    """rerender.py: anchor 0, then ``for i in range(0, F - 1, K): cid = i + 1``, the previous
    store updated on the second pass when ``i % style_update_freq == 0``."""
    rendered, updated = [0], []
    for i in range(0, frame_count - 1, interval):
        rendered.append(i + 1)
        if i % style_update_freq == 0:
            updated.append(i + 1)
    return rendered, updated


@pytest.mark.parametrize(
    "frames, interval, freq", [(25, 10, 10), (30, 5, 10), (17, 3, 6), (9, 1, 1), (1, 4, 10), (12, 4, 3)]
)
def test_official_layout_and_style_updates_match_the_official_loop(frames, interval, freq):
    keys = keyframe_indices(frames, interval, "official")
    rendered, updated = _official_keyframe_loop(frames, interval, freq)
    assert keys == rendered
    assert [k for n, k in enumerate(keys) if n >= 1 and updates_previous_style(keys, n, freq)] == updated


def test_even_layout_is_the_default_and_counts_updates_from_the_first_keyframe_after_the_anchor():
    assert keyframe_indices(21, 10) == [0, 10, 20]
    assert keyframe_indices(23, 5, "even") == [0, 5, 10, 15, 20]
    keys = keyframe_indices(23, 5)
    # interval 5, freq 10: every second keyframe moves the previous store on, the first always
    assert [updates_previous_style(keys, n, 10) for n in range(1, len(keys))] == [True, False, True, False]
    assert all(updates_previous_style(keys, n, 5) for n in range(1, len(keys)))
    with pytest.raises(ValueError, match="keyframe_layout"):
        keyframe_indices(10, 2, "paper")
    with pytest.raises(ValueError, match="style_update_freq"):
        updates_previous_style(keys, 1, 0)


def test_commit_is_the_only_way_the_previous_store_moves_on():
    store = CrossFrameStore([("output", 3, 0)], SigmaSchedule([2.0, 1.0, 0.0]), store_dtype=None)
    store.previous = {"e": torch.zeros(1)}
    store.begin("attend", record=False)  # a keyframe that does not update the style
    assert store.pending == {}
    store.commit_previous()
    assert torch.equal(store.previous["e"], torch.zeros(1))


# -- 3: Rerender latent-flow resize -----------------------------------------------------------------


def _official_latent_flow(flow):
    """rerender.py: ``F.interpolate(bwd_flow / 8.0, scale_factor=1/8, mode='bilinear')``."""
    return F.interpolate(flow.permute(0, 3, 1, 2) / 8.0, scale_factor=1.0 / 8, mode="bilinear").permute(0, 2, 3, 1)


def test_latent_flow_resize_official_is_the_official_bilinear_and_the_default():
    flow = _rough_flow(1, 64, 0)
    official = _official_latent_flow(flow)
    torch.testing.assert_close(resize_flow(flow, (8, 8), "bilinear"), official, rtol=0, atol=1e-6)
    latent = torch.randn(1, 4, 8, 8, generator=_gen(1))
    want = warp_backward(latent, official, padding_mode="zeros", mode="nearest")
    torch.testing.assert_close(warp_latent(latent, flow, "nearest", "official"), want, rtol=0, atol=0)
    torch.testing.assert_close(warp_latent(latent, flow), want, rtol=0, atol=0)
    # the alternative averages every pixel of a cell: on a rough flow it differs
    assert not torch.allclose(warp_latent(latent, flow, "nearest", "antialiased"), want)
    with pytest.raises(ValueError, match="latent_flow_resize"):
        warp_latent(latent, flow, "nearest", "area")


# -- 4: AdaIN ------------------------------------------------------------------------------------------


def _official_adain(x, ref):
    """controller.py: ``F.instance_norm(x) * std + mean`` with ``std = sqrt(var() + 1e-5)``
    (``var()`` unbiased)."""
    n, c = ref.shape[:2]
    std = (ref.reshape(n, c, -1).var(dim=2) + 1e-5).sqrt().view(n, c, 1, 1)
    mean = ref.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return F.instance_norm(x) * std + mean


@pytest.mark.parametrize("size", [64, 16, 5])
def test_adain_official_formula_is_the_default_and_matches_the_official(size):
    x = torch.randn(2, 4, size, size, generator=_gen(2)) * 1.7 + 0.3
    ref = torch.randn(2, 4, size, size, generator=_gen(3)) * 0.6 - 0.2
    want = _official_adain(x, ref)
    torch.testing.assert_close(adain(x, ref, "official"), want, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(adain(x, ref), want, rtol=1e-5, atol=2e-6)
    # "exact" gives the reference's biased std; the official std is sqrt(n/(n-1)) larger (less eps)
    exact = adain(x, ref, "exact")
    n = size * size
    ratio = want.flatten(2).std(dim=2, correction=0) / exact.flatten(2).std(dim=2, correction=0)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(n / (n - 1))), rtol=5e-4, atol=0)


def test_adain_difference_between_the_formulas_is_the_documented_size():
    # README / fusion.adain: unit-variance Gaussian latents, max abs 5.0e-4 at 64x64, 7.4e-3 at 16x16
    for size, bound in ((64, 1e-3), (16, 1.2e-2)):
        x = torch.randn(1, 4, size, size, generator=_gen(4))
        ref = torch.randn(1, 4, size, size, generator=_gen(5))
        diff = (adain(x, ref, "exact") - adain(x, ref, "official")).abs().max()
        assert bound / 10 < diff < bound, (size, diff)
    with pytest.raises(ValueError, match="formula"):
        adain(x, ref, "biased")


# -- 5: FLATTEN flow downsampling --------------------------------------------------------------------


def _official_cell_displacements(flow, r):
    """models/util.py for a square ``S`` flow: ``round(r * interpolate(flow / S, scale_factor=r / S))``
    (nearest), as (dx, dy) per cell."""
    size = flow.shape[1]
    chw = flow.permute(0, 3, 1, 2) / size
    return torch.round(r * F.interpolate(chw, scale_factor=(r / size, r / size))).permute(0, 2, 3, 1).long()


def test_trajectory_flow_resize_official_is_nearest_and_the_default():
    flow = _rough_flow(3, 128, 6)
    for r in (16, 8, 4, 2):
        want = _official_cell_displacements(flow, r)
        assert torch.equal(cell_displacements(flow, (r, r), "official"), want)
        assert torch.equal(cell_displacements(flow, (r, r)), want)
    anti = cell_displacements(flow, (16, 16), "antialiased")
    assert torch.equal(anti, torch.round(resize_flow(flow, (16, 16), "antialiased")).long())
    assert (anti != cell_displacements(flow, (16, 16))).any(dim=-1).float().mean() > 0.01
    official = sample_trajectories(flow, (16, 16), levels=1)
    assert official.flow_resize == "official"
    with pytest.raises(ValueError, match="flow_resize"):
        sample_trajectories(flow, (16, 16), flow_resize="bilinear")


def test_tokens_attend_to_their_trajectory_only_when_no_trajectory_spans_all_frames():
    # the official key slice would reach into spatial-neighbour slots here; the pack does not
    frames, h, w = 6, 6, 6
    flow = _rough_flow(frames - 1, h * 8, 7, amplitude=40.0)
    traj = sample_trajectories(flow, (h, w), levels=1).levels[(h, w)]
    assert 2 <= int(traj.length.max()) < frames
    ids = traj.traj_id.reshape(frames, -1)
    hidden = torch.randn(frames, h * w, 4, generator=_gen(8), dtype=torch.float64)
    got = trajectory_attention(hidden, hidden, hidden, trajectory_groups(ids), heads=1, groups=1)
    flat, tokens = ids.reshape(-1), hidden.reshape(-1, 4)
    for j in range(flat.numel()):
        members = tokens[flat == flat[j]]
        want = torch.softmax(members @ tokens[j] / 2.0, 0) @ members
        torch.testing.assert_close(got.reshape(-1, 4)[j], want)


# -- 6: precision of the ResBlock injection and of the cross-frame store -------------------------------


class ComfyLayoutResBlock(torch.nn.Module):
    """The layout of ComfyUI's ResBlock: ``skip_connection(x) + out_layers(in_layers(x) + emb)``."""

    def __init__(self, cin, cout):
        super().__init__()
        self.in_layers = torch.nn.Sequential(
            torch.nn.GroupNorm(2, cin), torch.nn.SiLU(), torch.nn.Conv2d(cin, cout, 3, padding=1)
        )
        self.out_layers = torch.nn.Sequential(
            torch.nn.GroupNorm(2, cout),
            torch.nn.SiLU(),
            torch.nn.Dropout(0.0),
            torch.nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip_connection = torch.nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        return self.skip_connection(x) + self.out_layers(self.in_layers(x) + emb)


class Holder(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.output_blocks = torch.nn.ModuleList([torch.nn.Sequential(block)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_injected_resblock_output_is_computed_in_the_official_order(dtype):
    if dtype == torch.float16:
        try:
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
        except RuntimeError:
            pytest.skip("no fp16 convolution on this CPU build")
    torch.manual_seed(0)
    block = ComfyLayoutResBlock(8, 8).to(dtype)
    for p in block.parameters():
        p.data *= 4  # SD-scale activations: a skip of tens, so one ulp of the sum is ~0.1 in bf16
    holder = Holder(block)
    assert residual_branch_end(block) is block.out_layers[-1]
    x = torch.randn(2, 8, 6, 6, generator=_gen(9)).to(dtype) * 8
    emb = torch.randn(2, 8, 1, 1, generator=_gen(10)).to(dtype)
    source_h = torch.randn(2, 8, 6, 6, generator=_gen(11)).to(dtype)
    seen = {}

    def handler(key, residual):
        seen[key] = residual
        return source_h

    with torch.no_grad():
        branch = block.out_layers(block.in_layers(x) + emb)
        with residual_hooks(holder, [("output", 0)], handler):
            out = block(x, emb)
        # official: replace h after conv2, then skip + h, in the model's dtype
        assert torch.equal(seen[("output", 0)], branch)
        assert torch.equal(out, block.skip_connection(x) + source_h)
        assert not block.out_layers[-1]._forward_hooks  # nothing left on the module
        # the subtract-then-add form this replaces rounds twice: it is not bit-identical
        recovered = (block.skip_connection(x) + source_h) - block.skip_connection(x)
        assert not torch.equal(recovered, source_h)


def test_resblocks_without_out_layers_fall_back_to_subtracting_the_skip():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.skip_connection = torch.nn.Identity()
            self.body = torch.nn.Conv2d(2, 2, 1)

        def forward(self, x, emb):
            return self.skip_connection(x) + self.body(x)

    block = Plain()
    x = torch.randn(1, 2, 3, 3, generator=_gen(12))
    with torch.no_grad(), residual_hooks(Holder(block), [("output", 0)], lambda key, r: r * 0):
        torch.testing.assert_close(block(x, None), x)


def test_cross_frame_store_precisions():
    assert STORE_PRECISIONS["model"] is None and STORE_PRECISIONS["fp16"] is torch.float16
    n = torch.randn(2, 16, 8, generator=_gen(13))
    kept_model = CrossFrameStore([], SigmaSchedule([1.0, 0.0]), store_dtype=STORE_PRECISIONS["model"])._keep(n)
    kept_half = CrossFrameStore([], SigmaSchedule([1.0, 0.0]), store_dtype=STORE_PRECISIONS["fp16"])._keep(n)
    assert kept_model.dtype == torch.float32 and torch.equal(kept_model, n) and kept_model.data_ptr() != n.data_ptr()
    assert kept_half.dtype == torch.float16
    assert 0 < (kept_half.float() - n).abs().max() <= n.abs().max() * 2**-11
