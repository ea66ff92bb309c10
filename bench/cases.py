"""Benchmark cases. Each case is ``fn(ctx) -> runner`` where ``runner()`` does the timed work
once; ``ctx`` carries the model, conditioning, latent and settings shared by every case so
that ratios compare like with like. Methods add their cases here as they land."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch


@dataclass
class Context:
    model: object  # ModelPatcher (full-size SD1.5, random weights)
    positive: list
    negative: list
    latent: torch.Tensor  # [F, 4, h, w] raw latent
    steps: int
    cfg: float
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _sample(ctx: Context, model, cfg: float, latent: torch.Tensor | None = None, sigmas=None):
    import comfy.sample

    latent = ctx.latent if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, ctx.seed)
    return comfy.sample.sample(model, noise, ctx.steps, cfg, "euler", "ddim_uniform", ctx.positive, ctx.negative,
                               latent, sigmas=sigmas, disable_pbar=True, seed=ctx.seed)


def plain_cfg(ctx: Context):
    """Reference: ComfyUI's own sampling, euler on ddim_uniform, CFG (cond + uncond batch)."""
    return lambda: _sample(ctx, ctx.model, ctx.cfg)


def plain_cfg1(ctx: Context):
    """Reference for inversion: the same sampling with cfg 1 (one branch)."""
    return lambda: _sample(ctx, ctx.model, 1.0)


CASES = {
    "plain_cfg": plain_cfg,
    "plain_cfg1": plain_cfg1,
}
# name of the case each ratio is taken against
BASELINE = {"plain_cfg1": "plain_cfg"}
# cases that run their baseline's method on more frames (same chunk shapes): no warm-up needed
SHARES_SHAPES: set[str] = set()
# cases whose setup already ran the same UNet/VAE shapes (untimed): no warm-up needed either
WARMED_BY_SETUP: set[str] = set()


class RandomSource:
    """A stand-in source branch (speed does not depend on the latents): one random latent per
    frame, the sampler's own schedule, random source context."""

    def __init__(self, ctx: Context):
        import comfy.samplers

        ms = ctx.model.get_model_object("model_sampling")
        self.sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", ctx.steps)
        self.latents = torch.randn_like(ctx.latent) * 0.18215
        self.context = ctx.positive[0][0]

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step_index(self, sigma: float) -> int:
        return int((self.sigmas - sigma).abs().argmin())

    def latent(self, sigma: float, frames: torch.Tensor) -> torch.Tensor:
        return self.latents[frames]

    def unet_conditioning(self, n: int, like: torch.Tensor, frames=None):
        return self.context.to(like.device, like.dtype).expand(n, -1, -1), None


def extended_attention_all(ctx: Context):
    """Every frame attends to the keyframes every 4 frames (the node's default stride)."""
    from comfyui_videoedit.adapters.model_patch import attach_attn1, comfy_attention
    from comfyui_videoedit.attention.extended_patch import ExtendedAttentionPatch

    attn = comfy_attention
    model = attach_attn1(ctx.model, lambda key, prev: ExtendedAttentionPatch(4, None, prev, attn))
    return lambda: _sample(ctx, model, ctx.cfg)


def tokenflow(ctx: Context, frames: int | None = None, share_batch: bool = True):
    """TokenFlow (window 8, PnP on) with a stand-in source branch; ``share_batch=False`` runs
    the source rows in UNet calls of their own (smaller calls, more of them)."""
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    sub = ctx if frames is None else Context(ctx.model, ctx.positive, ctx.negative,
                                              _frames(ctx.latent, frames), ctx.steps, ctx.cfg)
    model = tokenflow_model(ctx.model, RandomSource(sub), window=8, share_batch=share_batch)
    return lambda: _sample(sub, model, ctx.cfg)


