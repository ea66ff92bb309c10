"""Keyframe extended attention and TokenFlow editing nodes."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapters.context_windows import honour_context_windows
from ..adapters.model_patch import attach_attn1, comfy_attention
from ..adapters.tokenflow import TokenFlowOptions, apply_tokenflow, sample_tokenflow
from ..attention.extended_patch import ExtendedAttentionPatch
from .common import VE_INVERSION, parse_int_list, sampler_inputs


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
                io.Int.Input(
                    "keyframe_stride",
                    default=4,
                    min=1,
                    max=4096,
                    tooltip="Frames whose index is a multiple of this are keyframes (1 = every frame attends "
                    "to all frames). Ignored when keyframes is set.",
                ),
                io.String.Input(
                    "keyframes",
                    default="",
                    tooltip="Optional explicit keyframe indices, e.g. '0, 8, 16'. Overrides the stride.",
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, keyframe_stride, keyframes) -> io.NodeOutput:
        listed = parse_int_list(keyframes, "keyframes")
        patched = attach_attn1(
            model, lambda key, prev: ExtendedAttentionPatch(keyframe_stride, listed, prev, comfy_attention)
        )
        return io.NodeOutput(honour_context_windows(patched))


def tokenflow_inputs():
    spec = TokenFlowOptions.spec
    return [
        io.Int.Input(
            "window",
            **spec("window"),
            tooltip="TokenFlow batch_size: one random keyframe is drawn in every window of this many frames "
            "at every step; propagation also runs in chunks of this size (memory).",
        ),
        io.Float.Input(
            "pnp_attn_t",
            **spec("pnp_attn_t"),
            tooltip="Fraction of the steps (from the start) during which the source's self-attention "
            "q/k replace the edit's in the PnP layers (keyframe pass).",
        ),
        io.Float.Input(
            "pnp_f_t",
            **spec("pnp_f_t"),
            tooltip="Fraction of the steps during which the source's ResBlock residual features replace "
            "the edit's in the PnP ResBlocks.",
        ),
        io.Int.Input(
            "seed", **spec("seed"), tooltip="Seed of the per-step random keyframe choice (the official default is 1)."
        ),
        io.Combo.Input(
            "nn_feature",
            **spec("nn_feature"),
            tooltip="Source features the nearest-neighbour fields are computed on. input: the "
            "self-attention input (the official code); output: the self-attention output.",
        ),
        io.Combo.Input(
            "blend",
            **spec("blend"),
            tooltip="How each frame blends its two keyframes. official: the released code's sigmoid of "
            "window distances over its own and the previous window (w in 0.62..0.73 on the own "
            "window); paper: linear weights between the previous and next keyframe.",
        ),
        io.String.Input(
            "pnp_attn_blocks",
            **spec("pnp_attn_blocks"),
            tooltip="Self-attention layers that get the source q/k, by resolution ('output 1/32#1-2, "
            "1/16': decoder blocks at 1/32 of the image from the 2nd on, all at 1/16; the default "
            "is the official decoder layers 4-11 on SD1.5/2.x) or by ComfyUI block ids "
            "('output 4-11', 'input 1,2; output 9-11'). 'none' disables, 'all' takes every layer.",
        ),
        io.String.Input(
            "pnp_resnet_blocks",
            **spec("pnp_resnet_blocks"),
            tooltip="ResBlocks whose residual branch gets the source's, by resolution (the default: "
            "the decoder's 2nd ResBlock at 1/32 of the image = output_blocks[4][0] on SD1.5/2.x "
            "as the official code) or by block id ('output 4'). Empty or 'none' disables.",
        ),
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
                VE_INVERSION.Input(
                    "inversion", tooltip="DDIM inversion of the source video (VideoEdit DDIM Inversion)."
                ),
                *tokenflow_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, inversion, **options) -> io.NodeOutput:
        return io.NodeOutput(apply_tokenflow(model, inversion, **options))


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
                VE_INVERSION.Input(
                    "inversion", tooltip="DDIM inversion of the source video (VideoEdit DDIM Inversion)."
                ),
                *sampler_inputs(
                    "ddim",
                    cfg_tooltip="Classifier-free guidance scale (TokenFlow's default 7.5).",
                    sampler_tooltip="ComfyUI sampler; 'ddim' or 'euler' give TokenFlow's deterministic DDIM "
                    "update. Stochastic samplers add noise the inversion did not see.",
                ),
                *tokenflow_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, inversion, cfg, sampler_name, **options) -> io.NodeOutput:
        return io.NodeOutput(sample_tokenflow(model, positive, negative, inversion, cfg, sampler_name, **options))


NODES = [ApplyExtendedAttention, ApplyTokenFlow, TokenFlowSampler]
