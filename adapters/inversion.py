"""DDIM inversion of a video through ComfyUI's real sampling path, its cache key and the
model identity it depends on, and the reconstruction check.

- :func:`invert_video` — DDIM inversion through ``comfy.sample.sample_custom`` with a custom
  ``KSAMPLER``, so every patch, wrapper and conditioning-borne model (ControlNet) on the MODEL
  applies; memory/disk cache around it (``inversion/cache.py``), keyed by :func:`inversion_key`.
- :func:`weights_id`, :func:`patches_id` — model identity for cache keys and "same model" checks.
- :func:`sample_back` — DDIM (euler) from x_T with the inversion's sigmas (reconstruction).

Null-text: ``adapters/nulltext.py``; source replay and feature capture: ``adapters/source.py``;
conditioning slicing: ``adapters/conditioning.py``.

Why a custom KSAMPLER and not euler on flipped sigmas: the inversion step must evaluate the
model at the *target* (noisier) sigma on the current VP latent (see ``inversion/ddim.py``).
Running it as a sampler inside ``sample_custom`` keeps ComfyUI's model loading, conditioning
processing, cond batching, ControlNet and wrappers; the sampler function only does the step
algebra and records ``x`` at the editing sigmas. With ascending sigmas starting at 0 and zero
noise, ``noise_scaling`` returns the latent itself, ``process_latent_in`` is applied to the input
(unless the latent is all zeros — the same rule KSampler applies) and the output comes back
``process_latent_out``-ed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention.keys import FRAME_INDICES_KEY, FRAME_TOTAL_KEY, LATENT_INPUT_KEY
from ..inversion import ddim, identity, schedule
from ..inversion.cache import CACHE_DIR_NAME, CACHE_MODES, MemoryCache, TieredCache, cache_key
from ..inversion.feature_cache import FEATURE_CACHE_MODES, FEATURES_DIR_NAME, FeatureCache, clear_features
from ..inversion.record import InversionRecord, record_from_tensors, record_tensors
from ..options import Options, check_choice, option
from .conditioning import cpu_conditioning, slice_conditioning
from .context_windows import honour_context_windows

log = logging.getLogger(__name__)

MEMORY_CACHE = MemoryCache()  # process-wide: survives ComfyUI's node-cache evictions, not restarts


@dataclass(frozen=True)
class InversionOptions(Options):
    """DDIM Inversion's node options. ``scheduler`` is checked against ComfyUI's schedulers by
    :func:`editing_sigmas`; ``cache_limit_mb`` bounds the RAM and, separately, the disk cache."""

    steps: int = option(50, min=2, max=1000)
    inversion_steps: int = option(0, min=0, max=10000)
    scheduler: str = option("ddim_uniform")
    frame_batch_size: int = option(16, min=1, max=4096)
    cache_mode: str = option("disk", choices=CACHE_MODES)
    cache_limit_mb: int = option(4096, min=0, max=10_000_000)
    clear_cache: bool = option(False)
    # opt-in: the edits' source features per step (TokenFlow, FLATTEN PnP), for the next edit
    feature_cache: str = option("off", choices=FEATURE_CACHE_MODES)
    feature_cache_mb: int = option(8192, min=0, max=10_000_000)


_D = InversionOptions


# -- model checks -----------------------------------------------------------------------------------
def model_sampling(model):
    return model.get_model_object("model_sampling")


def check_model_family(model) -> None:
    """Inversion assumes ComfyUI's VE space (x = x0 + sigma eps, UNet input x/sqrt(1+sigma^2)):
    eps-, v- and EDM-prediction diffusion models (SD1.x, SD2.x, SDXL…), not flow models."""
    import comfy.model_sampling as cms

    ms = model_sampling(model)
    probe = torch.ones(1, 1, 1, 1)
    s = torch.tensor([2.0])
    ok = (
        isinstance(ms, cms.EPS)
        and float(getattr(ms, "sigma_data", 1.0)) == 1.0
        and torch.allclose(ms.calculate_input(s, probe), probe / 5**0.5)
        and torch.allclose(ms.noise_scaling(s, probe.clone(), probe), 3 * probe)
    )
    if not ok:
        raise ValueError(
            f"VideoEdit DDIM inversion supports eps/v-prediction diffusion models (SD1.x, SD2.x, SDXL); "
            f"this MODEL samples with {type(ms).__name__} (e.g. a flow-matching model), which it does not support"
        )


def check_latent(model, latent: dict) -> torch.Tensor:
    """The ``[F, C, h, w]`` samples of a LATENT, validated against the model."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or getattr(samples, "is_nested", False):
        raise ValueError("latent: expected a LATENT with a 'samples' tensor (VAE Encode of the video frames)")
    if samples.ndim != 4:
        raise ValueError(
            f"latent: expected image-model latents [frames, channels, h, w], got shape {tuple(samples.shape)}"
        )
    if samples.shape[0] == 0:
        raise ValueError("latent: the batch has 0 frames; VAE-encode the video frames first")
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise ValueError(
            f"latent: has {samples.shape[1]} channels but this MODEL expects {channels}; "
            "encode the frames with the VAE that belongs to the model"
        )
    return samples


