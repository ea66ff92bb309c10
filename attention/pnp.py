"""Plug-and-Play feature injection from the source branch (PnP; used by FLATTEN, and the same
primitives by TokenFlow's keyframe pass).

For the first steps of sampling, each UNet call is preceded by a *source pass*: the cached
inversion latents of the same frames at the same sigma, with the source prompt, through the
same patched UNet. It records the self-attention q/k of chosen layers and the residual-branch
outputs of chosen decoder ResBlocks; the *edit pass* (the sampler's own rows) then uses them
in place of its own, in every cond/uncond chunk. Attention patches that own a layer call
:func:`pnp_qk` on their q/k; residuals go through :mod:`.resnet_hooks`.

State travels in ``transformer_options["ve_pnp"]`` (a :class:`PnPPass`) on a copy of the
options made for each executor call, so nothing global changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .feature_names import feature_name, parse_feature_name
from .frames import call_frame_indices
from .keys import PNP_KEY
from .modes import PnPMode
from .resnet_hooks import ResKey, residual_hooks
from .unet_blocks import BlockKey, key_of
from .wrapper_args import diffusion_model_args


@dataclass
class PnPPass:
    mode: PnPMode  # CAPTURE (source pass) or INJECT (edit pass)
    groups: int
    attn_keys: frozenset
    qk: dict = field(default_factory=dict)  # BlockKey -> (q, k) of the source rows
    res: dict = field(default_factory=dict)  # ResKey -> residual of the source rows


def pnp_qk(q: torch.Tensor, k: torch.Tensor, extra_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Call at the start of an attn1 replace patch: records the source q/k in a capture pass,
    returns the source q/k (repeated over cond/uncond chunks) in an inject pass, else q, k."""
    p: PnPPass | None = extra_options.get(PNP_KEY)
    if p is None:
        return q, k
    key = key_of(extra_options)
    if key not in p.attn_keys:
        return q, k
    if p.mode == PnPMode.CAPTURE:
        p.qk[key] = (q, k)
        return q, k
    if key in p.qk:
        q_src, k_src = p.qk[key]
        return q_src.repeat(p.groups, 1, 1).to(q.dtype), k_src.repeat(p.groups, 1, 1).to(k.dtype)
    return q, k


def source_unet_inputs(
    source, model_sampling, sigma: float, frames: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor
):
    """UNet-level inputs of the source branch for ``frames`` at ``sigma``: the cached latents
    scaled as the UNet expects (``calculate_input``), one timestep per row, and the source
    conditioning; device and dtype follow ``like`` (the sampler's input)."""
    lat = source.latent(sigma, frames).to(like.device)
    sig = torch.full((lat.shape[0],), sigma, device=like.device)
    x_src = model_sampling.calculate_input(sig, lat).to(like.dtype)
    ctx, y = source.unet_conditioning(len(frames), like=like, frames=frames)
    return x_src, timesteps[:1].expand(len(frames)), ctx, y


class PnPQKPatch:
    """attn1 replace patch for layers no other VideoEdit patch owns: q/k injection then the
    previous patch or plain attention."""

    def __init__(self, attn_fn: Callable, previous: Callable | None = None):
        self.attn_fn = attn_fn
        self.previous = previous

    def __call__(self, q, k, v, extra_options):
        q, k = pnp_qk(q, k, extra_options)
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return self.attn_fn(q, k, v, extra_options["n_heads"])


@dataclass
class PnPSchedule:
    attn_keys: tuple[BlockKey, ...]
    res_keys: tuple[ResKey, ...]
    attn_steps: int  # inject q/k while step index < attn_steps
    res_steps: int  # inject residuals while step index < res_steps


