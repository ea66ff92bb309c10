"""TokenFlow on a MODEL clone (attention replace patches on every self-attention layer, an
input-capture attn1 patch, the per-call DIFFUSION_MODEL wrapper, the per-run OUTER_SAMPLE
reset) and the one-box sampler.
The method's core is ``attention/tokenflow.py`` (NN fields, keyframe blend, propagation) and
``attention/tokenflow_patch.py`` (the per-call passes)."""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.block_resolution import TOKENFLOW_PNP_ATTN, TOKENFLOW_PNP_RES
from ..attention.keys import TOKENFLOW_WRAPPER_KEY
from ..attention.tokenflow_patch import (
    TokenFlowAttention,
    TokenFlowConfig,
    TokenFlowInputCapture,
    TokenFlowRunReset,
    TokenFlowRuntime,
    TokenFlowWrapper,
)
from ..options import Options, option
from .context_windows import honour_context_windows
from .features import feature_group
from .inversion import check_sampler_name, sample_inversion
from .model_patch import (
    attach_attn1,
    attention_keys_from_spec,
    comfy_attention,
    resblock_keys_from_spec,
    self_attention_keys,
)
from .source import source_branch_from

_DEFAULT = TokenFlowConfig


@dataclass(frozen=True)
class TokenFlowOptions(Options):
    """TokenFlow's node options (defaults of the numbers from ``TokenFlowConfig``)."""

    window: int = option(_DEFAULT.window, min=1, max=256)
    pnp_attn_t: float = option(_DEFAULT.pnp_attn_t, min=0.0, max=1.0, step=0.01)
    pnp_f_t: float = option(_DEFAULT.pnp_f_t, min=0.0, max=1.0, step=0.01)
    seed: int = option(_DEFAULT.seed, min=0, max=2**31 - 1)
    nn_feature: str = option(_DEFAULT.nn_feature, choices=("input", "output"))
    blend: str = option(_DEFAULT.blend, choices=("official", "paper"))
    # by resolution of the image, so SDXL gets the same layers; on SD1.5/2.x these are the
    # official decoder attention layers 4-11 and ResBlock output 4
    pnp_attn_blocks: str = option(TOKENFLOW_PNP_ATTN)
    pnp_resnet_blocks: str = option(TOKENFLOW_PNP_RES)
    share_batch: bool = option(_DEFAULT.share_batch)

    def config(self, model) -> TokenFlowConfig:
        """The runtime config with the block specs resolved against ``model``."""
        return TokenFlowConfig(
            window=int(self.window),
            pnp_attn_t=float(self.pnp_attn_t),
            pnp_f_t=float(self.pnp_f_t),
            seed=int(self.seed),
            nn_feature=self.nn_feature,
            blend=self.blend,
            pnp_attn_keys=tuple(attention_keys_from_spec(model, self.pnp_attn_blocks, "pnp_attn_blocks")),
            pnp_res_keys=resblock_keys_from_spec(model, self.pnp_resnet_blocks, "pnp_resnet_blocks", "output 4"),
            share_batch=bool(self.share_batch),
        )


def apply_tokenflow(model, inversion, **options):
    """MODEL clone carrying TokenFlow for the source branch of ``inversion``."""
    settings = TokenFlowOptions.from_inputs(**options)
    return tokenflow_model(model, source_branch_from(inversion, model), settings, inversion=inversion)


def tokenflow_model(model, source, settings: TokenFlowOptions | None = None, inversion=None, features=None, **options):
    """The patching itself, for any source branch (``attention.tokenflow_patch.SourceBranch``):
    ``settings``, or the options as keywords. ``inversion``: the VE_INVERSION the source replays,
    whose feature cache (if it has one) serves the source features of steps seen before;
    ``features``: a feature-cache group to use instead (benchmarks)."""
    from comfy.patcher_extension import WrappersMP

    settings = settings if settings is not None else TokenFlowOptions.from_inputs(**options)
    config = settings.config(model)
    if features is None:
        features = feature_group(inversion, model, f"tokenflow {config.cache_key()}")
    runtime = TokenFlowRuntime(config, source, model.get_model_object("model_sampling"), comfy_attention, features)
    m = attach_attn1(model, lambda key, prev: TokenFlowAttention(runtime, key, prev), self_attention_keys(model))
    m.set_model_attn1_patch(TokenFlowInputCapture(runtime))
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, TOKENFLOW_WRAPPER_KEY, TokenFlowWrapper(runtime))
    # every sampling run starts without step state (an interrupted run leaves none behind)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, TOKENFLOW_WRAPPER_KEY, TokenFlowRunReset(runtime))
    return honour_context_windows(m)


def sample_tokenflow(model, positive, negative, inversion, cfg, sampler_name, **options) -> dict:
    """Apply TokenFlow to a clone of ``model`` and sample the inversion's x_T along the
    inversion's sigmas with ``sampler_name`` (no added noise), with ComfyUI's progress bar and
    previews as SamplerCustom. Returns a LATENT dict."""
    check_sampler_name(sampler_name)
    settings = TokenFlowOptions.from_inputs(**options)
    patched = tokenflow_model(model, source_branch_from(inversion, model), settings, inversion=inversion)
    return sample_inversion(patched, inversion, positive, negative, cfg, sampler_name, seed=settings.seed)
