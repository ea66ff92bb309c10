"""Every method on every model family, through the nodes: SD1.5-style eps, SD2.x-style
v-prediction and an SDXL-style UNet (ComfyUI's SDXL class: adm from the pooled CLIP-G output,
two transformer depths, no attention at 1/8, the dual CLIP-L/G encoder with the host's real
tokenizers). The checks are the SD1.5 tests' exactness checks where they carry over (analytic
inversion round trip, one keyframe = plain sampling, TokenFlow window 1 = extended attention,
FLATTEN bounded with every anchor = dense, Rerender with every stage off = plain img2img,
Video-P2P replay with target = source = plain sampling, a zero blend mask = the source).

The matrix is ``FAMILIES × METHODS``; a new family (or method) is one entry in the lists.
"""

import pytest
import torch

from ve_testkit.models import MODEL_FAMILIES, AnalyticPrediction, build_family, encode_prompt

FAMILIES = list(MODEL_FAMILIES)  # sd15_eps, sd2_v, sdxl
FRAMES, STEPS = 4, 3


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, host):
    """model, clip, prompts, a random clip latent and its (real-UNet) inversion, per family."""
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    with torch.inference_mode():
        model, clip = build_family(request.param)
        pos, neg, src = (encode_prompt(clip, t) for t in ("a red car", "", "a car"))
        latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(11)) * 0.5
        record, noisy, sigmas = DDIMInversion.execute(
            model, {"samples": latent}, src, STEPS, 0, "ddim_uniform", 16, "off", 0, False
        ).args
    return dict(
        name=request.param,
        model=model,
        clip=clip,
        pos=pos,
        neg=neg,
        src=src,
        latent=latent,
        record=record,
        x_t=noisy["samples"],
        sigmas=sigmas,
    )


def _sample_custom(model, f, latent=None, sigmas=None, cfg=4.0):
    import comfy.sample
    import comfy.samplers

    latent = f["x_t"] if latent is None else latent
    sigmas = f["sigmas"] if sigmas is None else sigmas
    return comfy.sample.sample_custom(
        model,
        torch.zeros_like(latent),
        cfg,
        comfy.samplers.sampler_object("euler"),
        sigmas,
        f["pos"],
        f["neg"],
        latent,
        disable_pbar=True,
        seed=0,
    )


def _close(a, b, rel=1e-5):
    return (a - b).abs().max() <= rel * b.abs().max()


# -- the methods ------------------------------------------------------------------------------
def check_inversion(host, f):
    """Exact round trip with an analytic prediction of the family's kind (eps or v), through
    the real sampling path of the family's model class; the real UNet's inversion is finite."""
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    base = f["model"]
    ms = base.get_model_object("model_sampling")
    prediction = "v" if f["name"].endswith("_v") else "eps"
    import comfy.model_sampling as cms

    assert isinstance(ms, cms.V_PREDICTION if prediction == "v" else cms.EPS)
    assert prediction == "v" or not isinstance(ms, cms.V_PREDICTION)
    field = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    analytic = AnalyticPrediction(field, ms, prediction=prediction).attach(base)
    record, noisy, sigmas = DDIMInversion.execute(
        analytic, {"samples": f["latent"]}, f["src"], 8, 0, "ddim_uniform", 2, "off", 0, False
    ).args
    back = _sample_custom(analytic, dict(f, pos=f["src"], neg=f["src"]), noisy["samples"], sigmas, cfg=1.0)
    assert (back - f["latent"]).abs().max() < 1e-4
    assert torch.isfinite(f["x_t"]).all() and f["record"].num_frames == FRAMES


def check_null_text(host, f):
    """Shared null-text: one embedding per step of the family's context width, and the
    guided reconstruction lands closer to the source than without it."""
    from comfyui_videoedit.nodes.inversion import InversionReconstruction, NullTextOptimization

    model, record = f["model"], f["record"]
    tuned = NullTextOptimization.execute(model, record, f["neg"], 7.5, 3, 4).result[0]
    width = f["neg"][0][0].shape[-1]
    assert tuned.null_text.shape == (record.num_steps, 77, width)
    mse_plain = InversionReconstruction.execute(model, record, 7.5, False, f["neg"]).result[2]
    mse_tuned = InversionReconstruction.execute(model, tuned, 7.5, True, f["neg"]).result[2]
    assert mse_tuned < mse_plain, (mse_tuned, mse_plain)