class PnPWrapper:
    """``DIFFUSION_MODEL`` wrapper running the source pass then the injected edit pass.

    ``source`` implements ``step_index(sigma)``, ``latent(sigma, frames)`` (VE latents) and
    ``unet_conditioning(n, like)`` (context, y); ``model_sampling`` scales the source input.
    """

    def __init__(self, source, schedule: PnPSchedule, model_sampling, features=None):
        self.source = source
        self.schedule = schedule
        self.model_sampling = model_sampling
        self.features = features  # feature-cache group (``inversion.feature_cache``) or None

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return f"pnp({self.schedule})"

    def __call__(self, executor, *args, **kwargs):
        call = diffusion_model_args(args, kwargs)
        x, timesteps = call["x"], call["timesteps"]
        to = call.transformer_options
        groups = len(to.get("cond_or_uncond") or [0])
        n = x.shape[0] // groups
        sigma = float(to["sigmas"][0])
        self.source.check_call(tuple(x.shape[1:]), call_frame_indices(to, n), to)
        step = self.source.step_index(sigma)
        sched = self.schedule
        attn_on, res_on = step < sched.attn_steps, step < sched.res_steps
        if not (attn_on or res_on):
            return call.call(executor, transformer_options=to)
        frames = call_frame_indices(to, n)
        attn_keys = frozenset(sched.attn_keys) if attn_on else frozenset()
        res_keys = sched.res_keys if res_on else ()
        residuals = _PassResiduals(PnPPass(PnPMode.CAPTURE, 1, attn_keys))
        entry, cached = None, None
        if self.features is not None:
            entry = self.features.entry_key(
                step=step,
                frames=frames.tolist(),
                attn=attn_on,
                res=res_on,
                dtype=str(x.dtype),
                device=x.device.type,
                shape=list(x.shape[1:]),
            )
            cached = self.features.get(entry, x.device)

        with residual_hooks(executor.class_obj, res_keys, residuals):
            if cached is not None:  # the source pass of this step ran in an earlier edit
                qk, res = pnp_from_features(cached)
            else:
                x_src, t_src, ctx, y_src = source_unet_inputs(
                    self.source, self.model_sampling, sigma, frames, timesteps, like=x
                )
                src_opts = dict(to, cond_or_uncond=[0])
                src_opts[PNP_KEY] = residuals.current
                call.call(
                    executor,
                    x=x_src,
                    timesteps=t_src,
                    context=ctx,
                    y=y_src,
                    control=None,
                    transformer_options=src_opts,
                )
                qk, res = residuals.current.qk, residuals.current.res
            residuals.current = PnPPass(PnPMode.INJECT, groups, attn_keys, qk, res)
            opts = dict(to)
            opts[PNP_KEY] = residuals.current
            out = call.call(executor, transformer_options=opts)
        if entry is not None and cached is None:  # committed once the whole call completed
            self.features.put(entry, pnp_features(qk, res))
        return out


def pnp_features(qk: dict, res: dict) -> dict[str, torch.Tensor]:
    """The captured source q/k and residuals as named tensors (for the feature cache)."""
    out = {}
    for key, (q, k) in qk.items():
        out[feature_name("q", key)], out[feature_name("k", key)] = q, k
    for rkey, t in res.items():
        out[feature_name("res", rkey)] = t
    return out


def pnp_from_features(features: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The inverse of :func:`pnp_features`: ``(qk, res)``."""
    pairs: dict = {}
    res = {}
    for name, t in features.items():
        kind, (key,) = parse_feature_name(name)
        if kind == "res":
            res[key] = t
        else:
            pairs.setdefault(key, {})[kind] = t
    return {k: (v["q"], v["k"]) for k, v in pairs.items()}, res


class _PassResiduals:
    """The ResBlock hook's handler: records the source's residuals in the capture pass and
    replaces the edit's in the inject pass (``current`` is the pass the UNet is running)."""

    def __init__(self, current: PnPPass):
        self.current = current

    def __call__(self, rkey, residual):
        p = self.current
        if p.mode == PnPMode.CAPTURE:
            p.res[rkey] = residual
            return None
        return p.res[rkey].repeat(p.groups, 1, 1, 1) if rkey in p.res else None
