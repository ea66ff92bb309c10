"""VideoEdit_ApplyExtendedAttention on the tiny model through ComfyUI's samplers."""

import pytest
import torch

from ve_testkit.models import encode_prompt


def _sample(host, model, pos, neg, latent, seed=3, cfg=4.0):
    (out,) = host.nodes.common_ksampler(model, seed, 3, cfg, "euler", "ddim_uniform", pos, neg, {"samples": latent})
    return out["samples"]


def test_extended_attention_patch(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    latent = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = repr(tiny_model.model_options)
    plain = _sample(host, tiny_model, pos, neg, latent)

    # only frame 0 is a keyframe: frame 0 attends to itself = plain self-attention
    (patched,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=100, keyframes="").args
    assert repr(tiny_model.model_options) == before, "the user's model must not change"
    assert patched is not tiny_model
    out = _sample(host, patched, pos, neg, latent)
    assert torch.allclose(out[0], plain[0], atol=1e-4)
    assert (out[1:] - plain[1:]).abs().max() > 1e-3
    assert torch.equal(_sample(host, patched, pos, neg, latent), out)  # deterministic

    # an explicit list overrides the stride; keyframe 2 alone
    (patched2,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="2").args
    out2 = _sample(host, patched2, pos, neg, latent)
    assert torch.allclose(out2[2], plain[2], atol=1e-4)
    assert not torch.allclose(out2[0], plain[0], atol=1e-3)


def test_extended_attention_bad_keyframes(host, pack_nodes, tiny_model):
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    with pytest.raises(ValueError, match="keyframes: 'a, b'"):
        ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="a, b")
