"""TokenFlow as a MODEL patch that works with any ComfyUI sampler.

One ``DIFFUSION_MODEL`` wrapper (:class:`TokenFlowWrapper`) turns each UNet call the sampler
makes (the frames of one or more cond/uncond chunks at one sigma) into TokenFlow's passes:

1. ``src_kf``   source latents of the keyframes (from the inversion cache, source prompt),
                ordinary self-attention; keep per layer the attention input (for the NN
                fields), the attention output (source ``T_base``), PnP q/k, PnP residuals.
2. ``src_prop`` source latents of every frame, in chunks: NN fields of each frame's source
                tokens onto its keyframes' source tokens; output = propagated source T_base.
                (1 and 2 are done once per sigma and shared by split cond/uncond calls.)
3. ``edit_kf``  the sampler's latents of the keyframes, extended attention across the
                keyframes of each cond/uncond chunk, PnP q/k and residual injection;
                keep the outputs (``T_base``).
4. ``edit_prop`` every frame in chunks: self-attention output replaced by T_base gathered
                along the NN fields and blended; PnP residual injection. Its prediction is
                what the sampler gets back; CFG and the sampler update stay the sampler's.

Replace patches (:class:`TokenFlowAttention`) on every self-attention layer and an
``attn1_patch`` (:class:`TokenFlowInputCapture`) read the current pass from
``transformer_options["ve_tokenflow"]``, which the wrapper sets on a *copy* of the options
for each of its executor calls; outside the wrapper they fall back to plain attention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .extended import extended_attention, sdpa_attention
from .frames import call_frame_indices
from .patching import kernel_from
from .pnp import source_unet_inputs
from .resnet_hooks import ResKey, residual_hooks
from .tokenflow import blend_plan, nn_fields, propagate, sample_keyframes
from .unet_blocks import BlockKey, key_of

log = logging.getLogger(__name__)
PHASE_KEY = "ve_tokenflow"


class SourceBranch(Protocol):
    """What TokenFlow needs from the inversion (implemented by the node layer)."""

    def step_index(self, sigma: float) -> int: ...  # raises ValueError naming both schedules
    @property
    def num_steps(self) -> int: ...
    def latent(self, sigma: float, frames: torch.Tensor) -> torch.Tensor: ...  # VE latent [n,C,h,w]
    def unet_conditioning(self, n: int, like: torch.Tensor, frames: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass
class TokenFlowConfig:
    window: int = 8
    pnp_attn_t: float = 0.5
    pnp_f_t: float = 0.8
    seed: int = 0
    nn_feature: str = "input"  # "input" (official) or "output" of self-attention
    blend: str = "official"  # or "paper"
    pnp_attn_keys: tuple[BlockKey, ...] = ()
    pnp_res_keys: tuple[ResKey, ...] = (("output", 4),)
    chunk_tokens: int = 4096

    def cache_key(self) -> str:
        return repr(self)


@dataclass
class StepState:
    """Source-branch results for one sigma and one set of frames (shared by split calls)."""

    sigma: float
    frames: tuple[int, ...]
    kf_pos: torch.Tensor  # [K] positions of keyframes within the call's frames
    slots: torch.Tensor  # [F, 2] keyframe slots per frame
    weights: torch.Tensor  # [F]
    inject_attn: bool
    inject_res: bool
    kf_src_n: dict = field(default_factory=dict)  # key -> [K, N, C] attention input (or output)
    kf_src_out: dict = field(default_factory=dict)  # key -> [K, N, C] source T_base
    kf_src_qk: dict = field(default_factory=dict)  # key -> (q, k) [K, N, C]
    kf_src_res: dict = field(default_factory=dict)  # res key -> [K, C, h, w]
    src_res: dict = field(default_factory=dict)  # res key -> [F, C, h, w]
    fields: dict = field(default_factory=dict)  # key -> [F, 2, N]


@dataclass
class Phase:
    name: str  # src_kf | src_prop | edit_kf | edit_prop
    state: StepState
    positions: torch.Tensor  # frame positions (within the call) of the rows of each group
    groups: int
    t_base: dict | None = None  # edit T_base per key [G, K, N, C] (edit passes)
    current_n: dict = field(default_factory=dict)


def _rows(positions: torch.Tensor, groups: int, frames: int) -> torch.Tensor:
    return torch.cat([g * frames + positions for g in range(groups)])


def _slice(value, rows: torch.Tensor, batch: int):
    """Slice batch-major tensors (also nested in ControlNet's dict of lists) by rows."""
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)] if value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _slice(v, rows, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_slice(v, rows, batch) for v in value)
    return value


