"""CONDITIONING lists as the samplers see them: CPU copies, per-frame slicing (cross-attention
tensors, pooled outputs and ControlNet / T2I-adapter hints that hold one entry per frame), and the
model-specific conds of one entry (``c_crossattn``, ``y``…) for a direct UNet call.

One slicer serves every method that samples a clip in parts (the inversion's frame chunks,
Rerender's single keyframes): without it ComfyUI would broadcast the *first* frames' hints to
every part.
"""

from __future__ import annotations

import torch

from ..attention.nested import map_tensors


def cpu_conditioning(conditioning: list) -> list:
    """A copy of a CONDITIONING with its tensors (cross-attn, pooled output, …) on CPU; other
    values (ControlNet objects, hooks) are kept by reference."""
    if not isinstance(conditioning, list):
        raise ValueError("conditioning: expected a CONDITIONING (CLIP Text Encode output)")
    return [[c[0].detach().cpu(), map_tensors(dict(c[1]), lambda t: t.detach().cpu())] for c in conditioning]


def _per_frame(t, total: int) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == total and total > 1


def _cut(value, frames: slice, total: int):
    return value[frames] if _per_frame(value, total) else value


def slice_control(control, frames: slice, total: int, cache: dict | None = None, input_name: str = "conditioning"):
    """A ControlNet / T2I-adapter chain whose per-frame hints (batch == ``total``) and extra concat
    inputs are cut to ``frames``. Copies are made with the control's own ``copy()`` (which keeps
    strength, range and VAE; the processed hint is rebuilt from the sliced original); the input
    chain is not modified, and links that need no slicing stay shared. ``cache`` (by ``id``) lets
    positive and negative that share a control share its sliced copy too."""
    if control is None:
        return None
    cache = {} if cache is None else cache
    if id(control) in cache:
        return cache[id(control)]
    hint = getattr(control, "cond_hint_original", None)
    if isinstance(hint, torch.Tensor) and hint.ndim > 0 and hint.shape[0] not in (1, total):
        raise ValueError(
            f"{input_name}: a ControlNet hint holds {hint.shape[0]} images but the video has {total} "
            f"frames; give one hint image per frame (or a single image for all)"
        )
    previous = getattr(control, "previous_controlnet", None)
    new_previous = slice_control(previous, frames, total, cache, input_name)
    per_frame = _per_frame(hint, total)
    if not per_frame and new_previous is previous:
        cache[id(control)] = control
        return control
    sliced = control.copy()
    if per_frame:
        # what ControlBase.set_cond_hint stores; the rest was copied by copy()
        sliced.cond_hint_original = hint[frames]
        extra = getattr(control, "extra_concat_orig", None)
        if extra is not None:
            sliced.extra_concat_orig = [_cut(e, frames, total) for e in extra]
    sliced.set_previous_controlnet(new_previous)
    cache[id(control)] = sliced
    return sliced


def slice_conditioning(
    conditioning: list, frames: slice, total: int, cache: dict | None = None, input_name: str = "conditioning"
) -> list:
    """Per-frame conditioning (tensors or ControlNet hints with batch == ``total`` frames) cut to
    ``frames``; batch-1 entries are kept as they are (the same objects)."""
    cache = {} if cache is None else cache

    def cut(key, v):
        if key == "control":
            return slice_control(v, frames, total, cache, input_name)
        return _cut(v, frames, total)

    return [[cut(None, c[0]), {k: cut(k, v) for k, v in c[1].items()}] for c in conditioning]


def conditioning_for_frame(
    conditioning: list, index: int, frames: int, cache: dict | None = None, input_name: str = "positive/negative"
) -> list:
    """The conditioning restricted to frame ``index`` (its ControlNet hints, per-frame tensors)."""
    return slice_conditioning(conditioning, slice(index, index + 1), frames, cache, input_name)


def model_conds(model, cond_entry, x: torch.Tensor, prompt_type: str = "positive") -> dict:
    """The model-specific conds (``c_crossattn``, ``y``, ``c_concat``…) of one CONDITIONING entry
    for a batch like ``x``, as ``BaseModel.apply_model`` takes them (ComfyUI's own
    ``extra_conds``, as the samplers use it)."""
    base = model.model
    params = dict(cond_entry[1])
    params.update(cross_attn=cond_entry[0], device=x.device, noise=x)
    params.setdefault("width", x.shape[3] * 8)
    params.setdefault("height", x.shape[2] * 8)
    params.setdefault("prompt_type", prompt_type)
    conds = base.extra_conds(**params)
    return {k: v.process_cond(batch_size=x.shape[0], area=None, device=x.device).cond for k, v in conds.items()}


def sampler_transformer_options(model) -> dict:
    """What a sampler would pass to the UNet: the patcher's transformer_options with its
    wrappers and callbacks merged in (``sampler_helpers.prepare_model_patcher`` does this)."""
    import comfy.patcher_extension as pe

    to = pe.copy_nested_dicts(model.model_options.get("transformer_options", {}))
    pe.merge_nested_dicts(to.setdefault("wrappers", {}), model.wrappers, copy_dict1=False)
    pe.merge_nested_dicts(to.setdefault("callbacks", {}), model.callbacks, copy_dict1=False)
    return to
