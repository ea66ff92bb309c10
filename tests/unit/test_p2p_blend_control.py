"""Local blend masks, the blend step and the cross-attention edit on small tensors."""

import torch

from comfyui_videoedit.attention.p2p_blend import (
    blend_active,
    blend_denoised,
    blend_resolution,
    local_blend_mask,
    self_replace_max_tokens,
    word_map_sum,
    word_mask,
)
from comfyui_videoedit.attention.p2p_control import (
    P2PEdit,
    attend,
    attention_probs,
    edit_cross_attention,
)
from comfyui_videoedit.attention.p2p_tokens import prompt_tokens


def test_blend_mask_from_synthetic_maps_equals_the_hand_computed_mask():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0], m[0, 3, 3] = 1.0, 0.2
    # 3x3 max-pool: 1.0 on rows/cols 0-1, 0.2 on rows/cols 2-3; nearest x2 → 8x8 blocks of 4x4;
    # divided by the max (1.0); > 0.3 keeps only the top-left block
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, :4, :4] = True
    assert torch.equal(word_mask(m, (8, 8), 0.3, pool=True), expected)
    # without pooling (subtract words) only the peak's own nearest-upsampled cell survives
    expected_np = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected_np[0, :2, :2] = True
    assert torch.equal(word_mask(m, (8, 8), 0.3, pool=False), expected_np)
    # per-frame normalisation: a frame whose peak is 0.2 still gets its own block
    two = torch.stack([m[0], m[0] * 0.1])
    assert torch.equal(word_mask(two, (8, 8), 0.3, True)[1], expected[0])


def test_union_of_source_and_target_masks_minus_subtract_words():
    src, tgt, sub = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    src[0, 0, 0] = 1.0
    tgt[0, 3, 0] = 1.0
    sub[0, 0, 0] = 1.0
    mask = local_blend_mask(src, tgt, (4, 4), 0.3, sub_tgt=sub)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, :2, :2] = 1  # source (pooled)
    expected[0, 0, 2:, :2] = 1  # target (pooled)
    expected[0, 0, 0, 0] = 0  # minus the subtract word (not pooled)
    assert torch.equal(mask, expected)
    assert local_blend_mask(torch.zeros(2, 4, 4), None, (4, 4), 0.3).sum() == 0  # empty maps: empty mask


def test_word_map_sum_is_a_sum_over_heads_and_chosen_tokens_also_for_repeated_contexts():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 5, 7, generator=g)
    w = torch.tensor([0, 1, 0, 0, 1, 0, 0.0])
    naive = probs[..., 1].sum(1) + probs[..., 4].sum(1)
    assert torch.allclose(word_map_sum(probs, w), naive)
    doubled = torch.cat([probs, probs], dim=-1) / 2  # a context repeated twice: half the mass per copy
    assert torch.allclose(word_map_sum(doubled, w), naive)


def test_blend_step_lands_on_the_blend_of_the_ddim_step():
    g = torch.Generator().manual_seed(1)
    x, d, x_src = (torch.randn(3, 4, 6, 6, generator=g) for _ in range(3))
    mask = (torch.rand(3, 1, 6, 6, generator=g) > 0.5).float()
    sigma, sigma_next = 2.5, 1.25
    d_new = blend_denoised(d, x, sigma, sigma_next, x_src, mask)

    def euler(den):  # ComfyUI's euler step
        return x + (x - den) / sigma * (sigma_next - sigma)

    want = x_src + mask * (euler(d) - x_src)
    assert torch.allclose(euler(d_new), want, atol=1e-5)
    assert torch.equal(blend_denoised(d, x, sigma, sigma_next, x_src, torch.ones_like(mask)), d)
    assert torch.equal(blend_denoised(d, x, sigma, 0.0, x_src, torch.zeros_like(mask)), x_src)


def test_resolution_rules_follow_the_latent_size():
    assert blend_resolution((64, 64)) == (16, 16) and self_replace_max_tokens((64, 64)) == 256
    assert blend_resolution((96, 64)) == (24, 16) and blend_resolution((9, 9)) == (3, 3)
    assert [blend_active(i, 50, 0.2) for i in (9, 10)] == [False, True]  # from the 11th step on


