"""Rerender-A-Video nodes: keyframe translation, propagation to every frame, and the two
building blocks that are useful on their own (fidelity-oriented VAE encoding, latent AdaIN)."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.samplers
import torch
from comfy_api.latest import io

from ..adapters.rerender import (
    CROSS_FRAME_STORE_DEFAULT,
    FIDELITY_MODES,
    RerenderConfig,
    check_vae_multiple,
    render_keyframes,
    vae_decode_chw,
    vae_encode_chw,
)
from ..attention.crossframe import STORE_PRECISIONS
from ..flow.fusion import ADAIN_FORMULAS, adain, fidelity_encode
from ..flow.propagate import BLEND_MODES, COLOUR_SPACES, propagate_keyframes
from ..options import Options, check_choice, option
from .common import OPTICAL_FLOW, check_flow, check_image, interruptible_progress, parse_int_list

LATENT_ADAIN_FORMULA = "exact"  # the node matches the moments; Rerender Keyframes uses the official formula


@dataclass(frozen=True)
class PropagateOptions(Options):
    """Propagate Keyframes' options (the defaults of ``flow.propagate.propagate_keyframes``)."""

    keyframe_indices: str = option("0")
    blend: str = option("moments", choices=BLEND_MODES)
    colour_space: str = option("ycbcr", choices=COLOUR_SPACES)
    analysis_scale: float = option(0.5, min=0.1, max=1.0, step=0.05)
    error_scale: float = option(0.1, min=0.005, max=1.0, step=0.005)


@dataclass(frozen=True)
class LatentAdaINOptions(Options):
    """Latent AdaIN's options."""

    strength: float = option(1.0, min=0.0, max=1.0, step=0.01)
    formula: str = option(LATENT_ADAIN_FORMULA, choices=ADAIN_FORMULAS)


def _frames(images, name: str = "images") -> torch.Tensor:
    return check_image(images, name)[..., :3].float()


def _flows_for(frames: torch.Tensor, flow, name: str) -> torch.Tensor:
    count, height, width = frames.shape[:3]
    flow = check_flow(flow, name, count, missing=", or pick a direct flow method")
    if abs((flow.shape[2] / flow.shape[1]) / (width / height) - 1) > 0.05:
        raise ValueError(
            f"{name}: is {flow.shape[2]}x{flow.shape[1]} (w x h) but the frames are {width}x{height}: "
            "their aspect ratios differ; estimate the flow on these frames (any scale of them)"
        )
    return check_flow(flow, name, size=(height, width)).to(frames.device)


def _flow_pair(frames: torch.Tensor, forward_flow, backward_flow) -> tuple[torch.Tensor, torch.Tensor]:
    """Both flows of the clip checked against ``frames`` (see :func:`_flows_for`)."""
    return _flows_for(frames, forward_flow, "forward_flow"), _flows_for(frames, backward_flow, "backward_flow")


def _window_inputs(name: str, what: str) -> list:
    start, end = RerenderConfig.default(name)
    return [
        io.Float.Input(
            f"{name}_start",
            default=start,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip=f"{what} Start of its window, as a fraction of the steps. A window whose end is not "
            f"after its start turns the stage off.",
        ),
        io.Float.Input(
            f"{name}_end",
            default=end,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip=f"End of the {name.replace('_', ' ')} window (fraction of the steps).",
        ),
    ]


class RerenderKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = RerenderConfig.spec
        return io.Schema(
            node_id="VideoEdit_RerenderKeyframes",
            display_name="Rerender Keyframes (Rerender-A-Video)",
            category="VideoEdit/rerender",
            description="Rerender-A-Video key-frame translation. Frames 0, K, 2K, ... (keyframe_layout official: 0, 1, "
            "1+K, 1+2K, ...) are rendered in order; frame 0 is the anchor. Later keyframes get cross-frame attention to the anchor and previous keyframe, "
            "shape-aware fusion of the anchor's warped x0 (early steps), AdaIN to the anchor's x0 "
            "statistics (late steps) and pixel-aware fusion: a first pass is decoded, overlaid with the "
            "warped previous/anchor keyframes, re-encoded with the fidelity-oriented encoder and used as "
            "the inpainting reference of a second pass. ControlNets in the conditioning get each "
            "frame's own hint. Fill the other frames with Propagate Keyframes.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The diffusion model (a patched clone is used; the input is not changed)."
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="Positive conditioning. ControlNets applied with one hint image "
                    "per frame are sliced to the frame being rendered.",
                ),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (same ControlNet handling)."),
                io.Vae.Input("vae", tooltip="VAE for encoding frames and for the pixel-aware fusion round trips."),
                io.Image.Input("images", tooltip="The source clip [F,H,W,3]; H and W multiples of the VAE's 8."),
                io.Int.Input(
                    "keyframe_interval",
                    **spec("keyframe_interval"),
                    tooltip="K: frames 0, K, 2K, ... are rendered (keyframe_layout official: 0, 1, 1+K, "
                    "...; the official code uses 10; 5-20 recommended).",
                ),
                io.Int.Input("steps", **spec("steps"), tooltip="Sampling steps (the official code: 20)."),
                io.Float.Input("cfg", **spec("cfg"), tooltip="Classifier-free guidance scale."),
                io.Combo.Input(
                    "sampler_name",
                    options=list(comfy.samplers.KSampler.SAMPLERS),
                    **spec("sampler_name"),
                    tooltip="ComfyUI sampler. euler with ddim_uniform is DDIM (eta 0), the official choice; "
                    "first-order deterministic samplers keep the two-pass split exact.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(comfy.samplers.KSampler.SCHEDULERS),
                    **spec("scheduler"),
                    tooltip="Sigma schedule.",
                ),
                io.Int.Input(
                    "seed",
                    **spec("seed"),
                    tooltip="Noise seed, the same for every keyframe and both passes (as the official code).",
                ),
                io.Float.Input(
                    "x0_strength",
                    **spec("x0_strength"),
                    tooltip="SDEdit start: sampling starts at step int(steps·(1 - x0_strength)) from the "
                    "noised frame (0.75 → step 5 of 20). 1 starts from pure noise (structure then "
                    "comes from a ControlNet only, the official default).",
                ),
                io.Combo.Input(
                    "flow_method",
                    **spec("flow_method"),
                    tooltip="Flow between a keyframe and the anchor / previous keyframe. dis: computed "
                    "directly between the two frames with OpenCV DIS (as the official code does "
                    "with GMFlow; no weights). raft_large / raft_small: directly with RAFT "
                    "(weights from models/raft). chain: chained from the adjacent flows given "
                    "below.",
                ),
                *_window_inputs(
                    "cross_frame",
                    "Cross-frame attention (decoder self-attention attends to the anchor and previous keyframe).",
                ),
                *_window_inputs(
                    "shape_fusion",
                    "Shape-aware fusion (the anchor's warped x0 replaces the "
                    "keyframe's where not occluded; paper Ts = 0.1).",
                ),
                *_window_inputs(
                    "pixel_fusion",
                    "Pixel-aware fusion: the second pass inpaints towards the "
                    "fused frame at steps strictly inside this window (paper "
                    "Tp0 = 0.5, Tp1 = 0.8); off = one pass per keyframe.",
                ),
                *_window_inputs(
                    "adain",
                    "AdaIN of the x0 to the anchor's channel statistics (the configs' "
                    "0.8..1; the code's default 1..1 is off).",
                ),
                io.Float.Input(
                    "mask_strength",
                    **spec("mask_strength"),
                    tooltip="Inpainting weight w = mask·mask_strength of the fused frame at each window step.",
                ),
                io.Float.Input(
                    "inner_strength",
                    **spec("inner_strength"),
                    tooltip="Noise kept inside the inpainted region: rescale = max(1 - w, sqrt(1 - w²)·this).",
                ),
                io.Boolean.Input(
                    "smooth_boundary",
                    **spec("smooth_boundary"),
                    tooltip="Use 1 - w as the noise rescale on the mask's boundary (official default on).",
                ),
                io.Float.Input(
                    "fidelity_threshold",
                    **spec("fidelity_threshold"),
                    tooltip="Fidelity-oriented encoding: compensation is switched off where the compensated "
                    "decode errs by more than this (mean |error| on the [-1, 1] image scale).",
                ),
                io.Float.Input(
                    "fidelity_lambda",
                    **spec("fidelity_lambda"),
                    tooltip="λ: strength of the encoding-loss compensation (1 in code and paper).",
                ),
                io.Combo.Input(
                    "fidelity_mode",
                    **spec("fidelity_mode"),
                    tooltip="Which form of E* to use. code: the official code's, x_r + (1 - M_E)·λ·"
                    "(x_r - x_rr) with M_E over the threshold, grown by a latent cell. paper: "
                    "Eq. 9, x_r + M_E·λ·(x_r - x_rr) with M_E under the threshold.",
                ),
                io.String.Input(
                    "cross_frame_blocks",
                    **spec("cross_frame_blocks"),
                    tooltip="Self-attention layers with cross-frame attention: 'decoder' (all output "
                    "blocks, official), a list such as 'output 6-11' (loose_cfattn) or resolutions of "
                    "the image ('output 1/8, 1/16', the same layers on SD1.5 and SDXL). Memory: the "
                    "anchor's and previous keyframe's layer inputs are kept per step and branch in "
                    "fp16 off the GPU, about 0.55 GB each for SD1.5 at 512², 20 steps, CFG.",
                ),
                io.Int.Input(
                    "style_update_freq",
                    **spec("style_update_freq"),
                    tooltip="The cross-frame attention's 'previous keyframe' moves on at a keyframe only "
                    "when its distance in frames from the first keyframe after the anchor is a "
                    "multiple of this (official default 10: with K = 10 every keyframe). The "
                    "pixel-aware fusion always uses the last rendered keyframe.",
                ),
                io.Combo.Input(
                    "keyframe_layout",
                    **spec("keyframe_layout"),
                    tooltip="even: frames 0, K, 2K, ... (evenly spaced, the anchor is one of them). "
                    "official: the anchor 0, then 1, 1+K, 1+2K, ... as the official code, whose "
                    "output video starts at frame 1.",
                ),
                io.Combo.Input(
                    "latent_flow_resize",
                    **spec("latent_flow_resize"),
                    tooltip="How the flow to the anchor is brought to the latent grid for shape-aware "
                    "fusion. official: plain bilinear (the 2x2 pixels at each cell's centre); "
                    "antialiased: the mean motion of all the pixels a cell covers.",
                ),
                io.Combo.Input(
                    "cross_frame_store",
                    options=list(STORE_PRECISIONS),
                    default=CROSS_FRAME_STORE_DEFAULT,
                    tooltip="Precision of the stored anchor/previous attention inputs. fp16: half the "
                    "memory of an fp32 model's store, ~1e-3 relative change of the attention "
                    "output; model: the model's own dtype, as the official code.",
                ),
                OPTICAL_FLOW.Input(
                    "forward_flow",
                    optional=True,
                    tooltip="Adjacent forward flow of the clip (for 'chain input flows').",
                ),
                OPTICAL_FLOW.Input(
                    "backward_flow",
                    optional=True,
                    tooltip="Adjacent backward flow of the clip (for 'chain input flows').",
                ),
            ],
            outputs=[io.Image.Output(display_name="keyframes"), io.String.Output(display_name="keyframe_indices")],
        )

    @classmethod
    def execute(
        cls, model, positive, negative, vae, images, forward_flow=None, backward_flow=None, **options
    ) -> io.NodeOutput:
        frames = _frames(images)
        config = RerenderConfig.from_inputs(**options)
        if config.flow_method == "chain" and frames.shape[0] > config.keyframe_interval:  # a 2nd keyframe needs them
            forward_flow, backward_flow = _flow_pair(frames, forward_flow, backward_flow)
        result, keys = render_keyframes(model, positive, negative, vae, frames, config, forward_flow, backward_flow)
        return io.NodeOutput(result, ", ".join(str(k) for k in keys))


class PropagateKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = PropagateOptions.spec
        return io.Schema(
            node_id="VideoEdit_PropagateKeyframes",
            display_name="Propagate Keyframes",
            category="VideoEdit/rerender",
            description="Fill every frame from rendered keyframes: each in-between frame blends its two neighbouring "
            "keyframes warped along the chained optical flow, weighted per pixel by temporal distance, "
            "occlusion and warp error, keeping the keyframes' colour statistics. A fast, dependency-free "
            "stand-in for Rerender's EbSynth stage (it warps pixels, it does not synthesise patches).",
            inputs=[
                io.Image.Input("images", tooltip="The source clip [F,H,W,3] the flows were computed on."),
                io.Image.Input("keyframes", tooltip="Rendered keyframes, in the order of keyframe_indices."),
                io.String.Input(
                    "keyframe_indices",
                    **spec("keyframe_indices"),
                    tooltip="Frame index of each keyframe, e.g. '0, 10, 20' (Rerender Keyframes' output).",
                ),
                OPTICAL_FLOW.Input("forward_flow", tooltip="Forward flow of the source clip (frame i → i+1)."),
                OPTICAL_FLOW.Input("backward_flow", tooltip="Backward flow of the source clip (frame i+1 → i)."),
                io.Combo.Input(
                    "blend",
                    **spec("blend"),
                    tooltip="moments: per-pixel blend, then each frame's colour mean/std matched to the "
                    "lower-error selection; histogram: variance-preserving (Heitz-Neyret) blend, "
                    "then the same match; linear: blend only.",
                ),
                io.Combo.Input(
                    "colour_space",
                    **spec("colour_space"),
                    tooltip="Space of the colour-statistics match: ycbcr (fast) or CIELAB (as the official "
                    "code; ~0.1 s more per 512² frame on a CPU).",
                ),
                io.Float.Input(
                    "analysis_scale",
                    **spec("analysis_scale"),
                    tooltip="Resolution of flow chaining, occlusion and weights (fraction of the frame). "
                    "Lower is faster; the warps themselves are always at full resolution.",
                ),
                io.Float.Input(
                    "error_scale",
                    **spec("error_scale"),
                    tooltip="Warp error (mean |source keyframe warped − source frame|, 0..1) at which a "
                    "keyframe's weight falls to 1/e.",
                ),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(
        cls,
        images,
        keyframes,
        keyframe_indices,
        forward_flow,
        backward_flow,
        blend,
        colour_space,
        analysis_scale,
        error_scale,
    ) -> io.NodeOutput:
        frames = _frames(images)
        s = PropagateOptions.from_inputs(
            keyframe_indices=keyframe_indices,
            blend=blend,
            colour_space=colour_space,
            analysis_scale=analysis_scale,
            error_scale=error_scale,
        )
        keys = parse_int_list(s.keyframe_indices, "keyframe_indices")
        key_images = _frames(keyframes, "keyframes")
        if len(keys) != key_images.shape[0]:
            raise ValueError(
                f"keyframe_indices: lists {len(keys)} distinct frames but {key_images.shape[0]} keyframes "
                f"are connected; connect Rerender Keyframes' two outputs together"
            )
        if tuple(key_images.shape[1:3]) != tuple(frames.shape[1:3]):
            raise ValueError(
                f"keyframes: {tuple(key_images.shape[1:3])} differ in size from images {tuple(frames.shape[1:3])}"
            )
        if keys and keys[-1] >= frames.shape[0]:
            raise ValueError(f"keyframe_indices: frame {keys[-1]} is past the clip's {frames.shape[0]} frames")
        device = mm.get_torch_device()
        if frames.shape[0] > 1:
            fwd, bwd = (f.to(device) for f in _flow_pair(frames, forward_flow, backward_flow))
        else:
            fwd = bwd = torch.zeros(0, *frames.shape[1:3], 2, device=device)
        on_frames = interruptible_progress(frames.shape[0])
        out = propagate_keyframes(
            frames.to(device),
            key_images.to(device),
            keys,
            fwd,
            bwd,
            analysis_scale=s.analysis_scale,
            error_scale=s.error_scale,
            blend=s.blend,
            colour_space=s.colour_space,
            on_frames=on_frames,
        )
        return io.NodeOutput(out.to(mm.intermediate_device()))


class FidelityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = RerenderConfig.spec
        return io.Schema(
            node_id="VideoEdit_FidelityEncode",
            display_name="VAE Encode (fidelity-oriented)",
            category="VideoEdit/rerender",
            description="Rerender-A-Video's fidelity-oriented encoding E*: encode, decode and encode again, and add "
            "the loss of the second round trip back (E(I) + λ(E(I) − E(D(E(I))))) where that does not "
            "make the decode worse. Reduces the detail and colour drift of repeated decode → edit → encode "
            "loops. Costs two encodes and two decodes.",
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE."),
                io.Image.Input("image", tooltip="Images to encode (H, W multiples of the VAE's 8)."),
                io.Float.Input(
                    "threshold",
                    **spec("fidelity_threshold"),
                    tooltip="Compensation is switched off where the compensated decode errs by more than "
                    "this (mean |error| on the [-1, 1] image scale; official 0.25).",
                ),
                io.Float.Input("strength", **spec("fidelity_lambda"), tooltip="λ (official 1)."),
                io.Combo.Input(
                    "mode",
                    **spec("fidelity_mode"),
                    tooltip="code: the official code's form (mask over the threshold, grown by a "
                    "latent cell). paper: Eq. 9 (mask under the threshold).",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent"),
                io.Mask.Output(display_name="compensated", tooltip="1 where the compensation was applied."),
            ],
        )

    @classmethod
    def execute(cls, vae, image, threshold, strength, mode) -> io.NodeOutput:
        pixels = _frames(image, "image")
        check_vae_multiple(pixels, vae, "image")
        latent, compensated = fidelity_encode(
            pixels.movedim(-1, 1),
            lambda x: vae_encode_chw(vae, x),
            lambda z: vae_decode_chw(vae, z),
            threshold,
            strength,
            check_choice("mode", mode, FIDELITY_MODES),
        )
        mask = torch.nn.functional.interpolate(compensated.float(), size=tuple(pixels.shape[1:3]), mode="nearest")
        return io.NodeOutput({"samples": latent.to(mm.intermediate_device())}, mask[:, 0].to(mm.intermediate_device()))


class LatentAdaIN(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_LatentAdaIN",
            display_name="Latent AdaIN",
            category="VideoEdit/rerender",
            description="Match each latent's per-channel mean and standard deviation to a reference latent's "
            "(adaptive instance normalisation, Rerender's colour-aware latent adjustment).",
            inputs=[
                io.Latent.Input("latent", tooltip="Latents to adjust [B,C,h,w]."),
                io.Latent.Input("reference", tooltip="Reference latent: one for all, or one per latent."),
                io.Float.Input(
                    "strength",
                    **LatentAdaINOptions.spec("strength"),
                    tooltip="Blend between the input (0) and the fully matched latent (1).",
                ),
                io.Combo.Input(
                    "formula",
                    **LatentAdaINOptions.spec("formula"),
                    tooltip="exact: the output's channel mean/std equal the reference's (biased std on "
                    "both sides). official: Rerender's update_x0, instance_norm(x)·σ + μ with the "
                    "reference's unbiased std and eps 1e-5 (std larger by about 1/(2·h·w)).",
                ),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, latent, reference, strength, formula=LATENT_ADAIN_FORMULA) -> io.NodeOutput:
        s = LatentAdaINOptions.from_inputs(strength=strength, formula=formula)
        x, ref = latent["samples"], reference["samples"]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or getattr(x, "is_nested", False):
            raise ValueError(f"latent: expected an image latent [B,C,h,w], got {tuple(getattr(x, 'shape', ()))}")
        if ref.ndim != 4 or ref.shape[1] != x.shape[1]:
            raise ValueError(
                f"reference: expected [1 or {x.shape[0]},{x.shape[1]},h,w] to match the latent's "
                f"{x.shape[1]} channels, got {tuple(ref.shape)}"
            )
        if ref.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"reference: holds {ref.shape[0]} latents; give one, or one per latent ({x.shape[0]})")
        matched = adain(x, ref.to(x.device), s.formula)
        out = latent.copy()
        out["samples"] = torch.lerp(x, matched, float(s.strength)) if s.strength < 1.0 else matched
        return io.NodeOutput(out)


NODES = [RerenderKeyframes, PropagateKeyframes, FidelityEncode, LatentAdaIN]
