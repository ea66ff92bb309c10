"""FLATTEN nodes: sample patch trajectories from optical flow; patch a MODEL with flow-guided
trajectory attention (optionally with PnP feature injection from the source inversion)."""

from __future__ import annotations

import logging
import time

import torch
from comfy_api.latest import io

from ..attention.flatten_patch import FlattenAttention, FlattenConfig, FlattenRuntime, attention_levels
from ..attention.patching import attach_attn1, self_attention_keys
from ..attention.pnp import PnPSchedule, PnPWrapper
from ..attention.resnet_hooks import resblock_of
from ..attention.unet_blocks import parse_block_list
from ..flow.trajectories import TrajectorySet, sample_trajectories
from .common import OPTICAL_FLOW, VE_INVERSION, VE_TRAJECTORIES, choice_id, comfy_attention, input_errors

log = logging.getLogger(__name__)
PNP_WRAPPER_KEY = "videoedit_pnp"
LEVELS = {"highest (paper)": "highest", "all": "all"}
MODES = {"dense (paper)": "dense", "bounded (anchor frames)": "bounded"}


def _check_flow_and_latent(flow, latent) -> tuple[torch.Tensor, int, int, int]:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[-1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"flow: expected OPTICAL_FLOW [F-1,H,W,2] forward flow (from Estimate Flow), got {shape}")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"latent: expected an image-model video latent [frames, C, h, w], got {tuple(samples.shape)}")
    frames, _, h, w = samples.shape
    if flow.shape[0] + 1 != frames:
        raise ValueError(f"flow has {flow.shape[0]} frame pairs ({flow.shape[0] + 1} frames) but the latent has "
                         f"{frames} frames: use the forward flow of the same clip that was encoded")
    flow = crop_like_vae_encode(flow, h * 8, w * 8)
    flow_aspect, latent_aspect = flow.shape[2] / flow.shape[1], w / h
    if abs(flow_aspect / latent_aspect - 1) > 0.05:
        raise ValueError(
            f"flow: is {flow.shape[2]}x{flow.shape[1]} (w x h) but the latent is {w}x{h} ({w * 8}x{h * 8} pixels): "
            "their aspect ratios differ. Estimate the flow on the frames that were VAE-encoded, at their size or "
            f"any scale of it (e.g. crop or resize the frames to {w * 8}x{h * 8} before both VAE Encode and "
            "Estimate Optical Flow)")
    return flow, frames, h, w


