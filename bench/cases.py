"""Benchmark cases. Each case is ``fn(ctx) -> runner`` where ``runner()`` does the timed work
once; ``ctx`` carries the model, conditioning, latent and settings shared by every case so
that ratios compare like with like. Methods add their cases here as they land."""

from __future__ import annotations

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

    def unet_conditioning(self, n: int, like: torch.Tensor):
        return self.context.to(like.device, like.dtype).expand(n, -1, -1), None


def extended_attention_all(ctx: Context):
    """Every frame attends to every frame (keyframe stride 1)."""
    from comfyui_videoedit.attention.extended_patch import ExtendedAttentionPatch
    from comfyui_videoedit.attention.patching import attach_attn1
    from comfyui_videoedit.nodes.common import comfy_attention

    attn = comfy_attention()
    model = attach_attn1(ctx.model, lambda key, prev: ExtendedAttentionPatch(1, None, prev, attn))
    return lambda: _sample(ctx, model, ctx.cfg)


def tokenflow(ctx: Context, frames: int | None = None):
    """TokenFlow (window 8, PnP on) with a stand-in source branch."""
    from comfyui_videoedit.nodes.tokenflow import tokenflow_model

    sub = ctx if frames is None else Context(ctx.model, ctx.positive, ctx.negative,
                                              _frames(ctx.latent, frames), ctx.steps, ctx.cfg)
    model = tokenflow_model(ctx.model, RandomSource(sub), window=8)
    return lambda: _sample(sub, model, ctx.cfg)


def _frames(latent: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // latent.shape[0])
    return latent.repeat(reps, 1, 1, 1)[:n].contiguous()


CASES.update({
    "extended_attention": extended_attention_all,
    "tokenflow": tokenflow,
    "tokenflow_f8": lambda ctx: tokenflow(ctx, 8),
    "tokenflow_f16": lambda ctx: tokenflow(ctx, 16),
    "tokenflow_f32": lambda ctx: tokenflow(ctx, 32),
})
