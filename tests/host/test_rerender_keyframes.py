"""Rerender Keyframes on the real ComfyUI with the tiny SD1.5-layout model and VAE: every stage
on, every stage off (= plain per-frame img2img, exactly), a tiny random ControlNet built from
ComfyUI's classes with one hint per frame, and each x0 stage checked in isolation."""

import pytest
import torch
import torch.nn.functional as F

from ve_testkit.models import CallCounter, encode_prompt, tiny_controlnet

FRAMES, SIZE, K = 7, 64, 3
STEPS, CFG, SEED, X0 = 8, 7.5, 3, 0.75  # SDEdit start: step int(8 * 0.25) = 2
OFF = dict(
    cross_frame_start=0.0,
    cross_frame_end=0.0,
    shape_fusion_start=0.0,
    shape_fusion_end=0.0,
    pixel_fusion_start=0.0,
    pixel_fusion_end=0.0,
    adain_start=0.0,
    adain_end=0.0,
)
ON = dict(
    cross_frame_start=0.0,
    cross_frame_end=1.0,
    shape_fusion_start=0.0,
    shape_fusion_end=0.3,
    pixel_fusion_start=0.5,
    pixel_fusion_end=0.8,
    adain_start=0.8,
    adain_end=1.0,
)


def translating_clip(count=FRAMES, size=SIZE, step=(2.0, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    pad = 32
    tex = F.interpolate(
        torch.rand(1, 3, (size + 2 * pad) // 8, (size + 2 * pad) // 8, generator=g),
        size=(size + 2 * pad, size + 2 * pad),
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for t in range(count):
        x, y = xs - step[0] * t + pad, ys - step[1] * t + pad
        grid = torch.stack([x / (size + 2 * pad - 1) * 2 - 1, y / (size + 2 * pad - 1) * 2 - 1], -1)[None]
        out.append(F.grid_sample(tex, grid, align_corners=True)[0].permute(1, 2, 0))
    return torch.stack(out)


def render(pack_nodes, model, pos, neg, vae, frames, stages, **kw):
    from comfyui_videoedit.nodes.rerender import FIDELITY_MODES, RerenderKeyframes

    args = dict(
        model=model,
        positive=pos,
        negative=neg,
        vae=vae,
        images=frames,
        keyframe_interval=K,
        steps=STEPS,
        cfg=CFG,
        sampler_name="euler",
        scheduler="ddim_uniform",
        seed=SEED,
        x0_strength=X0,
        flow_method="dis",
        mask_strength=0.5,
        inner_strength=0.9,
        smooth_boundary=True,
        fidelity_threshold=0.25,
        fidelity_lambda=1.0,
        fidelity_mode=list(FIDELITY_MODES)[0],
        cross_frame_blocks="decoder",
        **stages,
    )
    args.update(kw)
    images, indices = RerenderKeyframes.execute(**args).result
    return images, indices


def plain_img2img(host, model, pos, neg, vae, frame):
    start = int(STEPS * (1 - X0))
    latent = {"samples": vae.encode(frame[None])}
    (out,) = host.nodes.common_ksampler(
        model,
        SEED,
        STEPS,
        CFG,
        "euler",
        "ddim_uniform",
        pos,
        neg,
        latent,
        start_step=start,
        last_step=10000,
        force_full_denoise=True,
    )
    return vae.decode(out["samples"])[0]


@pytest.fixture(scope="module")
def conds(tiny_clip):
    return encode_prompt(tiny_clip, "a watercolour painting"), encode_prompt(tiny_clip, "blurry")


@pytest.fixture(scope="module")
def clip():
    return translating_clip()


@pytest.fixture(scope="module")
def plain_run(tiny_model, tiny_vae, conds, clip):
    with torch.inference_mode():
        return _run(tiny_model, tiny_vae, conds, clip[:4])


def _options_snapshot(model):
    to = model.model_options.get("transformer_options", {})
    return (
        sorted(model.model_options),
        repr(sorted(to)),
        {k: len(v) for k, v in to.get("patches", {}).items()},
        len(model.model_options.get("sampler_post_cfg_function", [])),
    )


def test_every_stage_renders_keyframes_0_3_6_and_leaves_the_model_alone(
    host, pack_nodes, tiny_model, tiny_vae, conds, clip, inference_mode
):
    pos, neg = conds
    counter = CallCounter()
    model = counter.attach(tiny_model)
    before = _options_snapshot(model)
    reference = plain_img2img(host, model, pos, neg, tiny_vae, clip[3])
    calls_per_pass = counter.calls  # one plain pass over steps 2..7
    counter.calls = 0

    images, indices = render(pack_nodes, model, pos, neg, tiny_vae, clip, ON)
    assert indices == "0, 3, 6"
    assert images.shape == (3, SIZE, SIZE, 3) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    # anchor: plain; keyframes: two passes, the second resumed at the first inpainting step
    # (steps 5 and 6 of 8 are strictly inside 0.5..0.8): 6 + (6 + 3) + (6 + 3) step calls
    assert counter.calls == calls_per_pass // 6 * 24, (counter.calls, calls_per_pass)
    off, _ = render(pack_nodes, model, pos, neg, tiny_vae, clip, OFF)
    assert torch.equal(images[0], off[0])
    for i in (1, 2):
        assert (images[i] - off[i]).abs().mean() > 1e-3

    assert _options_snapshot(model) == before
    after = plain_img2img(host, model, pos, neg, tiny_vae, clip[3])
    assert torch.equal(after, reference)


def test_every_stage_off_is_plain_per_frame_img2img_with_a_per_frame_controlnet(
    host, pack_nodes, tiny_model, tiny_vae, conds, clip, inference_mode
):
    pos, neg = conds
    apply = host.nodes.ControlNetApplyAdvanced()
    cn1, cn2 = tiny_controlnet(5), tiny_controlnet(6)
    hints = clip.flip(-1)  # any per-frame image works as a hint for a random ControlNet
    p1, n1 = apply.apply_controlnet(pos, neg, cn1, hints, 0.8, 0.0, 1.0)
    p2, n2 = apply.apply_controlnet(p1, n1, cn2, 1.0 - clip, 0.5, 0.0, 0.9)  # chained
    images, indices = render(pack_nodes, tiny_model, p2, n2, tiny_vae, clip, OFF)
    assert indices == "0, 3, 6"
    for i, k in enumerate((0, 3, 6)):
        pk, nk = apply.apply_controlnet(pos, neg, cn1, hints[k : k + 1], 0.8, 0.0, 1.0)
        pk, nk = apply.apply_controlnet(pk, nk, cn2, (1.0 - clip)[k : k + 1], 0.5, 0.0, 0.9)
        expected = plain_img2img(host, tiny_model, pk, nk, tiny_vae, clip[k])
        assert torch.equal(images[i], expected), (k, (images[i] - expected).abs().max())
    # the sliced conditioning holds frame k's hints, chain kept (a batch-1 sample of the full
    # conditioning would broadcast frame 0's hints to every keyframe)
    from comfyui_videoedit.adapters.conditioning import conditioning_for_frame

    sliced = conditioning_for_frame(p2, 3, FRAMES)[0][1]["control"]
    assert torch.equal(sliced.cond_hint_original, (1.0 - clip)[3:4].movedim(-1, 1))
    assert torch.equal(sliced.previous_controlnet.cond_hint_original, hints[3:4].movedim(-1, 1))
    assert sliced.previous_controlnet.control_model is cn1.control_model
    assert p2[0][1]["control"].cond_hint_original.shape[0] == FRAMES  # the user's conditioning is untouched


def test_every_stage_on_with_a_controlnet(host, pack_nodes, tiny_model, tiny_vae, conds, clip, inference_mode):
    pos, neg = conds
    short = clip[:4]  # keyframes 0 and 3
    p, n = host.nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, tiny_controlnet(7), short, 1.0, 0.0, 1.0)
    images, indices = render(
        pack_nodes, tiny_model, p, n, tiny_vae, short, ON, x0_strength=1.0, flow_method="chain", **_flows(short)
    )
    assert indices == "0, 3"
    assert images.shape == (2, SIZE, SIZE, 3) and torch.isfinite(images).all()


def _flows(frames):
    from comfyui_videoedit.flow.dis import dis_flow
    from comfyui_videoedit.flow.estimate import bidirectional_flow

    fwd, bwd = bidirectional_flow(frames, dis_flow)
    return {"forward_flow": fwd, "backward_flow": bwd}


# -- each x0 stage in isolation, through the run object ------------------------------------------------


def _run(tiny_model, tiny_vae, conds, frames, store_dtype=torch.float16, **windows):
    """Keyframes 0 and 3 through the run object with only the given windows on and zero flows
    (nothing moves, nothing is occluded) → (run, final raw latents, decoded keyframes)."""
    from comfyui_videoedit.adapters.rerender import FlowBetween, RerenderConfig, RerenderRun

    off = dict(cross_frame=(0.0, 0.0), shape_fusion=(0.0, 0.0), pixel_fusion=(0.0, 0.0), adain=(0.0, 0.0))
    off.update(windows)
    settings = RerenderConfig(steps=STEPS, cfg=CFG, seed=SEED, x0_strength=X0, store_dtype=store_dtype, **off)
    run = RerenderRun(tiny_model, tiny_vae, conds[0], conds[1], settings, frames.shape[0])
    zero = torch.zeros(frames.shape[0] - 1, SIZE, SIZE, 2)
    flows = FlowBetween(frames, "chain", zero, zero)
    chw = frames.movedim(-1, 1)
    results = [run.render_anchor(0, chw[0:1])]
    results.append(run.render_keyframe(3, chw[3:4], flows))
    return run, [run.final_latents[k] for k in (0, 3)], torch.cat(results)


def test_shape_fusion_with_zero_flow_and_no_occlusion_reproduces_the_anchor(
    tiny_model, tiny_vae, conds, clip, plain_run, inference_mode
):
    _, latents, images = _run(tiny_model, tiny_vae, conds, clip[:4], shape_fusion=(0.0, 1.0))
    # every step's x0 is the anchor's (zero flow: nothing occluded), so is the last one, which the
    # final euler step to sigma 0 returns (up to its rounding)
    assert torch.allclose(latents[1], latents[0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(images[1], images[0], atol=1e-5)
    _, plain_latents, _ = plain_run
    assert not torch.allclose(plain_latents[1], plain_latents[0], atol=1e-2)


def test_adain_gives_the_anchor_channel_statistics(tiny_model, tiny_vae, conds, clip, plain_run, inference_mode):
    _, latents, _ = _run(tiny_model, tiny_vae, conds, clip[:4], adain=(0.0, 1.0))
    _, plain_latents, _ = plain_run

    def moments(z):
        var, mean = torch.var_mean(z.flatten(2), dim=2, correction=0)
        return mean, var.sqrt()

    m0, s0 = moments(latents[0])
    m, s = moments(latents[1])
    # the official formula (the default): instance_norm · the anchor's *unbiased* std (+1e-5,
    # negligible at these magnitudes), i.e. sqrt(n/(n-1)) above the anchor's biased std
    n = latents[0][0, 0].numel()
    assert torch.allclose(m, m0, atol=1e-4) and torch.allclose(s, s0 * (n / (n - 1)) ** 0.5, rtol=1e-4)
    m, s = moments(plain_latents[1])
    assert not torch.allclose(s, s0, rtol=1e-2)


def test_cross_frame_attention_reads_the_anchor_at_the_same_step_layer_and_branch(
    tiny_model, tiny_vae, conds, clip, plain_run, inference_mode
):
    still = clip[:1].expand(4, -1, -1, -1).contiguous()  # every frame is frame 0
    # fp32 stores so the comparison can be tight
    run, latents, _ = _run(tiny_model, tiny_vae, conds, still, store_dtype=None, cross_frame=(0.0, 1.0))
    # attending to [anchor; previous] = to itself when the frames agree: the anchor comes back
    assert torch.allclose(latents[1], latents[0], atol=1e-4)
    entries = list(run.store.anchor)
    layers = {key for _, key, _ in entries}
    assert layers == {("output", i, 0) for i in range(3, 12)}  # the tiny UNet's decoder attention blocks
    assert {branch for *_, branch in entries} == {0, 1}
    assert len({s for s, _, _ in entries}) == STEPS - int(STEPS * (1 - X0))
    # on the moving clip the same stage changes the keyframes
    _, moving, _ = _run(tiny_model, tiny_vae, conds, clip[:4], cross_frame=(0.0, 1.0))
    _, plain, _ = plain_run
    assert not torch.allclose(moving[1], plain[1], atol=1e-3)


def test_inputs_are_checked(host, pack_nodes, tiny_model, tiny_vae, conds, clip, inference_mode):
    pos, neg = conds
    with pytest.raises(ValueError, match="multiple of the VAE"):
        render(pack_nodes, tiny_model, pos, neg, tiny_vae, clip[:, :60], OFF)
    with pytest.raises(ValueError, match="forward_flow"):
        render(pack_nodes, tiny_model, pos, neg, tiny_vae, clip, OFF, flow_method="chain")
    p, n = host.nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, tiny_controlnet(), clip[:2], 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="hint holds 2 images"):
        render(pack_nodes, tiny_model, p, n, tiny_vae, clip, OFF)
    with pytest.raises(ValueError, match="cross_frame_blocks"):
        render(pack_nodes, tiny_model, pos, neg, tiny_vae, clip, ON, cross_frame_blocks="output 0-1")
