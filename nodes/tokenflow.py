"""Keyframe extended attention and TokenFlow editing nodes."""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from ..attention.extended_patch import ExtendedAttentionPatch
from ..attention.patching import attach_attn1, self_attention_keys
from ..attention.tokenflow_patch import (
    TokenFlowAttention,
    TokenFlowConfig,
    TokenFlowInputCapture,
    TokenFlowRunReset,
    TokenFlowRuntime,
    TokenFlowWrapper,
)
from ..attention.unet_blocks import parse_block_list
from .common import VE_INVERSION, choice_id, comfy_attention, input_errors, parse_int_list

WRAPPER_KEY = "videoedit_tokenflow"
NN_FEATURES = {"self-attention input (official)": "input", "self-attention output": "output"}
BLENDS = {"official (own + previous window, sigmoid)": "official", "paper (previous + next keyframe, linear)": "paper"}


class ApplyExtendedAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_ApplyExtendedAttention",
            display_name="Apply Extended Attention (keyframes)",
            category="VideoEdit/attention",
            description="Cross-frame attention: in every self-attention layer each frame attends to the keys/values of "
                        "the keyframes (all of them concatenated) of its own cond/uncond branch. The "
                        "Text2Video-Zero / Tune-A-Video-style consistency baseline; works with any sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is returned; the input is not changed)."),
                io.Int.Input("keyframe_stride", default=4, min=1, max=4096,
                             tooltip="Frames whose index is a multiple of this are keyframes (1 = every frame attends "
                                     "to all frames). Ignored when keyframes is set."),
                io.String.Input("keyframes", default="",
                                tooltip="Optional explicit keyframe indices, e.g. '0, 8, 16'. Overrides the stride."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, keyframe_stride, keyframes) -> io.NodeOutput:
        listed = parse_int_list(keyframes, "keyframes")
        attn = comfy_attention()
        patched = attach_attn1(model, lambda key, prev: ExtendedAttentionPatch(keyframe_stride, listed, prev, attn))
        return io.NodeOutput(patched)


def _parse_resblocks(spec: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in (spec or "").replace(";", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        name, _, num = part.partition(" ")
        if name not in ("input", "output") or not num.strip().isdigit():
            raise ValueError(f"pnp_resnet_blocks: '{part}' is not like 'output 4'")
        out.append((name, int(num)))
    return tuple(out)


def apply_tokenflow(model, inversion, window, pnp_attn_t, pnp_f_t, seed, nn_feature, blend,
                    pnp_attn_blocks, pnp_resnet_blocks):
    """MODEL clone carrying TokenFlow (attention replace patches on every self-attention layer,
    an input-capture attn1 patch, and the per-call DIFFUSION_MODEL wrapper)."""
    from .source_branch import source_branch_from

    return tokenflow_model(model, source_branch_from(inversion, model), window, pnp_attn_t, pnp_f_t, seed,
                           nn_feature, blend, pnp_attn_blocks, pnp_resnet_blocks)


def tokenflow_model(model, source, window=8, pnp_attn_t=0.5, pnp_f_t=0.8, seed=1, nn_feature="input",
                    blend="official", pnp_attn_blocks="output 4-11", pnp_resnet_blocks="output 4",
                    share_batch=True):
    """The patching itself, for any source branch (``attention.tokenflow_patch.SourceBranch``)."""
    from comfy.patcher_extension import WrappersMP

    keys = self_attention_keys(model)
    with input_errors("pnp_attn_blocks"):
        attn_keys = tuple(parse_block_list(pnp_attn_blocks, keys))
    config = TokenFlowConfig(window=window, pnp_attn_t=pnp_attn_t, pnp_f_t=pnp_f_t, seed=seed,
                             nn_feature=choice_id(nn_feature, NN_FEATURES, "nn_feature"),
                             blend=choice_id(blend, BLENDS, "blend"), pnp_attn_keys=attn_keys,
                             pnp_res_keys=_parse_resblocks(pnp_resnet_blocks), share_batch=share_batch)
    runtime = TokenFlowRuntime(config, source, model.get_model_object("model_sampling"), comfy_attention())
    m = attach_attn1(model, lambda key, prev: TokenFlowAttention(runtime, key, prev), keys)
    m.set_model_attn1_patch(TokenFlowInputCapture(runtime))
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, TokenFlowWrapper(runtime))
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, TokenFlowRunReset(runtime))
    return m