def crop_like_vae_encode(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``flow [F-1, H, W, 2]`` of frames that VAE Encode cropped to ``height x width`` (it
    centre-crops each side to a multiple of 8, offset ``(side % 8) // 2``): the same crop of
    the flow (displacements are unchanged by a crop). Any other flow is returned as it is."""
    fh, fw = flow.shape[1], flow.shape[2]
    if (fh, fw) == (height, width) or (fh // 8 * 8, fw // 8 * 8) != (height, width):
        return flow
    top, left = (fh % 8) // 2, (fw % 8) // 2
    return flow[:, top:top + height, left:left + width]


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
                OPTICAL_FLOW.Input("flow", tooltip="Forward optical flow of the clip (frame i → i+1), any resolution "
                                                   "with the frames' aspect ratio (VideoEdit Estimate Optical Flow)."),
                io.Latent.Input("latent", tooltip="The clip's latent (VAE Encode of the same frames): gives the frame "
                                                  "count and the latent size the trajectories are sampled for."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the choice among cells that flow onto the same cell (deterministic; "
                                     "the official code's choice is unseeded)."),
            ],
            outputs=[VE_TRAJECTORIES.Output(display_name="trajectories")],
        )

    @classmethod
    def execute(cls, flow, latent, seed) -> io.NodeOutput:
        flow, _, h, w = _check_flow_and_latent(flow, latent)
        start = time.perf_counter()
        trajectories = sample_trajectories(flow, (h, w), seed=seed)
        log.info("FLATTEN trajectories for %s sampled in %.3f s", trajectories.describe(), time.perf_counter() - start)
        return io.NodeOutput(trajectories)


def flatten_model(model, trajectories, mode="dense", levels="highest", old_qk=False, anchor_stride=4,
                  max_anchors=4, source=None, inject_step=0.8, pnp_attn_blocks="output 4-9",
                  pnp_resnet_blocks="output 3, 4, 6"):
    """MODEL clone with FLATTEN on every self-attention layer and, with a ``source`` branch
    (``attention.pnp.PnPWrapper``'s protocol), PnP injection for the first ``inject_step``
    fraction of the source's steps."""
    if not isinstance(trajectories, TrajectorySet):
        raise ValueError(f"trajectories: expected VE_TRAJECTORIES from VideoEdit Sample Trajectories, got "
                         f"{type(trajectories).__name__}")
    levels = choice_id(levels, LEVELS, "levels")
    mode = choice_id(mode, MODES, "mode")
    keys = self_attention_keys(model)
    level_of = attention_levels(model.get_model_object("diffusion_model"))
    top = min(level_of[k] for k in keys)
    flow_keys = set(keys) if levels == "all" else {k for k in keys if level_of[k] == top}
    config = FlattenConfig(mode=MODES.get(mode, mode), old_qk=bool(old_qk), anchor_stride=int(anchor_stride),
                           max_anchors=int(max_anchors))
    runtime = FlattenRuntime(trajectories, config, comfy_attention())
    m = attach_attn1(model, lambda key, prev: FlattenAttention(runtime, key, key in flow_keys, prev), keys)
    if source is not None:
        from comfy.patcher_extension import WrappersMP

        with input_errors("pnp_attn_blocks"):
            attn_keys = tuple(parse_block_list(pnp_attn_blocks, keys))
        res_keys = parse_resblocks(pnp_resnet_blocks, model)
        steps = int(source.num_steps * float(inject_step) + 1e-6)
        schedule = PnPSchedule(attn_keys=attn_keys, res_keys=res_keys, attn_steps=steps, res_steps=steps)
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, PNP_WRAPPER_KEY,
                               PnPWrapper(source, schedule, model.get_model_object("model_sampling")))
    return m


def parse_resblocks(spec: str, model) -> tuple[tuple[str, int], ...]:
    """``"output 3, 4, 6"`` (also ``"output 3-4; input 7"``) → ResBlock keys, checked against the model."""
    keys = []
    for part in (spec or "").replace(";", "|").split("|"):
        name, _, ids = part.strip().lower().partition(" ")
        if not name:
            continue
        try:
            ranges = [item.partition("-") for item in ids.replace(" ", "").split(",") if item]
            numbers = [n for lo, _, hi in ranges for n in range(int(lo), int(hi or lo) + 1)]
        except ValueError:
            numbers = []
        if name not in ("input", "output") or not numbers:
            raise ValueError(f"pnp_resnet_blocks: '{part.strip()}' is not like 'output 3, 4, 6'")
        keys.extend((name, n) for n in numbers)
    dm = model.get_model_object("diffusion_model")
    for key in keys:
        if key[1] >= len(getattr(dm, f"{key[0]}_blocks")):
            raise ValueError(f"pnp_resnet_blocks: this model has no {key[0]}_blocks[{key[1]}]")
        resblock_of(dm, key)
    return tuple(keys)


def _source_branch(inversion, model):
    try:
        from .source_branch import source_branch_from
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith("source_branch"):
            raise RuntimeError("Apply FLATTEN: the inversion input needs the source-branch adapter "
                               "(nodes/source_branch.py), which this install of ComfyUI-VideoEdit lacks; "
                               "disconnect inversion or update the pack") from None
        raise
    return source_branch_from(inversion, model)


class ApplyFLATTEN(io.ComfyNode):
    @classmethod
    def define_schema(cls):
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
                VE_TRAJECTORIES.Input("trajectories", tooltip="From VideoEdit Sample Trajectories, for the latent "
                                                              "that will be sampled (same frames and size)."),
                io.Combo.Input("mode", options=list(MODES), default=list(MODES)[0],
                               tooltip="dense: every frame attends to all frames (the paper; cost grows with frames²). "
                                       "bounded: every frame attends to the anchor frames and its neighbours ±1, "
                                       "so time and memory grow linearly with frames; trajectory attention is the "
                                       "same in both."),
                io.Combo.Input("levels", options=list(LEVELS), default=list(LEVELS)[0],
                               tooltip="Resolutions that get the trajectory attention: the highest one the UNet "
                                       "attends at (the paper), or all of them."),
                io.Boolean.Input("old_qk", default=False,
                                 tooltip="Trajectory attention with the layer's own (possibly injected) q and k and "
                                         "v = H, instead of q = k = v = H (the official --old_qk 1)."),
                io.Int.Input("anchor_stride", default=4, min=1, max=4096,
                             tooltip="bounded mode: frames whose index is a multiple of this are anchors "
                                     "(1 with max_anchors 0 = every frame = dense)."),
                io.Int.Input("max_anchors", default=4, min=0, max=4096,
                             tooltip="bounded mode: at most this many anchors, spread evenly over the strided "
                                     "ones, so the cost per frame stays fixed for long clips (0 = no limit)."),
                io.Float.Input("inject_step", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="With an inversion: fraction of the steps (from the start) during which the "
                                       "source's features replace the edit's (the official 40 of 50 steps)."),
                io.String.Input("pnp_attn_blocks", default="output 4-9",
                                tooltip="With an inversion: self-attention layers whose q/k come from the source "
                                        "(ComfyUI block ids; the official SD decoder layers 4-9)."),
                io.String.Input("pnp_resnet_blocks", default="output 3, 4, 6",
                                tooltip="With an inversion: ResBlocks whose residual branch comes from the source "
                                        "(output_blocks[3, 4, 6][0] as the official code). Empty disables."),
                VE_INVERSION.Input("inversion", optional=True,
                                   tooltip="Optional DDIM inversion of the source video (VideoEdit DDIM Inversion, "
                                           "run with a FLATTEN-patched model): enables PnP feature injection. Sample "
                                           "with the inversion's SIGMAS."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, trajectories, mode, levels, old_qk, anchor_stride, max_anchors, inject_step,
                pnp_attn_blocks, pnp_resnet_blocks, inversion=None) -> io.NodeOutput:
        source = _source_branch(inversion, model) if inversion is not None else None
        return io.NodeOutput(flatten_model(model, trajectories, mode, levels, old_qk, anchor_stride, max_anchors,
                                           source, inject_step, pnp_attn_blocks, pnp_resnet_blocks))


NODES = [SampleTrajectories, ApplyFLATTEN]