def check_extended_attention(host, f):
    """Only frame 0 a keyframe: frame 0 attends to itself, which is plain self-attention."""
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    plain = _sample_custom(f["model"], f, f["latent"])
    (patched,) = ApplyExtendedAttention.execute(f["model"], keyframe_stride=100, keyframes="").args
    out = _sample_custom(patched, f, f["latent"])
    assert _close(out[0], plain[0], 1e-4) and (out[1:] - plain[1:]).abs().max() > 1e-4


def check_tokenflow(host, f):
    """The node's defaults (PnP layers chosen by resolution) run and are deterministic; window
    1 without PnP equals extended attention over all frames."""
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention, ApplyTokenFlow

    inputs = {i.id: i.default for i in ApplyTokenFlow.define_schema().inputs if i.id not in ("model", "inversion")}
    model = ApplyTokenFlow.execute(f["model"], f["record"], **dict(inputs, window=2)).args[0]
    runtime = model.wrappers[host.comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL]["videoedit_tokenflow"][0].runtime
    assert runtime.config.pnp_attn_keys and runtime.config.pnp_res_keys
    a = _sample_custom(model, f)
    assert torch.isfinite(a).all() and torch.equal(a, _sample_custom(model, f))
    reduced = dict(inputs, window=1, blend="paper", pnp_attn_blocks="none", pnp_resnet_blocks="")
    tf = ApplyTokenFlow.execute(f["model"], f["record"], **reduced).args[0]
    (ext,) = ApplyExtendedAttention.execute(f["model"], keyframe_stride=1, keyframes="").args
    assert _close(_sample_custom(tf, f), _sample_custom(ext, f))


def check_flatten(host, f):
    """Trajectory attention on the UNet's finest attention level; bounded with every frame an
    anchor equals dense; PnP injection from the inversion (default layers by resolution)."""
    from comfyui_videoedit.attention.block_resolution import block_levels
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    flow = torch.zeros(FRAMES - 1, 64, 64, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, {"samples": f["latent"]}, 0).args
    inputs = {
        i.id: i.default
        for i in ApplyFLATTEN.define_schema().inputs
        if i.id not in ("model", "trajectories", "inversion")
    }
    dense = ApplyFLATTEN.execute(f["model"], ts, **inputs).args[0]
    patches = dense.model_options["transformer_options"]["patches_replace"]["attn1"]
    levels = block_levels(f["model"].model.diffusion_model)
    flow_levels = {levels[k[:2]] for k, p in patches.items() if p.flow_step}
    assert flow_levels == {min(levels[k[:2]] for k in patches)}
    a = _sample_custom(dense, f, f["latent"])
    bounded = dict(inputs, mode="bounded", anchor_stride=1, max_anchors=0)
    assert _close(_sample_custom(ApplyFLATTEN.execute(f["model"], ts, **bounded).args[0], f, f["latent"]), a)
    injected = ApplyFLATTEN.execute(f["model"], ts, **inputs, inversion=f["record"]).args[0]
    out = _sample_custom(injected, f)
    assert torch.isfinite(out).all() and (out - _sample_custom(dense, f)).abs().max() > 1e-5


