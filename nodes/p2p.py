"""Video-P2P / Prompt-to-Prompt nodes: the prompt pair (Video-P2P Edit), the MODEL patch
(Apply Video-P2P) and the one-box sampler with the per-frame blend masks."""

from __future__ import annotations

from comfy_api.latest import io

from ..adapters import p2p as adapter
from ..attention.p2p_control import EDIT_MODES, P2PEditSpec
from ..attention.p2p_patch import FrameAttention, P2PConfig, SourceMode
from .common import VE_INVERSION, sampler_inputs

VE_P2P_EDIT = io.Custom("VE_P2P_EDIT")
_EDIT = P2PEditSpec()
_CFG = P2PConfig()


class P2PEditNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_P2PEdit",
            display_name="Video-P2P Edit (prompt pair)",
            category="VideoEdit/p2p",
            description="A Prompt-to-Prompt edit: the source and target prompts tokenized with the CLIP's own "
            "tokenizer, the token mapping between them (word swap, or refine by global alignment), "
            "per-word reweighting and the local-blend words. Outputs the edit for Apply Video-P2P / "
            "Video-P2P Sampler and the target prompt's CONDITIONING for the sampler.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the model (SD1.x/SD2.x/SDXL)."),
                io.String.Input(
                    "source_prompt",
                    default=_EDIT.source_prompt,
                    multiline=True,
                    tooltip="What the video shows, e.g. 'a man riding a bike' (one 77-token chunk).",
                ),
                io.String.Input(
                    "target_prompt",
                    default=_EDIT.target_prompt,
                    multiline=True,
                    tooltip="The edited prompt, e.g. 'a man riding a motorcycle'.",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(EDIT_MODES),
                    default=_EDIT.mode,
                    tooltip="auto: word swap when both prompts have the same number of words, else "
                    "refine. replace: word swap (P2P AttentionReplace; a word of n tokens "
                    "swapped for one of m tokens spreads 1/m of its map over each). refine: "
                    "words added/removed (Needleman-Wunsch alignment of the tokens; new tokens "
                    "keep their own maps).",
                ),
                io.String.Input(
                    "reweight",
                    default=_EDIT.reweight,
                    tooltip="Per-word attention scales on target words (P2P's equalizer), e.g. "
                    "'fluffy:3, red:2'; the official Video-P2P configs use 2-5 on the new word.",
                ),
                io.String.Input(
                    "blend_source",
                    default=_EDIT.blend_source,
                    tooltip="Local blend: words of the source prompt whose region may change "
                    "(e.g. 'bike'). Empty (with blend_target) = no local blend.",
                ),
                io.String.Input(
                    "blend_target",
                    default=_EDIT.blend_target,
                    tooltip="Local blend: words of the target prompt for the same region (e.g. 'motorcycle').",
                ),
                io.String.Input(
                    "subtract",
                    default=_EDIT.subtract,
                    tooltip="Optional words whose region is kept from the source inside the blend mask "
                    "(P2P's substruct_words; looked up in both prompts).",
                ),
            ],
            outputs=[VE_P2P_EDIT.Output(display_name="edit"), io.Conditioning.Output(display_name="target")],
        )

    @classmethod
    def execute(cls, clip, **inputs) -> io.NodeOutput:
        edit = adapter.build_edit(clip, P2PEditSpec.from_inputs(**inputs))
        return io.NodeOutput(edit, edit.target_conditioning)