def _frames(latent: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // latent.shape[0])
    return latent.repeat(reps, 1, 1, 1)[:n].contiguous()


CASES.update({
    "extended_attention": extended_attention_all,
    "tokenflow": tokenflow,
    "tokenflow_separate_source": lambda ctx: tokenflow(ctx, share_batch=False),
    "tokenflow_f16": lambda ctx: tokenflow(ctx, 16),
    "tokenflow_f32": lambda ctx: tokenflow(ctx, 32),
})
# growth with frames is read against the run's own frame count (8 by default)
BASELINE.update({"tokenflow_f16": "tokenflow", "tokenflow_f32": "tokenflow"})
SHARES_SHAPES.update({"tokenflow_f16", "tokenflow_f32"})


# -- FLATTEN -------------------------------------------------------------------------------------
def _flatten_flow(frames: int, h: int, w: int) -> torch.Tensor:
    """A smooth moving-scene flow at pixel resolution (8x the latent): a 1-cell pan plus a
    slow per-cell wobble, so trajectories have mixed lengths and some collisions."""
    g = torch.Generator().manual_seed(7)
    per_cell = torch.randn(frames - 1, 2, h, w, generator=g) * 4.0
    per_cell[:, 0] += 8.0
    return torch.nn.functional.interpolate(per_cell, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)


def flatten(ctx: Context, mode: str = "dense", frames: int | None = None):
    """FLATTEN on every self-attention layer (trajectory attention at the highest resolution)."""
    from comfyui_videoedit.adapters.flatten import flatten_model
    from comfyui_videoedit.flow.trajectories import sample_trajectories

    sub = ctx if frames is None else Context(ctx.model, ctx.positive, ctx.negative,
                                              _frames(ctx.latent, frames), ctx.steps, ctx.cfg)
    f, _, h, w = sub.latent.shape
    trajectories = sample_trajectories(_flatten_flow(f, h, w), (h, w))
    model = flatten_model(ctx.model, trajectories, mode=mode)
    return lambda: _sample(sub, model, ctx.cfg)


def flatten_trajectory_sampling(ctx: Context, frames: int = 32):
    """Trajectory sampling alone (all 4 latent resolutions) for ``frames`` frames of pixel flow
    at the benchmark size; its ratio to plain_cfg is only for scale."""
    from comfyui_videoedit.flow.trajectories import sample_trajectories

    _, _, h, w = ctx.latent.shape
    flow = _flatten_flow(frames, h, w)
    return lambda: sample_trajectories(flow, (h, w))


CASES.update({
    "flatten_dense": flatten,
    "flatten_bounded": lambda ctx: flatten(ctx, "bounded"),
    "flatten_bounded_f32": lambda ctx: flatten(ctx, "bounded", 32),
    "flatten_trajectories_f32": flatten_trajectory_sampling,
})
BASELINE.update({"flatten_bounded_f32": "flatten_bounded"})  # growth from the run's frame count (8)
SHARES_SHAPES.add("flatten_bounded_f32")


def inversion(ctx: Context):
    """DDIM inversion of the frames (cfg 1, no cache) over the same steps."""
    from comfyui_videoedit.adapters.inversion import invert_video

    return lambda: invert_video(ctx.model, {"samples": ctx.latent}, ctx.positive, steps=ctx.steps,
                                frame_batch_size=ctx.latent.shape[0], cache_mode="off")


CASES["inversion"] = inversion
BASELINE["inversion"] = "plain_cfg1"


# -- Rerender-A-Video ----------------------------------------------------------------------------
@functools.cache
def _sd_vae():
    """SD's VAE architecture (kl-f8, 84 M parameters) with random weights (built once)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    from ve_testkit.models import init_random_

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    ae = init_random_(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4), 11)
    return comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})


def _panning_frames(count: int, height: int, width: int, step: float = 3.0) -> torch.Tensor:
    """``[count, H, W, 3]`` views of one smooth random texture panning ``step`` px per frame."""
    g = torch.Generator().manual_seed(5)
    span = width + int(step * count) + 8
    tex = torch.nn.functional.interpolate(torch.rand(1, 3, height // 16 + 2, span // 16 + 2, generator=g),
                                          size=(height, span), mode="bicubic", align_corners=False).clamp(0, 1)
    grid_y, grid_x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    frames = []
    for t in range(count):
        shift = 2.0 * step * t / (span - 1)
        x = (grid_x + 1) * (width - 1) / (span - 1) - 1 + shift
        grid = torch.stack([x, grid_y], -1)[None]
        frames.append(torch.nn.functional.grid_sample(tex, grid, align_corners=True)[0].permute(1, 2, 0))
    return torch.stack(frames)


def rerender_keyframe(ctx: Context, x0_strength: float = 1.0):
    """One Rerender keyframe after the anchor with every stage on (official windows, same
    sampler/scheduler/steps/cfg as the baseline): DIS flows to the anchor/previous keyframe,
    pass 1 with cross-frame attention, shape fusion and AdaIN, pixel-aware fusion,
    fidelity-oriented encoding (2 encodes + 2 decodes), pass 2 resumed at the first inpainting
    step, decodes; SD's VAE architecture with random weights. From noise (``x0_strength`` 1,
    the official default with a ControlNet) it is read against plain_cfg; the img2img variant
    (0.75, the node's default) against plain_img2img. Run with one frame and 20 steps:
    ``python -m bench --frames 1 --steps 20 --cases rerender_keyframe,rerender_keyframe_img2img``
    (with fewer than 10 steps the pixel-fusion window, strictly inside 0.5..0.8, holds no step
    and pass 2 is skipped)."""
    from comfyui_videoedit.adapters.rerender import FlowBetween, RerenderConfig, RerenderRun

    _, _, h, w = ctx.latent.shape
    frames = _panning_frames(2, 8 * h, 8 * w)
    settings = RerenderConfig(steps=ctx.steps, cfg=ctx.cfg, seed=ctx.seed, x0_strength=x0_strength)
    run = RerenderRun(ctx.model, _sd_vae(), ctx.positive, ctx.negative, settings, 2)
    chw = frames.movedim(-1, 1)
    with torch.inference_mode():
        run.render_anchor(0, chw[:1])

    def runner():
        with torch.inference_mode():
            return run.render_keyframe(1, chw[1:2], FlowBetween(frames, "dis"))

    return runner


def plain_img2img(ctx: Context, x0_strength: float = 0.75):
    """Plain per-frame img2img of one frame, as a user wires it: VAE Encode → KSamplerAdvanced
    from step int(steps·(1 − x0_strength)) with the seed's noise → VAE Decode."""
    import comfy.sample

    _, _, h, w = ctx.latent.shape
    image = _panning_frames(2, 8 * h, 8 * w)[1:2]
    vae = _sd_vae()
    start = int(ctx.steps * (1.0 - x0_strength))

    def runner():
        with torch.inference_mode():
            latent = vae.encode(image).float()
            noise = comfy.sample.prepare_noise(latent, ctx.seed)
            out = comfy.sample.sample(ctx.model, noise, ctx.steps, ctx.cfg, "euler", "ddim_uniform", ctx.positive,
                                      ctx.negative, latent, start_step=start, force_full_denoise=True,
                                      disable_pbar=True, seed=ctx.seed)
            return vae.decode(out)

    return runner


@functools.cache
def _rerender_clip_512(frames: int = 21):
    """21 panning 512² frames and their DIS flows (computed once, untimed here)."""
    from comfyui_videoedit.flow.dis import dis_flow
    from comfyui_videoedit.flow.estimate import bidirectional_flow

    clip = _panning_frames(frames, 512, 512)
    return (clip, *bidirectional_flow(clip, dis_flow))


def rerender_propagate_512(ctx: Context, blend: str = "moments"):
    """Propagate Keyframes on 21 frames at 512² (keyframes 0, 10, 20; flows given): frames/s =
    21 / seconds. The ratio to plain_cfg is only for scale."""
    from comfyui_videoedit.flow.propagate import propagate_keyframes

    clip, forward, backward = _rerender_clip_512()
    keys = [0, 10, 20]
    styled = 1.0 - clip[keys]
    return lambda: propagate_keyframes(clip, styled, keys, forward, backward, blend=blend)


def rerender_flow_dis_512(ctx: Context):
    """The flows the propagation needs, estimated with DIS (20 pairs, both directions, 512²),
    timed separately: frames/s = 21 / seconds."""
    from comfyui_videoedit.flow.dis import dis_flow
    from comfyui_videoedit.flow.estimate import bidirectional_flow

    clip, _, _ = _rerender_clip_512()
    return lambda: bidirectional_flow(clip, dis_flow)


CASES.update({
    "rerender_keyframe": rerender_keyframe,
    "plain_img2img": plain_img2img,
    "rerender_keyframe_img2img": lambda ctx: rerender_keyframe(ctx, 0.75),
    "rerender_propagate_512_f21": rerender_propagate_512,
    "rerender_propagate_512_f21_linear": lambda ctx: rerender_propagate_512(ctx, "linear"),
    "rerender_flow_dis_512_f21": rerender_flow_dis_512,
})
BASELINE.update({"rerender_keyframe_img2img": "plain_img2img"})
WARMED_BY_SETUP.update({"rerender_keyframe", "rerender_keyframe_img2img"})  # the anchor is rendered in setup
