"""Which kernel FLATTEN's spatio-temporal part gets: PyTorch's fused SDPA in place of ComfyUI's
generic chunked fallbacks (the CPU default), ComfyUI's own choice otherwise; and the output
stays that of ComfyUI's kernel to rounding."""

import torch

from ve_testkit.models import encode_prompt


def test_long_attention_kernel_replaces_only_the_default_fallbacks(host, monkeypatch):
    import comfy.ldm.modules.attention as attention
    from comfy.cli_args import args

    from comfyui_videoedit.adapters.model_patch import comfy_long_attention
    from comfyui_videoedit.attention.extended import sdpa_attention

    assert attention.optimized_attention in (attention.attention_sub_quad, attention.attention_split)  # --cpu host
    assert comfy_long_attention() is sdpa_attention
    monkeypatch.setattr(args, "use_split_cross_attention", True)  # the user asked for it: kept
    assert comfy_long_attention() is not sdpa_attention
    monkeypatch.setattr(args, "use_split_cross_attention", False)
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    kernel = comfy_long_attention()
    q = torch.randn(2, 24, 16)
    assert kernel is not sdpa_attention and torch.allclose(kernel(q, q, q, 2), sdpa_attention(q, q, q, 2), atol=1e-6)


def test_flatten_with_sdpa_equals_flatten_with_comfys_kernel(tiny_model, tiny_clip):
    import comfy.sample

    from comfyui_videoedit.adapters.model_patch import comfy_attention
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    latent = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(3, 64, 64, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, {"samples": latent}, 0).args
    (patched,) = ApplyFLATTEN.execute(
        tiny_model,
        ts,
        mode="dense",
        levels="highest",
        old_qk=False,
        anchor_stride=4,
        max_anchors=4,
        inject_step=0.8,
        pnp_attn_blocks="output 4-9",
        pnp_resnet_blocks="output 3, 4, 6",
    ).args
    pos, neg = encode_prompt(tiny_clip, "a cat"), encode_prompt(tiny_clip, "")

    def sample():
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(
            patched, noise, 3, 5.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=0
        )

    fused = sample()
    for patch in patched.model_options["transformer_options"]["patches_replace"]["attn1"].values():
        patch.runtime.attn_fn = comfy_attention
    chunked = sample()
    # float32 rounding of a different summation order, carried through 3 steps
    assert (chunked - fused).abs().max() <= 1e-5 * chunked.abs().max()
