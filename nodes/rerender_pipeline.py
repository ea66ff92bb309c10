"""Rerender-A-Video keyframe translation driven through ComfyUI's own samplers.

The one module of the Rerender area that touches ComfyUI objects (ModelPatcher, conditioning,
ControlNet, VAE, ``comfy.sample``); the maths lives in ``flow/fusion.py``,
``attention/crossframe.py`` and ``flow/propagate.py``.

How each stage hooks in (on a clone of the user's model; the user's model is never changed):

- cross-frame attention: an ``attn1_patch`` (:class:`CrossFrameAttention`) that swaps the
  keys/values input of the chosen decoder self-attention layers;
- shape-aware fusion and AdaIN on the predicted x0: a ``sampler_post_cfg_function``
  (:class:`X0Hook`), which every ComfyUI sampler calls on the CFG-combined denoised before it
  takes its step. Replacing that denoised is sampler-agnostic; the sampler then derives its
  noise direction from the replaced x0 (``(x − x0')/σ``), whereas the official DDIM code keeps
  the model's ε: at equal settings the official fusion pulls a little harder per step;
- the second pass's structure-guided inpainting replaces the *latent* x_t before a step
  (``x_t ← w·q(x_trg, t) + (1 − w)·x0 + r·(x_t − x0)`` with fresh noise), which no model-side
  hook can do for every sampler. The pass is therefore sampled in segments with ComfyUI's
  sampler: up to the mask window, one step at a time inside it (blending between the steps),
  then to the end. A segment continues from the previous one's latent with zero added noise,
  which ComfyUI's noise scaling round-trips exactly, so first-order deterministic samplers
  (euler = DDIM, ddim, ...) give the same trajectory as one call; multistep samplers restart
  their history at segment boundaries and ancestral/SDE samplers draw per-segment noise.
  ComfyUI's ``denoise_mask`` was not used: it pins the region to the sampler's *initial*
  latent with the *initial* noise for the whole run, not to the fused frame with fresh noise
  inside a step window.
- Pass 2 repeats pass 1 exactly up to the first inpainting step (same seed, same stores, same
  hooks), so it starts from pass 1's latent there instead of re-sampling those steps.

With every stage off (windows with end ≤ start) the passes are single ``comfy.sample.sample``
calls with pass-through hooks: exactly ``KSamplerAdvanced`` img2img of each keyframe with the
same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..attention.block_resolution import choose_blocks
from ..attention.crossframe import CrossFrameAttention, CrossFrameStore, SigmaSchedule, sigma_key
from ..attention.patching import self_attention_keys
from ..attention.unet_blocks import parse_block_list
from ..flow.consistency import occlusion_mask
from ..flow.fusion import (
    adain,
    blended_latent_step,
    fidelity_encode,
    flat_region,
    inpaint_mask,
    pixel_fusion,
    shape_fusion,
    shape_fusion_mask,
    soft_occlusion,
    warp_latent,
)
from ..flow.warp import warp_backward

log = logging.getLogger(__name__)

FlowFn = Callable[[int, int], torch.Tensor]  # (from_frame, to_frame) -> [1, H, W, 2] on from_frame's grid


@dataclass
class RerenderSettings:
    steps: int = 20
    cfg: float = 7.5
    sampler_name: str = "euler"
    scheduler: str = "ddim_uniform"
    seed: int = 0
    x0_strength: float = 0.75
    cross_frame: tuple[float, float] = (0.0, 1.0)
    shape_fusion: tuple[float, float] = (0.0, 0.1)
    pixel_fusion: tuple[float, float] = (0.5, 0.8)
    adain: tuple[float, float] = (0.8, 1.0)
    mask_strength: float = 0.5
    inner_strength: float = 0.9
    smooth_boundary: bool = True
    fidelity_threshold: float = 0.25
    fidelity_strength: float = 1.0
    fidelity_mode: str = "code"
    warp_mode: str = "nearest"
    cross_frame_blocks: str = "decoder"
    include_current: bool = False
    store_dtype: torch.dtype | None = torch.float16  # cross-frame stores (None: keep the model's dtype)

    def start_step(self) -> int:
        """SDEdit start: ``int(steps·(1 − x0_strength))`` as the official code; ≥ 1 starts from noise."""
        if self.x0_strength >= 1.0:
            return 0
        return min(self.steps, int(self.steps * (1.0 - self.x0_strength)))


def cross_frame_keys(model, spec: str) -> list:
    """Self-attention layers that get cross-frame attention. ``"decoder"`` = every ``output``
    block (the official default); ``"output 6-11"`` drops the 16² layers (``loose_cfattn``)."""
    keys = self_attention_keys(model)
    text = (spec or "").strip().lower()
    if text in ("decoder", "up", "output"):
        return [k for k in keys if k[0] == "output"]
    try:  # block ids, or resolutions of the image ("output 1/8, 1/16")
        return choose_blocks(text, model.get_model_object("diffusion_model"), keys,
                             lambda s: parse_block_list(s, keys), "cross_frame_blocks")
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith("cross_frame_blocks") else f"cross_frame_blocks: {e}") from None


# -- VAE on channel-first images ------------------------------------------------------------

def check_vae_multiple(frames: torch.Tensor, vae, name: str) -> None:
    """``frames`` ``[F, H, W, 3]``: H and W must be multiples of the VAE's downscale."""
    ratio = int(vae.spacial_compression_encode())
    if frames.shape[1] % ratio or frames.shape[2] % ratio:
        raise ValueError(f"{name}: {frames.shape[2]}×{frames.shape[1]} is not a multiple of the VAE's {ratio}; "
                         f"crop or resize the frames (e.g. Upscale Image) first")


