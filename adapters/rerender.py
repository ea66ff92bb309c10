"""Rerender-A-Video keyframe translation driven through ComfyUI's own samplers.

The one module of the Rerender area that touches ComfyUI objects (ModelPatcher, conditioning,
ControlNet, VAE, ``comfy.sample``); the maths lives in ``flow/fusion.py`` (shape- and
pixel-aware fusion, fidelity-oriented encoding, AdaIN), ``attention/crossframe.py`` and
``flow/propagate.py``.

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

from ..attention.crossframe import STORE_PRECISIONS, CrossFrameAttention, CrossFrameStore, SigmaSchedule, sigma_key
from ..attention.modes import CrossFrameMode, X0Mode
from ..flow.consistency import occlusion_mask
from ..flow.dis import dis_flow
from ..flow.fusion import (
    ADAIN_FORMULAS,
    LATENT_FLOW_RESIZE,
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
from ..flow.keyframes import KEYFRAME_LAYOUTS, keyframe_indices, updates_previous_style
from ..flow.propagate import chain_flow
from ..flow.raft import RAFT_ARCHITECTURES, raft_flow
from ..flow.warp import warp_backward
from ..options import Options, check_choice, option
from .conditioning import conditioning_for_frame
from .model_patch import attention_keys_from_spec
from .raft import raft_model

log = logging.getLogger(__name__)

FLOW_METHODS = ("dis", "chain", "raft_large", "raft_small")
FIDELITY_MODES = ("code", "paper")


FlowFn = Callable[[int, int], torch.Tensor]  # (from_frame, to_frame) -> [1, H, W, 2] on from_frame's grid


WINDOWS = ("cross_frame", "shape_fusion", "pixel_fusion", "adain")
CROSS_FRAME_STORE_DEFAULT = "fp16"  # the cross_frame_store id of RerenderConfig.store_dtype's default


@dataclass
class RerenderConfig(Options):
    """Rerender Keyframes' settings: the one place of their defaults and ranges. Windows are
    ``(start, end)`` fractions of the steps; a window whose end is not after its start is off."""

    keyframe_interval: int = option(10, min=1, max=10000)
    steps: int = option(20, min=1, max=1000)
    cfg: float = option(7.5, min=0.0, max=100.0, step=0.1)
    sampler_name: str = "euler"  # checked against ComfyUI's samplers in from_inputs
    scheduler: str = "ddim_uniform"
    seed: int = option(0, min=0, max=0xFFFFFFFFFFFFFFFF)
    x0_strength: float = option(0.75, min=0.0, max=1.0, step=0.01)
    flow_method: str = option("dis", choices=FLOW_METHODS)
    cross_frame: tuple[float, float] = (0.0, 1.0)
    shape_fusion: tuple[float, float] = (0.0, 0.1)
    pixel_fusion: tuple[float, float] = (0.5, 0.8)
    adain: tuple[float, float] = (0.8, 1.0)
    mask_strength: float = option(0.5, min=0.0, max=1.0, step=0.01)
    inner_strength: float = option(0.9, min=0.0, max=1.0, step=0.01)
    smooth_boundary: bool = True
    fidelity_threshold: float = option(0.25, min=0.0, max=2.0, step=0.01)
    fidelity_lambda: float = option(1.0, min=0.0, max=4.0, step=0.05)
    fidelity_mode: str = option("code", choices=FIDELITY_MODES)
    warp_mode: str = "nearest"
    cross_frame_blocks: str = "decoder"
    include_current: bool = False
    # cross-frame stores (None: keep the model's dtype, official); the node's cross_frame_store input
    # ("fp16" | "model", attention/crossframe.py::STORE_PRECISIONS) sets it
    store_dtype: torch.dtype | None = torch.float16
    # official: the previous-keyframe store moves on every this many frames (flow/keyframes.py)
    style_update_freq: int = option(10, min=1, max=10000)
    # "even" 0, K, 2K, ...; "official" 0, 1, 1 + K, ... (flow/keyframes.py)
    keyframe_layout: str = option("even", choices=KEYFRAME_LAYOUTS)
    # flow → latent grid for shape fusion: "official" (bilinear) | "antialiased"
    latent_flow_resize: str = option("official", choices=LATENT_FLOW_RESIZE)
    # "official" (unbiased reference std, eps 1e-5) | "exact" (flow/fusion.py::adain)
    adain_formula: str = option("official", choices=ADAIN_FORMULAS)

    @classmethod
    def from_inputs(cls, **inputs) -> RerenderConfig:
        """From the node's inputs: ``<window>_start``/``<window>_end`` pairs become the windows;
        sampler and scheduler are checked against ComfyUI's lists."""
        import comfy.samplers

        for name in WINDOWS:
            if f"{name}_start" in inputs or f"{name}_end" in inputs:
                start = inputs.pop(f"{name}_start", cls.default(name)[0])
                end = inputs.pop(f"{name}_end", cls.default(name)[1])
                if start < 0 or end > 1:
                    raise ValueError(f"{name}: the window is a fraction of the steps, 0..1 (got {start}..{end})")
                inputs[name] = (float(start), float(end))
        if "sampler_name" in inputs:
            check_choice("sampler_name", inputs["sampler_name"], comfy.samplers.KSampler.SAMPLERS)
        if "scheduler" in inputs:
            check_choice("scheduler", inputs["scheduler"], comfy.samplers.KSampler.SCHEDULERS)
        if "cross_frame_store" in inputs:
            store = check_choice("cross_frame_store", inputs.pop("cross_frame_store"), STORE_PRECISIONS)
            inputs["store_dtype"] = STORE_PRECISIONS[store]
        return super().from_inputs(**inputs)

    def start_step(self) -> int:
        """SDEdit start: ``int(steps·(1 − x0_strength))`` as the official code; ≥ 1 starts from noise."""
        if self.x0_strength >= 1.0:
            return 0
        return min(self.steps, int(self.steps * (1.0 - self.x0_strength)))