def check_steps(steps: int, inversion_steps: int) -> None:
    if steps < 2:
        raise ValueError(f"steps: {steps} is too few for an inversion to edit with; use at least 2 (50 is typical)")
    if inversion_steps < 0:
        raise ValueError(f"inversion_steps: must be 0 (same as steps) or a positive step count, got {inversion_steps}")


# -- identity -------------------------------------------------------------------------------------
def weights_id(model) -> str:
    """Fingerprint of the model's weights as sampling will see them: base weights (the
    originals, also while a clone with LoRA is loaded: ComfyUI keeps them in ``backup``), plus
    the weight patches (LoRA & co.) of this patcher, plus model class and prediction type."""
    base = model.model
    backup = getattr(model, "backup", {}) or {}
    named = []
    for name, t in sorted(base.state_dict(keep_vars=True).items()):
        if name.startswith("model_sampling."):  # schedule: part of the key via sigmas
            continue
        original = backup.get(name)
        named.append((name, original.weight if original is not None else t))
    parts = {
        "model": identity.qualname(base),
        "config": identity.qualname(getattr(base, "model_config", None)),
        "type": str(getattr(base, "model_type", "")),
        "weights": identity.fingerprint_tensors(named),
        "weight_patches": identity.canonical(getattr(model, "patches", {}), tensor_hash=identity.sampled_tensor_hash),
        "weight_wrappers": identity.canonical(
            getattr(model, "weight_wrapper_patches", {}), tensor_hash=identity.sampled_tensor_hash
        ),
    }
    return identity.digest(parts)


def patches_id(model) -> str:
    """Hash of what changes the model's function besides weights: ``model_options`` (attention
    patches and replaces, block patches, cfg functions), wrappers and object patches. Objects
    exposing ``cache_key()`` are hashed by it; others by type and their tensor/float/str
    attributes (see ``identity.canonical``)."""
    parts = {
        "model_options": model.model_options,
        "wrappers": getattr(model, "wrappers", {}),
        "object_patches": getattr(model, "object_patches", {}),
    }
    return identity.digest(parts, tensor_hash=identity.sampled_tensor_hash)


def conditioning_id(conditioning: list) -> str:
    return identity.digest(conditioning)


# -- schedules ------------------------------------------------------------------------------------
def editing_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    import comfy.samplers

    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler: '{scheduler}' is not one of {comfy.samplers.SCHEDULER_NAMES}")
    return schedule.check_editing_sigmas(comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps))


