"""Video-P2P's shared null-text optimisation through ComfyUI's model (autograd inside ComfyUI's
inference mode), and the ``APPLY_MODEL`` wrapper that samples with its embeddings. The
optimisation maths is ``inversion/nulltext.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import torch

from ..attention.keys import FRAME_INDICES_KEY, NULLTEXT_WRAPPER_KEY
from ..attention.wrapper_args import apply_model_args
from ..inversion import ddim, nulltext
from ..inversion.record import InversionRecord
from ..inversion.replay import source_context
from ..options import Options, option
from .conditioning import cpu_conditioning, model_conds, sampler_transformer_options, slice_conditioning
from .context_windows import honour_context_windows
from .inversion import weights_id

_DEFAULT = nulltext.NullTextSettings


@dataclass(frozen=True)
class NullTextOptions(Options):
    """Null-Text Optimization's node options (defaults of the maths from ``NullTextSettings``)."""

    cfg: float = option(_DEFAULT.cfg, min=1.0, max=30.0, step=0.1)
    inner_steps: int = option(_DEFAULT.inner_steps, min=0, max=200)
    frame_batch_size: int = option(8, min=1, max=4096)


class _ApplyModel(torch.nn.Module):
    """Lets ``torch.func.functional_call`` substitute the UNet's parameters while still going
    through ``BaseModel.apply_model`` (input scaling, timestep, casting, APPLY_MODEL and
    DIFFUSION_MODEL wrappers, attention patches, ``calculate_denoised``)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x, sigma, **kwargs):
        return self.base.apply_model(x, sigma, **kwargs)


class GradDenoiser:
    """``denoised(x, sigma, conds, cond_or_uncond)`` with autograd inside ComfyUI's inference
    mode: the UNet's weights (inference tensors) are cloned once into ordinary tensors and
    substituted with ``torch.func.functional_call``. Build and call it inside
    ``torch.inference_mode(False)``."""

    def __init__(self, model, sample_sigmas: torch.Tensor):
        import comfy.model_management

        comfy.model_management.load_models_gpu([model], force_full_load=True)
        self.model = model
        self.device = model.load_device
        self.module = _ApplyModel(model.model)
        dm = model.model.diffusion_model
        self.params = {
            f"base.diffusion_model.{k}": v.detach().clone() for k, v in chain(dm.named_parameters(), dm.named_buffers())
        }
        self.options = sampler_transformer_options(model)
        self.options["sample_sigmas"] = sample_sigmas.to(self.device)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, conds: dict, cond_or_uncond: int, frames: slice | None = None
    ) -> torch.Tensor:
        sig = sigma.reshape(1).to(x.device, torch.float32).expand(x.shape[0])
        to = dict(self.options, sigmas=sig, cond_or_uncond=[cond_or_uncond])
        if frames is not None:
            to[FRAME_INDICES_KEY] = list(range(frames.start, frames.stop))
        return torch.func.functional_call(self.module, self.params, (x, sig), dict(conds, transformer_options=to))


def optimize_null_text(
    model,
    record: InversionRecord,
    negative: list,
    positive: list | None = None,
    cfg: float = NullTextOptions.cfg,
    inner_steps: int = NullTextOptions.inner_steps,
    frame_batch_size: int = NullTextOptions.frame_batch_size,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[InversionRecord, list[nulltext.StepReport]]:
    """Video-P2P shared null-text optimisation on ``record``; returns a new record (the input
    is not changed) with one embedding per step, and per-step loss reports.

    The UNet runs through ``BaseModel.apply_model`` with the model's transformer options, so
    attention patches and APPLY_MODEL / DIFFUSION_MODEL wrappers apply; sampler-level pieces
    (ControlNet in the conditioning, cfg functions, ``model_function_wrapper``) do not. Only the
    first entry of each CONDITIONING is used. Needs the whole UNet loaded plus a copy of its
    weights (autograd cannot use ComfyUI's inference-mode weights)."""
    import comfy.model_management
    import comfy.utils

    record.check_weights(weights_id(model))
    if not negative:
        raise ValueError("negative: empty CONDITIONING; encode the negative prompt (usually empty text)")
    positive = record.conditioning if positive is None else cpu_conditioning(positive)
    negative = cpu_conditioning(negative)
    if inner_steps < 0 or frame_batch_size < 1:
        raise ValueError("inner_steps must be >= 0 and frame_batch_size >= 1")
    bar = comfy.utils.ProgressBar(record.num_steps)
    device = model.load_device
    settings = nulltext.NullTextSettings(cfg=float(cfg), inner_steps=int(inner_steps))

    def on_step(report: nulltext.StepReport):
        bar.update(1)
        if progress is not None:
            progress(report.step + 1, record.num_steps)
        comfy.model_management.throw_exception_if_processing_interrupted()

    with torch.inference_mode(False):
        den = GradDenoiser(model, record.sigmas)
        x_T = record.x_T.clone().to(device)
        pos_conds, neg_conds = {}, {}

        def conds_for(table, cond, p, x, prompt_type):
            key = (p.start, p.stop)
            if key not in table:
                entry = slice_conditioning(cond, p, record.num_frames)[0]
                table[key] = {
                    k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                    for k, v in model_conds(model, entry, x, prompt_type).items()
                }
            return table[key]

        def eps_cond(x, sigma, p):
            d = den(x, sigma, conds_for(pos_conds, positive, p, x, "positive"), 0, p)
            return ddim.eps_from_denoised(x, d, sigma)

        def eps_uncond(x, sigma, embedding, p):
            conds = dict(conds_for(neg_conds, negative, p, x, "negative"))
            ctx = conds["c_crossattn"]
            emb = embedding.to(ctx.device, ctx.dtype)
            if emb.shape[1] != ctx.shape[1]:  # CONDCrossAttn pads by repetition; keep the token count
                emb = emb.repeat(1, ctx.shape[1] // emb.shape[1], 1)
            conds["c_crossattn"] = emb.expand(x.shape[0], -1, -1)
            d = den(x, sigma, conds, 1, p)
            return ddim.eps_from_denoised(x, d, sigma)

        init = source_context(negative)[:1].to(device)
        embeddings, reports = nulltext.optimize_null_text(
            eps_cond,
            eps_uncond,
            x_T,
            record.latents_vp,
            record.sigmas.to(device),
            init,
            settings,
            frame_chunk=frame_batch_size,
            on_step=on_step,
        )
    out = record.with_null_text(embeddings.cpu(), cfg, null_text_inner_steps=int(inner_steps))
    return out, reports


class NullTextSwap:
    """``APPLY_MODEL`` wrapper: in every uncond chunk of the batch, the cross-attention context
    becomes the inversion's optimised embedding of the current step (all frames share it)."""

    def __init__(self, record: InversionRecord):
        self.record = record

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return f"videoedit.nulltext({self.record.key}, {self.record.null_text_cfg})"

    def __call__(self, executor, *args, **kwargs):
        call = apply_model_args(args, kwargs)
        x, t, c_crossattn = call["x"], call["t"], call["c_crossattn"]
        groups = call.transformer_options.get("cond_or_uncond") or []
        if c_crossattn is not None and 1 in groups:
            emb = self.record.null_text_at(t.flatten()[0]).to(c_crossattn.device, c_crossattn.dtype)
            if emb.shape[1] != c_crossattn.shape[1]:
                emb = emb.repeat(1, max(1, c_crossattn.shape[1] // emb.shape[1]), 1)[:, : c_crossattn.shape[1]]
            n = x.shape[0] // len(groups)
            c_crossattn = c_crossattn.clone()
            for g, kind in enumerate(groups):
                if kind == 1:
                    c_crossattn[g * n : (g + 1) * n] = emb
        return call.call(executor, c_crossattn=c_crossattn)


def apply_null_text(model, record: InversionRecord):
    """MODEL clone whose unconditional branch uses the per-step null-text embeddings."""
    import comfy.patcher_extension as pe

    if record.null_text is None:
        raise ValueError(
            "inversion: this VE_INVERSION has no null-text embeddings; run VideoEdit Null-Text Optimization on it first"
        )
    record.check_weights(weights_id(model))
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, NULLTEXT_WRAPPER_KEY, NullTextSwap(record))
    return honour_context_windows(m)  # core's context windows, if the sampler brings them
