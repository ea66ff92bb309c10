"""Video-P2P on the tiny model (real SD1 tokenizer, tiny CLIP) through ComfyUI's own samplers.

"Replay equals plain sampling" needs an inversion that the sampler retraces exactly; random
weights do not invert (see ve_testkit.models), so those tests build the inversion record from
the plain sampling trajectory itself (float32 latents): then the source rows of every step
hold exactly the latent the target rows hold, and any wrong frame, step or token bookkeeping
shows up as a difference.
"""

import dataclasses

import pytest
import torch

from ve_testkit.models import encode_prompt

FRAMES, STEPS, SIZE = 4, 4, 16
SOURCE, TARGET = "a man riding a bike", "a man riding a motorcycle"


def _sigmas(model, steps=STEPS):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", steps)


def _sample(model, pos, neg, x_T, sigmas, cfg=1.0, callback=None, sampler="euler"):
    import comfy.sample
    import comfy.samplers

    return comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_T),
        cfg,
        comfy.samplers.sampler_object(sampler),
        sigmas,
        pos,
        neg,
        x_T,
        callback=callback,
        disable_pbar=True,
        seed=0,
    )


def _edit(clip, source=SOURCE, target=TARGET, **kw):
    from comfyui_videoedit.nodes.p2p import P2PEditNode

    args = dict(
        source_prompt=source,
        target_prompt=target,
        mode="auto",
        reweight="",
        blend_source="",
        blend_target="",
        subtract="",
    )
    args.update(kw)
    return P2PEditNode.execute(clip, **args).args


def _options(**kw):
    args = dict(
        cross_replace_steps="1.0",
        self_replace_steps=0.5,
        blend_threshold=0.3,
        blend_start=0.0,
        source_mode="replay",
        frame_attention="none",
    )
    args.update(kw)
    return args


def _apply(model, edit, inversion, **kw):
    from comfyui_videoedit.nodes.p2p import ApplyP2P

    return ApplyP2P.execute(model, edit, inversion, **_options(**kw)).args[0]