def vae_encode_chw(vae, image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` 0..1 → raw latent (float32)."""
    return vae.encode(image.movedim(1, -1)[..., :3]).float()


def vae_decode_chw(vae, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent → ``[B, 3, H, W]`` 0..1 (float32)."""
    return vae.decode(latent).movedim(-1, 1).float()


# -- conditioning: per-frame ControlNet hints ---------------------------------------------------

def _slice_batch(value, index: int, frames: int):
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == frames and frames > 1:
        return value[index:index + 1]
    return value


def _control_for_frame(control, index: int, frames: int, cache: dict):
    """A copy of a ControlNet/T2I-adapter chain whose hints (and extra concat inputs) hold only
    frame ``index`` when they hold one image per frame. Shared objects stay shared."""
    if control is None:
        return None
    if id(control) in cache:
        return cache[id(control)]
    hint = getattr(control, "cond_hint_original", None)
    previous = _control_for_frame(getattr(control, "previous_controlnet", None), index, frames, cache)
    if isinstance(hint, torch.Tensor) and hint.shape[0] not in (1, frames):
        raise ValueError(f"positive/negative: a ControlNet hint holds {hint.shape[0]} images but the video has {frames} "
                         f"frames; give one hint image per frame (or a single image for all)")
    per_frame = isinstance(hint, torch.Tensor) and hint.shape[0] == frames and frames > 1
    extra = list(getattr(control, "extra_concat_orig", []) or [])
    if not per_frame and previous is getattr(control, "previous_controlnet", None):
        cache[id(control)] = control
        return control
    sliced = control.copy()
    if per_frame:
        sliced.set_cond_hint(hint[index:index + 1], control.strength, control.timestep_percent_range,
                             vae=getattr(control, "vae", None), extra_concat=[_slice_batch(e, index, frames) for e in extra])
    sliced.set_previous_controlnet(previous)
    cache[id(control)] = sliced
    return sliced


def conditioning_for_frame(conditioning: list, index: int, frames: int, cache: dict | None = None) -> list:
    """The conditioning with every ControlNet in it restricted to frame ``index``'s hint."""
    cache = {} if cache is None else cache
    out = []
    for embedding, options in conditioning:
        opts = dict(options)
        if "control" in opts:
            opts["control"] = _control_for_frame(opts["control"], index, frames, cache)
        out.append([embedding, opts])
    return out


# -- the x0 hook -------------------------------------------------------------------------------

class X0Hook:
    """``sampler_post_cfg_function``: records the anchor's x0 per sigma, applies AdaIN and
    shape-aware fusion to later keyframes' x0 inside their windows, and remembers the x0 each
    step ends with (the inpainting's signal part). Pass-through when ``mode == "off"``."""

    def __init__(self, run: RerenderRun):
        self.run = run

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args):
        run = self.run
        den = args["denoised"]
        if run.x0_mode == "off":
            return den
        sigma = float(args["sigma"].flatten()[0])
        step = run.schedule.step_of(sigma)
        if run.x0_mode == "record_anchor":
            run.anchor_x0[sigma_key(sigma)] = den.detach().clone()
        elif run.x0_mode == "fuse":
            reference = run.anchor_x0.get(sigma_key(sigma))
            s = run.settings
            if reference is not None:
                reference = reference.to(den)
                if run.schedule.in_window(step, s.adain):
                    den = adain(den, reference)
                if run.shape_keep is not None and run.schedule.in_window(step, s.shape_fusion):
                    warped = warp_latent(reference, run.flow_to_anchor, s.warp_mode)
                    den = shape_fusion(den, warped, run.shape_keep)
        run.x0_by_step[step] = den
        return den


# -- the run ------------------------------------------------------------------------------------

@dataclass
class Rendered:
    index: int
    source: torch.Tensor  # [1, 3, H, W] 0..1
    result: torch.Tensor  # [1, 3, H, W] 0..1


class RerenderRun:
    """Renders keyframes in order: :meth:`render_anchor` once, then :meth:`render_keyframe`."""

    def __init__(self, model, vae, positive, negative, settings: RerenderSettings, frame_count: int,
                 on_step: Callable[[], None] | None = None):
        import comfy.model_management as mm
        import comfy.samplers

        self.settings = s = settings
        self.vae = vae
        self.positive, self.negative = positive, negative
        self.frame_count = frame_count
        self.on_step = on_step
        sigmas = comfy.samplers.KSampler(model, steps=s.steps, device="cpu", sampler=s.sampler_name,
                                         scheduler=s.scheduler).sigmas
        self.schedule = SigmaSchedule(sigmas)
        self.start = s.start_step()
        self.store = CrossFrameStore(cross_frame_keys(model, s.cross_frame_blocks), self.schedule, s.cross_frame,
                                     include_current=s.include_current, store_device=mm.intermediate_device(),
                                     store_dtype=s.store_dtype)
        self.model = model.clone()
        self.model.set_model_attn1_patch(CrossFrameAttention(self.store))
        self.model.set_model_sampler_post_cfg_function(X0Hook(self))
        self.model_sampling = model.get_model_object("model_sampling")
        self.latent_format = model.get_model_object("latent_format")
        self.x0_mode = "off"
        self.anchor_x0: dict = {}
        self.x0_by_step: dict = {}
        self.shape_keep: torch.Tensor | None = None
        self.flow_to_anchor: torch.Tensor | None = None
        self.anchor: Rendered | None = None
        self.previous: Rendered | None = None
        self.final_latents: dict[int, torch.Tensor] = {}  # raw latent of each rendered keyframe
        self.mask_steps = [j for j in self.schedule.window_steps(s.pixel_fusion, strict=True) if j >= self.start]

    # -- VAE (images [1, 3, H, W] 0..1 ↔ raw latents) ------------------------------------------
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return vae_encode_chw(self.vae, image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return vae_decode_chw(self.vae, latent)

    # -- sampling -------------------------------------------------------------------------------
    def _sample(self, latent: torch.Tensor, noise: torch.Tensor, conds, start: int, last: int | None) -> torch.Tensor:
        import comfy.sample

        s = self.settings
        callback = None
        if self.on_step is not None:
            def callback(step, x0, x, total):
                self.on_step()
        return comfy.sample.sample(self.model, noise, s.steps, s.cfg, s.sampler_name, s.scheduler, conds[0], conds[1],
                                   latent, denoise=1.0, start_step=start, last_step=last,
                                   force_full_denoise=last is None, callback=callback, disable_pbar=True, seed=s.seed)

    def _initial(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keyframe's starting latent (its encoding, or an empty latent when starting from
        noise) and the seed's noise, exactly as ``KSamplerAdvanced`` would build them."""
        import comfy.sample

        if self.settings.x0_strength >= 1.0:
            ratio = int(self.vae.spacial_compression_encode())
            channels = int(self.latent_format.latent_channels)
            latent = torch.zeros(1, channels, image.shape[-2] // ratio, image.shape[-1] // ratio)
        else:
            latent = self.encode(image)
        latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        return latent, comfy.sample.prepare_noise(latent, self.settings.seed)

    def _to_model(self, raw: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Raw latent returned by a segment → the sampler's x at ``sigma`` (inverse of what
        ``comfy.sample`` does on the way out)."""
        return self.model_sampling.noise_scaling(sigma, torch.zeros_like(raw), self.latent_format.process_in(raw))

    def _to_raw(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(self.model_sampling.inverse_noise_scaling(sigma, x))

    def _blend(self, x: torch.Tensor, j: int, x0_prev: torch.Tensor, inpaint) -> torch.Tensor:
        """Blended-latent inpainting of raw latent ``x`` (the state at step ``j``)."""
        s = self.settings
        target, weight, flat = inpaint
        sigma = torch.tensor(self.schedule.sigmas[j])
        gen = torch.Generator().manual_seed((int(s.seed) + 7919 * (j + 1)) % (2**63))
        fresh = torch.randn(target.shape, generator=gen).to(target)
        x_model = self._to_model(x, sigma)
        signal = self.model_sampling.noise_scaling(sigma, torch.zeros_like(x_model), x0_prev.to(x_model))
        target_noisy = self.model_sampling.noise_scaling(sigma, fresh.to(x_model), target.to(x_model))
        blended = blended_latent_step(x_model, signal, target_noisy, weight, s.inner_strength, flat)
        return self._to_raw(blended, sigma)

    def _pass(self, latent, noise, conds, inpaint=None, resume=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sampling pass → (final raw latent, raw latent at the first inpainting step or None).

        Without a mask window: one ``comfy.sample.sample`` call. With one, the pass is split at
        the window's first step (``mid``); ``inpaint = (target, weight, flat)`` (model-space
        target, ``[1, 1, h, w]`` weight and flat mask) blends before each window step, and
        ``resume = (mid, x0 of the step before)`` starts there instead of at the SDEdit start.
        """
        steps = self.mask_steps
        zero = torch.zeros_like(noise)
        last_of = {j: (j + 1 if j + 1 < self.schedule.steps else None) for j in steps}
        if not steps:
            return self._sample(latent, noise, conds, self.start, None), None
        first = steps[0]
        if resume is not None:
            x, x0_before = resume
            mid = x
        elif first > self.start:
            x = mid = self._sample(latent, noise, conds, self.start, first)
            x0_before = self.x0_by_step.get(first - 1)
        else:  # the window opens at the SDEdit start: no latent to blend into yet
            x = mid = x0_before = None
        if inpaint is None:
            if x is None:
                return self._sample(latent, noise, conds, self.start, None), None
            return self._sample(x, zero, conds, first, None), mid
        for j in steps:
            if x is None:
                x = self._sample(latent, noise, conds, j, last_of[j])
                continue
            x0_prev = x0_before if j == first else self.x0_by_step.get(j - 1)
            if x0_prev is not None:
                x = self._blend(x, j, x0_prev, inpaint)
            x = self._sample(x, zero, conds, j, last_of[j])
        if last_of[steps[-1]] is not None:
            x = self._sample(x, zero, conds, steps[-1] + 1, None)
        return x, mid

    # -- keyframes -------------------------------------------------------------------------------
    def render_anchor(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """Frame 0 of the sequence: plain sampling that records the cross-frame and x0 stores."""
        conds = self._conds(index)
        latent, noise = self._initial(image)
        self.store.begin("record_anchor")
        self.x0_mode, self.anchor_x0, self.x0_by_step = "record_anchor", {}, {}
        try:
            out = self._sample(latent, noise, conds, self.start, None)
        finally:
            self.store.begin("off")
            self.x0_mode = "off"
        self.final_latents[index] = out
        result = self.decode(out)
        self.anchor = self.previous = Rendered(index, image, result)
        return result

    def render_keyframe(self, index: int, image: torch.Tensor, flow: FlowFn) -> torch.Tensor:
        """A later keyframe: pass 1 (cross-frame attention, shape fusion, AdaIN) → pixel-aware
        fusion with the warped previous and anchor results → fidelity-oriented encoding →
        pass 2 with blended-latent inpainting in the mask window."""
        if self.anchor is None:
            raise RuntimeError("render_anchor must run before render_keyframe")
        s = self.settings
        conds = self._conds(index)
        latent, noise = self._initial(image)
        size = latent.shape[-2:]
        anchor_ref = self._reference(self.anchor, index, flow)
        previous_ref = anchor_ref if self.previous.index == self.anchor.index else self._reference(self.previous, index, flow)
        shape_on = bool(self.schedule.window_steps(s.shape_fusion))
        self.shape_keep = shape_fusion_mask(anchor_ref["occlusion"], size) if shape_on else None
        self.flow_to_anchor = anchor_ref["flow"]
        pixel_on = bool(self.mask_steps)
        self.store.begin("attend", record=True)
        self.x0_mode, self.x0_by_step = "fuse", {}
        try:
            direct_latent, mid = self._pass(latent, noise, conds)
            if not pixel_on:
                self.final_latents[index] = direct_latent
                result = self.decode(direct_latent)
            else:
                pass1_x0 = dict(self.x0_by_step)
                direct = self.decode(direct_latent)
                fused = pixel_fusion(direct, previous_ref["warped"], soft_occlusion(previous_ref["occlusion"]),
                                     anchor_ref["warped"], soft_occlusion(anchor_ref["occlusion"]))
                known = inpaint_mask(previous_ref["occlusion"], anchor_ref["occlusion"], size)
                target, _ = fidelity_encode(fused.clamp(0, 1), self.encode, self.decode, s.fidelity_threshold,
                                            s.fidelity_strength, s.fidelity_mode)
                target = self.latent_format.process_in(target * known)
                flat = flat_region(known) if s.smooth_boundary else None
                # pass 2 equals pass 1 up to the first inpainting step: resume from there
                resume = None if mid is None else (mid, pass1_x0.get(self.mask_steps[0] - 1))
                self.x0_by_step = dict(pass1_x0)
                final_latent, _ = self._pass(latent, noise, conds, inpaint=(target, known * s.mask_strength, flat),
                                             resume=resume)
                self.final_latents[index] = final_latent
                result = self.decode(final_latent)
        finally:
            self.store.begin("off")
            self.x0_mode = "off"
            self.shape_keep = self.flow_to_anchor = None
        self.store.commit_previous()
        self.previous = Rendered(index, image, result)
        return result

    def _conds(self, index: int):
        cache: dict = {}
        return (conditioning_for_frame(self.positive, index, self.frame_count, cache),
                conditioning_for_frame(self.negative, index, self.frame_count, cache))

    def _reference(self, ref: Rendered, index: int, flow: FlowFn) -> dict:
        """A rendered keyframe brought onto frame ``index``: flow (current → reference, on the
        current grid), occlusion of the current frame (GMFlow/Rerender check + out of frame)
        and the warped render."""
        to_ref = flow(index, ref.index).float()
        from_ref = flow(ref.index, index).float()
        occ = occlusion_mask(to_ref, from_ref, squared=False)
        warped = warp_backward(ref.result, to_ref.to(ref.result.device), padding_mode="zeros")
        return {"flow": to_ref, "occlusion": occ, "warped": warped}
