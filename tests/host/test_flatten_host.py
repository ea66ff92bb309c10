"""FLATTEN nodes on the tiny model through ComfyUI's own samplers: inversion (flipped sigmas,
cfg 1) and sampling with the patch active, PnP injection from the recorded inversion, the
user's model left alone, determinism, a non-square latent, context windows, bad input."""

import pytest
import torch

from ve_testkit.models import encode_prompt

FRAMES, STEPS = 6, 4


def _translation_flow(frames, height, width, dx=8.0, dy=0.0):
    """Forward flow of a clip translating by (dx, dy) pixels per frame."""
    flow = torch.zeros(frames - 1, height, width, 2)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def _trajectories(latent, dx=8.0, seed=0):
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    f, _, h, w = latent.shape
    (ts,) = SampleTrajectories.execute(_translation_flow(f, h * 8, w * 8, dx), {"samples": latent}, seed).args
    return ts


def _apply(model, ts, **kw):
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN

    args = dict(
        mode="dense",
        levels="highest",
        old_qk=False,
        anchor_stride=4,
        max_anchors=4,
        inject_step=0.8,
        pnp_attn_blocks="output 4-9",
        pnp_resnet_blocks="output 3, 4, 6",
    )
    args.update(kw)
    (patched,) = ApplyFLATTEN.execute(model, ts, **args).args
    return patched


def _sigmas(model, steps=STEPS):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", steps)


def _sample(model, pos, neg, latent, sigmas, cfg=4.0, noise=None, callback=None):
    import comfy.sample
    import comfy.samplers

    noise = torch.zeros_like(latent) if noise is None else noise
    return comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        comfy.samplers.sampler_object("euler"),
        sigmas,
        pos,
        neg,
        latent,
        callback=callback,
        disable_pbar=True,
        seed=0,
    )


def _invert(model, cond, latent, steps=STEPS, frame_batch_size=16):
    """VideoEdit_DDIMInversion (cfg 1 along the model's schedule, cache off)."""
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    record, noisy, sigmas = DDIMInversion.execute(
        model, {"samples": latent}, cond, steps, 0, "ddim_uniform", frame_batch_size, "off", 0, False
    ).args
    return record, noisy["samples"], sigmas


