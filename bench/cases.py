"""Benchmark cases. Each case is ``fn(ctx) -> runner`` where ``runner()`` does the timed work
once; ``ctx`` carries the model, conditioning, latent and settings shared by every case so
that ratios compare like with like. Methods add their cases here as they land, either with
:func:`register` or by filling the tables below directly (``CASES``, ``BASELINE``, ...).
Ratios are per sampling step, so a case and its baseline may run different step counts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import model as fm


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
    # run only the first ``timed_steps`` steps of the ``steps``-step schedule (the GPU table
    # times a few steps of a 50-step schedule and extrapolates); None = the whole schedule
    timed_steps: int | None = None

    @property
    def run_steps(self) -> int:
        """Sampling steps one runner of a :func:`_sample`-based case performs."""
        return min(self.timed_steps, self.steps) if self.timed_steps else self.steps

    def with_frames(self, frames: int | None) -> Context:
        """The same settings on ``frames`` frames (the latent repeated; None = unchanged)."""
        if frames is None:
            return self
        return Context(
            self.model,
            self.positive,
            self.negative,
            _frames(self.latent, frames),
            self.steps,
            self.cfg,
            self.seed,
            self.extra,
            self.timed_steps,
        )


def _sample(ctx: Context, model, cfg: float, latent: torch.Tensor | None = None, sigmas=None):
    import comfy.sample

    latent = ctx.latent if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, ctx.seed)
    last = ctx.timed_steps if ctx.timed_steps and ctx.timed_steps < ctx.steps else None
    return comfy.sample.sample(
        model,
        noise,
        ctx.steps,
        cfg,
        "euler",
        "ddim_uniform",
        ctx.positive,
        ctx.negative,
        latent,
        sigmas=sigmas,
        last_step=last,
        disable_pbar=True,
        seed=ctx.seed,
    )


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
# name of the case each ratio is taken against (default plain_cfg)
BASELINE = {"plain_cfg1": "plain_cfg"}
# cases that run their baseline's method on more frames (same chunk shapes): no warm-up needed
SHARES_SHAPES: set[str] = set()
# cases whose setup already ran the same UNet/VAE shapes (untimed): no warm-up needed either
WARMED_BY_SETUP: set[str] = set()
# cases that always run their whole ``ctx.steps`` schedule (not ``ctx.timed_steps``)
FULL_SCHEDULE: set[str] = set()
# physical-limit model of a case: ``fn(shapes, ctx) -> FLOPs of one run`` (bench.model); cases
# without one are modelled by the FLOPs counted in their warm-up run
MODELS: dict[str, Callable] = {
    "plain_cfg": fm.plain,
    "plain_cfg1": lambda shapes, ctx: fm.plain(shapes, ctx, rows_per_frame=1),
}


def register(
    name: str,
    fn: Callable,
    baseline: str | None = None,
    model: Callable | None = None,
    *,
    shares_shapes: bool = False,
    warmed_by_setup: bool = False,
    full_schedule: bool = False,
) -> Callable:
    """Add a case: ``fn(ctx) -> runner``; ``baseline`` its ratio's denominator (default
    plain_cfg); ``model(shapes, ctx) -> FLOPs`` its physical limit (bench.model). Returns ``fn``."""
    CASES[name] = fn
    if baseline:
        BASELINE[name] = baseline
    if model is not None:
        MODELS[name] = model
    for flag, table in (
        (shares_shapes, SHARES_SHAPES),
        (warmed_by_setup, WARMED_BY_SETUP),
        (full_schedule, FULL_SCHEDULE),
    ):
        if flag:
            table.add(name)
    return fn


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

    def check_call(self, sample_shape, frames, transformer_options) -> None:
        """``SourceReplay.check_call``'s place: the bench samples latents of this source's own
        shape, so there is nothing to disagree."""


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

    sub = ctx.with_frames(frames)
    model = tokenflow_model(ctx.model, RandomSource(sub), window=8, share_batch=share_batch)
    return lambda: _sample(sub, model, ctx.cfg)


def _feature_group(ctx: Context, name: str):
    """A fresh RAM feature cache of the benchmark's stand-in source (no cap): the case's untimed
    warm-up run fills it, every timed repeat is a second edit served from it."""
    from comfyui_videoedit.inversion.feature_cache import FeatureCache, _MemoryStore

    return FeatureCache("memory", f"bench {name}", memory=_MemoryStore()).group(name)


def _feature_info(ctx: Context, name: str, group, frames: int) -> None:
    """Bytes the cache holds per frame per step, for the report."""
    store = group.cache.memory
    steps = max(1, len(store.groups.get(group.key, {})))
    per_frame_step = store.bytes_of(group.key) / max(1, frames * steps)
    ctx.extra.setdefault("info", {})[name] = (
        f"feature cache: {per_frame_step / 2**20:.2f} MB per frame per step over {steps} entries "
        f"({store.bytes_of(group.key) / 2**20:.0f} MB, {str(ctx.model.model_dtype())[6:]})"
    )


def tokenflow_cached(ctx: Context):
    """TokenFlow as :func:`tokenflow`, as a second edit: the source features of every step come
    from the feature cache (filled by the warm-up run), so no source rows run."""
    from comfyui_videoedit.adapters.tokenflow import tokenflow_model

    group = _feature_group(ctx, "tokenflow_cached")
    model = tokenflow_model(ctx.model, RandomSource(ctx), window=8, features=group)

    def runner():
        out = _sample(ctx, model, ctx.cfg)
        _feature_info(ctx, "tokenflow_cached", group, ctx.latent.shape[0])
        return out

    return runner


def _frames(latent: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // latent.shape[0])
    return latent.repeat(reps, 1, 1, 1)[:n].contiguous()


register("extended_attention", extended_attention_all, model=fm.extended_attention)
register("tokenflow_cached", tokenflow_cached, model=functools.partial(fm.tokenflow, cached=True))
register("tokenflow", tokenflow, model=fm.tokenflow)
register("tokenflow_separate_source", lambda ctx: tokenflow(ctx, share_batch=False), model=fm.tokenflow)
# growth with frames is read against the run's own frame count (8 by default)
for _n in (16, 32):
    register(
        f"tokenflow_f{_n}",
        functools.partial(tokenflow, frames=_n),
        "tokenflow",
        functools.partial(fm.tokenflow, frames=_n),
        shares_shapes=True,
    )


# -- FLATTEN -------------------------------------------------------------------------------------
def _flatten_flow(frames: int, h: int, w: int) -> torch.Tensor:
    """A smooth moving-scene flow at pixel resolution (8x the latent): a 1-cell pan plus a
    slow per-cell wobble, so trajectories have mixed lengths and some collisions."""
    g = torch.Generator().manual_seed(7)
    per_cell = torch.randn(frames - 1, 2, h, w, generator=g) * 4.0
    per_cell[:, 0] += 8.0
    return torch.nn.functional.interpolate(per_cell, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)


def flatten(ctx: Context, mode: str = "dense", frames: int | None = None, attn_fn=None):
    """FLATTEN on every self-attention layer (trajectory attention at the highest resolution);
    ``attn_fn`` replaces the spatio-temporal kernel the node picks."""
    from comfyui_videoedit.adapters.flatten import flatten_model
    from comfyui_videoedit.flow.trajectories import sample_trajectories

    sub = ctx.with_frames(frames)
    f, _, h, w = sub.latent.shape
    trajectories = sample_trajectories(_flatten_flow(f, h, w), (h, w))
    model = flatten_model(ctx.model, trajectories, mode=mode)
    if attn_fn is not None:
        for patch in model.model_options["transformer_options"]["patches_replace"]["attn1"].values():
            patch.runtime.attn_fn = attn_fn  # one runtime, shared by every layer's patch
    return lambda: _sample(sub, model, ctx.cfg)


def flatten_pnp(ctx: Context, cached: bool = False):
    """FLATTEN dense with PnP injection (the node's defaults: 80 % of the steps, decoder attention
    by resolution, ResBlocks output 3, 4, 6) from a stand-in source; ``cached``: as a second edit
    whose PnP features come from the feature cache (filled by the warm-up run)."""
    from comfyui_videoedit.adapters.flatten import flatten_model
    from comfyui_videoedit.flow.trajectories import sample_trajectories

    f, _, h, w = ctx.latent.shape
    trajectories = sample_trajectories(_flatten_flow(f, h, w), (h, w))
    name = "flatten_pnp_cached" if cached else "flatten_pnp"
    group = _feature_group(ctx, name) if cached else None
    model = flatten_model(ctx.model, trajectories, RandomSource(ctx), mode="dense", features=group)

    def runner():
        out = _sample(ctx, model, ctx.cfg)
        if group is not None:
            _feature_info(ctx, name, group, f)
        return out

    return runner


def flatten_trajectory_sampling(ctx: Context, frames: int = 32):
    """Trajectory sampling alone (all 4 latent resolutions) for ``frames`` frames of pixel flow
    at the benchmark size; its ratio to plain_cfg is only for scale."""
    from comfyui_videoedit.flow.trajectories import sample_trajectories

    _, _, h, w = ctx.latent.shape
    flow = _flatten_flow(frames, h, w)
    return lambda: sample_trajectories(flow, (h, w))


def flatten_comfy_kernel(ctx: Context):
    """FLATTEN dense with ComfyUI's own kernel for the spatio-temporal part as well (on CPU its
    sub-quadratic fallback), to show what the fused SDPA kernel gains."""
    from comfyui_videoedit.adapters.model_patch import comfy_attention

    return flatten(ctx, attn_fn=comfy_attention)


register("flatten_dense", flatten, model=fm.flatten)
register("flatten_dense_comfy_kernel", flatten_comfy_kernel, model=fm.flatten)
register(
    "flatten_bounded", functools.partial(flatten, mode="bounded"), model=functools.partial(fm.flatten, mode="bounded")
)
# growth from the run's frame count (8): linear in frames
for _n in (16, 32):
    register(
        f"flatten_bounded_f{_n}",
        functools.partial(flatten, mode="bounded", frames=_n),
        "flatten_bounded",
        functools.partial(fm.flatten, mode="bounded", frames=_n),
        shares_shapes=True,
    )
register("flatten_trajectories_f32", flatten_trajectory_sampling, full_schedule=True)
register("flatten_pnp", flatten_pnp, model=fm.flatten_pnp)
register(
    "flatten_pnp_cached",
    functools.partial(flatten_pnp, cached=True),
    model=functools.partial(fm.flatten_pnp, cached=True),
)


def inversion(ctx: Context):
    """DDIM inversion of the frames (cfg 1, no cache) over the same steps."""
    from comfyui_videoedit.adapters.inversion import invert_video

    return lambda: invert_video(
        ctx.model,
        {"samples": ctx.latent},
        ctx.positive,
        steps=ctx.steps,
        frame_batch_size=ctx.latent.shape[0],
        cache_mode="off",
    )


register("inversion", inversion, "plain_cfg1", fm.inversion, full_schedule=True)


# -- Rerender-A-Video ----------------------------------------------------------------------------
@functools.cache
def _sd_vae():
    """SD's VAE architecture (kl-f8, 84 M parameters) with random weights (built once)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    from ve_testkit.models import init_random_

    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    ae = init_random_(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4), 11)
    return comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})