# -- the inversion itself -----------------------------------------------------------------------
class _Recorder:
    """``on_step`` of :func:`ddim.invert`: keeps x at the editing sigmas (VP fp16, CPU) and the
    exact final x; ticks the progress bar and honours interruption."""

    def __init__(self, sigmas_up: torch.Tensor, keep: torch.Tensor, tick: Callable[[], None]):
        self.sigmas_up = sigmas_up
        self.keep = set(keep.tolist())
        self.last = len(sigmas_up) - 1
        self.tick = tick
        self.kept: list[torch.Tensor] = []
        self.x_T: torch.Tensor | None = None

    def __call__(self, i: int, x: torch.Tensor) -> None:
        import comfy.model_management

        if i in self.keep:
            self.kept.append(ddim.to_vp(x.float(), self.sigmas_up[i]).to("cpu", torch.float16))
        if i == self.last:
            self.x_T = x.detach().to("cpu", torch.float32).clone()
        if i > 0:
            self.tick()
            comfy.model_management.throw_exception_if_processing_interrupted()


def _inversion_sampler(recorder: _Recorder):
    import comfy.samplers

    @torch.no_grad()
    def sample_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])

        def denoise(x_in, sigma):
            return model(x_in, sigma * s_in, **extra_args)

        return ddim.invert(denoise, x, sigmas, on_step=recorder)

    return comfy.samplers.KSAMPLER(sample_inversion)


def run_inversion(
    model,
    samples: torch.Tensor,
    conditioning: list,
    sigmas_up: torch.Tensor,
    keep: torch.Tensor,
    frame_batch_size: int,
    tick: Callable[[], None] = lambda: None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert ``samples`` (raw LATENT ``[F, C, h, w]``) along ascending ``sigmas_up``, frames in
    chunks, cfg 1 with ``conditioning``, through ``comfy.sample.sample_custom``.

    Returns ``(latents_vp [S+1, F, C, h, w] fp16 CPU in *descending* sigma order,
    x_T [F, C, h, w] fp32 CPU)`` in the sampler's (``process_latent_in``) space.
    """
    import comfy.sample

    frames = samples.shape[0]
    chunk = frames if frame_batch_size <= 0 else frame_batch_size
    kept_chunks, xT_chunks = [], []
    for start in range(0, frames, chunk):
        part = slice(start, min(start + chunk, frames))
        lat = samples[part]
        cond = slice_conditioning(conditioning, part, frames)
        recorder = _Recorder(sigmas_up, keep, tick)
        m = with_frame_indices(model, range(part.start, part.stop), total=frames, input_name="latent")
        comfy.sample.sample_custom(
            m,
            torch.zeros_like(lat),
            1.0,
            _inversion_sampler(recorder),
            sigmas_up,
            cond,
            cond,
            lat,
            disable_pbar=True,
            seed=0,
        )
        kept_chunks.append(torch.stack(recorder.kept).flip(0))
        xT_chunks.append(recorder.x_T)
    return torch.cat(kept_chunks, dim=1), torch.cat(xT_chunks)


def with_frame_indices(model, frames, total: int | None = None, input_name: str | None = None) -> object:
    """Clone of ``model`` telling patches which global frames its batches hold
    (``transformer_options[FRAME_INDICES_KEY]``), for per-frame state such as FLATTEN's
    trajectories while the inversion runs the clip chunk by chunk; ``total`` frames of the
    clip and the node input holding it (``input_name``) let the patches check and name it."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    to[FRAME_INDICES_KEY] = [int(f) for f in frames]
    if total is not None:
        to[FRAME_TOTAL_KEY] = int(total)
    if input_name is not None:
        to[LATENT_INPUT_KEY] = input_name
    return honour_context_windows(m)  # core's windows over the chunk, if the model has them


def cache_root() -> Path:
    """``<ComfyUI output>/videoedit_cache`` (the temp dir is wiped at every ComfyUI start)."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / CACHE_DIR_NAME


def inversion_key(
    model,
    latent_hash: str,
    conditioning: list,
    steps: int,
    inversion_steps: int,
    scheduler: str,
    sigmas_edit: torch.Tensor,
    sigmas_up: torch.Tensor,
    frame_batch_size: int,
    w_id: str | None = None,
    p_id: str | None = None,
) -> str:
    """Cache key of an inversion: everything its result depends on."""
    return cache_key(
        {
            "what": "ddim_inversion",
            "latent": latent_hash,
            "weights_id": w_id or weights_id(model),
            "patches_id": p_id or patches_id(model),
            "conditioning": conditioning_id(conditioning),
            "steps": int(steps),
            "inversion_steps": int(inversion_steps),
            "scheduler": scheduler,
            "sigmas": [float(s) for s in sigmas_edit],
            "inversion_sigmas": identity.tensor_digest(sigmas_up),
            "frame_batch_size": int(frame_batch_size),  # matters once cross-frame patches (FLATTEN) ride along
            "latent_format": identity.qualname(model.get_model_object("latent_format")),
        }
    )


def _entry_problem(entry, sigmas_edit: torch.Tensor, w_id: str, p_id: str, latent_hash: str) -> str | None:
    """Why a disk entry (already integrity-checked) cannot serve this request, or None."""
    if not torch.equal(entry.tensors["sigmas"], sigmas_edit):
        return "has other sigmas than requested"
    meta = entry.meta
    if (meta.get("weights_id"), meta.get("patches_id"), meta.get("latent_hash")) != (w_id, p_id, latent_hash):
        return "records another model, patches or latent than its key says"
    return None


def _record_decoder(sigmas_edit: torch.Tensor, w_id: str, p_id: str, latent_hash: str, conditioning: list):
    """``decode`` of the inversion's :class:`TieredCache`: a disk entry as a record, or ValueError."""

    def decode(entry) -> InversionRecord:
        problem = _entry_problem(entry, sigmas_edit, w_id, p_id, latent_hash)
        if problem is not None:
            raise ValueError(problem)
        try:
            return record_from_tensors(entry.tensors, entry.meta, conditioning)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"has unusable metadata ({err})") from None

    return decode


