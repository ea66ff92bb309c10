"""TokenFlow as a MODEL patch that works with any ComfyUI sampler.

One ``DIFFUSION_MODEL`` wrapper (:class:`TokenFlowWrapper`) turns each UNet call the sampler
makes (the frames of one or more cond/uncond chunks at one sigma) into TokenFlow's passes, as
the official code batches them — the source branch first, then the sampler's chunks:

1. ``kf``   the keyframes: source rows (cached inversion latents, source prompt, ordinary
            self-attention; kept per layer: attention input for the NN fields, output =
            source ``T_base``, PnP q/k, PnP residuals) + the sampler's rows (extended
            attention across the keyframes of each cond/uncond chunk, PnP q/k and residual
            injection; outputs kept as ``T_base``).
2. ``prop`` every frame, in chunks of ``window``: source rows (NN fields of each frame's
            source tokens onto its keyframes' source tokens; output = propagated source
            T_base) + the sampler's rows (self-attention output replaced by T_base gathered
            along the NN fields and blended; PnP residual injection). The sampler's rows'
            prediction is what the sampler gets back; CFG and the update stay the sampler's.

The source rows run once per sigma: when ComfyUI splits cond and uncond into separate calls
the later calls reuse the stored source results and carry only the sampler's rows. When the
source inputs cannot share a batch with the sampler's (conditioning of another kind), the
source rows run as their own call just before.

Replace patches (:class:`TokenFlowAttention`) on every self-attention layer and an
``attn1_patch`` (:class:`TokenFlowInputCapture`) read the current pass from
``transformer_options["ve_tokenflow"]``, which the wrapper sets on a *copy* of the options
for each of its executor calls; outside the wrapper they fall back to plain attention.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .extended import extended_attention, sdpa_attention
from .feature_names import feature_name, parse_feature_name
from .frames import call_frame_indices
from .keys import TOKENFLOW_PHASE_KEY as PHASE_KEY
from .modes import TokenFlowPass
from .nested import map_tensors
from .patching import kernel_from
from .pnp import source_unet_inputs
from .resnet_hooks import ResKey, residual_hooks
from .tokenflow import nn_fields, propagate
from .tokenflow_windows import keyframes_for_call
from .unet_blocks import BlockKey, key_of
from .wrapper_args import diffusion_model_args

log = logging.getLogger(__name__)


class SourceBranch(Protocol):
    """What TokenFlow needs from the inversion (implemented by the node layer)."""

    def step_index(self, sigma: float) -> int: ...  # raises ValueError naming both schedules
    def check_call(
        self, sample_shape: tuple[int, ...], frames: torch.Tensor, transformer_options: dict
    ) -> None: ...  # raises ValueError naming latent_image when the latent does not match
    @property
    def num_steps(self) -> int: ...
    def latent(self, sigma: float, frames: torch.Tensor) -> torch.Tensor: ...  # VE latent [n,C,h,w]
    def unet_conditioning(
        self, n: int, like: torch.Tensor, frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass
class TokenFlowConfig:
    window: int = 8
    pnp_attn_t: float = 0.5
    pnp_f_t: float = 0.8
    seed: int = 1  # the official default
    nn_feature: str = "input"  # "input" (official) or "output" of self-attention
    blend: str = "official"  # or "paper"
    pnp_attn_keys: tuple[BlockKey, ...] = ()
    pnp_res_keys: tuple[ResKey, ...] = (("output", 4),)
    chunk_tokens: int = 4096
    # source rows in the same UNet call as the sampler's rows (the official batching; fewer,
    # larger calls), or in calls of their own just before (smaller peak memory per call)
    share_batch: bool = True

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
    name: TokenFlowPass  # keyframes | propagation chunk
    state: StepState
    positions: torch.Tensor  # frame positions (within the call) of the rows of each part
    source_rows: int  # rows of the source branch at the start of the batch (0 = none)
    groups: int  # sampler cond/uncond chunks after them (0 = none)
    t_base: dict  # edit T_base per key [G, K, N, C]
    current_n: dict = field(default_factory=dict)
    positions_key: tuple[int, ...] = field(init=False)  # dict key of this chunk's stored results

    def __post_init__(self):
        self.positions_key = tuple(self.positions.tolist())


def _rows(positions: torch.Tensor, groups: int, frames: int) -> torch.Tensor:
    return torch.cat([g * frames + positions for g in range(groups)])


def _slice(value, rows: torch.Tensor, batch: int):
    """Slice batch-major tensors (also nested in ControlNet's dict of lists) by rows."""
    return map_tensors(value, lambda t: t[rows.to(t.device)] if t.ndim and t.shape[0] == batch else t)


def _with_zero_rows(value, rows: int, batch: int):
    """Prepend ``rows`` zero rows to batch-major tensors (ControlNet residuals for the source
    rows: adding zero is no control); a batch-1 tensor is first broadcast over the ``batch``
    sampler rows only, not the source's."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0 or t.shape[0] not in (1, batch):
            return t
        t = t.expand(batch, *t.shape[1:])
        return torch.cat([t.new_zeros((rows, *t.shape[1:])), t])

    return map_tensors(value, pad)


def _joint_context(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cross-attention contexts of two row sets brought to one token count (each repeated to
    the least common multiple, as ComfyUI batches conds: attention over repeated tokens is
    unchanged), or None when they cannot share a batch."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[-1] != b.shape[-1]:
        return None
    la, lb = a.shape[1], b.shape[1]
    if la != lb:
        common = math.lcm(la, lb)
        a, b = a.repeat(1, common // la, 1), b.repeat(1, common // lb, 1)
    return a, b


def state_features(st: StepState) -> dict[str, torch.Tensor]:
    """What the sampler's rows consume from a completed step state, for the feature cache: the
    NN fields, and while injection is on the keyframes' PnP q/k and the ResBlock residuals (the
    source passes' other results only served to compute these)."""
    out = {}
    for key, by_pos in st.fields.items():
        for pos, t in by_pos.items():
            out[feature_name("fields", key, pos)] = t
    if st.inject_attn:
        for key, (q, k) in st.kf_src_qk.items():
            out[feature_name("q", key)], out[feature_name("k", key)] = q, k
    if st.inject_res:
        for rkey, t in st.kf_src_res.items():
            out[feature_name("kfres", rkey)] = t
        for rkey, by_pos in st.src_res.items():
            for pos, t in by_pos.items():
                out[feature_name("res", rkey, pos)] = t
    return out


def fill_state(st: StepState, features: dict[str, torch.Tensor]) -> None:
    """The inverse of :func:`state_features` into a fresh step state."""
    qk: dict = {}
    for name, t in features.items():
        kind, parts = parse_feature_name(name)
        if kind == "fields":
            st.fields.setdefault(parts[0], {})[parts[1]] = t
        elif kind in ("q", "k"):
            qk.setdefault(parts[0], {})[kind] = t
        elif kind == "kfres":
            st.kf_src_res[parts[0]] = t
        elif kind == "res":
            st.src_res.setdefault(parts[0], {})[parts[1]] = t
    st.kf_src_qk.update({key: (v["q"], v["k"]) for key, v in qk.items()})


class TokenFlowRuntime:
    """Per-model-clone state: the config, the source branch, and the current step's state.
    Shared (not copied) when ComfyUI deep-copies model options.

    ``features``: the inversion's feature cache for this setting (``inversion.feature_cache.
    FeatureGroup``) or None: a step found there skips the source rows."""

    def __init__(
        self,
        config: TokenFlowConfig,
        source: SourceBranch,
        model_sampling,
        attn_fn: Callable = sdpa_attention,
        features=None,
    ):
        self.config = config
        self.source = source
        self.model_sampling = model_sampling
        self.attn_fn = attn_fn
        self.features = features
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
        if phase is not None and phase.source_rows and self.runtime.config.nn_feature == "input":
            phase.current_n[key_of(extra_options)] = n[: phase.source_rows]
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
        s = phase.source_rows
        outs = []
        if s:
            outs.append(self._source(phase, q[:s], k[:s], v[:s], kernel, heads))
        if phase.groups:
            outs.append(self._edit(phase, q[s:], k[s:], v[s:], kernel, heads))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _source(self, phase: Phase, q, k, v, kernel, heads):
        """Source rows: record what the sampler's rows need, return the source branch's output."""
        key, st, cfg = self.key, phase.state, self.runtime.config
        own_input = cfg.nn_feature == "input"
        if phase.name == TokenFlowPass.KEYFRAMES:
            out = kernel(q, k, v, heads)
            st.kf_src_out[key] = out
            st.kf_src_n[key] = phase.current_n.pop(key).clone() if own_input else out
            if key in cfg.pnp_attn_keys:
                st.kf_src_qk[key] = (q.clone(), k.clone())
            return out
        slots, weights = st.slots[phase.positions], st.weights[phase.positions]
        feats = phase.current_n.pop(key) if own_input else kernel(q, k, v, heads)
        fields = nn_fields(feats, st.kf_src_n[key], slots, cfg.chunk_tokens)
        st.fields.setdefault(key, {})[phase.positions_key] = fields
        return propagate(st.kf_src_out[key][None], fields, slots, weights)[0]

    def _edit(self, phase: Phase, q, k, v, kernel, heads):
        """The sampler's rows: extended attention (keyframes) or propagation (every frame)."""
        key, st, g = self.key, phase.state, phase.groups
        if phase.name == TokenFlowPass.KEYFRAMES:
            if st.inject_attn and key in st.kf_src_qk:
                q_src, k_src = st.kf_src_qk[key]
                q, k = q_src.repeat(g, 1, 1).to(q.dtype), k_src.repeat(g, 1, 1).to(k.dtype)
            out = extended_attention(q, k, v, heads, g, None, attn_fn=kernel)
            phase.t_base[key] = out.reshape(g, -1, *out.shape[1:])
            return out
        slots, weights = st.slots[phase.positions], st.weights[phase.positions]
        out = propagate(phase.t_base[key], st.fields[key][phase.positions_key], slots, weights)
        return out.reshape(-1, *out.shape[2:])


class TokenFlowRunReset:
    """``OUTER_SAMPLE`` wrapper: every sampling run starts (and ends) without a step state, so
    nothing computed by an earlier run, finished or interrupted, is reused by the next one
    (ComfyUI keeps the patched MODEL, and this runtime with it, across prompts)."""

    def __init__(self, runtime: TokenFlowRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        self.runtime.state = None
        try:
            return executor(*args, **kwargs)
        finally:
            self.runtime.state = None  # also frees the source features of the last step


class _PhaseResiduals:
    """The ResBlock hook's handler during one wrapper call: keeps the source rows' residuals of
    the pass that runs now (``phase``) and, while injection is on, gives the edit rows the source's."""

    def __init__(self, state: StepState):
        self.state = state
        self.phase: Phase | None = None

    def __call__(self, rkey, residual):
        st, phase = self.state, self.phase
        s = phase.source_rows
        if s:  # keep the source's residual (a copy: the batch's tensor is much larger)
            if phase.name == TokenFlowPass.KEYFRAMES:
                st.kf_src_res[rkey] = residual[:s].clone()
            else:
                st.src_res.setdefault(rkey, {})[phase.positions_key] = residual[:s].clone()
        if not (st.inject_res and phase.groups):
            return None
        keyframes = phase.name == TokenFlowPass.KEYFRAMES
        src = st.kf_src_res[rkey] if keyframes else st.src_res[rkey][phase.positions_key]
        edit = src.repeat(phase.groups, 1, 1, 1)
        return torch.cat([residual[:s], edit]) if s else edit


class TokenFlowWrapper:
    """``DIFFUSION_MODEL`` wrapper: ``(executor, *args, **kwargs) -> prediction`` for exactly the
    rows the sampler passed (``x, timesteps, context, y, control, transformer_options``)."""

    def __init__(self, runtime: TokenFlowRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    # -- per-sigma source state -------------------------------------------------------------
    def _state(self, sigma: float, frames: torch.Tensor, like: torch.Tensor) -> tuple[StepState, bool, str | None]:
        """The step state for this sigma and these frames, whether it is new (the source
        passes still have to run), and its feature-cache entry when it should be stored there."""
        rt, cfg = self.runtime, self.runtime.config
        key = tuple(frames.tolist())
        if rt.state is not None and rt.state.frames == key and abs(rt.state.sigma - sigma) <= 1e-6 * max(1.0, sigma):
            return rt.state, False, None  # only ever a state whose source passes all completed
        step = rt.source.step_index(sigma)
        gen = torch.Generator().manual_seed(int(cfg.seed) * 100003 + step)
        # keyframes of the whole clip, also when this call holds a context window of it
        total = int(getattr(rt.source, "num_frames", 0) or 0)
        kf_pos, slots, weights = keyframes_for_call(frames, total, cfg.window, cfg.blend, gen)
        total = rt.source.num_steps
        # not stored on the runtime yet: the wrapper commits it once the call has completed, so an
        # interrupt inside a UNet call never leaves a half-filled state for the next run to reuse
        state = StepState(
            sigma=sigma,
            frames=key,
            kf_pos=kf_pos,
            slots=slots,
            weights=weights,
            inject_attn=step < int(total * cfg.pnp_attn_t),
            inject_res=step < int(total * cfg.pnp_f_t),
        )
        if rt.features is None:
            return state, True, None
        entry = rt.features.entry_key(
            step=step, frames=list(key), dtype=str(like.dtype), device=like.device.type, shape=list(like.shape[1:])
        )
        cached = rt.features.get(entry, like.device)
        if cached is None:
            return state, True, entry
        fill_state(state, cached)  # the source passes of this step ran in an earlier edit
        return state, False, None

    # -- the wrapper ------------------------------------------------------------------------
    def __call__(self, executor, *args, **kwargs):
        call = diffusion_model_args(args, kwargs)
        x, timesteps, context, y, control = (call[k] for k in ("x", "timesteps", "context", "y", "control"))
        rt, cfg = self.runtime, self.runtime.config
        to = call.transformer_options
        chunk_kinds = list(to.get("cond_or_uncond") or [0])
        groups = len(chunk_kinds)
        n = x.shape[0] // groups
        frames = call_frame_indices(to, n)
        sigma = float(to["sigmas"][0]) if "sigmas" in to else float(rt.model_sampling.sigma(timesteps[0]))
        rt.source.check_call(tuple(x.shape[1:]), frames, to)
        st, fresh, entry = self._state(sigma, frames, x)
        all_pos = torch.arange(n)
        passes = [(TokenFlowPass.KEYFRAMES, st.kf_pos)] + [
            (TokenFlowPass.PROPAGATE, all_pos[i : i + cfg.window]) for i in range(0, n, cfg.window)
        ]
        residuals = _PhaseResiduals(st)

        t_base: dict = {}  # the sampler's keyframe outputs per layer, filled by the keyframe call

        def run(name, positions, source_rows, grp, x_in, t_in, ctx_in, y_in, ctrl_in):
            opts = dict(to)  # never mutate the sampler's dict
            opts["cond_or_uncond"] = [0] * bool(source_rows) + (chunk_kinds if grp else [])
            phase = Phase(name, st, positions, source_rows, grp, t_base)
            opts[PHASE_KEY] = phase
            residuals.phase = phase  # the ResBlock hook serves the pass that runs now
            return call.call(
                executor, x=x_in, timesteps=t_in, context=ctx_in, y=y_in, control=ctrl_in, transformer_options=opts
            )

        out = torch.empty_like(x)
        b = x.shape[0]
        with residual_hooks(executor.class_obj, cfg.pnp_res_keys, residuals):
            for name, positions in passes:
                rows = _rows(positions, groups, n)
                inputs = (
                    x[rows],
                    timesteps[rows],
                    _slice(context, rows, b),
                    _slice(y, rows, b),
                    _slice(control, rows, b),
                )
                source_rows = 0
                if fresh:  # the source rows of this pass, once per sigma
                    src = source_unet_inputs(rt.source, rt.model_sampling, sigma, frames[positions], timesteps, like=x)
                    joint = self._joint_inputs(src, inputs) if cfg.share_batch else None
                    if joint is None:  # cannot share a batch: the source rows go first on their own
                        run(name, positions, len(positions), 0, *src, None)
                    else:
                        inputs, source_rows = joint, len(positions)
                pred = run(name, positions, source_rows, groups, *inputs)
                if name == TokenFlowPass.PROPAGATE:
                    out[rows] = pred[source_rows:].to(out.dtype)
        rt.state = st  # every pass completed: later calls at this sigma (split cond/uncond) reuse it
        if entry is not None:
            rt.features.put(entry, state_features(st))
        return out

    @staticmethod
    def _joint_inputs(src, edit):
        """One batch of the source rows followed by the sampler's rows, or None when their
        inputs cannot be concatenated (a ``y`` on one side only, different context widths)."""
        x_s, t_s, ctx_s, y_s = src
        x_e, t_e, ctx_e, y_e, ctrl_e = edit
        if (y_s is None) != (y_e is None) or (y_s is not None and y_s.shape[1:] != y_e.shape[1:]):
            return None
        if ctx_s is None or ctx_e is None:
            return None
        contexts = _joint_context(ctx_s, ctx_e.to(ctx_s))
        if contexts is None:
            return None
        rows = x_s.shape[0]
        y = None if y_s is None else torch.cat([y_s, y_e.to(y_s)])
        return (
            torch.cat([x_s, x_e.to(x_s)]),
            torch.cat([t_s, t_e.to(t_s)]),
            torch.cat(contexts),
            y,
            _with_zero_rows(ctrl_e, rows, x_e.shape[0]),
        )