class TokenFlowRuntime:
    """Per-model-clone state: the config, the source branch, and the current step's state.
    Shared (not copied) when ComfyUI deep-copies model options."""

    def __init__(self, config: TokenFlowConfig, source: SourceBranch, model_sampling,
                 attn_fn: Callable = sdpa_attention):
        self.config = config
        self.source = source
        self.model_sampling = model_sampling
        self.attn_fn = attn_fn
        self.state: StepState | None = None

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return f"tokenflow({self.config.cache_key()})"


class TokenFlowInputCapture:
    """attn1_patch: records the self-attention input of source passes for the NN fields."""

    def __init__(self, runtime: TokenFlowRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        phase = extra_options.get(PHASE_KEY)
        if phase is not None and phase.name in ("src_kf", "src_prop") and self.runtime.config.nn_feature == "input":
            phase.current_n[key_of(extra_options)] = n
        return n, context_attn1, value_attn1


class TokenFlowAttention:
    """attn1 replace patch for one self-attention layer; q/k/v ``[G*M, N, C]``."""

    def __init__(self, runtime: TokenFlowRuntime, key: BlockKey, previous: Callable | None = None):
        self.runtime = runtime
        self.key = key
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        phase: Phase | None = extra_options.get(PHASE_KEY)
        kernel = kernel_from(self.previous, extra_options, self.runtime.attn_fn)
        heads = extra_options["n_heads"]
        if phase is None:  # not inside the TokenFlow wrapper (should not happen): plain attention
            return kernel(q, k, v, heads)
        key, st, cfg = self.key, phase.state, self.runtime.config
        if phase.name == "src_kf":
            out = kernel(q, k, v, heads)
            st.kf_src_out[key] = out
            st.kf_src_n[key] = phase.current_n.pop(key) if cfg.nn_feature == "input" else out
            if key in cfg.pnp_attn_keys:
                st.kf_src_qk[key] = (q, k)
            return out
        if phase.name == "edit_kf":
            g = phase.groups
            if st.inject_attn and key in st.kf_src_qk:
                q_src, k_src = st.kf_src_qk[key]
                q, k = q_src.repeat(g, 1, 1), k_src.repeat(g, 1, 1)
            out = extended_attention(q, k, v, heads, g, None, attn_fn=kernel)
            phase.t_base[key] = out.reshape(g, -1, *out.shape[1:])
            return out
        positions = phase.positions
        slots, weights = st.slots[positions], st.weights[positions]
        if phase.name == "src_prop":
            feats = phase.current_n.pop(key) if cfg.nn_feature == "input" else kernel(q, k, v, heads)
            fields = nn_fields(feats, st.kf_src_n[key], slots, cfg.chunk_tokens)
            st.fields.setdefault(key, {})[tuple(positions.tolist())] = fields
            return propagate(st.kf_src_out[key][None], fields, slots, weights)[0]
        if phase.name == "edit_prop":
            fields = st.fields[key][tuple(positions.tolist())]
            out = propagate(phase.t_base[key], fields, slots, weights)
            return out.reshape(-1, *out.shape[2:])
        raise RuntimeError(f"unknown TokenFlow phase {phase.name}")


class TokenFlowWrapper:
    """``DIFFUSION_MODEL`` wrapper: ``(executor, x, timesteps, context, y, control,
    transformer_options, **kw) -> prediction`` for exactly the rows the sampler passed."""

    def __init__(self, runtime: TokenFlowRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    # -- per-sigma source state -------------------------------------------------------------
    def _state(self, sigma: float, frames: torch.Tensor) -> tuple[StepState, bool]:
        """The step state for this sigma and these frames, and whether it is new (the source
        passes still have to run)."""
        rt, cfg = self.runtime, self.runtime.config
        key = tuple(frames.tolist())
        if rt.state is not None and rt.state.frames == key and abs(rt.state.sigma - sigma) <= 1e-6 * max(1.0, sigma):
            return rt.state, False
        step = rt.source.step_index(sigma)
        gen = torch.Generator().manual_seed(int(cfg.seed) * 100003 + step)
        kf_pos = sample_keyframes(len(frames), cfg.window, gen)
        slots, weights = blend_plan(torch.arange(len(frames)), kf_pos, cfg.window, cfg.blend)
        total = rt.source.num_steps
        rt.state = StepState(sigma=sigma, frames=key, kf_pos=kf_pos, slots=slots, weights=weights,
                             inject_attn=step < int(total * cfg.pnp_attn_t),
                             inject_res=step < int(total * cfg.pnp_f_t))
        return rt.state, True

    # -- the wrapper ------------------------------------------------------------------------
    def __call__(self, executor, x, timesteps, context=None, y=None, control=None, transformer_options=None,
                 **kw):
        rt, cfg = self.runtime, self.runtime.config
        to = transformer_options or {}
        groups = len(to.get("cond_or_uncond") or [0])
        n = x.shape[0] // groups
        frames = call_frame_indices(to, n)
        sigma = float(to["sigmas"][0]) if "sigmas" in to else float(rt.model_sampling.sigma(timesteps[0]))
        st, fresh = self._state(sigma, frames)
        dm = executor.class_obj
        all_pos = torch.arange(n)
        chunks = [all_pos[i:i + cfg.window] for i in range(0, n, cfg.window)]
        res_keys = cfg.pnp_res_keys

        phase_box: dict = {}

        def res_handler(rkey, residual):
            phase: Phase = phase_box["phase"]
            if phase.name == "src_kf":
                st.kf_src_res[rkey] = residual
            elif phase.name == "src_prop":
                st.src_res.setdefault(rkey, {})[tuple(phase.positions.tolist())] = residual
            elif st.inject_res:
                src = st.kf_src_res[rkey] if phase.name == "edit_kf" else st.src_res[rkey][tuple(phase.positions.tolist())]
                return src.repeat(phase.groups, 1, 1, 1)
            return None

        def run(name, positions, x_in, t_in, ctx_in, y_in, ctrl_in, grp, t_base=None):
            opts = dict(to)  # never mutate the sampler's dict
            if name.startswith("src"):
                opts["cond_or_uncond"] = [0]  # the source branch is one positive-prompt chunk
            phase = Phase(name, st, positions, grp, t_base)
            opts[PHASE_KEY] = phase
            phase_box["phase"] = phase
            return executor(x_in, t_in, ctx_in, y_in, ctrl_in, opts, **kw)

        with residual_hooks(dm, res_keys, res_handler):
            if fresh:
                # 1-2: source branch, once per sigma
                self._run_source(run, st, frames, sigma, timesteps, x, chunks)
            # 3: keyframes of the sampler's latents, extended attention
            t_base: dict = {}
            rows = _rows(st.kf_pos, groups, n)
            b = x.shape[0]
            run("edit_kf", st.kf_pos, x[rows], timesteps[rows], _slice(context, rows, b), _slice(y, rows, b),
                _slice(control, rows, b), groups, t_base)
            # 4: propagation over every frame, chunk by chunk
            out = torch.empty_like(x)
            for positions in chunks:
                rows = _rows(positions, groups, n)
                pred = run("edit_prop", positions, x[rows], timesteps[rows], _slice(context, rows, b),
                           _slice(y, rows, b), _slice(control, rows, b), groups, t_base)
                out[rows] = pred.to(out.dtype)
        return out

    def _run_source(self, run, st, frames, sigma, timesteps, x, chunks):
        rt = self.runtime

        def source_inputs(positions):
            return source_unet_inputs(rt.source, rt.model_sampling, sigma, frames[positions], timesteps, like=x)

        run("src_kf", st.kf_pos, *source_inputs(st.kf_pos), None, 1)
        for positions in chunks:
            run("src_prop", positions, *source_inputs(positions), None, 1)
