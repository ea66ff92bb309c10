"""The source branch of the editing methods: replaying a VE_INVERSION for a MODEL (same weights
required), installing the feature-capture patches on a clone, and the standalone capture of
source features (what an editing wrapper does inside sampling with ``capture.capture_pass``)."""

from __future__ import annotations

import torch

from ..attention import capture as capture_mod
from ..attention.keys import FRAME_INDICES_KEY
from ..inversion.record import InversionRecord
from ..inversion.replay import SourceReplay, source_context
from .conditioning import model_conds, sampler_transformer_options
from .inversion import weights_id
from .model_patch import comfy_attention, existing_attn1_replace


def source_replay(model, record: InversionRecord, check: bool = True) -> SourceReplay:
    """The source branch of ``record`` for sampling with ``model`` (same weights required).
    Computes the model's extra vector conditioning (SDXL ``y``) from the source prompt."""
    if check:
        record.check_weights(weights_id(model))
    c, h, w = record.latent_shape
    probe = torch.zeros(1, c, h, w)
    conds = model_conds(model, record.conditioning[0], probe)
    return SourceReplay(record, context=conds.get("c_crossattn", source_context(record.conditioning)), y=conds.get("y"))


def source_branch_from(inversion, model) -> SourceReplay:
    """``SourceReplay`` of a node's ``inversion`` input for ``model``; raises ValueError when it is
    not a VE_INVERSION or was made with other weights (a cache from another model must not be
    replayed)."""
    if not isinstance(inversion, InversionRecord):
        raise ValueError(
            f"inversion: expected a VE_INVERSION from VideoEdit DDIM Inversion, got {type(inversion).__name__}"
        )
    return source_replay(model, inversion)


def install_capture(model, spec: capture_mod.CaptureSpec, attn_fn: capture_mod.AttnFn):
    """A clone of ``model`` (a ComfyUI ModelPatcher, duck-typed) carrying the capture patches.

    The clone behaves exactly like ``model`` outside :func:`capture_mod.capture_pass` calls.
    """
    m = model.clone()
    if spec.attn1_inputs:
        m.set_model_attn1_patch(capture_mod.AttnInputCapture())
    for key in spec.qk:
        previous = existing_attn1_replace(m, key)
        m.set_model_attn1_replace(capture_mod.QKCapture(key, attn_fn, previous), key[0], key[1], key[2])
    return m


def install_feature_capture(model, spec: capture_mod.CaptureSpec):
    """Clone of ``model`` with the capture patches and ComfyUI's attention kernel."""
    return install_capture(model, spec, comfy_attention)


def capture_source_features(
    model,
    record: InversionRecord,
    sigma: float,
    frames=None,
    spec: capture_mod.CaptureSpec | None = None,
    device=None,
    dtype=None,
) -> capture_mod.FeatureStore:
    """Run the UNet once on the cached source latents of ``frames`` at ``sigma`` with the source
    prompt and return the captured features. ``model`` must carry the capture patches
    (:func:`install_feature_capture`); patches and wrappers it carries apply. Standalone form of
    what an editing wrapper does inside sampling with ``capture.capture_pass``."""
    import comfy.model_management

    replay = source_replay(model, record)
    comfy.model_management.load_models_gpu([model])
    dev = model.load_device
    x = replay.latent(sigma, frames).to(dev)
    n = x.shape[0]
    sig = torch.full((n,), float(record.sigmas[record.step_index(sigma)]), device=dev)
    conds = model_conds(model, record.conditioning[0], x)
    to = sampler_transformer_options(model)
    frame_list = (
        list(range(record.num_frames)) if frames is None else [int(f) for f in torch.as_tensor(frames).flatten()]
    )
    to.update(sigmas=sig, cond_or_uncond=[0], sample_sigmas=record.sigmas.to(dev))
    to[FRAME_INDICES_KEY] = frame_list
    spec = spec or capture_mod.CaptureSpec()

    def run(options):
        with torch.no_grad():
            return model.model.apply_model(x, sig, transformer_options=options, **conds)

    store, _ = capture_mod.capture_pass(
        run, to, spec, diffusion_model=model.model.diffusion_model, device=device, dtype=dtype
    )
    missing = store.missing()
    if missing:
        raise ValueError(
            f"capture: this model produced no {', '.join(missing[:6])}; check the layer keys "
            "(and that the model carries the capture patches: install_feature_capture)"
        )
    return store
