"""VideoEdit_DDIMInversion on the real ComfyUI sampling path: exact round trip with an analytic
model, the whole path with the tiny random-weight model through existing patches, the
reconstruction check, and bad input."""

import pytest
import torch

from ve_testkit.models import AnalyticPrediction, CallCounter, build_tiny_model, encode_prompt


@pytest.fixture(scope="module")
def inv(host):
    import comfyui_videoedit.nodes.inversion as inv

    return inv


def invert(inv, model, latent, cond, steps=10, inversion_steps=0, batch=2, scheduler="ddim_uniform"):
    """The node called as ComfyUI's executor calls V3 nodes: keyword arguments by input id."""
    out = inv.DDIMInversion.execute(
        model=model,
        latent=latent,
        conditioning=cond,
        steps=steps,
        inversion_steps=inversion_steps,
        scheduler=scheduler,
        frame_batch_size=batch,
        cache_mode="off",
        cache_limit_mb=0,
        clear_cache=False,
    )
    return out.result


def sample_back_with_core_nodes(host, model, cond, latent, sigmas, cfg=1.0):
    """ComfyUI's own SamplerCustom (no added noise) with KSamplerSelect('euler')."""
    cs = host.custom_sampler
    (sampler,) = cs.KSamplerSelect.execute("euler").result
    out = cs.SamplerCustom.execute(model, False, 0, cfg, cond, cond, sampler, sigmas, latent).result
    return out[0]["samples"]


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_analytic_model_round_trips_through_comfy_sampler(host, inv, tiny_clip, inference_mode, prediction):
    base = build_tiny_model(prediction=prediction)
    ms = base.get_model_object("model_sampling")
    field = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    analytic = AnalyticPrediction(field, ms, prediction=prediction)
    model = analytic.attach(base)
    cond = encode_prompt(tiny_clip, "a dog running")
    source = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    record, noisy, sigmas = invert(inv, model, {"samples": source}, cond, steps=20)
    assert analytic.calls == 2 * 20  # two frame chunks, one call per step
    # the returned SIGMAS are what a KSampler with the same steps and scheduler walks
    assert torch.equal(sigmas, host.comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 20).cpu())
    assert noisy["samples"].abs().mean() > 5 * source.abs().mean()
    back = sample_back_with_core_nodes(host, model, cond, noisy, sigmas)
    assert (back - source).abs().max() < 1e-4


