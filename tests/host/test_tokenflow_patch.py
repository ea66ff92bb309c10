"""TokenFlow's MODEL patch on the tiny model through ComfyUI's own samplers (stand-in source)."""

import torch

from ve_testkit.models import encode_prompt
from ve_testkit.sources import FixedSource


def _setup(host, tiny_model, tiny_clip, frames=9, steps=4):
    import comfy.samplers

    pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    ms = tiny_model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps)
    g = torch.Generator().manual_seed(0)
    src = FixedSource(torch.randn(frames, 4, 8, 8, generator=g), sigmas, encode_prompt(tiny_clip, "a car")[0][0])
    latent = torch.randn(frames, 4, 8, 8, generator=g)
    return pos, neg, sigmas, src, latent


def _sample_custom(host, model, pos, neg, sigmas, latent, cfg=4.0):
    import comfy.sample
    import comfy.samplers

    noise = torch.zeros_like(latent)
    return comfy.sample.sample_custom(
        model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, pos, neg, latent, disable_pbar=True, seed=0
    )


def test_tokenflow_runs_deterministic_and_leaves_model_unchanged(
    host, pack_nodes, tiny_model, tiny_clip, inference_mode
):
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip)
    before = repr(tiny_model.model_options)
    model = tokenflow_model(tiny_model, src, window=4, seed=3)
    assert repr(tiny_model.model_options) == before
    a = _sample_custom(host, model, pos, neg, sigmas, latent)
    b = _sample_custom(host, model, pos, neg, sigmas, latent)
    assert a.shape == latent.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert repr(tiny_model.model_options) == before
    other = _sample_custom(host, tokenflow_model(tiny_model, src, window=4, seed=4), pos, neg, sigmas, latent)
    assert not torch.equal(a, other)  # the keyframe draw depends on the seed


def test_window_one_equals_extended_attention_over_all_frames(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=5)
    tf = tokenflow_model(tiny_model, src, window=1, blend="paper", pnp_attn_blocks="none", pnp_resnet_blocks="")
    (ext,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="").args
    a = _sample_custom(host, tf, pos, neg, sigmas, latent)
    b = _sample_custom(host, ext, pos, neg, sigmas, latent)
    # equal up to float rounding (the propagation pass runs the other layers in 1-frame chunks)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max()


def test_split_cond_uncond_calls_equal_joint_call(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    """ComfyUI may run uncond and cond as separate UNet calls when memory is short."""
    import comfy.patcher_extension as pe

    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=6)
    model = tokenflow_model(tiny_model, src, window=3, seed=2)
    joint = _sample_custom(host, model, pos, neg, sigmas, latent)

    def split(executor, model_, conds, x_in, timestep, model_options):
        return [executor(model_, [c], x_in, timestep, model_options)[0] for c in conds]

    split_model = model.clone()
    split_model.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "test_split", split)
    separate = _sample_custom(host, split_model, pos, neg, sigmas, latent)
    assert (joint - separate).abs().max() <= 1e-5 * joint.abs().max(), (joint - separate).abs().max()


def _controlnet_conditioning(host, pos, neg, frames, seed=5):
    """The user's own ControlNet node on per-frame hints (one random image per frame)."""
    from ve_testkit.models import tiny_controlnet

    hints = torch.rand(frames, 64, 64, 3, generator=torch.Generator().manual_seed(seed))
    return host.nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, tiny_controlnet(seed), hints, 1.0, 0.0, 1.0)


def test_controlnet_in_the_conditioning_reaches_every_pass_frame_by_frame(
    host, pack_nodes, tiny_model, tiny_clip, inference_mode
):
    """With window 1, w = 1 and no PnP, TokenFlow equals extended attention over all frames; it
    still does with a per-frame ControlNet, which holds only if every keyframe and propagation
    pass receives the control residuals of exactly its own frames."""
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=5)
    cpos, cneg = _controlnet_conditioning(host, pos, neg, frames=5)
    tf = tokenflow_model(tiny_model, src, window=1, blend="paper", pnp_attn_blocks="none", pnp_resnet_blocks="")
    (ext,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="").args
    a = _sample_custom(host, tf, cpos, cneg, sigmas, latent)
    b = _sample_custom(host, ext, cpos, cneg, sigmas, latent)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max()
    without = _sample_custom(host, tf, pos, neg, sigmas, latent)
    assert (a - without).abs().max() > 1e-3 * without.abs().max(), "the ControlNet had no effect"


