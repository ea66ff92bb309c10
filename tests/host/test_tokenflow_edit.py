"""TokenFlow end to end on the tiny model: real DDIM inversion node, then ComfyUI's samplers."""

import pytest
import torch

from ve_testkit.models import encode_prompt
from ve_testkit.runs import ddim_invert, sampler_custom


@pytest.fixture(scope="module")
def edit_setup(host, pack_nodes, tiny_model, tiny_clip):
    frames = 9
    with torch.inference_mode():
        latent = {"samples": torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.5}
        src = encode_prompt(tiny_clip, "a car")
        out = ddim_invert(tiny_model, latent, src, 4, cache_mode="memory")
        inversion, x_t, sigmas = out.args
        pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    return {"inversion": inversion, "x_t": x_t, "sigmas": sigmas, "pos": pos, "neg": neg}


def _apply(model, inversion, **kw):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    args = dict(
        window=4,
        pnp_attn_t=0.5,
        pnp_f_t=0.8,
        seed=1,
        nn_feature="input",
        blend="official",
        pnp_attn_blocks="output 4-11",
        pnp_resnet_blocks="output 4",
    )
    args.update(kw)
    return ApplyTokenFlow.execute(model, inversion, **args).args[0]


def _sampler_custom(host, model, s, cfg=5.0):
    return sampler_custom(host, model, s["pos"], s["neg"], s["sigmas"], s["x_t"], cfg)


def test_nine_frame_edit_through_sampler_custom(host, tiny_model, edit_setup, inference_mode):
    before = repr(tiny_model.model_options)
    model = _apply(tiny_model, edit_setup["inversion"])
    a = _sampler_custom(host, model, edit_setup)
    assert a.shape == (9, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, _sampler_custom(host, model, edit_setup))  # same seed → identical
    assert repr(tiny_model.model_options) == before
    dm = tiny_model.model.diffusion_model
    assert not any(m._forward_hooks for m in dm.modules()), "no hook may stay on the shared UNet"


def test_ksampler_with_same_steps_and_ddim_uniform(host, tiny_model, edit_setup, inference_mode):
    model = _apply(tiny_model, edit_setup["inversion"])
    (out,) = host.nodes.common_ksampler(
        model,
        0,
        4,
        5.0,
        "euler",
        "ddim_uniform",
        edit_setup["pos"],
        edit_setup["neg"],
        edit_setup["x_t"],
        disable_noise=True,
    )
    assert torch.allclose(out["samples"], _sampler_custom(host, model, edit_setup), atol=1e-5)


def test_mismatched_schedule_names_both(host, tiny_model, edit_setup, inference_mode):
    model = _apply(tiny_model, edit_setup["inversion"])
    with pytest.raises(ValueError, match="not in the inversion's schedule"):
        host.nodes.common_ksampler(
            model,
            0,
            4,
            5.0,
            "euler",
            "karras",
            edit_setup["pos"],
            edit_setup["neg"],
            edit_setup["x_t"],
            disable_noise=True,
        )


def test_interrupt_leaves_no_patch_behind(host, tiny_model, edit_setup, inference_mode):
    import comfy.model_management as mm

    before = repr(tiny_model.model_options)
    plain_before = host.nodes.common_ksampler(
        tiny_model, 0, 2, 5.0, "euler", "normal", edit_setup["pos"], edit_setup["neg"], edit_setup["x_t"]
    )[0]["samples"]
    model = _apply(tiny_model, edit_setup["inversion"])
    calls = {"n": 0}

    def interrupt_on_second_step(executor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(
        host.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_interrupt", interrupt_on_second_step
    )
    with pytest.raises(mm.InterruptProcessingException):
        _sampler_custom(host, m, edit_setup)
    mm.interrupt_current_processing(False)
    assert repr(tiny_model.model_options) == before
    assert not any(mod._forward_hooks for mod in tiny_model.model.diffusion_model.modules())
    plain_after = host.nodes.common_ksampler(
        tiny_model, 0, 2, 5.0, "euler", "normal", edit_setup["pos"], edit_setup["neg"], edit_setup["x_t"]
    )[0]["samples"]
    assert torch.equal(plain_before, plain_after)


def test_inversion_from_another_model_is_refused(host, edit_setup, inference_mode):
    from ve_testkit.models import build_tiny_model

    other = build_tiny_model(seed=9)
    with pytest.raises(ValueError, match="(?i)model|weights"):
        _apply(other, edit_setup["inversion"])


def test_sampler_node_equals_apply_then_sampler_custom(host, tiny_model, edit_setup, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import TokenFlowSampler

    before = repr(tiny_model.model_options)
    (latent,) = TokenFlowSampler.execute(
        tiny_model,
        edit_setup["pos"],
        edit_setup["neg"],
        edit_setup["inversion"],
        5.0,
        "euler",
        window=4,
        pnp_attn_t=0.5,
        pnp_f_t=0.8,
        seed=1,
        nn_feature="input",
        blend="official",
        pnp_attn_blocks="output 4-11",
        pnp_resnet_blocks="output 4",
    ).args
    expected = _sampler_custom(host, _apply(tiny_model, edit_setup["inversion"]), edit_setup)
    assert torch.equal(latent["samples"], expected)
    assert repr(tiny_model.model_options) == before


def test_sampler_node_rejects_an_unknown_sampler(host, tiny_model, edit_setup, inference_mode):
    from comfyui_videoedit.adapters.tokenflow import sample_tokenflow

    with pytest.raises(ValueError, match="sampler_name"):
        sample_tokenflow(tiny_model, edit_setup["pos"], edit_setup["neg"], edit_setup["inversion"], 5.0, "nope")


def test_a_lora_on_the_model_composes(host, tiny_model, tiny_clip, edit_setup, inference_mode):
    """LoRA weight patches (LoraLoader's path) stay active in every TokenFlow pass: window 1,
    w = 1, no PnP equals extended attention sampled with the LoRA model, and differs from the
    same edit without the LoRA. An inversion made without the LoRA is refused."""
    import comfy.sd

    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention
    from ve_testkit.models import tiny_lora

    lora_model, _ = comfy.sd.load_lora_for_models(tiny_model, None, tiny_lora(tiny_model), 1.0, 0.0)
    assert lora_model.patches, "the LoRA did not load"
    latent = {"samples": torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * 0.5}
    src = encode_prompt(tiny_clip, "a car")
    inversion, x_t, sigmas = ddim_invert(lora_model, latent, src, 3).args
    s = dict(edit_setup, inversion=inversion, x_t=x_t, sigmas=sigmas)
    reduced = dict(window=1, blend="paper", pnp_attn_blocks="none", pnp_resnet_blocks="")
    a = _sampler_custom(host, _apply(lora_model, inversion, **reduced), s)
    (ext,) = ApplyExtendedAttention.execute(lora_model, keyframe_stride=1, keyframes="").args
    b = _sampler_custom(host, ext, s)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max()
    (ext_base,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="").args
    assert (a - _sampler_custom(host, ext_base, s)).abs().max() > 1e-3 * b.abs().max(), "the LoRA had no effect"
    with pytest.raises(ValueError, match="different model"):
        _apply(tiny_model, inversion)
