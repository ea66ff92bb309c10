"""Node runs the host tests share: DDIM Inversion with the tests' usual settings, and core's
SamplerCustom along a set of sigmas."""

from __future__ import annotations


def ddim_invert(
    model,
    latent: dict,
    conditioning,
    steps: int,
    *,
    inversion_steps: int = 0,
    scheduler: str = "ddim_uniform",
    frame_batch_size: int = 16,
    cache_mode: str = "off",
    cache_limit_mb: int = 0,
    clear_cache: bool = False,
):
    """The DDIM Inversion node's output (inversion, noisy latent, sigmas) for ``latent``."""
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    return DDIMInversion.execute(
        model,
        latent,
        conditioning,
        steps=steps,
        inversion_steps=inversion_steps,
        scheduler=scheduler,
        frame_batch_size=frame_batch_size,
        cache_mode=cache_mode,
        cache_limit_mb=cache_limit_mb,
        clear_cache=clear_cache,
    )


def sampler_custom(
    host, model, positive, negative, sigmas, latent: dict, cfg: float = 5.0, sampler_name: str = "euler"
):
    """Core's SamplerCustom (no added noise) from ``latent`` along ``sigmas``; the sampled tensor."""
    node = host.custom_sampler.SamplerCustom()
    sampler = host.comfy.samplers.sampler_object(sampler_name)
    fn = getattr(node, "sample", None) or node.execute
    out = fn(model, False, 0, cfg, positive, negative, sampler, sigmas, latent)
    out = out.args if hasattr(out, "args") else out
    return out[0]["samples"]
