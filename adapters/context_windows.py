"""ComfyUI core's context windows (``Context Windows (Manual)``, ``comfy/context_windows.py``)
for image models, whose frames are the batch.

Core's handler looks the step up with ``isclose(sample_sigmas, timestep)``, which assumes one
sigma per call; an image model's batch carries one (equal) sigma per frame, so on ComfyUI
0.3.75 every windowed call of an SD1.5/SDXL model raises "The size of tensor a (…) must
match the size of tensor b (…)". The pack's method patches add a ``PREDICT_NOISE`` wrapper
that hands the sampler a per-call view of the user's handler: a shallow copy whose step
lookup is given the call's one sigma; windows, fusion, callbacks and the conditioning
slicing are core's own. The user's handler object is never changed, and a handler that does
not have the problem (one sigma, or a newer core that handles it) is passed through.

Inside each window ``transformer_options["context_window"].index_list`` holds the window's
absolute frame indices, which ``attention/frames.py`` reads for every per-frame table.
"""

from __future__ import annotations

import copy

import torch

from ..attention.keys import CONTEXT_WINDOWS_WRAPPER_KEY
from ..attention.wrapper_args import predict_noise_args


def _step_of(timestep: torch.Tensor, model_options: dict) -> int | None:
    sigmas = (model_options.get("transformer_options") or {}).get("sample_sigmas")
    if sigmas is None:
        return None
    matches = torch.nonzero(torch.isclose(sigmas, timestep.reshape(-1)[:1].to(sigmas), rtol=1e-4))
    return int(matches[0].item()) if len(matches) else None


class FrameBatchWindows:
    """Per-call stand-in for core's ``IndexListContextHandler``: everything is the wrapped
    handler's, except that its step lookup sees one sigma when the frames of the batch each
    carry the same sigma."""

    def __init__(self, handler):
        self.handler = handler

    def should_use_context(self, model, conds, x_in, timestep, model_options, *args, **kwargs):
        return self.handler.should_use_context(model, conds, x_in, timestep, model_options, *args, **kwargs)

    def get_resized_cond(self, *args, **kwargs):
        return self.handler.get_resized_cond(*args, **kwargs)

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options, *args, **kwargs):
        handler = self.handler
        per_frame = isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.numel() > 1
        if per_frame and hasattr(handler, "set_step") and bool((timestep == timestep[0]).all()):
            step = _step_of(timestep, model_options)
            if step is not None:
                handler = copy.copy(handler)  # this call's view; the user's handler stays as it is

                def set_step(*_args, **_kwargs):
                    handler._step = step

                handler.set_step = set_step
        return handler.execute(calc_cond_batch, model, conds, x_in, timestep, model_options, *args, **kwargs)


def frame_batch_windows(executor, *args, **kwargs):
    """``PREDICT_NOISE`` wrapper; its arguments are ``(x, timestep, model_options, seed, …)``."""
    call = predict_noise_args(args, kwargs)
    model_options = call["model_options"]
    handler = model_options.get("context_handler") if isinstance(model_options, dict) else None
    if handler is not None and not isinstance(handler, FrameBatchWindows) and hasattr(handler, "execute"):
        return call.call(executor, model_options=dict(model_options, context_handler=FrameBatchWindows(handler)))
    return executor(*args, **kwargs)


def honour_context_windows(model):
    """Add the wrapper to ``model`` (a clone the caller owns), once; returns it."""
    from comfy.patcher_extension import WrappersMP

    wrappers = model.wrappers.get(WrappersMP.PREDICT_NOISE, {}) if hasattr(model, "wrappers") else {}
    if not wrappers.get(CONTEXT_WINDOWS_WRAPPER_KEY):
        model.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, CONTEXT_WINDOWS_WRAPPER_KEY, frame_batch_windows)
    return model
