"""Optical flow nodes: estimate (DIS / RAFT), forward–backward occlusion, preview, warp.

``OPTICAL_FLOW`` = float32 ``[F-1, H, W, 2]`` pixel displacements (x, y), the layout of
comfyui_controlnet_aux and ComfyUI-RAFT. Forward flow index i: frame i → i+1 on frame i's grid;
backward flow index i: frame i+1 → i on frame i+1's grid (see ``flow/__init__.py``).
"""

import functools
from dataclasses import dataclass

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..adapters.paths import raft_weight_files
from ..adapters.raft import raft_model
from ..flow.consistency import occlusion_mask
from ..flow.dis import dis_flow
from ..flow.estimate import bidirectional_flow
from ..flow.raft import DEFAULT_FLOW_UPDATES, RAFT_ARCHITECTURES, raft_flow
from ..flow.visualize import flow_to_rgb
from ..flow.warp import PADDING_MODES, warp_backward
from ..options import Options, option
from .common import OPTICAL_FLOW, check_flow, check_image, interruptible_progress

METHODS = ("dis", *RAFT_ARCHITECTURES)
FLOW_DIRECTIONS = ("forward", "backward")
_CHUNK = 16  # frames per warp/mask call: bounds the temporary sampling grids


@dataclass(frozen=True)
class EstimateFlowOptions(Options):
    """Estimate Optical Flow's options (``raft_weights`` lists the files in models/raft, checked
    when they are loaded)."""

    method: str = option("dis", choices=METHODS)
    raft_weights: str = option("auto")
    num_flow_updates: int = option(DEFAULT_FLOW_UPDATES, min=1, max=64)
    batch_size: int = option(4, min=1, max=64)
    scale: float = option(1.0, min=0.1, max=1.0, step=0.05)


@dataclass(frozen=True)
class FlowConsistencyOptions(Options):
    """Flow Occlusion Mask's options (Sundaram et al.'s squared test by default)."""

    alpha: float = option(0.01, min=0.0, max=1.0, step=0.001)
    beta: float = option(0.5, min=0.0, max=100.0, step=0.05)
    squared: bool = option(True)


@dataclass(frozen=True)
class FlowPreviewOptions(Options):
    """Flow to Image's options."""

    max_magnitude: float = option(0.0, min=0.0, max=10000.0, step=0.5)


@dataclass(frozen=True)
class WarpImagesOptions(Options):
    """Warp Images by Flow's options."""

    flow_direction: str = option("forward", choices=FLOW_DIRECTIONS)
    padding_mode: str = option("border", choices=PADDING_MODES)


def _check_flow(flow, name: str) -> torch.Tensor:
    return check_flow(flow, name).to(device=mm.intermediate_device())


def _chunked(fn, *tensors: torch.Tensor) -> torch.Tensor:
    count = tensors[0].shape[0]
    return torch.cat([fn(*(t[i : i + _CHUNK] for t in tensors)) for i in range(0, count, _CHUNK)])


class EstimateFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = EstimateFlowOptions.spec
        return io.Schema(
            node_id="VideoEdit_EstimateFlow",
            display_name="Estimate Optical Flow",
            category="VideoEdit/flow",
            description=(
                "Dense optical flow between consecutive frames, both directions. forward_flow[i]: frame i → i+1 "
                "(on frame i's grid); backward_flow[i]: frame i+1 → i (on frame i+1's grid). Pixel units."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The clip, at least 2 frames."),
                io.Combo.Input(
                    "method",
                    **spec("method"),
                    tooltip="dis: OpenCV DIS, no weights, CPU. raft_large / raft_small: torchvision RAFT "
                    "(more robust on large motion and low texture), weights from models/raft.",
                ),
                io.Combo.Input(
                    "raft_weights",
                    options=["auto", *raft_weight_files()],
                    default=EstimateFlowOptions.default("raft_weights"),
                    tooltip="RAFT weight file in models/raft (torchvision .pth/.safetensors, or the original "
                    "raft-things.pth / raft-small.pth). auto: the best-known file matching the method. "
                    "Ignored for dis.",
                ),
                io.Int.Input(
                    "num_flow_updates",
                    **spec("num_flow_updates"),
                    tooltip="RAFT refinement iterations: 12 is torchvision's default; more refines large motion at a "
                    "cost linear in the count. Ignored for dis.",
                ),
                io.Int.Input(
                    "batch_size",
                    **spec("batch_size"),
                    tooltip="Frame pairs per RAFT call (each runs both directions). Lower it if memory runs out "
                    "at high resolution.",
                ),
                io.Float.Input(
                    "scale",
                    **spec("scale"),
                    tooltip="Estimate at this fraction of the frame size, then upsample the flow (vectors "
                    "rescaled). 1 = full resolution; lower is faster and coarser.",
                ),
            ],
            outputs=[
                OPTICAL_FLOW.Output(display_name="forward_flow"),
                OPTICAL_FLOW.Output(display_name="backward_flow"),
            ],
        )

    @classmethod
    def execute(cls, images, **options) -> io.NodeOutput:
        frames = check_image(images)
        if frames.shape[0] < 2:
            raise ValueError(f"images: optical flow needs at least 2 frames, got {frames.shape[0]}")
        s = EstimateFlowOptions.from_inputs(**options)
        on_batch = interruptible_progress(frames.shape[0] - 1)
        if s.method == "dis":
            return io.NodeOutput(*bidirectional_flow(frames, dis_flow, s.batch_size, s.scale, on_batch))
        model = raft_model(s.method, s.raft_weights)
        model.to(mm.get_torch_device())
        try:
            estimator = functools.partial(raft_flow, model, num_flow_updates=s.num_flow_updates)
            return io.NodeOutput(*bidirectional_flow(frames, estimator, s.batch_size, s.scale, on_batch))
        finally:
            model.to(mm.unet_offload_device())
            mm.soft_empty_cache()


class FlowConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = FlowConsistencyOptions.spec
        return io.Schema(
            node_id="VideoEdit_FlowConsistency",
            display_name="Flow Occlusion Mask",
            category="VideoEdit/flow",
            description=(
                "Occlusion masks (1 = occluded/unreliable) from the forward–backward consistency check plus "
                "motion that leaves the frame. occlusion[i]: pixels of frame i with no reliable match in "
                "frame i+1; occlusion_next[i]: pixels of frame i+1 with none in frame i."
            ),
            inputs=[
                OPTICAL_FLOW.Input("forward_flow", tooltip="Forward flow (frame i → i+1) from Estimate Optical Flow."),
                OPTICAL_FLOW.Input("backward_flow", tooltip="Backward flow (frame i+1 → i) from the same node."),
                io.Float.Input(
                    "alpha",
                    **spec("alpha"),
                    tooltip="Tolerance relative to motion size: |f + b̂|² > alpha·(|f|² + |b̂|²) + beta "
                    "(b̂ = backward flow read at x + f(x)).",
                ),
                io.Float.Input(
                    "beta",
                    **spec("beta"),
                    tooltip="Constant tolerance: px² when squared is on (0.5 ≈ 0.71 px), px when off.",
                ),
                io.Boolean.Input(
                    "squared",
                    **spec("squared"),
                    tooltip="On: Sundaram et al.'s squared-norm test (defaults 0.01 / 0.5). Off: the plain-norm "
                    "test of GMFlow / Rerender-A-Video, |f + b̂| > alpha·(|f| + |b̂|) + beta.",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="occlusion"),
                io.Mask.Output(display_name="occlusion_next"),
            ],
        )

    @classmethod
    def execute(cls, forward_flow, backward_flow, **options) -> io.NodeOutput:
        s = FlowConsistencyOptions.from_inputs(**options)
        fwd = _check_flow(forward_flow, "forward_flow")
        bwd = _check_flow(backward_flow, "backward_flow")
        if fwd.shape != bwd.shape:
            raise ValueError(
                f"forward_flow {tuple(fwd.shape)} and backward_flow {tuple(bwd.shape)} differ in shape: connect both "
                "outputs of one Estimate Optical Flow node"
            )
        mask = functools.partial(occlusion_mask, alpha=s.alpha, beta=s.beta, squared=s.squared)
        return io.NodeOutput(_chunked(mask, fwd, bwd), _chunked(mask, bwd, fwd))


class FlowPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_FlowPreview",
            display_name="Flow to Image",
            category="VideoEdit/flow",
            description="Colour-codes a flow (Middlebury wheel: hue = direction, saturation = speed; white = still).",
            inputs=[
                OPTICAL_FLOW.Input("flow", tooltip="Any OPTICAL_FLOW."),
                io.Float.Input(
                    "max_magnitude",
                    **FlowPreviewOptions.spec("max_magnitude"),
                    tooltip="Motion (px) shown at full colour; longer vectors saturate. 0 = the largest motion "
                    "in the clip. Every frame uses the same scale.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, flow, **options) -> io.NodeOutput:
        s = FlowPreviewOptions.from_inputs(**options)
        return io.NodeOutput(flow_to_rgb(_check_flow(flow, "flow"), s.max_magnitude))


class WarpImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_WarpImages",
            display_name="Warp Images by Flow",
            category="VideoEdit/flow",
            description=(
                "Backward warp: out[i](x) = images[i](x + flow[i](x)), bilinear. With forward flow this brings "
                "frame i+1 onto frame i's grid; with backward flow, frame i onto frame i+1's grid."
            ),
            inputs=[
                io.Image.Input(
                    "images",
                    tooltip="Frames to warp: as many as flows (frame k warped by flow k), or the whole clip of F = "
                    "flows + 1 frames (forward: frames 1..F-1 onto 0..F-2; backward: 0..F-2 onto 1..F-1).",
                ),
                OPTICAL_FLOW.Input("flow", tooltip="Flow on the output grid, same H×W as the images."),
                io.Combo.Input(
                    "flow_direction",
                    **WarpImagesOptions.spec("flow_direction"),
                    tooltip="Which flow is connected; only used to pick frames when images has one more frame "
                    "than flow.",
                ),
                io.Combo.Input(
                    "padding_mode",
                    **WarpImagesOptions.spec("padding_mode"),
                    tooltip="Value where x + flow(x) leaves the image: zeros = black, border = nearest edge "
                    "pixel, reflection = mirrored.",
                ),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, images, flow, **options) -> io.NodeOutput:
        frames = check_image(images)
        flow = _check_flow(flow, "flow")
        s = WarpImagesOptions.from_inputs(**options)
        if frames.shape[0] == flow.shape[0] + 1:
            frames = frames[1:] if s.flow_direction == "forward" else frames[:-1]
        elif frames.shape[0] != flow.shape[0]:
            raise ValueError(
                f"images has {frames.shape[0]} frames but flow has {flow.shape[0]}: give as many frames as flows, "
                "or the clip the flow was estimated on (one more)"
            )
        if frames.shape[1:3] != flow.shape[1:3]:
            raise ValueError(
                f"images are {frames.shape[2]}×{frames.shape[1]} but flow is {flow.shape[2]}×{flow.shape[1]}: "
                "estimate the flow on frames of this size"
            )

        def warp(f: torch.Tensor, fl: torch.Tensor) -> torch.Tensor:
            return warp_backward(f.permute(0, 3, 1, 2), fl, s.padding_mode).permute(0, 2, 3, 1)

        return io.NodeOutput(_chunked(warp, frames.to(mm.intermediate_device()), flow))


NODES = [EstimateFlow, FlowConsistency, FlowPreview, WarpImages]
