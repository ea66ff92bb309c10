"""TokenFlow on a MODEL clone (attention replace patches on every self-attention layer, an
input-capture attn1 patch, the per-call DIFFUSION_MODEL wrapper) and the one-box sampler.
The method's core is ``attention/tokenflow.py`` (NN fields, keyframe blend, propagation) and
``attention/tokenflow_patch.py`` (the per-call passes)."""

from __future__ import annotations

import torch

from ..attention.tokenflow_patch import (
    TokenFlowAttention,
    TokenFlowConfig,
    TokenFlowInputCapture,
    TokenFlowRuntime,
    TokenFlowWrapper,
)
from .model_patch import (
    attach_attn1,
    attention_keys_from_spec,
    comfy_attention,
    resblock_keys_from_spec,
    self_attention_keys,
)
from .source import source_branch_from

WRAPPER_KEY = "videoedit_tokenflow"
NN_FEATURES = {"self-attention input (official)": "input", "self-attention output": "output"}
BLENDS = {"official (own + previous window, sigmoid)": "official", "paper (previous + next keyframe, linear)": "paper"}


def apply_tokenflow(model, inversion, window, pnp_attn_t, pnp_f_t, seed, nn_feature, blend,
                    pnp_attn_blocks, pnp_resnet_blocks):
    """MODEL clone carrying TokenFlow for the source branch of ``inversion``."""
    return tokenflow_model(model, source_branch_from(inversion, model), window, pnp_attn_t, pnp_f_t, seed,
                           nn_feature, blend, pnp_attn_blocks, pnp_resnet_blocks)


def tokenflow_model(model, source, window=8, pnp_attn_t=0.5, pnp_f_t=0.8, seed=1, nn_feature="input",
                    blend="official", pnp_attn_blocks="output 4-11", pnp_resnet_blocks="output 4",
                    share_batch=True):
    """The patching itself, for any source branch (``attention.tokenflow_patch.SourceBranch``)."""
    from comfy.patcher_extension import WrappersMP

    keys = self_attention_keys(model)
    config = TokenFlowConfig(window=window, pnp_attn_t=pnp_attn_t, pnp_f_t=pnp_f_t, seed=seed,
                             nn_feature=NN_FEATURES.get(nn_feature, nn_feature), blend=BLENDS.get(blend, blend),
                             pnp_attn_keys=tuple(attention_keys_from_spec(model, pnp_attn_blocks, "pnp_attn_blocks")),
                             pnp_res_keys=resblock_keys_from_spec(model, pnp_resnet_blocks, "pnp_resnet_blocks", "output 4"),
                             share_batch=share_batch)
    runtime = TokenFlowRuntime(config, source, model.get_model_object("model_sampling"), comfy_attention)
    m = attach_attn1(model, lambda key, prev: TokenFlowAttention(runtime, key, prev), keys)
    m.set_model_attn1_patch(TokenFlowInputCapture(runtime))
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, TokenFlowWrapper(runtime))
    return m


def sample_tokenflow(model, positive, negative, inversion, cfg, sampler_name, window=8, pnp_attn_t=0.5, pnp_f_t=0.8,
                     seed=1, nn_feature="input", blend="official", pnp_attn_blocks="output 4-11",
                     pnp_resnet_blocks="output 4") -> dict:
    """Apply TokenFlow to a clone of ``model`` and sample the inversion's x_T along the
    inversion's sigmas with ``sampler_name`` (no added noise), with ComfyUI's progress bar and
    previews as SamplerCustom. Returns a LATENT dict."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview

    from .inversion import output_latent

    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"sampler_name: unknown sampler '{sampler_name}'; pick one of KSampler's samplers")
    patched = apply_tokenflow(model, inversion, window, pnp_attn_t, pnp_f_t, seed, nn_feature, blend,
                              pnp_attn_blocks, pnp_resnet_blocks)
    latent = output_latent(model, inversion)
    x_t = latent["samples"]
    sigmas = inversion.sigmas.clone()
    callback = latent_preview.prepare_callback(patched, len(sigmas) - 1)
    latent["samples"] = comfy.sample.sample_custom(patched, torch.zeros_like(x_t), float(cfg),
                                                   comfy.samplers.sampler_object(sampler_name), sigmas, positive,
                                                   negative, x_t, callback=callback,
                                                   disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=int(seed))
    return latent