def test_inversion_and_sampling_with_flatten(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    pos, neg, src_cond = (encode_prompt(tiny_clip, t) for t in ("a red car", "", "a car"))
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = repr(tiny_model.model_options)
    ts = _trajectories(latent)
    patched = _apply(tiny_model, ts)
    assert patched is not tiny_model and repr(tiny_model.model_options) == before

    # inversion with FLATTEN active (the patched MODEL into VideoEdit_DDIMInversion)
    record, inverted, sigmas = _invert(patched, src_cond, latent)
    _, inverted_plain, _ = _invert(tiny_model, src_cond, latent)
    assert torch.isfinite(inverted).all() and (inverted - inverted_plain).abs().max() > 1e-3
    plain = _sample(tiny_model, pos, neg, inverted, sigmas)

    edit = _sample(patched, pos, neg, inverted, sigmas)
    assert torch.isfinite(edit).all() and (edit - plain).abs().max() > 1e-3
    assert torch.equal(_sample(patched, pos, neg, inverted, sigmas), edit)  # deterministic

    # PnP injection from the inversion (source replay) for 3 of the 4 steps
    injected_model = _apply(tiny_model, ts, inversion=record, inject_step=0.75)
    wrappers = injected_model.wrappers[host.comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL]
    assert wrappers["videoedit_pnp"][0].schedule.attn_steps == 3
    injected = _sample(injected_model, pos, neg, inverted, sigmas)
    assert torch.isfinite(injected).all() and (injected - edit).abs().max() > 1e-4
    # no injected step = no injection at all
    assert torch.equal(
        _sample(_apply(tiny_model, ts, inversion=record, inject_step=0.0), pos, neg, inverted, sigmas), edit
    )

    # the user's model: same options, same output as before
    assert repr(tiny_model.model_options) == before
    assert torch.equal(_sample(tiny_model, pos, neg, inverted, sigmas), plain)

    # inverting in frame chunks: the inversion tells the patch which frames each chunk holds
    # (dense attention then spans the chunk; trajectory rows are the chunk's own)
    chunked, _, _ = _invert(patched, src_cond, latent, frame_batch_size=4)
    assert torch.isfinite(chunked.x_T).all() and chunked.num_frames == 6


def test_modes_levels_and_seed(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.attention.flatten_patch import FlattenAttention

    pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = _sigmas(tiny_model, 2)
    ts = _trajectories(latent)

    dense = _apply(tiny_model, ts)
    patches = dense.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert all(isinstance(p, FlattenAttention) for p in patches.values()) and len(patches) == 16
    # the highest resolution only (as the paper's 64x64 layers): input 1-2, output 9-11
    assert sorted(k for k, p in patches.items() if p.flow_step) == [
        ("input", 1, 0),
        ("input", 2, 0),
        ("output", 9, 0),
        ("output", 10, 0),
        ("output", 11, 0),
    ]
    everywhere = _apply(tiny_model, ts, levels="all")
    assert all(
        p.flow_step for p in everywhere.model_options["transformer_options"]["patches_replace"]["attn1"].values()
    )

    a = _sample(dense, pos, neg, latent, sigmas)
    # bounded with every frame an anchor is the dense mode
    all_anchors = _sample(
        _apply(tiny_model, ts, mode="bounded", anchor_stride=1, max_anchors=0), pos, neg, latent, sigmas
    )
    assert (all_anchors - a).abs().max() <= 1e-5 * a.abs().max()
    bounded = _sample(_apply(tiny_model, ts, mode="bounded", anchor_stride=4, max_anchors=1), pos, neg, latent, sigmas)
    assert torch.isfinite(bounded).all() and (bounded - a).abs().max() > 1e-4
    for other in (_apply(tiny_model, ts, levels="all"), _apply(tiny_model, ts, old_qk=True)):
        assert (_sample(other, pos, neg, latent, sigmas) - a).abs().max() > 1e-4

    # trajectories with collisions depend on the seed; the same seed gives the same result
    f, _, h, w = latent.shape
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    per_cell = torch.randn(f - 1, 2, h, w, generator=torch.Generator().manual_seed(2)) * 12  # ~1.5 cells
    flow = torch.nn.functional.interpolate(per_cell, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)
    t1, t2 = (SampleTrajectories.execute(flow, {"samples": latent}, s).args[0] for s in (1, 2))
    assert not torch.equal(t1.levels[(h, w)].traj_id, t2.levels[(h, w)].traj_id)
    s1, s2 = (_sample(_apply(tiny_model, t), pos, neg, latent, sigmas) for t in (t1, t2))
    assert not torch.equal(s1, s2)


class SlidingWindows:
    """A DIFFUSION_MODEL wrapper that runs the UNet on overlapping frame windows the way
    AnimateDiff-Evolved does (``ad_params.sub_idxs`` = the window's global frame indices) and
    averages the overlaps. (ComfyUI 0.3.75's core context windows cannot batch image-model
    frames: ``set_step`` compares per-frame sigmas with the schedule and raises.)"""

    def __init__(self, windows):
        self.windows = windows
        self.seen = []

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kw):
        groups = len(transformer_options["cond_or_uncond"])
        n = x.shape[0] // groups
        out, count = torch.zeros_like(x), torch.zeros(x.shape[0], 1, 1, 1)
        for window in self.windows:
            rows = torch.cat([g * n + torch.tensor(window) for g in range(groups)])
            opts = dict(transformer_options, ad_params={"sub_idxs": list(window)})
            self.seen.append(list(window))
            out[rows] += executor(x[rows], timesteps[rows], context[rows], y, control, opts, **kw)
            count[rows] += 1
        return out / count


def test_non_square_latent_and_windows(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    import comfy.patcher_extension as pe

    pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    latent = torch.randn(3, 4, 40, 24, generator=torch.Generator().manual_seed(3))
    ts = _trajectories(latent, dx=16.0)
    assert sorted(ts.levels) == [(5, 3), (10, 6), (20, 12), (40, 24)]
    out = _sample(_apply(tiny_model, ts, levels="all"), pos, neg, latent, _sigmas(tiny_model, 1))
    assert out.shape == latent.shape and torch.isfinite(out).all()

    # frame windows: each window's frames pick their own trajectory rows
    frames = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    patched = _apply(tiny_model, _trajectories(frames))
    sigmas = _sigmas(tiny_model, 2)
    whole = _sample(patched, pos, neg, frames, sigmas)
    one_window = patched.clone()
    one_window.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_windows", SlidingWindows([range(6)]))
    assert (_sample(one_window, pos, neg, frames, sigmas) - whole).abs().max() <= 1e-5 * whole.abs().max()
    sliding = SlidingWindows([range(0, 4), range(2, 6)])
    windowed = patched.clone()
    windowed.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_windows", sliding)
    a = _sample(windowed, pos, neg, frames, sigmas)
    assert [2, 3, 4, 5] in sliding.seen
    assert torch.isfinite(a).all() and (a - whole).abs().max() > 1e-4


def test_bad_input(host, pack_nodes, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    latent = torch.randn(FRAMES, 4, 8, 8)
    patched = _apply(tiny_model, _trajectories(latent))
    with pytest.raises(
        ValueError,
        match=r"trajectories were sampled for 6 frames at latent 8x8, but the latent "
        r"being sampled has 5 frames at latent 8x8",
    ):
        _sample(patched, pos, neg, latent[:5], _sigmas(tiny_model, 1))
    with pytest.raises(ValueError, match=r"sampled for 6 frames at latent 8x8, .* has 6 frames at latent 16x8"):
        _sample(patched, pos, neg, torch.randn(FRAMES, 4, 16, 8), _sigmas(tiny_model, 1))
    with pytest.raises(ValueError, match=r"flow has 3 frame pairs \(4 frames\) but the latent has 6 frames"):
        SampleTrajectories.execute(_translation_flow(4, 64, 64), {"samples": latent}, 0)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        SampleTrajectories.execute(_translation_flow(FRAMES, 64, 128), {"samples": latent}, 0)
    with pytest.raises(ValueError, match="trajectories: expected VE_TRAJECTORIES"):
        _apply(tiny_model, torch.zeros(3))
    ts = _trajectories(latent)
    with pytest.raises(ValueError, match="inversion: expected a VE_INVERSION"):
        _apply(tiny_model, ts, inversion="not an inversion")
    from comfyui_videoedit.adapters.flatten import flatten_model

    source = object()
    with pytest.raises(ValueError, match="pnp_resnet_blocks: 'output three' is not like 'output 3, 4, 6'"):
        flatten_model(tiny_model, ts, source=source, pnp_resnet_blocks="output three")
    with pytest.raises(ValueError, match=r"pnp_resnet_blocks: this model has no output_blocks\[12\]"):
        flatten_model(tiny_model, ts, source=source, pnp_resnet_blocks="output 11-12")
    with pytest.raises(ValueError, match="levels: 'some' is not one of"):
        flatten_model(tiny_model, ts, levels="some")
