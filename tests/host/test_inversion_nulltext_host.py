"""Video-P2P shared null-text on the tiny model, inside inference mode like ComfyUI's executor,
and the model patch that samples with the embeddings."""

import pytest
import torch

from ve_testkit.models import encode_prompt


@pytest.fixture(scope="module")
def inv(host):
    import comfyui_videoedit.nodes.inversion as inv

    return inv


def per_step_losses(host, model, record, positive, negative, cfg):
    """Sample with ComfyUI's own sampler (euler = DDIM, no noise) from x_T along the inversion's
    sigmas and return, per step, the MSE of the VP latent against the cached inversion latent."""
    from comfyui_videoedit.adapters import inversion as comfy_adapter
    from comfyui_videoedit.inversion import ddim

    xs = {}

    def callback(step, x0, x, total):
        xs[step] = x.detach().cpu()

    x_T = comfy_adapter.output_latent(model, record)["samples"]
    out = host.comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_T),
        cfg,
        host.comfy.samplers.sampler_object("euler"),
        record.sigmas,
        positive,
        negative,
        x_T,
        callback=callback,
        disable_pbar=True,
    )
    xs[record.num_steps] = model.get_model_object("process_latent_in")(out)
    losses = []
    for k in range(1, record.num_steps + 1):
        vp = ddim.to_vp(xs[k].float(), record.sigmas[k])
        losses.append(float(((vp - record.latents_vp[k].float()) ** 2).mean()))
    return losses


def test_null_text_pulls_cfg_sampling_back_onto_the_inversion(host, inv, tiny_model, tiny_clip, inference_mode):
    assert torch.is_inference_mode_enabled()
    positive = encode_prompt(tiny_clip, "a cat on a sofa")
    negative = encode_prompt(tiny_clip, "")
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(20))}
    record = inv.DDIMInversion.execute(tiny_model, latent, positive, 3, 0, "ddim_uniform", 2, "off", 0, False).result[0]
    steps = record.num_steps
    out = inv.NullTextOptimization.execute(tiny_model, record, negative, 7.5, 5, 1)
    tuned = out.result[0]
    assert "null-text" in out.ui.value
    # one embedding per step shared by all frames, and the input record untouched
    assert tuned.null_text.shape == (steps, 77, 32) and tuned.null_text.dtype == torch.float32
    assert record.null_text is None and tuned.latents_vp is record.latents_vp
    assert not torch.equal(tuned.null_text[0], negative[0][0][0])

    plain = per_step_losses(host, tiny_model, record, positive, negative, 7.5)
    patched = inv.ApplyNullText.execute(tiny_model, tuned).result[0]
    optimised = per_step_losses(host, patched, tuned, positive, negative, 7.5)
    assert optimised[0] < plain[0]  # the first step starts from the same exact x_T
    assert sum(optimised) < sum(plain)

    # the reconstruction check can use the embeddings directly
    mse_plain = inv.InversionReconstruction.execute(tiny_model, record, 7.5, False, negative).result[2]
    mse_tuned = inv.InversionReconstruction.execute(tiny_model, tuned, 7.5, True, negative).result[2]
    assert mse_tuned < mse_plain


def test_null_text_swap_replaces_only_the_uncond_chunk(host, inference_mode):
    from comfyui_videoedit.adapters.nulltext import NullTextSwap
    from comfyui_videoedit.inversion.record import InversionRecord

    sigmas = torch.tensor([4.0, 1.0, 0.0])
    record = InversionRecord(
        sigmas=sigmas,
        latents_vp=torch.zeros(3, 2, 4, 2, 2).half(),
        x_T=torch.zeros(2, 4, 2, 2),
        conditioning=[[torch.zeros(1, 77, 8), {}]],
        weights_id="w",
        patches_id="p",
        latent_hash="l",
    ).with_null_text(torch.stack([torch.full((77, 8), 1.0), torch.full((77, 8), 2.0)]), 7.5)
    seen = {}

    def executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw):
        seen["ctx"] = c_crossattn
        return x

    ctx = torch.full((4, 77, 8), -1.0)
    swap = NullTextSwap(record)
    swap(executor, torch.zeros(4, 4, 2, 2), torch.full((4,), 1.0), None, ctx, None, {"cond_or_uncond": [0, 1]})
    assert (seen["ctx"][:2] == -1).all() and (seen["ctx"][2:] == 2.0).all()
    assert (ctx == -1).all()  # the caller's tensor is not modified
    swap(executor, torch.zeros(2, 4, 2, 2), torch.full((2,), 4.0), None, ctx[:2], None, {"cond_or_uncond": [1]})
    assert (seen["ctx"] == 1.0).all()
    swap(executor, torch.zeros(2, 4, 2, 2), torch.full((2,), 4.0), None, ctx[:2], None, {"cond_or_uncond": [0]})
    assert (seen["ctx"] == -1).all()
    with pytest.raises(ValueError, match="not in the inversion's schedule"):
        swap(executor, torch.zeros(2, 4, 2, 2), torch.full((2,), 2.0), None, ctx[:2], None, {"cond_or_uncond": [1]})
