"""FLATTEN nodes: sample patch trajectories from optical flow; patch a MODEL with flow-guided
trajectory attention (optionally with PnP feature injection from the source inversion)."""

from __future__ import annotations

import logging
import time

import torch
from comfy_api.latest import io

from ..adapters.flatten import FlattenOptions, flatten_model
from ..adapters.source import source_branch_from
from ..flow.trajectories import FLOW_RESIZE, sample_trajectories
from ..options import check_choice
from .common import OPTICAL_FLOW, VE_INVERSION, VE_TRAJECTORIES, check_flow

log = logging.getLogger(__name__)
TRAJECTORY_FLOW_RESIZE = "official"  # default of Sample Trajectories' flow_resize (flow/trajectories.py)


def _check_flow_and_latent(flow, latent) -> tuple[torch.Tensor, int, int, int]:
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"latent: expected an image-model video latent [frames, C, h, w], got {tuple(samples.shape)}")
    frames, _, h, w = samples.shape
    flow = check_flow(flow, "flow", frames, against="the latent")
    flow = crop_like_vae_encode(flow, h * 8, w * 8)
    flow_aspect, latent_aspect = flow.shape[2] / flow.shape[1], w / h
    if abs(flow_aspect / latent_aspect - 1) > 0.05:
        raise ValueError(
            f"flow: is {flow.shape[2]}x{flow.shape[1]} (w x h) but the latent is {w}x{h} ({w * 8}x{h * 8} pixels): "
            "their aspect ratios differ. Estimate the flow on the frames that were VAE-encoded, at their size or "
            f"any scale of it (e.g. crop or resize the frames to {w * 8}x{h * 8} before both VAE Encode and "
            "Estimate Optical Flow)"
        )
    return flow, frames, h, w