def tokenflow_inputs():
    return [
        io.Int.Input("window", default=8, min=1, max=256,
                     tooltip="TokenFlow batch_size: one random keyframe is drawn in every window of this many frames "
                             "at every step; propagation also runs in chunks of this size (memory)."),
        io.Float.Input("pnp_attn_t", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps (from the start) during which the source's self-attention "
                               "q/k replace the edit's in the PnP layers (keyframe pass)."),
        io.Float.Input("pnp_f_t", default=0.8, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps during which the source's ResBlock residual features replace "
                               "the edit's in the PnP ResBlocks."),
        io.Int.Input("seed", default=1, min=0, max=2**31 - 1,
                     tooltip="Seed of the per-step random keyframe choice (the official default is 1)."),
        io.Combo.Input("nn_feature", options=list(NN_FEATURES), default=list(NN_FEATURES)[0],
                       tooltip="Source features the nearest-neighbour fields are computed on. The official code "
                               "uses the self-attention input."),
        io.Combo.Input("blend", options=list(BLENDS), default=list(BLENDS)[0],
                       tooltip="How each frame blends its two keyframes: the released code's sigmoid of window "
                               "distances (w in 0.62..0.73 on the own window), or the paper's linear weights "
                               "between the previous and next keyframe."),
        io.String.Input("pnp_attn_blocks", default="output 4-11",
                        tooltip="Self-attention layers that get the source q/k (ComfyUI block ids; SD1.5/2.x "
                                "decoder layers 4-11 as the official code). 'none' disables."),
        io.String.Input("pnp_resnet_blocks", default="output 4",
                        tooltip="ResBlocks whose residual branch gets the source's (output_blocks[4][0] as the "
                                "official code). Empty disables."),
    ]


class ApplyTokenFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_ApplyTokenFlow",
            display_name="Apply TokenFlow",
            category="VideoEdit/tokenflow",
            description="TokenFlow editing as a MODEL patch: keyframes denoised jointly with extended attention, "
                        "their self-attention features propagated to every frame along nearest-neighbour fields "
                        "of the source video (replayed from the DDIM inversion), PnP injection. Sample the "
                        "inversion's latent with the inversion's SIGMAS (or KSampler with the same steps and the "
                        "ddim_uniform scheduler), no added noise.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with (a clone is returned)."),
                VE_INVERSION.Input("inversion", tooltip="DDIM inversion of the source video (VideoEdit DDIM Inversion)."),
                *tokenflow_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, inversion, window, pnp_attn_t, pnp_f_t, seed, nn_feature, blend,
                pnp_attn_blocks, pnp_resnet_blocks) -> io.NodeOutput:
        return io.NodeOutput(apply_tokenflow(model, inversion, window, pnp_attn_t, pnp_f_t, seed, nn_feature,
                                             blend, pnp_attn_blocks, pnp_resnet_blocks))


def sample_tokenflow(model, positive, negative, inversion, cfg, sampler_name, window=8, pnp_attn_t=0.5, pnp_f_t=0.8,
                     seed=1, nn_feature="input", blend="official", pnp_attn_blocks="output 4-11",
                     pnp_resnet_blocks="output 4") -> dict:
    """Apply TokenFlow to a clone of ``model`` and sample the inversion's x_T along the
    inversion's sigmas with ``sampler_name`` (no added noise), with ComfyUI's progress bar and
    previews as SamplerCustom. Returns a LATENT dict."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    from ..inversion.comfy_adapter import output_latent

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


class TokenFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_TokenFlowSampler",
            display_name="TokenFlow Sampler",
            category="VideoEdit/tokenflow",
            description="One box for a TokenFlow edit: applies TokenFlow to a clone of the model and samples the "
                        "inversion's noisy latent along the inversion's sigmas (no added noise) with the chosen "
                        "sampler and guidance. Same result as Apply TokenFlow + SamplerCustom with the inversion's "
                        "SIGMAS.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with (it is not changed)."),
                io.Conditioning.Input("positive", tooltip="Target prompt (ControlNet conditioning works too)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt."),
                VE_INVERSION.Input("inversion", tooltip="DDIM inversion of the source video (VideoEdit DDIM Inversion)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (TokenFlow's default 7.5)."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="ddim",
                               tooltip="ComfyUI sampler; 'ddim' or 'euler' give TokenFlow's deterministic DDIM "
                                       "update. Stochastic samplers add noise the inversion did not see."),
                *tokenflow_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, inversion, cfg, sampler_name, window, pnp_attn_t, pnp_f_t, seed,
                nn_feature, blend, pnp_attn_blocks, pnp_resnet_blocks) -> io.NodeOutput:
        return io.NodeOutput(sample_tokenflow(model, positive, negative, inversion, cfg, sampler_name, window,
                                              pnp_attn_t, pnp_f_t, seed, nn_feature, blend, pnp_attn_blocks,
                                              pnp_resnet_blocks))


NODES = [ApplyExtendedAttention, ApplyTokenFlow, TokenFlowSampler]
