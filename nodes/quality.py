"""Edit-quality metrics node: warp error along the source's flow, structure SSIM, CLIP scores,
a per-frame plot. The maths is in ``media/quality.py``, the plot in ``media/quality_plot.py``,
the CLIP glue and the run in ``adapters/quality.py``; this file validates and reports."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..adapters.quality import CLIP_BATCH, evaluate_edit
from ..media.quality import DEFAULT_FLOW_SCALE, check_mask, progress_steps
from .common import OPTICAL_FLOW, interruptible_progress

HEADLINE = ("warp_error", "warp_error_source", "ssim_luma", "ssim_edges", "clip_consistency", "clip_text")


def _frames(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected an IMAGE batch [F,H,W,3], got {shape}")
    return images.to(mm.intermediate_device(), torch.float32)


def check_inputs(source: torch.Tensor, edited: torch.Tensor, forward_flow, backward_flow):
    """Validate the pairs that must agree; returns the flows as float32 tensors (or Nones)."""
    if source.shape[0] != edited.shape[0]:
        raise ValueError(
            f"edited: {edited.shape[0]} frames but source has {source.shape[0]}; connect the edit of "
            "this very clip (same frame selection)"
        )
    if source.shape[0] < 2:
        raise ValueError(f"source: the metrics compare consecutive frames, need at least 2, got {source.shape[0]}")
    if source.shape[1:3] != edited.shape[1:3]:
        raise ValueError(
            f"edited: frames are {edited.shape[2]}×{edited.shape[1]} (w×h) but source frames are "
            f"{source.shape[2]}×{source.shape[1]}; resize one of them (e.g. the source to the decoded "
            "size)"
        )
    if (forward_flow is None) != (backward_flow is None):
        missing = "backward_flow" if backward_flow is None else "forward_flow"
        raise ValueError(
            f"{missing}: not connected while the other flow is; connect both outputs of one Estimate "
            "Optical Flow node, or neither (DIS flow is then computed here)"
        )
    if forward_flow is None:
        return None, None
    flows = []
    for name, flow in (("forward_flow", forward_flow), ("backward_flow", backward_flow)):
        if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[-1] != 2:
            raise ValueError(f"{name}: expected OPTICAL_FLOW [F-1,H,W,2] from Estimate Optical Flow")
        if flow.shape[0] != source.shape[0] - 1 or flow.shape[1:3] != source.shape[1:3]:
            raise ValueError(
                f"{name}: {flow.shape[0]} pairs of {flow.shape[2]}×{flow.shape[1]} but source is "
                f"{source.shape[0]} frames of {source.shape[2]}×{source.shape[1]}; estimate the flow "
                "on the source clip itself"
            )
        flows.append(flow.to(mm.intermediate_device(), torch.float32))
    return flows[0], flows[1]


class EditQuality(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_EditQuality",
            display_name="Edit Quality (metrics + plot)",
            category="VideoEdit/quality",
            description=(
                "Scores an edited clip against its source with the papers' numbers and plots them per frame: "
                "warp error of the edit along the source's optical flow on non-occluded pixels, next to the "
                "source's own (the floor); SSIM of luminance and of edge maps to the source (structure kept), "
                "inside / outside an optional mask; CLIP frame consistency with a CLIP vision model; CLIP text "
                "alignment where the text and vision models share an embedding space (else the report says why)."
            ),
            inputs=[
                io.Image.Input("source", tooltip="The source clip (what was edited)."),
                io.Image.Input("edited", tooltip="The edit: same frame count and size as source."),
                OPTICAL_FLOW.Input(
                    "forward_flow",
                    optional=True,
                    tooltip="Forward flow of the SOURCE (Estimate Optical Flow). Without flows DIS "
                    "is run here on the source.",
                ),
                OPTICAL_FLOW.Input(
                    "backward_flow",
                    optional=True,
                    tooltip="Backward flow of the SOURCE, from the same Estimate Optical Flow node.",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Optional region (e.g. a P2P blend mask, 1 = edited region): SSIM is also "
                    "given inside and outside it. One mask for all frames or one per frame; resized to "
                    "the frames.",
                ),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="CLIP vision model (Load CLIP Vision) for frame consistency and text alignment.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Text encoder for text alignment; used only when it shares the vision "
                    "model's embedding space (e.g. SDXL's clip_g with clip_vision_g; not SD1.5's).",
                ),
                io.String.Input(
                    "prompt",
                    default="",
                    multiline=True,
                    tooltip="Target prompt for CLIP text alignment (empty = skipped).",
                ),
                io.String.Input(
                    "label",
                    default="",
                    tooltip="Name shown in the report and the plot title, e.g. the method compared.",
                ),
                io.Float.Input(
                    "flow_scale",
                    default=DEFAULT_FLOW_SCALE,
                    min=0.1,
                    max=1.0,
                    step=0.05,
                    tooltip="Fraction of the frame size DIS runs at when no flows are given (0.5: "
                    "about 4× faster than full size; the edit and the source are judged with the same "
                    "flow either way).",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="report",
                    tooltip="The text report (also shown on the node), naming every skipped metric and why.",
                ),
                io.Image.Output(display_name="plot", tooltip="Per-frame curves of the metrics (720×640)."),
                io.Float.Output(
                    display_name="warp_error",
                    tooltip="Mean warp error of the edit (MSE in 0..1 units; lower = steadier).",
                ),
                io.Float.Output(display_name="warp_error_source", tooltip="The same for the source: the floor."),
                io.Float.Output(display_name="ssim_luma", tooltip="Mean luminance SSIM to the source (1 = same)."),
                io.Float.Output(display_name="ssim_edges", tooltip="Mean edge-map SSIM to the source."),
                io.Float.Output(
                    display_name="clip_consistency",
                    tooltip="Mean CLIP cosine of consecutive edited frames; NaN without clip_vision.",
                ),
                io.Float.Output(
                    display_name="clip_text",
                    tooltip="Mean CLIP image–prompt cosine of the edit; NaN when skipped (see the report).",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        source,
        edited,
        prompt,
        label,
        flow_scale,
        forward_flow=None,
        backward_flow=None,
        mask=None,
        clip_vision=None,
        clip=None,
    ) -> io.NodeOutput:
        src, edit = _frames(source, "source"), _frames(edited, "edited")
        forward, backward = check_inputs(src, edit, forward_flow, backward_flow)
        if not 0.1 <= flow_scale <= 1.0:
            raise ValueError(f"flow_scale: must be in 0.1..1, got {flow_scale}")
        count, height, width = src.shape[:3]
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask: expected a MASK tensor, got {type(mask).__name__}")
        region = check_mask(mask.to(mm.intermediate_device()), count, height, width) if mask is not None else None
        clip_batches = 0 if clip_vision is None else 2 * -(-count // CLIP_BATCH)
        tick = interruptible_progress(progress_steps(count, forward is not None) + clip_batches)
        report, plot = evaluate_edit(
            src,
            edit,
            forward,
            backward,
            region,
            clip_vision,
            clip,
            prompt or "",
            (label or "").strip(),
            flow_scale,
            on_step=tick,
        )
        text, numbers = report.text(), report.headline()
        preview = ui.PreviewImage(plot, cls=cls).as_dict()
        return io.NodeOutput(
            text, plot, *(numbers[k] for k in HEADLINE), ui={**preview, **ui.PreviewText(text).as_dict()}
        )


NODES = [EditQuality]