def record_bytes(sigmas: int, frames: int, shape: tuple[int, ...]) -> int:
    """RAM of an inversion record: fp16 latents at every editing sigma plus the fp32 x_T."""
    per_frame = math.prod(int(v) for v in shape)
    return sigmas * frames * per_frame * 2 + frames * per_frame * 4


def check_record_memory(need: int, cache_mode: str, limit: int, available_bytes: int, frames: int, steps: int) -> None:
    """Refuse, before inverting, a record that cannot fit in RAM or (``memory`` mode, where
    RAM is the only copy) in ``cache_limit_mb``."""
    mb = need / 2**20
    if available_bytes > 0 and need > available_bytes:
        raise ValueError(
            f"latent/steps: the inversion of {frames} frames at {steps} steps needs {mb:.0f} MB of RAM but only "
            f"{available_bytes / 2**20:.0f} MB is available; invert fewer frames (frame_load_cap), fewer steps or "
            "a smaller size"
        )
    if cache_mode == "memory" and limit > 0 and need > limit:
        raise ValueError(
            f"cache_limit_mb: the inversion of {frames} frames at {steps} steps takes {mb:.0f} MB, more than "
            f"cache_limit_mb ({limit // 2**20} MB) allows the RAM cache; raise cache_limit_mb to at least "
            f"{math.ceil(mb)}, set it to 0 (no limit), or use cache_mode 'disk' or 'off'"
        )