def _probe(model, on_call):
    """A clone whose UNet calls inside TokenFlow's wrapper (a DIFFUSION_MODEL wrapper added
    after it runs inside it) are reported as ``on_call(x, control)``."""
    import comfy.patcher_extension as pe

    def inner(executor, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kw):
        on_call(x, control)
        return executor(x, timesteps, context, y, control, transformer_options, **kw)

    probe = model.clone()
    probe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", inner)
    return probe


def _counting(model):
    """A probe clone recording the batch size of each UNet call."""
    calls = []
    return _probe(model, lambda x, control: calls.append(x.shape[0])), calls


def test_full_tokenflow_with_a_controlnet_is_deterministic(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=7)
    cpos, cneg = _controlnet_conditioning(host, pos, neg, frames=7)
    model = tokenflow_model(tiny_model, src, window=3, seed=2)
    seen = []

    def on_call(x, control):
        if control is not None:  # edit passes: control sliced to the same rows as x
            seen.append(all(t.shape[0] == x.shape[0] for part in control.values() for t in part if t is not None))

    a = _sample_custom(host, _probe(model, on_call), cpos, cneg, sigmas, latent)
    assert seen and all(seen)
    assert torch.isfinite(a).all() and torch.equal(a, _sample_custom(host, model, cpos, cneg, sigmas, latent))


def test_source_rows_share_the_batch_of_the_sampler_rows(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    """As the official code: one UNet call for the keyframes and one per propagation chunk,
    each holding the source rows then the cond/uncond rows; same result as separate calls."""
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=7)
    cpos, cneg = _controlnet_conditioning(host, pos, neg, frames=7)
    probe, calls = _counting(tokenflow_model(tiny_model, src, window=3, seed=2))
    joint = _sample_custom(host, probe, cpos, cneg, sigmas, latent)
    # 7 frames, window 3: keyframes 3 (+ 2x3), chunks 3 (+ 2x3), 3 (+ 2x3), 1 (+ 2x1) — per step
    assert calls == [9, 9, 9, 3] * (len(sigmas) - 1)
    probe, calls = _counting(tokenflow_model(tiny_model, src, window=3, seed=2, share_batch=False))
    separate = _sample_custom(host, probe, cpos, cneg, sigmas, latent)
    assert calls == [3, 6, 3, 6, 3, 6, 1, 2] * (len(sigmas) - 1)
    assert (joint - separate).abs().max() <= 1e-5 * separate.abs().max(), (joint - separate).abs().max()


def test_a_longer_source_prompt_still_shares_the_batch(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    """A source prompt of 154 tokens next to a 77-token target: both contexts are repeated to
    the common length (attention over repeated tokens is unchanged)."""
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    pos, neg, sigmas, src, latent = _setup(host, tiny_model, tiny_clip, frames=4)
    long_context = encode_prompt(tiny_clip, "a small red car on a wet road at night " * 12)[0][0]
    assert long_context.shape[1] == 154 and pos[0][0].shape[1] == 77
    src = FixedSource(src.latents, sigmas, long_context)
    probe, calls = _counting(tokenflow_model(tiny_model, src, window=2, seed=5))
    joint = _sample_custom(host, probe, pos, neg, sigmas, latent)
    assert calls[:3] == [2 + 4, 2 + 4, 2 + 4]
    separate = _sample_custom(
        host, tokenflow_model(tiny_model, src, window=2, seed=5, share_batch=False), pos, neg, sigmas, latent
    )
    assert (joint - separate).abs().max() <= 1e-5 * separate.abs().max(), (joint - separate).abs().max()
