"""FLATTEN on a MODEL clone: flow-guided trajectory attention on every self-attention layer and,
with a source branch, PnP feature injection. The method's core is ``attention/flatten.py``
(trajectory attention), ``attention/flatten_patch.py`` (the patch) and
``flow/trajectories.py`` (trajectory sampling)."""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.block_resolution import FLATTEN_PNP_ATTN, FLATTEN_PNP_RES
from ..attention.flatten_patch import MODES as FLATTEN_MODES
from ..attention.flatten_patch import FlattenAttention, FlattenConfig, FlattenRuntime, attention_levels
from ..attention.keys import PNP_WRAPPER_KEY
from ..attention.pnp import PnPSchedule, PnPWrapper
from ..flow.trajectories import TrajectorySet
from ..options import Options, option
from .context_windows import honour_context_windows
from .features import feature_group
from .model_patch import (
    attach_attn1,
    attention_keys_from_spec,
    comfy_long_attention,
    resblock_keys_from_spec,
    self_attention_keys,
)

_DEFAULT = FlattenConfig


@dataclass(frozen=True)
class FlattenOptions(Options):
    """FLATTEN's node options (defaults of the attention config from ``FlattenConfig``)."""

    mode: str = option(_DEFAULT.mode, choices=FLATTEN_MODES)
    levels: str = option("highest", choices=("highest", "all"))
    old_qk: bool = option(_DEFAULT.old_qk)
    anchor_stride: int = option(_DEFAULT.anchor_stride, min=1, max=4096)
    max_anchors: int = option(_DEFAULT.max_anchors, min=0, max=4096)
    inject_step: float = option(0.8, min=0.0, max=1.0, step=0.01)
    # by resolution of the image, so SDXL gets the same layers; on SD1.5/2.x these are the
    # official decoder attention layers 4-9 and ResBlocks output 3, 4, 6
    pnp_attn_blocks: str = option(FLATTEN_PNP_ATTN)
    pnp_resnet_blocks: str = option(FLATTEN_PNP_RES)

    def config(self) -> FlattenConfig:
        return FlattenConfig(
            mode=self.mode,
            old_qk=bool(self.old_qk),
            anchor_stride=int(self.anchor_stride),
            max_anchors=int(self.max_anchors),
        )


def flatten_model(
    model,
    trajectories,
    source=None,
    settings: FlattenOptions | None = None,
    inversion=None,
    features=None,
    **options,
):
    """MODEL clone with FLATTEN on every self-attention layer and, with a ``source`` branch
    (``attention.pnp.PnPWrapper``'s protocol), PnP injection for the first ``inject_step``
    fraction of the source's steps. ``settings``, or the options as keywords. ``inversion``: the
    VE_INVERSION behind ``source``, whose feature cache (if any) serves the PnP features of steps
    seen before; ``features``: a feature-cache group to use instead (benchmarks)."""
    if not isinstance(trajectories, TrajectorySet):
        raise ValueError(
            f"trajectories: expected VE_TRAJECTORIES from VideoEdit Sample Trajectories, got "
            f"{type(trajectories).__name__}"
        )
    s = settings if settings is not None else FlattenOptions.from_inputs(**options)
    keys = self_attention_keys(model)
    level_of = attention_levels(model.get_model_object("diffusion_model"))
    top = min(level_of[k] for k in keys)
    flow_keys = set(keys) if s.levels == "all" else {k for k in keys if level_of[k] == top}
    runtime = FlattenRuntime(trajectories, s.config(), comfy_long_attention())
    m = attach_attn1(model, lambda key, prev: FlattenAttention(runtime, key, key in flow_keys, prev), keys)
    if source is not None:
        from comfy.patcher_extension import WrappersMP

        attn_keys = tuple(attention_keys_from_spec(model, s.pnp_attn_blocks, "pnp_attn_blocks", "output 4-9"))
        res_keys = resblock_keys_from_spec(model, s.pnp_resnet_blocks, "pnp_resnet_blocks")
        steps = int(source.num_steps * float(s.inject_step) + 1e-6)
        schedule = PnPSchedule(attn_keys=attn_keys, res_keys=res_keys, attn_steps=steps, res_steps=steps)
        if features is None:  # the source pass runs through FLATTEN (m): its patches are part of the key
            features = feature_group(inversion, m, f"flatten pnp {schedule}")
        m.add_wrapper_with_key(
            WrappersMP.DIFFUSION_MODEL,
            PNP_WRAPPER_KEY,
            PnPWrapper(source, schedule, model.get_model_object("model_sampling"), features),
        )
    return honour_context_windows(m)