def crop_like_vae_encode(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``flow [F-1, H, W, 2]`` of frames that VAE Encode cropped to ``height x width`` (it
    centre-crops each side to a multiple of 8, offset ``(side % 8) // 2``): the same crop of
    the flow (displacements are unchanged by a crop). Any other flow is returned as it is."""
    fh, fw = flow.shape[1], flow.shape[2]
    if (fh, fw) == (height, width) or (fh // 8 * 8, fw // 8 * 8) != (height, width):
        return flow
    top, left = (fh % 8) // 2, (fw % 8) // 2
    return flow[:, top : top + height, left : left + width]


class SampleTrajectories(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_SampleTrajectories",
            display_name="Sample Trajectories (FLATTEN)",
            category="VideoEdit/flatten",
            description="Patch trajectories for FLATTEN at every latent resolution the UNet attends at: the forward "
            "flow, resized to each grid and rounded to whole cells, links each cell to one cell of the "
            "next frame; where several cells land on one, a seeded choice continues and the others end; "
            "unreached cells start new trajectories. Every cell is on exactly one trajectory.",
            inputs=[
                OPTICAL_FLOW.Input(
                    "flow",
                    tooltip="Forward optical flow of the clip (frame i → i+1), any resolution "
                    "with the frames' aspect ratio (VideoEdit Estimate Optical Flow).",
                ),
                io.Latent.Input(
                    "latent",
                    tooltip="The clip's latent (VAE Encode of the same frames): gives the frame "
                    "count and the latent size the trajectories are sampled for.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    tooltip="Seed of the choice among cells that flow onto the same cell (deterministic; "
                    "the official code's choice is unseeded).",
                ),
                io.Combo.Input(
                    "flow_resize",
                    options=list(FLOW_RESIZE),
                    default=TRAJECTORY_FLOW_RESIZE,
                    tooltip="How the flow is brought to each latent grid before rounding. official: "
                    "nearest (each cell moves with the pixel at its top-left corner, as the "
                    "official code); antialiased: with the mean motion of the pixels it covers.",
                ),
            ],
            outputs=[VE_TRAJECTORIES.Output(display_name="trajectories")],
        )

    @classmethod
    def execute(cls, flow, latent, seed, flow_resize=TRAJECTORY_FLOW_RESIZE) -> io.NodeOutput:
        check_choice("flow_resize", flow_resize, FLOW_RESIZE)
        flow, _, h, w = _check_flow_and_latent(flow, latent)
        start = time.perf_counter()
        trajectories = sample_trajectories(flow, (h, w), seed=seed, flow_resize=flow_resize)
        log.info("FLATTEN trajectories for %s sampled in %.3f s", trajectories.describe(), time.perf_counter() - start)
        return io.NodeOutput(trajectories)


class ApplyFLATTEN(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = FlattenOptions.spec
        return io.Schema(
            node_id="VideoEdit_ApplyFLATTEN",
            display_name="Apply FLATTEN",
            category="VideoEdit/flatten",
            description="FLATTEN (flow-guided attention) as a MODEL patch for any sampler, in inversion and sampling: "
            "in every self-attention layer, attention over the frames of each cond/uncond branch gives H, "
            "then at the chosen resolutions each token attends to the tokens of its flow trajectory "
            "(q = k = v = H, the layer's own output projection after). With an inversion, the source's "
            "ResBlock features and self-attention q/k replace the edit's in early steps (PnP).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is returned; the input is not changed)."),
                VE_TRAJECTORIES.Input(
                    "trajectories",
                    tooltip="From VideoEdit Sample Trajectories, for the latent "
                    "that will be sampled (same frames and size).",
                ),
                io.Combo.Input(
                    "mode",
                    **spec("mode"),
                    tooltip="dense: every frame attends to all frames (the paper; cost grows with frames²). "
                    "bounded: every frame attends to the anchor frames and its neighbours ±1, "
                    "so time and memory grow linearly with frames; trajectory attention is the "
                    "same in both.",
                ),
                io.Combo.Input(
                    "levels",
                    **spec("levels"),
                    tooltip="Resolutions that get the trajectory attention. highest: the highest one the "
                    "UNet attends at (the paper); all: every resolution.",
                ),
                io.Boolean.Input(
                    "old_qk",
                    **spec("old_qk"),
                    tooltip="Trajectory attention with the layer's own (possibly injected) q and k and "
                    "v = H, instead of q = k = v = H (the official --old_qk 1).",
                ),
                io.Int.Input(
                    "anchor_stride",
                    **spec("anchor_stride"),
                    tooltip="bounded mode: frames whose index is a multiple of this are anchors "
                    "(1 with max_anchors 0 = every frame = dense).",
                ),
                io.Int.Input(
                    "max_anchors",
                    **spec("max_anchors"),
                    tooltip="bounded mode: at most this many anchors, spread evenly over the strided "
                    "ones, so the cost per frame stays fixed for long clips (0 = no limit).",
                ),
                io.Float.Input(
                    "inject_step",
                    **spec("inject_step"),
                    tooltip="With an inversion: fraction of the steps (from the start) during which the "
                    "source's features replace the edit's (the official 40 of 50 steps).",
                ),
                io.String.Input(
                    "pnp_attn_blocks",
                    **spec("pnp_attn_blocks"),
                    tooltip="With an inversion: self-attention layers whose q/k come from the source, by "
                    "resolution of the image ('output 1/32#1-2, 1/16': decoder blocks at 1/32 from "
                    "the 2nd on, all at 1/16; the default is the official SD decoder layers 4-9) "
                    "or by ComfyUI block ids ('output 4-9', 'input 1,2; output 9-11'). 'none' "
                    "disables.",
                ),
                io.String.Input(
                    "pnp_resnet_blocks",
                    **spec("pnp_resnet_blocks"),
                    tooltip="With an inversion: ResBlocks whose residual branch comes from the source, by "
                    "resolution (the default: the decoder's first two at 1/32 and first at 1/16 = "
                    "output_blocks[3, 4, 6][0] on SD1.5/2.x as the official code) or by block id "
                    "('output 3, 4, 6'). Empty disables.",
                ),
                VE_INVERSION.Input(
                    "inversion",
                    optional=True,
                    tooltip="Optional DDIM inversion of the source video (VideoEdit DDIM Inversion, "
                    "run with a FLATTEN-patched model): enables PnP feature injection. Sample "
                    "with the inversion's SIGMAS.",
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, trajectories, inversion=None, **options) -> io.NodeOutput:
        source = source_branch_from(inversion, model) if inversion is not None else None
        return io.NodeOutput(flatten_model(model, trajectories, source, inversion=inversion, **options))


NODES = [SampleTrajectories, ApplyFLATTEN]