def test_tiny_model_runs_through_existing_patches(host, inv, tiny_model, tiny_clip, inference_mode):
    seen = []

    def attn1_probe(n, context, value, extra_options):
        seen.append((extra_options["block"], tuple(extra_options.get("ve_frame_indices", ()))))
        return n, context, value

    def half_attention(q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        return 0.5 * optimized_attention(q, k, v, extra_options["n_heads"])

    patched = tiny_model.clone()
    patched.set_model_attn1_patch(attn1_probe)
    patched.set_model_attn1_replace(half_attention, "output", 4, 0)
    counter = CallCounter()
    patched = counter.attach(patched)
    cond = encode_prompt(tiny_clip, "")
    source = {"samples": torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    record, noisy, sigmas = invert(inv, patched, source, cond, steps=4, inversion_steps=8, batch=2)

    from comfyui_videoedit.inversion import ddim, schedule

    ms = tiny_model.get_model_object("model_sampling")
    fine = host.comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 8)
    up, _ = schedule.inversion_schedule(sigmas, fine)
    assert counter.calls == 2 * (len(up) - 1)  # every fine step, both chunks, through the wrapper
    assert len(seen) == counter.calls * 16  # the attn1 patch ran in all 16 self-attention layers
    assert {f for _, f in seen} == {(0, 1), (2,)}  # patches learn which global frames each chunk holds
    assert record.latents_vp.shape == (5, 3, 4, 8, 8) and record.latents_vp.dtype == torch.float16
    assert torch.equal(record.sigmas, sigmas)
    # the cached latent at the last step is the returned x_T
    x_T = patched.get_model_object("process_latent_in")(noisy["samples"])
    assert torch.allclose(x_T, record.x_T, rtol=1e-5, atol=1e-5)
    assert torch.allclose(record.latent_at(sigmas[0]), x_T, rtol=1e-5, atol=1e-5)
    vp = ddim.to_vp(record.x_T, sigmas[0])
    assert torch.allclose(record.latents_vp[0].float(), vp, atol=2e-3 * float(vp.abs().max()))
    # row S is the source itself (sigma 0), in the sampler's space
    assert torch.allclose(record.latents_vp[-1].float(), source["samples"] * 0.18215, atol=1e-3)
    # the patches changed the result: the same inversion without them differs
    plain, _, _ = invert(inv, tiny_model, source, cond, steps=4, inversion_steps=8, batch=2)
    assert not torch.allclose(plain.x_T, record.x_T)
    assert plain.weights_id == record.weights_id and plain.patches_id != record.patches_id


def test_reconstruction_check_reports_errors(host, inv, tiny_model, tiny_clip, tiny_vae, inference_mode):
    ms = tiny_model.get_model_object("model_sampling")
    field = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    model = AnalyticPrediction(field, ms).attach(tiny_model)
    cond = encode_prompt(tiny_clip, "")
    frames = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    source = {"samples": tiny_vae.encode(frames)}
    record, _, _ = invert(inv, model, source, cond, steps=10)
    out = inv.InversionReconstruction.execute(model, record, 1.0, False, None, tiny_vae, None, source)
    latent, images, err, psnr = out.result
    assert err < 1e-9 and latent["samples"].shape == (2, 4, 8, 8)
    assert images.shape == (2, 64, 64, 3) and psnr > 60
    assert "latent MSE" in out.ui.value and "PSNR" in out.ui.value
    # PSNR against the given frames measures the VAE too (random VAE: low), still finite
    out2 = inv.InversionReconstruction.execute(model, record, 1.0, False, None, tiny_vae, frames)
    assert out2.result[3] < psnr
    # without a VAE: the image output is the latent error map, MSE against the cached fp16 source
    out3 = inv.InversionReconstruction.execute(model, record, 1.0, False)
    assert out3.result[1].shape == (2, 64, 64, 3) and out3.result[2] < 1e-5
    # the tiny random model does not round-trip DDIM (known); the node still reports it
    rec_tiny, _, _ = invert(inv, tiny_model, source, cond, steps=4)
    tiny_err = inv.InversionReconstruction.execute(tiny_model, rec_tiny, 1.0, False).result[2]
    assert tiny_err > 1e-3


def test_bad_input_gives_clear_errors(host, inv, tiny_model, tiny_clip, inference_mode):
    cond = encode_prompt(tiny_clip, "")
    good = {"samples": torch.randn(2, 4, 8, 8)}
    with pytest.raises(ValueError, match="has 3 channels but this MODEL expects 4"):
        invert(inv, tiny_model, {"samples": torch.randn(2, 3, 8, 8)}, cond)
    with pytest.raises(ValueError, match="0 frames"):
        invert(inv, tiny_model, {"samples": torch.zeros(0, 4, 8, 8)}, cond)
    with pytest.raises(ValueError, match="steps: 1 is too few"):
        invert(inv, tiny_model, good, cond, steps=1)
    with pytest.raises(ValueError, match="latent: expected image-model latents"):
        invert(inv, tiny_model, {"samples": torch.randn(1, 4, 2, 8, 8)}, cond)
    with pytest.raises(ValueError, match="scheduler"):
        invert(inv, tiny_model, good, cond, scheduler="nope")
    with pytest.raises(ValueError, match="conditioning: empty"):
        invert(inv, tiny_model, good, [])
    record, _, _ = invert(inv, tiny_model, good, cond, steps=2)
    other = build_tiny_model(seed=5)
    from comfyui_videoedit.adapters import source as comfy_adapter

    with pytest.raises(ValueError, match="different model"):
        inv.InversionReconstruction.execute(other, record, 1.0, False)
    with pytest.raises(ValueError, match="different model"):
        comfy_adapter.source_replay(other, record)
    with pytest.raises(ValueError, match="no null-text"):
        inv.ApplyNullText.execute(tiny_model, record)
    # a LoRA-like weight patch is a different model too
    lora = tiny_model.clone()
    key = next(k for k in lora.model.state_dict() if k.endswith("out.2.weight"))
    lora.add_patches({key: (torch.zeros_like(lora.model.state_dict()[key]),)}, 0.5)
    with pytest.raises(ValueError, match="different model"):
        comfy_adapter.source_replay(lora, record)
    comfy_adapter.source_replay(tiny_model.clone(), record)  # a plain clone is the same model


class FakeControl:
    """What slice_conditioning needs of a ComfyUI ControlBase: copy(), a hint, a chain."""

    def __init__(self, hint, previous=None):
        self.cond_hint_original = hint
        self.previous_controlnet = previous

    def copy(self):
        return FakeControl(self.cond_hint_original)

    def set_previous_controlnet(self, previous):
        self.previous_controlnet = previous
        return self


def test_chunks_get_their_own_frames_of_per_frame_conditioning(host):
    from comfyui_videoedit.adapters.conditioning import slice_conditioning

    hints = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    still = torch.ones(1, 3, 8, 8)
    inner = FakeControl(hints)
    outer = FakeControl(still, inner)
    cond = [[torch.randn(5, 77, 32), {"pooled_output": torch.randn(1, 32), "control": outer}]]
    part = slice_conditioning(cond, slice(2, 4), 5)
    ctx, extras = part[0]
    assert torch.equal(ctx, cond[0][0][2:4]) and extras["pooled_output"] is cond[0][1]["pooled_output"]
    ctrl = extras["control"]
    assert ctrl is not outer and ctrl.cond_hint_original is still  # batch-1 hint kept
    assert torch.equal(ctrl.previous_controlnet.cond_hint_original[:, 0, 0, 0], torch.tensor([2.0, 3.0]))
    assert outer.previous_controlnet is inner and inner.cond_hint_original is hints  # inputs untouched
    plain = [[torch.randn(1, 77, 32), {"control": FakeControl(still)}]]
    assert slice_conditioning(plain, slice(0, 2), 5)[0][1]["control"] is plain[0][1]["control"]


def test_interrupting_the_inversion_caches_nothing(host, inv, tiny_model, tiny_clip, inference_mode):
    import comfy.model_management as mm

    from comfyui_videoedit.adapters import inversion as comfy_adapter

    comfy_adapter.MEMORY_CACHE.clear()
    cond = encode_prompt(tiny_clip, "")
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))}
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            inv.DDIMInversion.execute(tiny_model, latent, cond, 3, 0, "ddim_uniform", 2, "memory", 0, False)
    finally:
        mm.interrupt_current_processing(False)
    assert len(comfy_adapter.MEMORY_CACHE) == 0
    assert "transformer_options" in tiny_model.model_options  # the input model is untouched
    assert "ve_frame_indices" not in tiny_model.model_options["transformer_options"]