def cross_frame_keys(model, spec: str) -> list:
    """Self-attention layers that get cross-frame attention. ``"decoder"`` = every ``output``
    block (the official default); ``"output 6-11"`` drops the 16² layers (``loose_cfattn``);
    ``"output 1/8, 1/16"`` names them by resolution of the image."""
    return attention_keys_from_spec(model, spec, "cross_frame_blocks")


# -- VAE on channel-first images ------------------------------------------------------------


def check_vae_multiple(frames: torch.Tensor, vae, name: str) -> None:
    """``frames`` ``[F, H, W, 3]``: H and W must be multiples of the VAE's downscale."""
    ratio = int(vae.spacial_compression_encode())
    if frames.shape[1] % ratio or frames.shape[2] % ratio:
        raise ValueError(
            f"{name}: {frames.shape[2]}×{frames.shape[1]} is not a multiple of the VAE's {ratio}; "
            f"crop or resize the frames (e.g. Upscale Image) first"
        )


def vae_encode_chw(vae, image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` 0..1 → raw latent (float32)."""
    return vae.encode(image.movedim(1, -1)[..., :3]).float()


def vae_decode_chw(vae, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent → ``[B, 3, H, W]`` 0..1 (float32)."""
    return vae.decode(latent).movedim(-1, 1).float()


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
        if run.x0_mode == X0Mode.OFF:
            return den
        sigma = float(args["sigma"].flatten()[0])
        step = run.schedule.step_of(sigma)
        if run.x0_mode == X0Mode.RECORD_ANCHOR:
            run.anchor_x0[sigma_key(sigma)] = den.detach().clone()
        elif run.x0_mode == X0Mode.FUSE:
            reference = run.anchor_x0.get(sigma_key(sigma))
            s = run.settings
            if reference is not None:
                reference = reference.to(den)
                if run.schedule.in_window(step, s.adain):
                    den = adain(den, reference, s.adain_formula)
                if run.shape_keep is not None and run.schedule.in_window(step, s.shape_fusion):
                    warped = warp_latent(reference, run.flow_to_anchor, s.warp_mode, s.latent_flow_resize)
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

    def __init__(
        self,
        model,
        vae,
        positive,
        negative,
        settings: RerenderConfig,
        frame_count: int,
        on_step: Callable[[], None] | None = None,
    ):
        import comfy.model_management as mm
        import comfy.samplers

        self.settings = s = settings
        self.vae = vae
        self.positive, self.negative = positive, negative
        self.frame_count = frame_count
        self.on_step = on_step
        sigmas = comfy.samplers.KSampler(
            model, steps=s.steps, device="cpu", sampler=s.sampler_name, scheduler=s.scheduler
        ).sigmas
        self.schedule = SigmaSchedule(sigmas)
        self.start = s.start_step()
        self.store = CrossFrameStore(
            cross_frame_keys(model, s.cross_frame_blocks),
            self.schedule,
            s.cross_frame,
            include_current=s.include_current,
            store_device=mm.intermediate_device(),
            store_dtype=s.store_dtype,
        )
        self.model = model.clone()
        self.model.set_model_attn1_patch(CrossFrameAttention(self.store))
        self.model.set_model_sampler_post_cfg_function(X0Hook(self))
        self.model_sampling = model.get_model_object("model_sampling")
        self.latent_format = model.get_model_object("latent_format")
        self.x0_mode = X0Mode.OFF
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

        return comfy.sample.sample(
            self.model,
            noise,
            s.steps,
            s.cfg,
            s.sampler_name,
            s.scheduler,
            conds[0],
            conds[1],
            latent,
            denoise=1.0,
            start_step=start,
            last_step=last,
            force_full_denoise=last is None,
            callback=callback,
            disable_pbar=True,
            seed=s.seed,
        )

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
        self.store.begin(CrossFrameMode.RECORD_ANCHOR)
        self.x0_mode, self.anchor_x0, self.x0_by_step = X0Mode.RECORD_ANCHOR, {}, {}
        try:
            out = self._sample(latent, noise, conds, self.start, None)
        finally:
            self.store.begin(CrossFrameMode.OFF)
            self.x0_mode = X0Mode.OFF
        self.final_latents[index] = out
        result = self.decode(out)
        self.anchor = self.previous = Rendered(index, image, result)
        return result

    def render_keyframe(self, index: int, image: torch.Tensor, flow: FlowFn, update_style: bool = True) -> torch.Tensor:
        """A later keyframe: pass 1 (cross-frame attention, shape fusion, AdaIN) → pixel-aware
        fusion with the warped previous and anchor results → fidelity-oriented encoding →
        pass 2 with blended-latent inpainting in the mask window.

        ``update_style`` (``flow.keyframes.updates_previous_style``): whether this keyframe's
        attention inputs become the cross-frame "previous keyframe" afterwards (the official
        ``updatestyle`` task); the pixel-aware fusion's previous keyframe always moves on."""
        if self.anchor is None:
            raise RuntimeError("render_anchor must run before render_keyframe")
        s = self.settings
        conds = self._conds(index)
        latent, noise = self._initial(image)
        size = latent.shape[-2:]
        anchor_ref = self._reference(self.anchor, index, flow)
        previous_ref = (
            anchor_ref if self.previous.index == self.anchor.index else self._reference(self.previous, index, flow)
        )
        shape_on = bool(self.schedule.window_steps(s.shape_fusion))
        self.shape_keep = shape_fusion_mask(anchor_ref["occlusion"], size) if shape_on else None
        self.flow_to_anchor = anchor_ref["flow"]
        pixel_on = bool(self.mask_steps)
        self.store.begin(CrossFrameMode.ATTEND, record=update_style)
        self.x0_mode, self.x0_by_step = X0Mode.FUSE, {}
        try:
            direct_latent, mid = self._pass(latent, noise, conds)
            if not pixel_on:
                self.final_latents[index] = direct_latent
                result = self.decode(direct_latent)
            else:
                pass1_x0 = dict(self.x0_by_step)
                direct = self.decode(direct_latent)
                fused = pixel_fusion(
                    direct,
                    previous_ref["warped"],
                    soft_occlusion(previous_ref["occlusion"]),
                    anchor_ref["warped"],
                    soft_occlusion(anchor_ref["occlusion"]),
                )
                known = inpaint_mask(previous_ref["occlusion"], anchor_ref["occlusion"], size)
                target, _ = fidelity_encode(
                    fused.clamp(0, 1),
                    self.encode,
                    self.decode,
                    s.fidelity_threshold,
                    s.fidelity_lambda,
                    s.fidelity_mode,
                )
                target = self.latent_format.process_in(target * known)
                flat = flat_region(known) if s.smooth_boundary else None
                # pass 2 equals pass 1 up to the first inpainting step: resume from there
                resume = None if mid is None else (mid, pass1_x0.get(self.mask_steps[0] - 1))
                self.x0_by_step = dict(pass1_x0)
                final_latent, _ = self._pass(
                    latent, noise, conds, inpaint=(target, known * s.mask_strength, flat), resume=resume
                )
                self.final_latents[index] = final_latent
                result = self.decode(final_latent)
        finally:
            self.store.begin(CrossFrameMode.OFF)
            self.x0_mode = X0Mode.OFF
            self.shape_keep = self.flow_to_anchor = None
        if update_style:
            self.store.commit_previous()
        self.previous = Rendered(index, image, result)
        return result

    def _conds(self, index: int):
        cache: dict = {}
        return (
            conditioning_for_frame(self.positive, index, self.frame_count, cache),
            conditioning_for_frame(self.negative, index, self.frame_count, cache),
        )

    def _reference(self, ref: Rendered, index: int, flow: FlowFn) -> dict:
        """A rendered keyframe brought onto frame ``index``: flow (current → reference, on the
        current grid), occlusion of the current frame (GMFlow/Rerender check + out of frame)
        and the warped render."""
        to_ref = flow(index, ref.index).float()
        from_ref = flow(ref.index, index).float()
        occ = occlusion_mask(to_ref, from_ref, squared=False)
        warped = warp_backward(ref.result, to_ref.to(ref.result.device), padding_mode="zeros")
        return {"flow": to_ref, "occlusion": occ, "warped": warped}


class FlowBetween:
    """``(from, to) -> [1, H, W, 2]`` flow on ``from``'s grid, cached: computed directly between
    the two frames (as the official code does with GMFlow) or chained from adjacent flows
    (``forward``/``backward`` ``[F-1, H, W, 2]`` on the frames' grid, as ``nodes.common.check_flow``
    returns them)."""

    def __init__(self, frames: torch.Tensor, method: str, forward=None, backward=None):
        self.frames, self.method, self.cache = frames, method, {}
        if method == "chain":
            self.forward = forward.float().to(frames.device)
            self.backward = backward.float().to(frames.device)
        elif method in RAFT_ARCHITECTURES:
            self.raft = raft_model(method, "auto")

    def __call__(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self.cache:
            src, dst = self.frames[a : a + 1], self.frames[b : b + 1]
            if self.method == "chain":
                flow = chain_flow(self.forward, self.backward, a, b)
            elif self.method == "dis":
                flow = dis_flow(src, dst)
            else:
                import comfy.model_management

                self.raft.to(comfy.model_management.get_torch_device())
                try:
                    flow = raft_flow(self.raft, src, dst)
                finally:
                    self.raft.to(comfy.model_management.unet_offload_device())
            self.cache[(a, b)] = flow.float().to(self.frames.device)
        return self.cache[(a, b)]


def render_keyframes(
    model, positive, negative, vae, frames, config: RerenderConfig, forward_flow=None, backward_flow=None
):
    """Render the keyframes of ``frames`` ``[F, H, W, 3]`` (``config.keyframe_layout``: 0, K, 2K,
    ... or the official 0, 1, 1 + K, ...) → (IMAGE ``[n, H, W, 3]`` on the intermediate device,
    indices). ``forward_flow``/``backward_flow``: validated, on the frames'
    grid (needed for ``flow_method="chain"``)."""
    import comfy.model_management as mm
    import comfy.utils

    check_vae_multiple(frames, vae, "images")
    keys = keyframe_indices(frames.shape[0], max(1, int(config.keyframe_interval)), config.keyframe_layout)
    flows = FlowBetween(frames, config.flow_method, forward_flow, backward_flow) if len(keys) > 1 else None
    pbar = comfy.utils.ProgressBar(len(keys))
    run = RerenderRun(model, vae, positive, negative, config, frames.shape[0])
    chw = frames.movedim(-1, 1)
    results = []
    for n, k in enumerate(keys):
        mm.throw_exception_if_processing_interrupted()
        image = chw[k : k + 1]
        if n == 0:
            results.append(run.render_anchor(k, image))
        else:
            update = updates_previous_style(keys, n, config.style_update_freq)
            results.append(run.render_keyframe(k, image, flows, update_style=update))
        pbar.update(1)
    out = torch.cat(results).movedim(1, -1).clamp(0, 1).to(mm.intermediate_device())
    return out, keys