def invert_video(
    model,
    latent: dict,
    conditioning: list,
    steps: int = _D.steps,
    inversion_steps: int = _D.inversion_steps,
    scheduler: str = _D.scheduler,
    frame_batch_size: int = _D.frame_batch_size,
    cache_mode: str = _D.cache_mode,
    cache_limit_mb: int = _D.cache_limit_mb,
    clear_cache: bool = _D.clear_cache,
    feature_cache: str = _D.feature_cache,
    feature_cache_mb: int = _D.feature_cache_mb,
    root: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    available_bytes: int = 0,
    notes: list[str] | None = None,
) -> tuple[InversionRecord, bool]:
    """DDIM-invert the video latent (cfg 1, source ``conditioning``), reusing the cache.

    Returns ``(record, from_cache)``. ``progress(done, total)`` is called per step and chunk.
    ``available_bytes`` > 0: refuse before inverting when the record would not fit in RAM.
    ``notes`` receives what the user should see in the node's UI (cache entries recomputed,
    the RAM copy skipped). Defaults: :class:`InversionOptions`.
    """
    # -- validate
    check_choice("cache_mode", cache_mode, CACHE_MODES)
    check_model_family(model)
    samples = check_latent(model, latent)
    check_steps(steps, inversion_steps)
    s = InversionOptions.from_inputs(
        steps=steps,
        inversion_steps=inversion_steps,
        scheduler=scheduler,
        frame_batch_size=frame_batch_size,
        cache_mode=cache_mode,
        cache_limit_mb=cache_limit_mb,
        clear_cache=clear_cache,
        feature_cache=feature_cache,
        feature_cache_mb=feature_cache_mb,
    )
    conditioning = cpu_conditioning(conditioning)
    if not conditioning:
        raise ValueError(
            "conditioning: empty; encode the source prompt (an empty prompt is fine) with CLIP Text Encode"
        )
    sigmas_edit = editing_sigmas(model, s.scheduler, s.steps)
    fine = (
        editing_sigmas(model, s.scheduler, s.inversion_steps)
        if s.inversion_steps and s.inversion_steps != s.steps
        else None
    )
    sigmas_up, keep = schedule.inversion_schedule(sigmas_edit, fine)
    limit = int(s.cache_limit_mb) * 2**20
    frames, shape = samples.shape[0], tuple(samples.shape[1:])
    check_record_memory(
        record_bytes(len(sigmas_edit), frames, shape), s.cache_mode, limit, available_bytes, frames, s.steps
    )

    # -- key
    w_id, p_id = weights_id(model), patches_id(model)
    latent_hash = identity.tensor_digest(samples)
    key = inversion_key(
        model,
        latent_hash,
        conditioning,
        s.steps,
        s.inversion_steps,
        s.scheduler,
        sigmas_edit,
        sigmas_up,
        s.frame_batch_size,
        w_id,
        p_id,
    )

    # -- cache
    expect = {
        "sigmas": ((len(sigmas_edit),), torch.float32),
        "latents_vp": ((len(sigmas_edit), frames, *shape), torch.float16),
        "x_T": ((frames, *shape), torch.float32),
    }
    cache = TieredCache(
        s.cache_mode,
        MEMORY_CACHE,
        root or cache_root(),
        limit_bytes=limit,
        encode=record_tensors,
        decode=_record_decoder(sigmas_edit, w_id, p_id, latent_hash, conditioning),
        nbytes=InversionRecord.nbytes,
        expect=expect,
        notes=notes,
    )
    features_root = Path(root or cache_root()) / FEATURES_DIR_NAME
    if s.clear_cache:
        log.info("VideoEdit inversion cache cleared (%d disk entries)", cache.clear())
        log.info("VideoEdit feature cache cleared (%d groups)", clear_features(features_root))

    def compute() -> InversionRecord:
        return _compute_record(
            model, samples, conditioning, s, sigmas_edit, sigmas_up, keep, w_id, p_id, latent_hash, key, progress
        )

    record, cached = cache.get_or_compute(key, compute)
    if s.feature_cache != "off":
        features = FeatureCache(s.feature_cache, record.key, int(s.feature_cache_mb) * 2**20, features_root)
        record = dataclasses.replace(record, feature_cache=features)
    return record, cached