def _edit(mapper, keep=None, eq=None, length=6):
    p = prompt_tokens("a b", ["a", "b"], [[1], [2]], "p", length)
    return P2PEdit(
        p, p, "replace", mapper, torch.zeros(length) if keep is None else keep, torch.ones(length) if eq is None else eq
    )


def test_reweight_scales_exactly_the_chosen_tokens_of_the_edited_map():
    g = torch.Generator().manual_seed(2)
    base, tgt = torch.rand(2, 2, 3, 6, generator=g), torch.rand(2, 2, 3, 6, generator=g)
    eq = torch.ones(6)
    eq[2] = 3.0
    out = edit_cross_attention(base, tgt, _edit(torch.eye(6), eq=eq), torch.ones(6))
    expected = base.clone()
    expected[..., 2] *= 3.0
    assert torch.allclose(out, expected)


def test_cross_attention_edit_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    L = 6
    base, tgt = torch.rand(1, 2, 4, 2 * L, generator=g), torch.rand(1, 2, 4, 2 * L, generator=g)  # repeated context
    mapper = torch.rand(L, L, generator=g)
    keep = torch.tensor([0, 0, 1, 0, 0.5, 0])
    eq = torch.tensor([1, 2, 1, 1, 1, 0.5])
    alpha = torch.tensor([1, 1, 0, 1, 1, 0.0])
    out = edit_cross_attention(base, tgt, _edit(mapper, keep, eq, L), alpha)
    want = torch.empty_like(tgt)
    for r in range(2):
        for n in range(L):
            c = r * L + n
            remix = sum(base[..., r * L + w] * mapper[n, w] for w in range(L))
            e = (remix + tgt[..., c] * keep[n]) * eq[n]
            want[..., c] = alpha[n] * e + (1 - alpha[n]) * tgt[..., c]
    assert torch.allclose(out, want, atol=1e-6)


def test_manual_attention_equals_sdpa():
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(2, 5, 8, generator=g), torch.randn(2, 7, 8, generator=g), torch.randn(2, 7, 8, generator=g)
    heads = 2
    ref = (
        torch.nn.functional.scaled_dot_product_attention(
            q.view(2, 5, heads, 4).transpose(1, 2),
            k.view(2, 7, heads, 4).transpose(1, 2),
            v.view(2, 7, heads, 4).transpose(1, 2),
        )
        .transpose(1, 2)
        .reshape(2, 5, 8)
    )
    assert torch.allclose(attend(attention_probs(q, k, heads), v), ref, atol=1e-6)


def test_settings_validate_their_combos_and_ranges_naming_the_input():
    import pytest

    from comfyui_videoedit.attention.p2p_control import P2PEditSpec
    from comfyui_videoedit.attention.p2p_patch import P2PConfig

    assert P2PConfig.from_inputs() == P2PConfig()
    assert P2PConfig().cross_replace_steps == "0.2" and P2PConfig().self_replace_steps == 0.5
    for kw, msg in [
        (dict(source_mode="both"), "source_mode: 'both'"),
        (dict(frame_attention="all"), "frame_attention: 'all'"),
        (dict(blend_threshold=1.5), "blend_threshold"),
        (dict(cross_replace_steps="x"), "cross_replace_steps"),
    ]:
        with pytest.raises(ValueError, match=msg):
            P2PConfig.from_inputs(**kw)
    ok = dict(source_prompt="a cat", target_prompt="a dog")
    assert P2PEditSpec.from_inputs(**ok).mode == "auto"
    for kw, msg in [
        (dict(mode="swap"), "mode: 'swap'"),
        (dict(target_prompt=" "), "target_prompt: the prompt is empty"),
        (dict(blend_target="dog"), "blend_source: empty"),
    ]:
        with pytest.raises(ValueError, match=msg):
            P2PEditSpec.from_inputs(**{**ok, **kw})
