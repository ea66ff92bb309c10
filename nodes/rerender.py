"""Rerender-A-Video nodes: keyframe translation, propagation to every frame, and the two
building blocks that are useful on their own (fidelity-oriented VAE encoding, latent AdaIN)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..flow.dis import dis_flow
from ..flow.fusion import adain, fidelity_encode
from ..flow.propagate import BLEND_MODES, COLOUR_SPACES, chain_flow, propagate_keyframes
from ..flow.raft import RAFT_ARCHITECTURES, raft_flow
from ..flow.raft_checkpoint import RaftCache
from ..flow.resize import resize_flow
from .common import OPTICAL_FLOW, check_choice, choice_id, parse_int_list
from .rerender_pipeline import RerenderRun, RerenderSettings, check_vae_multiple, vae_decode_chw, vae_encode_chw

FLOW_METHODS = {
    "dis (direct between the two frames)": "dis",
    "chain input flows": "chain",
    "raft_large (direct, models/raft)": "raft_large",
    "raft_small (direct, models/raft)": "raft_small",
}
FIDELITY_MODES = {
    "code: x_r + (1 - M_E)*lambda*(x_r - x_rr), M_E over threshold, grown": "code",
    "paper: x_r + M_E*lambda*(x_r - x_rr), M_E under threshold": "paper",
}
_RAFT = RaftCache()


def _frames(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"{name}: expected an IMAGE batch [F,H,W,3], got {getattr(images, 'shape', type(images))}")
    return images[..., :3].float()


def _flows_for(frames: torch.Tensor, flow, name: str) -> torch.Tensor:
    count, height, width = frames.shape[:3]
    if flow is None:
        raise ValueError(f"{name}: connect the clip's {name} (Estimate Optical Flow), or pick a direct flow method")
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[-1] != 2 or flow.shape[0] != count - 1:
        raise ValueError(f"{name}: expected OPTICAL_FLOW [{count - 1},H,W,2] for {count} frames, got "
                         f"{tuple(getattr(flow, 'shape', ()))}")
    if abs((flow.shape[2] / flow.shape[1]) / (width / height) - 1) > 0.05:
        raise ValueError(f"{name}: is {flow.shape[2]}x{flow.shape[1]} (w x h) but the frames are {width}x{height}: "
                         "their aspect ratios differ; estimate the flow on these frames (any scale of them)")
    flow = flow.float().to(frames.device)
    return resize_flow(flow, (height, width)) if tuple(flow.shape[1:3]) != (height, width) else flow


class FlowBetween:
    """``(from, to) -> [1, H, W, 2]`` flow on ``from``'s grid, cached: computed directly between
    the two frames (as the official code does with GMFlow) or chained from adjacent flows."""

    def __init__(self, frames: torch.Tensor, method: str, forward=None, backward=None):
        self.frames, self.method, self.cache = frames, method, {}
        if method == "chain":
            self.forward = _flows_for(frames, forward, "forward_flow")
            self.backward = _flows_for(frames, backward, "backward_flow")
        elif method in RAFT_ARCHITECTURES:
            from .paths import resolve_raft_weights

            self.raft = _RAFT.get(method, resolve_raft_weights(method, "auto"))

    def __call__(self, a: int, b: int) -> torch.Tensor:
        if (a, b) not in self.cache:
            src, dst = self.frames[a:a + 1], self.frames[b:b + 1]
            if self.method == "chain":
                flow = chain_flow(self.forward, self.backward, a, b)
            elif self.method == "dis":
                flow = dis_flow(src, dst)
            else:
                self.raft.to(mm.get_torch_device())
                try:
                    flow = raft_flow(self.raft, src, dst)
                finally:
                    self.raft.to(mm.unet_offload_device())
            self.cache[(a, b)] = flow.float().to(self.frames.device)
        return self.cache[(a, b)]


def _window(name: str, start: float, end: float) -> tuple[float, float]:
    if start < 0 or end > 1:
        raise ValueError(f"{name}: the window is a fraction of the steps, 0..1 (got {start}..{end})")
    return float(start), float(end)


def _window_inputs(name: str, start: float, end: float, what: str) -> list:
    return [
        io.Float.Input(f"{name}_start", default=start, min=0.0, max=1.0, step=0.01,
                       tooltip=f"{what} Start of its window, as a fraction of the steps. A window whose end is not "
                               f"after its start turns the stage off."),
        io.Float.Input(f"{name}_end", default=end, min=0.0, max=1.0, step=0.01,
                       tooltip=f"End of the {name.replace('_', ' ')} window (fraction of the steps)."),
    ]


class RerenderKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_RerenderKeyframes",
            display_name="Rerender Keyframes (Rerender-A-Video)",
            category="VideoEdit/rerender",
            description="Rerender-A-Video key-frame translation. Frames 0, K, 2K, ... are rendered in order; frame 0 is "
                        "the anchor. Later keyframes get cross-frame attention to the anchor and previous keyframe, "
                        "shape-aware fusion of the anchor's warped x0 (early steps), AdaIN to the anchor's x0 "
                        "statistics (late steps) and pixel-aware fusion: a first pass is decoded, overlaid with the "
                        "warped previous/anchor keyframes, re-encoded with the fidelity-oriented encoder and used as "
                        "the inpainting reference of a second pass. ControlNets in the conditioning get each "
                        "frame's own hint. Fill the other frames with Propagate Keyframes.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (a patched clone is used; the input is not changed)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning. ControlNets applied with one hint image "
                                                          "per frame are sliced to the frame being rendered."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (same ControlNet handling)."),
                io.Vae.Input("vae", tooltip="VAE for encoding frames and for the pixel-aware fusion round trips."),
                io.Image.Input("images", tooltip="The source clip [F,H,W,3]; H and W multiples of the VAE's 8."),
                io.Int.Input("keyframe_interval", default=10, min=1, max=10000,
                             tooltip="K: frames 0, K, 2K, ... are rendered (the official code uses 10; 5-20 recommended)."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps (the official code: 20)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="ComfyUI sampler. euler with ddim_uniform is DDIM (eta 0), the official choice; "
                                       "first-order deterministic samplers keep the two-pass split exact."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="ddim_uniform",
                               tooltip="Sigma schedule."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Noise seed, the same for every keyframe and both passes (as the official code)."),
                io.Float.Input("x0_strength", default=0.75, min=0.0, max=1.0, step=0.01,
                               tooltip="SDEdit start: sampling starts at step int(steps·(1 - x0_strength)) from the "
                                       "noised frame (0.75 → step 5 of 20). 1 starts from pure noise (structure then "
                                       "comes from a ControlNet only, the official default)."),
                io.Combo.Input("flow_method", options=list(FLOW_METHODS), default=list(FLOW_METHODS)[0],
                               tooltip="Flow between a keyframe and the anchor / previous keyframe: computed directly "
                                       "between the two frames (as the official code; DIS needs no weights, RAFT "
                                       "reads models/raft), or chained from the adjacent flows given below."),
                *_window_inputs("cross_frame", 0.0, 1.0, "Cross-frame attention (decoder self-attention attends to the "
                                                         "anchor and previous keyframe)."),
                *_window_inputs("shape_fusion", 0.0, 0.1, "Shape-aware fusion (the anchor's warped x0 replaces the "
                                                          "keyframe's where not occluded; paper Ts = 0.1)."),
                *_window_inputs("pixel_fusion", 0.5, 0.8, "Pixel-aware fusion: the second pass inpaints towards the "
                                                          "fused frame at steps strictly inside this window (paper "
                                                          "Tp0 = 0.5, Tp1 = 0.8); off = one pass per keyframe."),
                *_window_inputs("adain", 0.8, 1.0, "AdaIN of the x0 to the anchor's channel statistics (the configs' "
                                                   "0.8..1; the code's default 1..1 is off)."),
                io.Float.Input("mask_strength", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Inpainting weight w = mask·mask_strength of the fused frame at each window step."),
                io.Float.Input("inner_strength", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="Noise kept inside the inpainted region: rescale = max(1 - w, sqrt(1 - w²)·this)."),
                io.Boolean.Input("smooth_boundary", default=True,
                                 tooltip="Use 1 - w as the noise rescale on the mask's boundary (official default on)."),
                io.Float.Input("fidelity_threshold", default=0.25, min=0.0, max=2.0, step=0.01,
                               tooltip="Fidelity-oriented encoding: compensation is switched off where the compensated "
                                       "decode errs by more than this (mean |error| on the [-1, 1] image scale)."),
                io.Float.Input("fidelity_lambda", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="λ: strength of the encoding-loss compensation (1 in code and paper)."),
                io.Combo.Input("fidelity_mode", options=list(FIDELITY_MODES), default=list(FIDELITY_MODES)[0],
                               tooltip="Which form of E* to use: the official code's (mask grown by a latent cell) "
                                       "or the paper's Eq. 9."),
                io.String.Input("cross_frame_blocks", default="decoder",
                                tooltip="Self-attention layers with cross-frame attention: 'decoder' (all output "
                                        "blocks, official) or a list such as 'output 6-11' (loose_cfattn). Memory: the "
                                        "anchor's and previous keyframe's layer inputs are kept per step and branch in "
                                        "fp16 off the GPU, about 0.55 GB each for SD1.5 at 512², 20 steps, CFG."),
                OPTICAL_FLOW.Input("forward_flow", optional=True,
                                   tooltip="Adjacent forward flow of the clip (for 'chain input flows')."),
                OPTICAL_FLOW.Input("backward_flow", optional=True,
                                   tooltip="Adjacent backward flow of the clip (for 'chain input flows')."),
            ],
            outputs=[io.Image.Output(display_name="keyframes"), io.String.Output(display_name="keyframe_indices")],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, images, keyframe_interval, steps, cfg, sampler_name, scheduler,
                seed, x0_strength, flow_method, cross_frame_start, cross_frame_end, shape_fusion_start,
                shape_fusion_end, pixel_fusion_start, pixel_fusion_end, adain_start, adain_end, mask_strength,
                inner_strength, smooth_boundary, fidelity_threshold, fidelity_lambda, fidelity_mode,
                cross_frame_blocks, forward_flow=None, backward_flow=None) -> io.NodeOutput:
        frames = _frames(images)
        check_choice(sampler_name, comfy.samplers.KSampler.SAMPLERS, "sampler_name")
        check_choice(scheduler, comfy.samplers.KSampler.SCHEDULERS, "scheduler")
        fidelity_mode = choice_id(fidelity_mode, FIDELITY_MODES, "fidelity_mode")
        flow_method = choice_id(flow_method, FLOW_METHODS, "flow_method")
        settings = RerenderSettings(
            steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, seed=seed, x0_strength=x0_strength,
            cross_frame=_window("cross_frame", cross_frame_start, cross_frame_end),
            shape_fusion=_window("shape_fusion", shape_fusion_start, shape_fusion_end),
            pixel_fusion=_window("pixel_fusion", pixel_fusion_start, pixel_fusion_end),
            adain=_window("adain", adain_start, adain_end), mask_strength=mask_strength,
            inner_strength=inner_strength, smooth_boundary=smooth_boundary, fidelity_threshold=fidelity_threshold,
            fidelity_strength=fidelity_lambda, fidelity_mode=FIDELITY_MODES.get(fidelity_mode, fidelity_mode),
            cross_frame_blocks=cross_frame_blocks)
        method = FLOW_METHODS.get(flow_method, flow_method)
        result, keys = render_keyframes(model, positive, negative, vae, frames, keyframe_interval, settings, method,
                                        forward_flow, backward_flow)
        return io.NodeOutput(result, ", ".join(str(k) for k in keys))


def render_keyframes(model, positive, negative, vae, frames, interval, settings: RerenderSettings, flow_method="dis",
                     forward_flow=None, backward_flow=None):
    """Render frames 0, K, 2K, ... → (IMAGE [n, H, W, 3] on the intermediate device, indices)."""
    check_vae_multiple(frames, vae, "images")
    if flow_method not in FLOW_METHODS.values():
        raise ValueError(f"flow_method: expected one of {list(FLOW_METHODS)}, got {flow_method!r}")
    keys = list(range(0, frames.shape[0], max(1, int(interval))))
    flows = FlowBetween(frames, flow_method, forward_flow, backward_flow) if len(keys) > 1 else None
    pbar = comfy.utils.ProgressBar(len(keys))
    run = RerenderRun(model, vae, positive, negative, settings, frames.shape[0])
    chw = frames.movedim(-1, 1)
    results = []
    for n, k in enumerate(keys):
        mm.throw_exception_if_processing_interrupted()
        image = chw[k:k + 1]
        results.append(run.render_anchor(k, image) if n == 0 else run.render_keyframe(k, image, flows))
        pbar.update(1)
    out = torch.cat(results).movedim(1, -1).clamp(0, 1).to(mm.intermediate_device())
    return out, keys


class PropagateKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
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
                io.String.Input("keyframe_indices", default="0",
                                tooltip="Frame index of each keyframe, e.g. '0, 10, 20' (Rerender Keyframes' output)."),
                OPTICAL_FLOW.Input("forward_flow", tooltip="Forward flow of the source clip (frame i → i+1)."),
                OPTICAL_FLOW.Input("backward_flow", tooltip="Backward flow of the source clip (frame i+1 → i)."),
                io.Combo.Input("blend", options=list(BLEND_MODES), default="moments",
                               tooltip="moments: per-pixel blend, then each frame's colour mean/std matched to the "
                                       "lower-error selection; histogram: variance-preserving (Heitz-Neyret) blend, "
                                       "then the same match; linear: blend only."),
                io.Combo.Input("colour_space", options=list(COLOUR_SPACES), default="ycbcr",
                               tooltip="Space of the colour-statistics match: ycbcr (fast) or CIELAB (as the official "
                                       "code; ~0.1 s more per 512² frame on a CPU)."),
                io.Float.Input("analysis_scale", default=0.5, min=0.1, max=1.0, step=0.05,
                               tooltip="Resolution of flow chaining, occlusion and weights (fraction of the frame). "
                                       "Lower is faster; the warps themselves are always at full resolution."),
                io.Float.Input("error_scale", default=0.1, min=0.005, max=1.0, step=0.005,
                               tooltip="Warp error (mean |source keyframe warped − source frame|, 0..1) at which a "
                                       "keyframe's weight falls to 1/e."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, images, keyframes, keyframe_indices, forward_flow, backward_flow, blend, colour_space,
                analysis_scale, error_scale) -> io.NodeOutput:
        frames = _frames(images)
        check_choice(blend, BLEND_MODES, "blend")
        check_choice(colour_space, COLOUR_SPACES, "colour_space")
        keys = parse_int_list(keyframe_indices, "keyframe_indices")
        key_images = _frames(keyframes, "keyframes")
        if len(keys) != key_images.shape[0]:
            raise ValueError(f"keyframe_indices: lists {len(keys)} distinct frames but {key_images.shape[0]} keyframes "
                             f"are connected; connect Rerender Keyframes' two outputs together")
        if tuple(key_images.shape[1:3]) != tuple(frames.shape[1:3]):
            raise ValueError(f"keyframes: {tuple(key_images.shape[1:3])} differ in size from images "
                             f"{tuple(frames.shape[1:3])}")
        if keys and keys[-1] >= frames.shape[0]:
            raise ValueError(f"keyframe_indices: frame {keys[-1]} is past the clip's {frames.shape[0]} frames")
        device = mm.get_torch_device()
        if frames.shape[0] > 1:
            fwd = _flows_for(frames, forward_flow, "forward_flow").to(device)
            bwd = _flows_for(frames, backward_flow, "backward_flow").to(device)
        else:
            fwd = bwd = torch.zeros(0, *frames.shape[1:3], 2, device=device)
        pbar = comfy.utils.ProgressBar(frames.shape[0])

        def on_frames(done: int) -> None:
            pbar.update(done)
            mm.throw_exception_if_processing_interrupted()

        out = propagate_keyframes(frames.to(device), key_images.to(device), keys, fwd, bwd,
                                  analysis_scale=analysis_scale, error_scale=error_scale, blend=blend,
                                  colour_space=colour_space, on_frames=on_frames)
        return io.NodeOutput(out.to(mm.intermediate_device()))


class FidelityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
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
                io.Float.Input("threshold", default=0.25, min=0.0, max=2.0, step=0.01,
                               tooltip="Compensation is switched off where the compensated decode errs by more than "
                                       "this (mean |error| on the [-1, 1] image scale; official 0.25)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05, tooltip="λ (official 1)."),
                io.Combo.Input("mode", options=list(FIDELITY_MODES), default=list(FIDELITY_MODES)[0],
                               tooltip="Official code's form (mask grown by a latent cell) or the paper's Eq. 9."),
            ],
            outputs=[io.Latent.Output(display_name="latent"),
                     io.Mask.Output(display_name="compensated", tooltip="1 where the compensation was applied.")],
        )

    @classmethod
    def execute(cls, vae, image, threshold, strength, mode) -> io.NodeOutput:
        pixels = _frames(image, "image")
        mode = choice_id(mode, FIDELITY_MODES, "mode")
        check_vae_multiple(pixels, vae, "image")
        latent, compensated = fidelity_encode(pixels.movedim(-1, 1), lambda x: vae_encode_chw(vae, x),
                                              lambda z: vae_decode_chw(vae, z), threshold, strength,
                                              FIDELITY_MODES.get(mode, mode))
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
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Blend between the input (0) and the fully matched latent (1)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, latent, reference, strength) -> io.NodeOutput:
        x, ref = latent["samples"], reference["samples"]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or getattr(x, "is_nested", False):
            raise ValueError(f"latent: expected an image latent [B,C,h,w], got {tuple(getattr(x, 'shape', ()))}")
        if ref.ndim != 4 or ref.shape[1] != x.shape[1]:
            raise ValueError(f"reference: expected [1 or {x.shape[0]},{x.shape[1]},h,w] to match the latent's "
                             f"{x.shape[1]} channels, got {tuple(ref.shape)}")
        if ref.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"reference: holds {ref.shape[0]} latents; give one, or one per latent ({x.shape[0]})")
        matched = adain(x, ref.to(x.device))
        out = latent.copy()
        out["samples"] = torch.lerp(x, matched, float(strength)) if strength < 1.0 else matched
        return io.NodeOutput(out)


NODES = [RerenderKeyframes, PropagateKeyframes, FidelityEncode, LatentAdaIN]