def p2p_inputs():
    return [
        io.String.Input(
            "cross_replace_steps",
            default=_CFG.cross_replace_steps,
            tooltip="Fraction of the steps (from the start) during which the target's cross-attention "
            "maps are replaced by the source's (0.2 = official Video-P2P; P2P's notebooks use "
            "up to 0.8). Per-word overrides on target words: 'default:0.8, motorcycle:0.4' or "
            "'word:0.1-0.6' (start-end).",
        ),
        io.Float.Input(
            "self_replace_steps",
            default=_CFG.self_replace_steps,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fraction of the steps during which the self-attention maps of the low-resolution "
            "layers (query length <= (latent/4)^2 per frame: 16² and 8² at 512 px) are the "
            "source's.",
        ),
        io.Float.Input(
            "blend_threshold",
            default=_CFG.blend_threshold,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Local blend: a pixel takes the edit where the normalised word map exceeds this "
            "(P2P/Video-P2P 0.3).",
        ),
        io.Float.Input(
            "blend_start",
            default=_CFG.blend_start,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Local blend starts after this fraction of the steps (0.2 = from step 11 of 50).",
        ),
        io.Combo.Input(
            "source_mode",
            options=[m.value for m in SourceMode],
            default=_CFG.source_mode,
            tooltip="replay: the source branch is the cached inversion latent of each step (only its "
            "conditional pass runs, batched with the sampler's rows; about 1.5x plain CFG). "
            "joint: the paper's way, source and target denoised together from x_T, each with "
            "CFG; the source's unconditional context is the inversion's null-text (when it has "
            "it), the target's the plain negative (decoupled guidance).",
        ),
        io.Combo.Input(
            "frame_attention",
            options=[m.value for m in FrameAttention],
            default=_CFG.frame_attention,
            tooltip="first_frame: every frame's self-attention takes keys/values from the first frame "
            "(Video-P2P's FrameAttention, used here without its tuning: a training-free "
            "variant). none: per-frame self-attention. Layers another patch owns (Apply "
            "Extended Attention, FLATTEN) keep theirs.",
        ),
    ]


_OPTION_NAMES = (
    "cross_replace_steps",
    "self_replace_steps",
    "blend_threshold",
    "blend_start",
    "source_mode",
    "frame_attention",
)


def _config(inputs: dict) -> P2PConfig:
    return P2PConfig.from_inputs(**{k: inputs[k] for k in _OPTION_NAMES})


class ApplyP2P(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_ApplyP2P",
            display_name="Apply Video-P2P",
            category="VideoEdit/p2p",
            description="Video-P2P / Prompt-to-Prompt as a MODEL patch (any sampler): cross-attention control of "
            "the target rows from the source branch's maps, self-attention replacement at low "
            "resolution, per-frame local blend after each step, optional first-frame attention. Sample "
            "the inversion's noisy latent with the inversion's SIGMAS and the edit's target "
            "conditioning, no added noise (euler/ddim are exact; the blend with other samplers is an "
            "approximation).",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with (a clone is returned)."),
                VE_P2P_EDIT.Input("edit", tooltip="The prompt pair (VideoEdit Video-P2P Edit)."),
                VE_INVERSION.Input(
                    "inversion",
                    tooltip="DDIM inversion of the source video (with null-text for the paper's joint mode).",
                ),
                *p2p_inputs(),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, edit, inversion, **inputs) -> io.NodeOutput:
        patched, _ = adapter.apply_p2p(model, edit, inversion, _config(inputs))
        return io.NodeOutput(patched)


class P2PSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_P2PSampler",
            display_name="Video-P2P Sampler",
            category="VideoEdit/p2p",
            description="One box for a Video-P2P edit: applies Video-P2P to a clone of the model and samples the "
            "inversion's noisy latent along the inversion's sigmas (no added noise). Also outputs the "
            "per-frame local-blend masks of the last step (white = edited) for preview.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with (it is not changed)."),
                VE_P2P_EDIT.Input("edit", tooltip="The prompt pair (VideoEdit Video-P2P Edit)."),
                VE_INVERSION.Input("inversion", tooltip="DDIM inversion of the source video."),
                io.Conditioning.Input("negative", tooltip="Negative prompt of the target branch (usually empty)."),
                *sampler_inputs(
                    "euler",
                    cfg_tooltip="Guidance scale (Video-P2P 7.5; in joint mode the source branch's too).",
                    sampler_tooltip="ComfyUI sampler; euler (= DDIM on these sigmas) makes the blend exact.",
                ),
                *p2p_inputs(),
                io.Conditioning.Input(
                    "positive",
                    optional=True,
                    tooltip="Optional target conditioning in place of the edit's (e.g. with a "
                    "ControlNet applied); must come from the same target prompt.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.Mask.Output(display_name="blend_masks")],
        )

    @classmethod
    def execute(cls, model, edit, inversion, negative, cfg, sampler_name, positive=None, **inputs) -> io.NodeOutput:
        latent, masks = adapter.sample_p2p(
            model, edit, inversion, negative, cfg, sampler_name, _config(inputs), positive=positive
        )
        return io.NodeOutput(latent, masks)


NODES = [P2PEditNode, ApplyP2P, P2PSampler]