def _compute_record(
    model,
    samples: torch.Tensor,
    conditioning: list,
    s: InversionOptions,
    sigmas_edit: torch.Tensor,
    sigmas_up: torch.Tensor,
    keep: torch.Tensor,
    w_id: str,
    p_id: str,
    latent_hash: str,
    key: str,
    progress: Callable[[int, int], None] | None,
) -> InversionRecord:
    """Run the inversion with a progress bar and wrap it as a record."""
    import comfy.utils

    chunks = -(-samples.shape[0] // s.frame_batch_size)
    total = chunks * (len(sigmas_up) - 1)
    bar = comfy.utils.ProgressBar(total)
    done = [0]

    def tick():
        done[0] += 1
        bar.update(1)
        if progress is not None:
            progress(done[0], total)

    started = time.perf_counter()
    latents_vp, x_T = run_inversion(model, samples, conditioning, sigmas_up, keep, s.frame_batch_size, tick)
    info = {
        "steps": int(s.steps),
        "inversion_steps": int(s.inversion_steps or s.steps),
        "scheduler": s.scheduler,
        "frame_batch_size": int(s.frame_batch_size),
        "prediction": type(model_sampling(model)).__name__,
        "latent_format": identity.qualname(model.get_model_object("latent_format")),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return InversionRecord(
        sigmas=sigmas_edit,
        latents_vp=latents_vp,
        x_T=x_T,
        conditioning=conditioning,
        weights_id=w_id,
        patches_id=p_id,
        latent_hash=latent_hash,
        key=key,
        info=info,
    )


def output_latent(model, record: InversionRecord, like: dict | None = None) -> dict:
    """The LATENT holding x_T in raw (``process_latent_out``) space, keeping ``like``'s extra keys."""
    import comfy.model_management

    out = dict(like or {})
    x = model.get_model_object("process_latent_out")(record.x_T.clone())
    out["samples"] = x.to(comfy.model_management.intermediate_device())
    return out


# -- reconstruction ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructionOptions(Options):
    """Inversion Reconstruction Check's node options."""

    cfg: float = option(1.0, min=0.0, max=100.0, step=0.1)
    use_null_text: bool = option(False)


def sample_back(
    model,
    record: InversionRecord,
    cfg: float = ReconstructionOptions.cfg,
    positive: list | None = None,
    negative: list | None = None,
    use_null_text: bool = ReconstructionOptions.use_null_text,
) -> torch.Tensor:
    """DDIM (ComfyUI ``euler``, no noise) from x_T along the inversion's sigmas; raw latent out."""
    record.check_weights(weights_id(model))
    positive = record.conditioning if positive is None else positive
    negative = positive if negative is None else negative
    from .nulltext import apply_null_text  # nulltext depends on this module's weights_id

    m = apply_null_text(model, record) if use_null_text else model
    return sample_inversion(m, record, positive, negative, cfg, "euler", preview=False)["samples"]


# -- sampling an inversion's x_T (the methods' one-box samplers, the reconstruction) -------------
def check_sampler_name(sampler_name: str) -> str:
    """``sampler_name`` if it is one of KSampler's samplers (ComfyUI does not check V3 combos)."""
    import comfy.samplers

    return check_choice("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS)


def sample_inversion(
    model,
    record: InversionRecord,
    positive: list,
    negative: list,
    cfg: float,
    sampler_name: str,
    seed: int = 0,
    preview: bool = True,
) -> dict:
    """Sample ``record``'s x_T along its sigmas with ``sampler_name`` and no added noise through
    ``model`` (the patched clone); with ``preview``, ComfyUI's progress bar and latent previews as
    SamplerCustom shows them. Returns a LATENT dict (raw latent)."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview

    latent = output_latent(model, record)
    x_T = latent["samples"]
    sigmas = record.sigmas.clone()
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1) if preview else None
    latent["samples"] = comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_T),
        float(cfg),
        comfy.samplers.sampler_object(sampler_name),
        sigmas,
        positive,
        negative,
        x_T,
        callback=callback,
        disable_pbar=not (preview and comfy.utils.PROGRESS_BAR_ENABLED),
        seed=int(seed),
    )
    return latent