def check_rerender(host, f, tiny_vae):
    """Keyframes 0 and 2 with every stage on render finite images; with every stage off a
    keyframe is exactly plain img2img of that frame."""
    from comfyui_videoedit.nodes.rerender import FIDELITY_MODES, RerenderKeyframes

    steps, x0, seed = 4, 0.75, 3
    frames = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    off = dict(
        cross_frame_start=0.0,
        cross_frame_end=0.0,
        shape_fusion_start=0.0,
        shape_fusion_end=0.0,
        pixel_fusion_start=0.0,
        pixel_fusion_end=0.0,
        adain_start=0.0,
        adain_end=0.0,
    )
    on = dict(
        cross_frame_start=0.0,
        cross_frame_end=1.0,
        shape_fusion_start=0.0,
        shape_fusion_end=0.5,
        pixel_fusion_start=0.5,
        pixel_fusion_end=0.8,
        adain_start=0.8,
        adain_end=1.0,
    )

    def render(stages):
        return RerenderKeyframes.execute(
            model=f["model"],
            positive=f["pos"],
            negative=f["neg"],
            vae=tiny_vae,
            images=frames,
            keyframe_interval=2,
            steps=steps,
            cfg=7.5,
            sampler_name="euler",
            scheduler="ddim_uniform",
            seed=seed,
            x0_strength=x0,
            flow_method="dis",
            mask_strength=0.5,
            inner_strength=0.9,
            smooth_boundary=True,
            fidelity_threshold=0.25,
            fidelity_lambda=1.0,
            fidelity_mode=list(FIDELITY_MODES)[0],
            cross_frame_blocks="decoder",
            **stages,
        ).result

    images, indices = render(on)
    assert indices == "0, 2" and images.shape == (2, 64, 64, 3) and torch.isfinite(images).all()
    plain, _ = render(off)
    latent = {"samples": tiny_vae.encode(frames[2:3])}
    (ref,) = host.nodes.common_ksampler(
        f["model"],
        seed,
        steps,
        7.5,
        "euler",
        "ddim_uniform",
        f["pos"],
        f["neg"],
        latent,
        start_step=int(steps * (1 - x0)),
        last_step=10000,
        force_full_denoise=True,
    )
    assert torch.equal(plain[1], tiny_vae.decode(ref["samples"])[0])
    assert (images[1] - plain[1]).abs().mean() > 1e-4


def _p2p_edit(f, source, target, **kw):
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
    return P2PEditNode.execute(f["clip"], **dict(args, **kw)).args


def _p2p(model, edit, record, **kw):
    from comfyui_videoedit.nodes.p2p import ApplyP2P

    args = dict(
        cross_replace_steps="1.0",
        self_replace_steps=1.0,
        blend_threshold=0.3,
        blend_start=0.0,
        source_mode="replay",
        frame_attention="none",
    )
    return ApplyP2P.execute(model, edit, record, **dict(args, **kw)).args[0]


def _retraced(model, f, pos, cfg):
    """An inversion record whose cached latents are the plain sampling trajectory from x_T
    (float32; random weights do not invert), and that sampling's result."""
    import dataclasses

    record = f["record"]
    states = []
    x_t = model.get_model_object("process_latent_out")(record.x_T.clone())
    import comfy.sample
    import comfy.samplers

    out = comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_t),
        cfg,
        comfy.samplers.sampler_object("euler"),
        record.sigmas,
        pos,
        f["neg"],
        x_t,
        disable_pbar=True,
        seed=0,
        callback=lambda i, d, x, n: states.append(x.float().clone()),
    )
    states.append(model.get_model_object("process_latent_in")(out.clone()).float())
    s = record.sigmas.view(-1, 1, 1, 1, 1)
    vp = torch.stack(states) / torch.sqrt(1 + s * s)
    return dataclasses.replace(record, latents_vp=vp, x_T=states[0]), x_t, out