@pytest.fixture(scope="module")
def setup(host, pack_nodes, tiny_model, tiny_clip):
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    with torch.inference_mode():
        latent = torch.randn(FRAMES, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 0.5
        src = encode_prompt(tiny_clip, SOURCE)
        record, noisy, sigmas = DDIMInversion.execute(
            tiny_model, {"samples": latent}, src, STEPS, 0, "ddim_uniform", 16, "off", 0, False
        ).args
        neg = encode_prompt(tiny_clip, "")
    return {"record": record, "x_T": noisy["samples"], "sigmas": sigmas, "src": src, "neg": neg}


def _retraced_record(model, record, pos, neg, cfg):
    """An inversion record whose cached latents are the plain sampling trajectory from x_T
    (float32), the raw x_T to sample from, and that sampling's result."""
    x_T = model.get_model_object("process_latent_out")(record.x_T.clone())
    states = []
    out = _sample(
        model, pos, neg, x_T, record.sigmas, cfg, callback=lambda i, d, x, n: states.append(x.float().clone())
    )
    states.append(model.get_model_object("process_latent_in")(out.clone()).float())
    assert len(states) == len(record.sigmas)
    s = record.sigmas.view(-1, 1, 1, 1, 1)
    vp = torch.stack(states) / torch.sqrt(1 + s * s)
    return dataclasses.replace(record, latents_vp=vp, x_T=states[0]), x_T, out


def test_edit_node_uses_the_real_tokenizer_and_refuses_bad_input(host, pack_nodes, tiny_clip, inference_mode):
    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle", reweight="motorcycle:2")
    assert edit.mode == "replace" and target[0][0].shape[1] == 77
    assert torch.allclose(edit.mapper.sum(0), torch.ones(77))
    bike, moto = edit.source.positions("bike"), edit.target.positions("motorcycle")
    assert bike and moto and edit.blend_src[bike].eq(1).all() and edit.blend_tgt[moto].eq(1).all()
    assert edit.equalizer[moto].eq(2).all() and edit.equalizer.sum() == 77 + len(moto)
    refine, _ = _edit(tiny_clip, target="a man riding a red bike")
    red = refine.target.positions("red")
    assert refine.mode == "refine" and refine.keep[red].eq(1).all() and refine.keep.sum() == len(red)  # new word
    for kw, msg in [
        (dict(target="a man riding a red bike", mode="replace"), "target_prompt: word swap"),
        (dict(blend_source="car", blend_target="motorcycle"), "blend_source: 'car' is not a word"),
        (dict(reweight="dog:2"), "reweight: 'dog'"),
        (dict(blend_source="bike"), "blend_target: empty"),
        (dict(source=""), "source_prompt: the prompt is empty"),
        (dict(target="a red car on a wet road " * 12), "target_prompt: ComfyUI splits"),
        (dict(mode="swap"), "mode: 'swap'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            _edit(tiny_clip, **kw)


def test_weighted_prompt_syntax_keeps_the_words(host, pack_nodes, tiny_clip, inference_mode):
    edit, _ = _edit(tiny_clip, target="a man riding a (motorcycle:1.2)")
    assert edit.target.words == ("a", "man", "riding", "a", "motorcycle")


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_replay_with_target_equal_to_source_equals_plain_sampling(
    host, tiny_model, tiny_clip, setup, cfg, inference_mode
):
    record, x_T, expected = _retraced_record(tiny_model, setup["record"], setup["src"], setup["neg"], cfg)
    edit, target = _edit(tiny_clip, target=SOURCE)
    before = repr((tiny_model.model_options, tiny_model.wrappers, tiny_model.callbacks))
    model = _apply(tiny_model, edit, record)
    out = _sample(model, target, setup["neg"], x_T, record.sigmas, cfg)
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max(), (out - expected).abs().max()
    assert repr((tiny_model.model_options, tiny_model.wrappers, tiny_model.callbacks)) == before
    # the check can fail: another target prompt changes the result
    other, target2 = _edit(tiny_clip)
    changed = _sample(_apply(tiny_model, other, record), target2, setup["neg"], x_T, record.sigmas, cfg)
    assert (changed - expected).abs().max() > 1e-3 * expected.abs().max()


def test_first_frame_attention_equals_extended_attention_on_frame_zero(
    host, tiny_model, tiny_clip, setup, inference_mode
):
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    (ext,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="0").args
    record, x_T, expected = _retraced_record(ext, setup["record"], setup["src"], setup["neg"], 1.0)
    edit, target = _edit(tiny_clip, target=SOURCE)
    out = _sample(
        _apply(tiny_model, edit, record, frame_attention="first_frame"), target, setup["neg"], x_T, record.sigmas
    )
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max(), (out - expected).abs().max()
    # P2P over the Extended Attention model: that model keeps attn1 (P2P only injects q/k), same result
    on_ext = _sample(_apply(ext, edit, record, frame_attention="first_frame"), target, setup["neg"], x_T, record.sigmas)
    assert (on_ext - expected).abs().max() <= 1e-4 * expected.abs().max(), (on_ext - expected).abs().max()


def test_blend_mask_of_zeros_returns_the_source_and_of_ones_the_unblended_edit(
    host, tiny_model, tiny_clip, setup, inference_mode
):
    record = setup["record"]
    blended, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle")
    plain, _ = _edit(tiny_clip)
    x_T = setup["x_T"]
    zeros = _sample(
        _apply(tiny_model, blended, record, blend_threshold=1.0), target, setup["neg"], x_T, record.sigmas, 4.0
    )
    source = tiny_model.get_model_object("process_latent_out")(record.source_latent())
    assert (zeros - source).abs().max() <= 1e-5 * source.abs().max(), (zeros - source).abs().max()
    ones = _sample(
        _apply(tiny_model, blended, record, blend_threshold=0.0), target, setup["neg"], x_T, record.sigmas, 4.0
    )
    unblended = _sample(_apply(tiny_model, plain, record), target, setup["neg"], x_T, record.sigmas, 4.0)
    assert torch.equal(ones, unblended)
    assert (unblended - source).abs().max() > 1e-3 * source.abs().max()


def test_sampler_node_outputs_the_latent_and_per_frame_masks(host, tiny_model, tiny_clip, setup, inference_mode):
    from comfyui_videoedit.nodes.p2p import P2PSampler

    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle")
    latent, masks = P2PSampler.execute(
        tiny_model,
        edit,
        setup["record"],
        setup["neg"],
        4.0,
        "euler",
        **_options(cross_replace_steps="0.5", blend_threshold=0.9),
    ).args
    expected = _sample(
        _apply(tiny_model, edit, setup["record"], cross_replace_steps="0.5", blend_threshold=0.9),
        target,
        setup["neg"],
        setup["x_T"],
        setup["sigmas"],
        4.0,
    )
    assert torch.equal(latent["samples"], expected)
    assert masks.shape == (FRAMES, SIZE * 8, SIZE * 8) and ((masks == 0) | (masks == 1)).all()
    assert 0 < masks.mean() < 1


def test_joint_mode_with_a_zero_mask_is_the_null_text_reconstruction(
    host, tiny_model, tiny_clip, setup, inference_mode
):
    from comfyui_videoedit.adapters.inversion import sample_back
    from comfyui_videoedit.adapters.nulltext import optimize_null_text

    record, _ = optimize_null_text(tiny_model, setup["record"], setup["neg"], cfg=3.0, inner_steps=2)
    reconstruction = sample_back(
        tiny_model, record, cfg=3.0, positive=setup["src"], negative=setup["neg"], use_null_text=True
    )
    edit, target = _edit(tiny_clip, target=SOURCE, blend_source="bike", blend_target="bike")
    out = _sample(
        _apply(tiny_model, edit, record, source_mode="joint", blend_threshold=1.0),
        target,
        setup["neg"],
        setup["x_T"],
        record.sigmas,
        3.0,
    )
    assert (out - reconstruction).abs().max() <= 1e-4 * reconstruction.abs().max(), (out - reconstruction).abs().max()
    # decoupled guidance: without the blend the target (plain negative) is not the reconstruction
    free = _sample(
        _apply(tiny_model, edit, record, source_mode="joint", blend_threshold=0.0),
        target,
        setup["neg"],
        setup["x_T"],
        record.sigmas,
        3.0,
    )
    assert (free - reconstruction).abs().max() > 1e-3 * reconstruction.abs().max()


def _interrupting(model, k):
    """A clone raising ComfyUI's interrupt at the k-th UNet call (inside P2P's wrapper)."""
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    calls = {"n": 0}

    def inner(executor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise mm.InterruptProcessingException()
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_interrupt", inner)
    return m, calls


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replay", "joint"])
def test_an_interrupt_at_any_unet_call_leaves_the_next_run_bit_identical(
    host, tiny_model, tiny_clip, setup, mode, inference_mode
):
    import comfy.model_management as mm

    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle")
    before = repr(tiny_model.model_options)
    model = _apply(tiny_model, edit, setup["record"], source_mode=mode, cross_replace_steps="0.5")
    reference = _sample(model, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    probe, counter = _interrupting(model, 10**9)
    _sample(probe, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    calls = counter["n"]
    assert calls == STEPS
    for k in range(1, calls + 1):
        broken, _ = _interrupting(model, k)
        with pytest.raises(mm.InterruptProcessingException):
            _sample(broken, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
        again = _sample(model, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
        assert torch.equal(again, reference), k
    assert repr(tiny_model.model_options) == before


def test_batched_source_rows_cost_one_call_per_step(host, tiny_model, tiny_clip, setup, inference_mode):
    """Replay: every UNet call holds the source cond rows then the sampler's uncond + cond rows."""
    import comfy.patcher_extension as pe

    sizes = []

    def inner(executor, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return executor(x, *args, **kwargs)

    edit, target = _edit(tiny_clip)
    for mode, rows in (("replay", 3), ("joint", 4)):
        sizes.clear()
        m = _apply(tiny_model, edit, setup["record"], source_mode=mode).clone()
        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_sizes", inner)
        _sample(m, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
        assert sizes == [rows * FRAMES] * STEPS, (mode, sizes)


@pytest.mark.slow
def test_p2p_composes_with_flatten(host, tiny_model, tiny_clip, setup, inference_mode):
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    flow = torch.zeros(FRAMES - 1, SIZE * 8, SIZE * 8, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, {"samples": setup["x_T"]}, 0).args
    (flat,) = ApplyFLATTEN.execute(
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
    before = repr(flat.model_options)
    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle")
    model = _apply(flat, edit, setup["record"], frame_attention="first_frame")
    a = _sample(model, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    assert torch.isfinite(a).all() and torch.equal(
        a, _sample(model, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    )
    plain = _sample(_apply(tiny_model, edit, setup["record"]), target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    assert not torch.equal(a, plain)  # FLATTEN's attention is still there
    assert repr(flat.model_options) == before


def test_cross_attention_in_frame_chunks_equals_one_chunk(
    host, tiny_model, tiny_clip, setup, monkeypatch, inference_mode
):
    import comfyui_videoedit.attention.p2p_patch as patch

    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle", reweight="motorcycle:3")
    args = (target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)
    whole = _sample(_apply(tiny_model, edit, setup["record"], blend_threshold=0.5), *args)
    monkeypatch.setattr(patch, "MAP_BUDGET_BYTES", 1)  # one frame per chunk
    chunked = _sample(_apply(tiny_model, edit, setup["record"], blend_threshold=0.5), *args)
    assert (whole - chunked).abs().max() <= 1e-5 * whole.abs().max(), (whole - chunked).abs().max()


LATENT_CHANGES = {
    "fewer frames": lambda x: x[:2],
    "more frames": lambda x: torch.cat([x, x[:1]]),
    "another size": lambda x: torch.nn.functional.interpolate(x, size=(SIZE // 2, SIZE)),
}


@pytest.mark.parametrize("source_mode", ["replay", "joint"])
@pytest.mark.parametrize("change", list(LATENT_CHANGES))
def test_a_latent_that_is_not_the_inverted_one_is_refused(
    host, tiny_model, tiny_clip, setup, change, source_mode, inference_mode
):
    """As TokenFlow: the sampled latent is checked against the inversion in every UNet call
    (ValueError naming latent_image), never a torch size error or an edit against other frames."""
    edit, target = _edit(tiny_clip, blend_source="bike", blend_target="motorcycle")
    model = _apply(tiny_model, edit, setup["record"], source_mode=source_mode)
    latent = LATENT_CHANGES[change](setup["x_T"])
    with pytest.raises(ValueError, match=rf"latent_image: .*inversion holds {FRAMES} frames of 4x{SIZE}x{SIZE}"):
        _sample(model, target, setup["neg"], latent, setup["sigmas"], 4.0)
    _sample(model, target, setup["neg"], setup["x_T"], setup["sigmas"], 4.0)  # the inverted latent runs
