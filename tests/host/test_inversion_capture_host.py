"""Source-branch replay and feature capture on the tiny SD1.5-layout UNet, checked against
plain PyTorch forward hooks on the same modules."""

import pytest
import torch

from ve_testkit.models import encode_prompt


@pytest.fixture(scope="module")
def record(host, tiny_model, tiny_clip):
    import comfyui_videoedit.nodes.inversion as inv

    with torch.inference_mode():
        cond = encode_prompt(tiny_clip, "a horse")
        latent = {"samples": torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(30))}
        return inv.DDIMInversion.execute(tiny_model, latent, cond, 4, 0, "ddim_uniform", 3, "off", 0, False).result[0]


def reference_features(dm, x_vp, t, ctx):
    """Run the UNet directly with forward hooks recording what the capture should see."""
    got, handles = {}, []
    block = dm.output_blocks[4][1].transformer_blocks[0]
    resblock = dm.output_blocks[6][0]

    def keep(name):
        return lambda mod, args, out: got.__setitem__(name, out)

    handles.append(block.norm1.register_forward_hook(keep("n")))
    handles.append(block.attn1.to_q.register_forward_hook(keep("q")))
    handles.append(block.attn1.to_k.register_forward_hook(keep("k")))
    handles.append(
        resblock.register_forward_hook(
            lambda mod, args, out: got.__setitem__("res", out - mod.skip_connection(args[0]))
        )
    )
    try:
        with torch.no_grad():
            dm(x_vp, t, context=ctx)
    finally:
        for h in handles:
            h.remove()
    return got


def test_capture_matches_forward_hooks(host, tiny_model, record, inference_mode):
    from comfyui_videoedit.adapters import source as comfy_adapter
    from comfyui_videoedit.attention.capture import CaptureSpec

    spec = CaptureSpec(attn1_inputs=[("output", 4, 0), ("input", 1, 0)], qk=[("output", 4, 0)], resnets=[("output", 6)])
    model = comfy_adapter.install_feature_capture(tiny_model, spec)
    sigma = float(record.sigmas[1])
    frames = [2, 0]
    store = comfy_adapter.capture_source_features(model, record, sigma, frames, spec)

    dm = tiny_model.model.diffusion_model
    ms = tiny_model.get_model_object("model_sampling")
    replay = comfy_adapter.source_replay(tiny_model, record)
    x_vp = replay.unet_input(sigma, frames)
    ctx, y = replay.unet_conditioning(2, x_vp)
    assert y is None and ctx.shape == (2, 77, 32)
    ref = reference_features(dm, x_vp, ms.timestep(torch.full((2,), sigma)).float(), ctx)
    key = ("output", 4, 0)
    assert torch.allclose(store.attn1_inputs[key], ref["n"], atol=1e-5)
    assert torch.allclose(store.q[key], ref["q"], atol=1e-5)
    assert torch.allclose(store.k[key], ref["k"], atol=1e-5)
    assert torch.allclose(store.resnets[("output", 6, 0)], ref["res"], atol=1e-5)
    assert store.attn1_inputs[("input", 1, 0)].shape == (2, 256, 32)  # 16x16 tokens at the first level
    assert set(store.q) == {key}

    # outside a capture pass the patched clone predicts exactly what the plain model does
    x = replay.latent(sigma, frames)
    sig = torch.full((2,), sigma)
    den_plain = tiny_model.model.apply_model(x, sig, c_crossattn=ctx, transformer_options={})
    den_patched = model.model.apply_model(
        x, sig, c_crossattn=ctx, transformer_options=dict(model.model_options["transformer_options"])
    )
    assert torch.allclose(den_plain, den_patched, atol=1e-5)


def test_replay_is_exact_and_rejects_foreign_sigmas(host, tiny_model, record, inference_mode):
    from comfyui_videoedit.adapters import source as comfy_adapter
    from comfyui_videoedit.attention.capture import CaptureSpec

    replay = comfy_adapter.source_replay(tiny_model, record)
    for i, s in enumerate(record.sigmas[:-1].tolist()):
        assert replay.step_index(s) == i
        vp = replay.unet_input(s, torch.tensor([1]))
        expected = record.x_T[1:2] / (1 + s * s) ** 0.5 if i == 0 else record.latents_vp[i, 1:2].float()
        assert torch.allclose(vp, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"sigma 1\.5 is not in the inversion's schedule \[.*\] \(5 values\)"):
        replay.latent(1.5, [0])
    bad = CaptureSpec(qk=[("output", 0, 0)])  # SD1.5's output block 0 has no attention
    model = comfy_adapter.install_feature_capture(tiny_model, bad)
    with pytest.raises(ValueError, match=r"produced no q/k \('output', 0, 0\)"):
        comfy_adapter.capture_source_features(model, record, float(record.sigmas[0]), [0], bad)
