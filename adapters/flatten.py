"""FLATTEN on a MODEL clone: flow-guided trajectory attention on every self-attention layer and,
with a source branch, PnP feature injection. The method's core is ``attention/flatten.py``
(trajectory attention), ``attention/flatten_patch.py`` (the patch) and
``flow/trajectories.py`` (trajectory sampling)."""

from __future__ import annotations

from ..attention.flatten_patch import FlattenAttention, FlattenConfig, FlattenRuntime, attention_levels
from ..attention.pnp import PnPSchedule, PnPWrapper
from ..flow.trajectories import TrajectorySet
from .model_patch import (
    attach_attn1,
    attention_keys_from_spec,
    comfy_attention,
    resblock_keys_from_spec,
    self_attention_keys,
)

PNP_WRAPPER_KEY = "videoedit_pnp"
LEVELS = {"highest (paper)": "highest", "all": "all"}
MODES = {"dense (paper)": "dense", "bounded (anchor frames)": "bounded"}


def flatten_model(model, trajectories, mode="dense", levels="highest", old_qk=False, anchor_stride=4,
                  max_anchors=4, source=None, inject_step=0.8, pnp_attn_blocks="output 4-9",
                  pnp_resnet_blocks="output 3, 4, 6"):
    """MODEL clone with FLATTEN on every self-attention layer and, with a ``source`` branch
    (``attention.pnp.PnPWrapper``'s protocol), PnP injection for the first ``inject_step``
    fraction of the source's steps."""
    if not isinstance(trajectories, TrajectorySet):
        raise ValueError(f"trajectories: expected VE_TRAJECTORIES from VideoEdit Sample Trajectories, got "
                         f"{type(trajectories).__name__}")
    levels = LEVELS.get(levels, levels)
    if levels not in LEVELS.values():
        raise ValueError(f"levels: '{levels}' is not one of {list(LEVELS)}")
    keys = self_attention_keys(model)
    level_of = attention_levels(model.get_model_object("diffusion_model"))
    top = min(level_of[k] for k in keys)
    flow_keys = set(keys) if levels == "all" else {k for k in keys if level_of[k] == top}
    config = FlattenConfig(mode=MODES.get(mode, mode), old_qk=bool(old_qk), anchor_stride=int(anchor_stride),
                           max_anchors=int(max_anchors))
    runtime = FlattenRuntime(trajectories, config, comfy_attention)
    m = attach_attn1(model, lambda key, prev: FlattenAttention(runtime, key, key in flow_keys, prev), keys)
    if source is not None:
        from comfy.patcher_extension import WrappersMP

        attn_keys = tuple(attention_keys_from_spec(model, pnp_attn_blocks, "pnp_attn_blocks"))
        res_keys = resblock_keys_from_spec(model, pnp_resnet_blocks, "pnp_resnet_blocks")
        steps = int(source.num_steps * float(inject_step) + 1e-6)
        schedule = PnPSchedule(attn_keys=attn_keys, res_keys=res_keys, attn_steps=steps, res_steps=steps)
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, PNP_WRAPPER_KEY,
                               PnPWrapper(source, schedule, model.get_model_object("model_sampling")))
    return m