def _panning_frames(count: int, height: int, width: int, step: float = 3.0) -> torch.Tensor:
    """``[count, H, W, 3]`` views of one smooth random texture panning ``step`` px per frame."""
    g = torch.Generator().manual_seed(5)
    span = width + int(step * count) + 8
    tex = torch.nn.functional.interpolate(
        torch.rand(1, 3, height // 16 + 2, span // 16 + 2, generator=g),
        size=(height, span),
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)
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
            out = comfy.sample.sample(
                ctx.model,
                noise,
                ctx.steps,
                ctx.cfg,
                "euler",
                "ddim_uniform",
                ctx.positive,
                ctx.negative,
                latent,
                start_step=start,
                force_full_denoise=True,
                disable_pbar=True,
                seed=ctx.seed,
            )
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


CASES.update(
    {
        "rerender_keyframe": rerender_keyframe,
        "plain_img2img": plain_img2img,
        "rerender_keyframe_img2img": lambda ctx: rerender_keyframe(ctx, 0.75),
        "rerender_propagate_512_f21": rerender_propagate_512,
        "rerender_propagate_512_f21_linear": lambda ctx: rerender_propagate_512(ctx, "linear"),
        "rerender_flow_dis_512_f21": rerender_flow_dis_512,
    }
)
BASELINE.update({"rerender_keyframe_img2img": "plain_img2img"})
WARMED_BY_SETUP.update({"rerender_keyframe", "rerender_keyframe_img2img"})  # the anchor is rendered in setup
FULL_SCHEDULE.update(
    {
        "rerender_keyframe",
        "plain_img2img",
        "rerender_keyframe_img2img",
        "rerender_propagate_512_f21",
        "rerender_propagate_512_f21_linear",
        "rerender_flow_dis_512_f21",
    }
)


# -- Edit quality -------------------------------------------------------------------------------
def edit_quality_512(ctx: Context, frames: int = 24):
    """The whole Edit Quality report of ``frames`` frames at 512² with no flows given (DIS on the
    source at the node's default scale 0.5, occlusion masks, warp errors of edit and source,
    luminance and edge SSIM, report text, plot); no CLIP model. Target: under 5 s of CPU time
    on the 2-core development machine. The ratio to plain_cfg is only for scale. Self-contained:
    a smooth random texture panning 3 px per frame as the source, a flickering inverted copy
    as the edit."""
    from comfyui_videoedit.media.quality import edit_quality
    from comfyui_videoedit.media.quality_plot import plot_report

    g = torch.Generator().manual_seed(7)
    size, step = 512, 3
    tex = torch.nn.functional.interpolate(
        torch.rand(1, 3, 40, 40 + frames // 4, generator=g), size=(size, size + step * frames), mode="bicubic"
    ).clamp(0, 1)[0]
    source = torch.stack([tex[:, :, step * k : step * k + size] for k in range(frames)]).permute(0, 2, 3, 1)
    source = source.contiguous()
    flicker = 0.03 * torch.randn(frames, 1, 1, 1, generator=g)
    edited = ((1.0 - source) * 0.9 + 0.05 + flicker).clamp(0, 1)

    def runner():
        with torch.inference_mode():
            report = edit_quality(source, edited)
            return report.text(), plot_report(report)

    return runner


# -- Video-P2P -----------------------------------------------------------------------------------
class P2PBenchSource(RandomSource):
    """``RandomSource`` with what P2P also reads: the frame count, the latent shape and the
    source branch's unconditional context (joint mode: the negative, as without null-text)."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.num_frames = ctx.latent.shape[0]
        self.latent_shape = tuple(ctx.latent.shape[1:])
        self.uncond = ctx.negative[0][0]

    def uncond_conditioning(self, step: int, n: int, like: torch.Tensor, frames=None):
        return self.uncond.to(like.device, like.dtype).expand(n, -1, -1), None


def p2p_bench_edit():
    """A word swap with local blend and reweighting on written-out token ids (speed does not
    depend on the tokenizer): 'a man riding a bike' → 'a man riding a motorcycle'."""
    from comfyui_videoedit.attention.p2p_control import P2PEdit, one_hot
    from comfyui_videoedit.attention.p2p_tokens import prompt_tokens, replace_mapper

    src = prompt_tokens(
        "a man riding a bike", "a man riding a bike".split(), [[320], [786], [6765], [320], [3701]], "source_prompt"
    )
    tgt = prompt_tokens(
        "a man riding a motorcycle",
        "a man riding a motorcycle".split(),
        [[320], [786], [6765], [320], [10297, 9985]],
        "target_prompt",
    )
    eq = torch.ones(77)
    eq[tgt.positions("motorcycle")] = 2.0
    return P2PEdit(
        src,
        tgt,
        "replace",
        replace_mapper(src, tgt),
        torch.zeros(77),
        eq,
        blend_src=one_hot(src.positions("bike"), 77),
        blend_tgt=one_hot(tgt.positions("motorcycle"), 77),
    )


def p2p(ctx: Context, source_mode: str = "replay", frames: int | None = None, stats: dict | None = None):
    """Video-P2P (word swap, local blend, reweight, first-frame attention, official step
    fractions) with a stand-in source branch, sampled as plain_cfg samples. ``stats`` (a dict)
    receives the run's map memory: the largest probability tensors one cross-attention layer
    built (``peak_map_bytes``) and what the run kept between calls (``stored_map_bytes``)."""
    from comfyui_videoedit.adapters.p2p import p2p_model
    from comfyui_videoedit.attention.p2p_patch import P2PConfig

    sub = ctx.with_frames(frames)
    model, runtime = p2p_model(
        ctx.model,
        p2p_bench_edit(),
        P2PBenchSource(sub),
        P2PConfig.from_inputs(source_mode=source_mode, blend_start=0.0),
    )

    def runner():
        out = _sample(sub, model, ctx.cfg)
        if stats is not None:
            stats.update(runtime.last_stats)
        return out

    return runner


register("edit_quality_512_f24", edit_quality_512, full_schedule=True)

register("p2p_replay", p2p, model=fm.p2p)
register(
    "p2p_joint",
    functools.partial(p2p, source_mode="joint"),
    model=lambda shapes, ctx: fm.plain(shapes, ctx, rows_per_frame=4),
)  # source and target each with CFG
# growth from the run's frame count (8); its own warm-up
register(
    "p2p_replay_f32",
    functools.partial(p2p, frames=32),
    "p2p_replay",
    model=lambda shapes, ctx: fm.plain(shapes, ctx, rows_per_frame=3, frames=32),
)


def p2p_map_layer(ctx: Context, frames: int = 8, stats: dict | None = None):
    """One SD1.5 64² cross-attention layer at 512² (4096 queries, 77 tokens, 8 heads of 40)
    under P2P with local blend, replay layout (source cond rows + uncond + cond rows of
    ``frames`` frames): the memory P2P's maps take where they are largest. ``stats`` receives
    the bytes of the largest probability chunk and of the per-frame blend sums the step keeps.
    Its ratio to plain_cfg is only for scale."""
    from comfyui_videoedit.attention.p2p_patch import P2PCall, P2PConfig, P2PCrossAttention, P2PRuntime, RunState

    rt = P2PRuntime(P2PConfig(), p2p_bench_edit(), None, None, None)  # the layer reads only the edit and the run
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3 * frames, 4096, 320, generator=g)
    k, v = torch.randn(3 * frames, 77, 320, generator=g), torch.randn(3 * frames, 77, 320, generator=g)
    extra = {"n_heads": 8, "activations_shape": [3 * frames, 320, 16, 16], "original_shape": [3 * frames, 4, 64, 64]}
    extra_64 = dict(extra, activations_shape=[3 * frames, 320, 64, 64])
    q16 = torch.randn(3 * frames, 256, 320, generator=g)

    def runner():
        rt.run = RunState(7.5, frames, (4, 64, 64))
        call = P2PCall(
            step=0,
            n=frames,
            frames=torch.arange(frames),
            source_kinds=[0],
            kinds=[1, 0],
            alpha=torch.ones(77),
            edit_on=True,
            self_on=True,
        )
        layer = P2PCrossAttention(rt)
        layer(q, k, v, {**extra_64, "ve_p2p": call})  # the largest maps (64², edited, not kept)
        layer(q16, k, v, {**extra, "ve_p2p": call})  # a blend layer: its word sums are kept
        if stats is not None:
            stats.update(
                peak_map_bytes=rt.run.peak_map_bytes,
                kept_bytes=sum(t.numel() * t.element_size() for t in call.maps.values()),
            )
        rt.run = None

    return runner


register("p2p_map_layer_f8", p2p_map_layer, full_schedule=True)
register("p2p_map_layer_f32", functools.partial(p2p_map_layer, frames=32), full_schedule=True)