def check_p2p(host, f):
    """Video-P2P through the Edit node (the family's own tokenizer: SDXL's g and l streams):
    replay with target = source (every control on, self-attention replaced at every step)
    equals plain sampling; a blend mask of zeros returns the source exactly; a real edit
    changes the result; the self-attention replacement and the blend maps run on the layers
    chosen by resolution (per-frame query length ≤ (latent/4)²)."""
    import comfy.patcher_extension as pe

    from comfyui_videoedit.attention.p2p_blend import blend_resolution, self_replace_max_tokens

    source, target = "a red car", "a blue car"
    same, same_cond = _p2p_edit(f, source, source)
    record, x_t, expected = _retraced(f["model"], f, same_cond, 3.0)
    model = _p2p(f["model"], same, record)
    out = _sample_custom(model, dict(f, pos=same_cond), x_t, record.sigmas, cfg=3.0)
    assert _close(out, expected, 1e-4), (out - expected).abs().max()
    edit, cond = _p2p_edit(f, source, target, blend_source="car", blend_target="car")
    edited = _sample_custom(_p2p(f["model"], edit, record), dict(f, pos=cond), x_t, record.sigmas, cfg=3.0)
    assert (edited - expected).abs().max() > 1e-3 * expected.abs().max()
    # the blend mask of zeros (threshold 1) lands on the source latent of every frame
    zero = _sample_custom(_p2p(f["model"], edit, f["record"], blend_threshold=1.0), dict(f, pos=cond))
    src = f["model"].get_model_object("process_latent_out")(f["record"].source_latent())
    assert _close(zero, src, 1e-5), (zero - src).abs().max()
    # joint mode (the source branch's own CFG, the empty prompt as its uncond: SDXL's y of both):
    # with a zero mask the result is the source prompt's plain sampling from x_T
    joint = _sample_custom(
        _p2p(f["model"], edit, f["record"], blend_threshold=1.0, source_mode="joint"), dict(f, pos=cond), cfg=3.0
    )
    plain = _sample_custom(f["model"], dict(f, pos=same_cond), cfg=3.0)
    assert _close(joint, plain, 1e-4), (joint - plain).abs().max()
    # P2P's "16²" rules by resolution: a recorder owning attn1 under P2P sees the q P2P hands
    # it; the layers whose target rows got the source's q are those of ≤ (latent/4)² tokens
    import comfy.ldm.modules.attention as cla

    from comfyui_videoedit.attention.keys import P2P_CALL_KEY, P2P_WRAPPER_KEY

    same_q: dict = {}

    def recorder(q, k, v, extra_options):
        call = extra_options[P2P_CALL_KEY]
        src, tgt = call.source_cond(), call.target_cond()[0]
        key = (q.shape[1], extra_options["block"], extra_options["block_index"])
        same_q[key] = same_q.get(key, True) and torch.equal(q[src], q[tgt])
        return cla.optimized_attention(q, k, v, extra_options["n_heads"])

    base = f["model"].clone()
    for key in _self_attention_keys(base):
        base.set_model_attn1_replace(recorder, *key)
    probe = _p2p(base, edit, f["record"], self_replace_steps=1.0)
    _sample_custom(probe, dict(f, pos=cond))
    hw = tuple(f["latent"].shape[-2:])
    limit = self_replace_max_tokens(hw)
    replaced = {n for (n, *_), same in same_q.items() if same}
    assert (
        replaced == {n for n, *_ in same_q if n <= limit} and replaced and len(replaced) < len({n for n, *_ in same_q})
    ), (limit, same_q)
    runtime = probe.wrappers[pe.WrappersMP.OUTER_SAMPLE][P2P_WRAPPER_KEY][0].runtime
    mask = runtime.last_mask  # maps were summed (only layers at latent/4 add them): the mask was built
    assert blend_resolution(hw) == (hw[0] // 4, hw[1] // 4) and mask is not None
    assert mask.shape == (FRAMES, 1, *hw) and ((mask == 0) | (mask == 1)).all()


def _self_attention_keys(model):
    from comfyui_videoedit.adapters.model_patch import self_attention_keys

    return self_attention_keys(model)


METHODS = {
    "inversion": check_inversion,
    "null_text": check_null_text,
    "extended_attention": check_extended_attention,
    "tokenflow": check_tokenflow,
    "flatten": check_flatten,
    "rerender": check_rerender,
    "p2p": check_p2p,
}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_on_family(host, pack_nodes, family, method, tiny_vae, inference_mode):
    before = repr(family["model"].model_options)
    check = METHODS[method]
    check(host, family, tiny_vae) if method == "rerender" else check(host, family)
    assert repr(family["model"].model_options) == before, "the user's model must not change"


# -- block choices by resolution ------------------------------------------------------------------
def _dm(family):
    return family["model"].model.diffusion_model


def _choose(family, spec, resblocks=False):
    from comfyui_videoedit.attention.block_resolution import choose_blocks
    from comfyui_videoedit.attention.unet_blocks import parse_block_list, resblock_keys, transformer_block_keys

    dm = _dm(family)
    keys = resblock_keys(dm) if resblocks else transformer_block_keys(dm)
    return choose_blocks(
        spec, dm, keys, lambda s: parse_block_list(s, keys), "blocks", "ResBlocks" if resblocks else "self-attention"
    )


def _ids(keys):
    return sorted({k[:2] for k in keys})


def test_default_layers_by_resolution(host, family):
    from comfyui_videoedit.attention import block_resolution as br

    out = [("output", i) for i in range(12)]
    cases = {  # SD1.5/2.x: the official block ids; SDXL: the same layers by resolution
        br.TOKENFLOW_PNP_ATTN: (out[4:12], out[1:6]),
        br.FLATTEN_PNP_ATTN: (out[4:10], out[1:6]),
    }
    res_cases = {
        br.TOKENFLOW_PNP_RES: ([out[4]], [out[1]]),
        br.FLATTEN_PNP_RES: ([out[3], out[4], out[6]], [out[0], out[1], out[3]]),
    }
    pick = 1 if family["name"] == "sdxl" else 0
    for spec, expected in cases.items():
        assert _ids(_choose(family, spec)) == expected[pick], spec
    for spec, expected in res_cases.items():
        assert _ids(_choose(family, spec, resblocks=True)) == expected[pick], spec
    # every depth index of a chosen block (SDXL's depth-2 blocks at 1/32)
    if family["name"] == "sdxl":
        assert ("output", 1, 1) in _choose(family, br.TOKENFLOW_PNP_ATTN)
    # the decoder's layers at 1/16 and 1/32 of the image
    assert _ids(_choose(family, "decoder 1/16, 1/32")) == (out[3:9] if pick == 0 else out[0:6])
    # mixed with block ids
    assert _ids(_choose(family, "input 4; output 1/16#0")) == [("input", 4), out[6] if pick == 0 else out[3]]


def test_a_block_spec_the_model_does_not_have_names_what_it_has(host, family):
    if family["name"] == "sdxl":
        with pytest.raises(
            ValueError, match=r"this model has no .*output_blocks\[9\].* with self-attention; it has \["
        ):
            _choose(family, "output 4-11")
        with pytest.raises(ValueError, match=r"does not run at 1/64 of the image; it runs at 1/8, 1/16, 1/32"):
            _choose(family, "output 1/64")
        with pytest.raises(
            ValueError,
            match=r"selects no self-attention on this model; it has self-attention in "
            r"input: 1/16 blocks 4-5, 1/32 blocks 7-8; middle: 1/32 blocks 0; "
            r"output: 1/32 blocks 0-2, 1/16 blocks 3-5",
        ):
            _choose(family, "output 1/8")
    with pytest.raises(ValueError, match=r"asks for block #5 .* are \["):
        _choose(family, "output 1/16#5")
    with pytest.raises(ValueError, match="'1/x' is not a resolution"):
        _choose(family, "output 1/x")
    with pytest.raises(ValueError, match="does not start with input/middle/output"):
        _choose(family, "sideways 1/16")
    with pytest.raises(ValueError, match=r"no ResBlocks at \[\('output', 20\)\]"):
        from comfyui_videoedit.attention.block_resolution import choose_blocks
        from comfyui_videoedit.attention.unet_blocks import resblock_keys

        dm = _dm(family)
        choose_blocks("output 20", dm, resblock_keys(dm), lambda s: [("output", 20)], "blocks", "ResBlocks")


def test_node_errors_name_the_input(host, family, inference_mode):
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    with pytest.raises(ValueError, match="pnp_attn_blocks: this model's UNet does not run at 1/128"):
        tokenflow_model(family["model"], object(), pnp_attn_blocks="output 1/128")
    with pytest.raises(ValueError, match="pnp_resnet_blocks: '1/16#9' asks for block #9"):
        tokenflow_model(family["model"], object(), pnp_resnet_blocks="output 1/16#9")


def test_flow_matching_models_are_refused(host, inference_mode):
    from comfyui_videoedit.nodes.inversion import DDIMInversion
    from ve_testkit.models import build_tiny_clip, build_tiny_flow_model

    model = build_tiny_flow_model()
    cond = encode_prompt(build_tiny_clip(), "a car")
    with pytest.raises(ValueError, match=r"supports eps/v-prediction diffusion models .* flow-matching model"):
        DDIMInversion.execute(
            model, {"samples": torch.zeros(2, 4, 8, 8)}, cond, 3, 0, "ddim_uniform", 16, "off", 0, False
        )
