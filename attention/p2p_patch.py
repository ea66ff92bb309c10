"""Video-P2P / Prompt-to-Prompt as a MODEL patch that works with any ComfyUI sampler.

Pieces (all attached to a *clone* of the ModelPatcher by ``adapters.p2p``):

- :class:`P2PRunWrapper` (``OUTER_SAMPLE``): builds a fresh :class:`RunState` for every
  sampling run and drops it afterwards, so an interrupted run leaves nothing behind that the
  next run on the same (cached) MODEL could read;
- :class:`P2PWrapper` (``DIFFUSION_MODEL``): prepends the source branch's rows to the
  sampler's rows in the same UNet call, as TokenFlow does (``replay``: the cached inversion
  latent of this sigma, conditional pass with the source prompt; ``joint``: the source state
  that P2P denoises alongside, with its own CFG — unconditional context = the inversion's
  null-text embedding of the step when it has them, else the empty prompt);
- :class:`P2PCrossAttention` (attn2 replace, every layer): the target's conditional rows get
  the edited maps (``p2p_control.edit_cross_attention``); at the blend resolution the chosen
  words' maps of both branches are summed for the local-blend mask;
- :class:`P2PSelfAttention` (attn1 replace, every layer): frame attention (keys/values of
  the first frame; only where no other patch owns attn1) and P2P's self-attention
  replacement at the low-resolution layers during ``self_replace_steps``. The replacement is
  done by giving the target rows the source rows' q and k, which makes any attention kernel
  (also Extended Attention's or FLATTEN's, when they own the layer) compute the source's map
  and apply it to the target's values — exactly "target map := source map";
- :class:`P2PBlend` (``sampler_post_cfg_function``): once a step's UNet calls are done,
  commits that step's maps, builds the per-frame mask and returns the denoised prediction for
  which the DDIM step lands on ``x_src + mask * (x - x_src)`` (exact for euler/ddim on the
  inversion's sigmas; with other samplers the same substitution is applied to the predicted
  x0 at each schedule sigma, an approximation).

Per-call state travels in ``transformer_options["ve_p2p"]`` on a copy of the options; per-run
state lives in the run object and is committed only when a step completes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from .extended import sdpa_attention
from .frames import call_frame_indices
from .keys import P2P_CALL_KEY, PNP_KEY
from .modes import PnPMode
from .p2p_blend import (
    blend_active,
    blend_denoised,
    blend_resolution,
    local_blend_mask,
    self_replace_max_tokens,
    word_map_sum,
)
from .p2p_control import P2PEdit, attend, attention_probs, edit_cross_attention
from .p2p_tokens import parse_steps_spec, step_window, time_word_alpha, word_positions
from .patching import kernel_from
from .pnp import source_unet_inputs
from .tokenflow_patch import TokenFlowWrapper
from .wrapper_args import diffusion_model_args

log = logging.getLogger(__name__)

BRANCHES = ("src", "tgt", "src_sub", "tgt_sub")
# probability tensors built per chunk of frames in a cross-attention layer stay under this
MAP_BUDGET_BYTES = 256 * 2**20


class SourceMode(str, Enum):
    REPLAY = "replay"  # source rows replayed from the inversion cache (cond pass only)
    JOINT = "joint"  # source denoised together with the target, from the same x_T (the paper)


class FrameAttention(str, Enum):
    FIRST_FRAME = "first_frame"  # Video-P2P's FrameAttention: K/V of the first frame
    NONE = "none"  # per-frame self-attention


@dataclass(frozen=True)
class P2PConfig:
    """Settings of Apply Video-P2P (the single source of their defaults).

    ``cross_replace_steps``: fraction of the steps with cross-attention replacement, with
    optional per-word overrides (``'default:0.8, motorcycle:0.4'``); 0.2 = the official
    Video-P2P default (``run_videop2p.py``; its configs do not override it).
    """

    cross_replace_steps: str = "0.2"
    self_replace_steps: float = 0.5
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    source_mode: str = SourceMode.REPLAY.value
    frame_attention: str = FrameAttention.FIRST_FRAME.value

    @classmethod
    def from_inputs(cls, **inputs) -> P2PConfig:
        """Validated settings from node inputs (unknown names are a programming error)."""
        cfg = cls(**inputs)
        modes = [m.value for m in SourceMode]
        if cfg.source_mode not in modes:
            raise ValueError(f"source_mode: '{cfg.source_mode}' is not one of {modes}")
        frames = [m.value for m in FrameAttention]
        if cfg.frame_attention not in frames:
            raise ValueError(f"frame_attention: '{cfg.frame_attention}' is not one of {frames}")
        for name in ("self_replace_steps", "blend_threshold", "blend_start"):
            v = float(getattr(cfg, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: {v} is outside 0..1")
        parse_steps_spec(cfg.cross_replace_steps, "cross_replace_steps")
        return cfg

    def cache_key(self) -> str:
        return repr(self)


@dataclass(frozen=True, eq=False)
class P2PSchedule:
    """Per-step switches: ``alpha [S+1, L]`` cross-attention replacement weights per target
    token, ``self_window`` the self-attention replacement steps ``[a, b)``."""

    alpha: torch.Tensor
    self_window: tuple[int, int]
    num_steps: int

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return repr((self.alpha.sum(1).tolist(), self.self_window, self.num_steps))


def build_schedule(config: P2PConfig, edit: P2PEdit, num_steps: int) -> P2PSchedule:
    """The step schedule of ``edit`` for ``num_steps`` sampling steps (P2P semantics: a
    per-word override applies to that word's tokens in the target prompt; without a
    ``default`` entry every other token is replaced at every step)."""
    spec = parse_steps_spec(config.cross_replace_steps, "cross_replace_steps")
    default = spec.pop("default", (0.0, 1.0))
    words = [(word_positions(edit.target, [w], "cross_replace_steps", "target prompt"), b) for w, b in spec.items()]
    alpha = time_word_alpha(num_steps, edit.length, default, words)
    return P2PSchedule(alpha, step_window(num_steps, float(config.self_replace_steps)), num_steps)


class SourceBranch:
    """What P2P reads from the inversion (implemented by ``inversion.replay.SourceReplay``):
    ``step_index(sigma)``, ``num_steps``, ``num_frames``, ``sigmas``, ``latent(sigma, frames)``
    (VE), ``unet_conditioning(n, like, frames)``, ``check_call(sample_shape, frames, options)``
    (ValueError naming ``latent_image`` for a latent that is not the inverted one). Joint mode also needs ``x_T`` and
    ``uncond_context(step, n, like)``."""


class RunState:
    """Everything that lives for one sampling run (rebuilt by :class:`P2PRunWrapper`)."""

    def __init__(self, cfg: float, frames: int, latent_shape: tuple[int, ...]):
        self.cfg = cfg
        self.frames = frames
        self.latent_shape = tuple(latent_shape)  # (C, H, W)
        self.sums: dict[str, torch.Tensor] = {}  # branch -> [F, h, w], committed steps only
        self.pending: dict[int, dict[str, torch.Tensor]] = {}  # step -> branch -> [F, h, w]
        self.committed: set[int] = set()
        self.x_src: dict[int, torch.Tensor] = {}  # joint: step -> VE source state [F, C, H, W]
        self.x_src_filled: dict[int, torch.Tensor] = {}  # step -> bool [F]
        self.mask: torch.Tensor | None = None  # the last applied blend mask [F, 1, H, W]
        self.peak_map_bytes = 0  # largest probability tensor a layer built
        self.stored_map_bytes = 0  # peak of what the run keeps (sums + pending)

    def note_probs(self, *tensors: torch.Tensor) -> None:
        self.peak_map_bytes = max(self.peak_map_bytes, sum(t.numel() * t.element_size() for t in tensors))

    def stored_bytes(self) -> int:
        ts = list(self.sums.values()) + [t for p in self.pending.values() for t in p.values()]
        return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class P2PCall:
    """One UNet call as the patches see it: ``len(source_kinds)`` chunks of source rows, then
    the sampler's chunks (``kinds``, 0 = cond, 1 = uncond), ``n`` frames each."""

    step: int
    n: int
    frames: torch.Tensor
    source_kinds: list[int]
    kinds: list[int]
    alpha: torch.Tensor
    edit_on: bool
    self_on: bool
    maps: dict = field(default_factory=dict)  # branch -> [n, h, w] summed over this call's layers

    @property
    def source_rows(self) -> int:
        return len(self.source_kinds) * self.n

    def source_cond(self) -> slice | None:
        if 0 not in self.source_kinds:
            return None
        i = self.source_kinds.index(0) * self.n
        return slice(i, i + self.n)

    def target_cond(self) -> list[slice]:
        s = self.source_rows
        return [slice(s + g * self.n, s + (g + 1) * self.n) for g, kind in enumerate(self.kinds) if kind == 0]

    def add_map(self, branch: str, value: torch.Tensor, part: slice, n: int) -> None:
        """Add ``value`` ``[f, h, w]`` (frames ``part`` of the call's ``n``) to this call's sum."""
        if branch not in self.maps:
            self.maps[branch] = torch.zeros((n, *value.shape[1:]), dtype=torch.float32, device=value.device)
        self.maps[branch][part] += value.float()


class P2PRuntime:
    """Per-model-clone state and settings; shared (never copied) when ComfyUI copies options."""

    def __init__(
        self,
        config: P2PConfig,
        edit: P2PEdit,
        schedule: P2PSchedule,
        source,
        model_sampling,
        attn_fn: Callable = sdpa_attention,
    ):
        self.config = config
        self.edit = edit
        self.schedule = schedule
        self.source = source
        self.model_sampling = model_sampling
        self.attn_fn = attn_fn
        self.run: RunState | None = None
        self.last_mask: torch.Tensor | None = None  # [F, 1, H, W] of the last completed run
        self.last_stats: dict = {}

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return f"p2p({self.config.cache_key()}, {self.edit.cache_key()}, {self.schedule.cache_key()})"

    @property
    def joint(self) -> bool:
        return self.config.source_mode == SourceMode.JOINT.value

    @property
    def first_frame(self) -> bool:
        return self.config.frame_attention == FrameAttention.FIRST_FRAME.value

    def new_run(self, cfg: float) -> RunState:
        return RunState(cfg, self.source.num_frames, self.source.latent_shape)

    def current_run(self) -> RunState:
        """The sampling run's state; outside a guider's ``outer_sample`` (unusual) a throwaway one,
        so nothing outlives the call (replay works, joint mode then reports its missing state)."""
        if self.run is None:
            log.debug("VideoEdit P2P: UNet call outside a sampling run")
            return self.new_run(1.0)
        return self.run


def _blend_branches(edit: P2PEdit) -> dict[str, torch.Tensor]:
    weights = {"src": edit.blend_src, "tgt": edit.blend_tgt, "src_sub": edit.subtract_src, "tgt_sub": edit.subtract_tgt}
    return {k: v for k, v in weights.items() if v is not None}


class _P2PPatch:
    """A replace patch of one layer: the shared runtime and the patch it wraps (model clones
    share the patch object, and with it the runtime)."""

    def __init__(self, runtime: P2PRuntime, previous: Callable | None = None):
        self.runtime = runtime
        self.previous = previous

    def __deepcopy__(self, memo):
        return self


class P2PCrossAttention(_P2PPatch):
    """attn2 replace patch (one per layer): q ``[B, N, C]``, k/v ``[B, T, C]``."""

    def __call__(self, q, k, v, extra_options):
        rt = self.runtime
        heads = extra_options["n_heads"]
        kernel = kernel_from(self.previous, extra_options, rt.attn_fn)
        call: P2PCall | None = extra_options.get(P2P_CALL_KEY)
        src = None if call is None else call.source_cond()
        targets = [] if call is None else call.target_cond()
        if src is None:
            return kernel(q, k, v, heads)
        shape = extra_options.get("activations_shape")
        original = extra_options.get("original_shape")
        hw = tuple(int(s) for s in shape[-2:]) if shape is not None else None
        blend_hw = blend_resolution(tuple(int(s) for s in original[-2:])) if original is not None else None
        blend_layer = (
            bool(_blend_branches(rt.edit)) and hw is not None and hw == blend_hw and q.shape[1] == hw[0] * hw[1]
        )
        if not (call.edit_on and targets) and not blend_layer:
            return kernel(q, k, v, heads)
        out = self._rest(q, k, v, heads, kernel, [src, *targets])
        weights = _blend_branches(rt.edit) if blend_layer else {}
        run = rt.run
        # frames in chunks: the probability tensors ([f, heads, N, T] per branch) stay bounded
        per_frame = heads * q.shape[1] * k.shape[1] * 4 * (2 + len(targets))
        step = max(1, MAP_BUDGET_BYTES // max(per_frame, 1))
        for lo in range(0, call.n, step):
            part = slice(lo, min(lo + step, call.n))
            rows_src = slice(src.start + part.start, src.start + part.stop)
            base = attention_probs(q[rows_src], k[rows_src], heads)
            out[rows_src] = attend(base, v[rows_src]).to(out.dtype)
            for name in ("src", "src_sub"):
                if name in weights:
                    call.add_map(name, word_map_sum(base, weights[name]).reshape(-1, *hw), part, call.n)
            for i, t_rows in enumerate(targets):
                rows = slice(t_rows.start + part.start, t_rows.start + part.stop)
                tgt = attention_probs(q[rows], k[rows], heads)
                if run is not None:
                    run.note_probs(base, tgt)
                new = edit_cross_attention(base, tgt, rt.edit, call.alpha) if call.edit_on else tgt
                out[rows] = attend(new, v[rows]).to(out.dtype)
                if i == 0:  # the blend mask follows the first conditional chunk (edited maps, as P2P stores them)
                    for name in ("tgt", "tgt_sub"):
                        if name in weights:
                            call.add_map(name, word_map_sum(new, weights[name]).reshape(-1, *hw), part, call.n)
        return out

    def _rest(self, q, k, v, heads, kernel, edited: list[slice]) -> torch.Tensor:
        """The layer's output with the rows P2P does not compute itself filled by the kernel
        (only those rows, unless another patch owns the layer and needs the whole batch)."""
        if self.previous is not None:
            return kernel(q, k, v, heads)  # a fresh tensor: P2P's rows are written into it
        keep = torch.ones(q.shape[0], dtype=torch.bool)
        for rows in edited:
            keep[rows] = False
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        if keep.any():
            idx = keep.nonzero().flatten().to(q.device)
            out[idx] = kernel(q[idx], k[idx], v[idx], heads)
        return out


def first_frame_attention(q, k, v, heads: int, n: int, kernel: Callable) -> torch.Tensor:
    """Every frame of each chunk of ``n`` rows attends to the keys/values of the chunk's first
    frame (Video-P2P's ``FrameAttention``)."""
    b = q.shape[0]
    first = torch.arange(0, b, n, device=q.device).repeat_interleave(n)
    return kernel(q, k[first], v[first], heads)


class P2PSelfAttention(_P2PPatch):
    """attn1 replace patch (one per layer)."""

    def __call__(self, q, k, v, extra_options):
        rt = self.runtime
        heads = extra_options["n_heads"]
        call: P2PCall | None = extra_options.get(P2P_CALL_KEY)
        if call is not None and call.self_on:
            src = call.source_cond()
            original = extra_options.get("original_shape")
            limit = self_replace_max_tokens(tuple(int(s) for s in original[-2:])) if original is not None else 0
            targets = call.target_cond()
            if src is not None and targets and q.shape[1] <= limit:
                q, k = q.clone(), k.clone()
                for rows in targets:
                    q[rows], k[rows] = q[src], k[src]
        if self.previous is not None:  # another patch owns attn1 (Extended Attention, FLATTEN): P2P only injects
            return self.previous(q, k, v, extra_options)
        if rt.first_frame:
            groups = len(extra_options.get("cond_or_uncond") or [0])
            n = call.n if call is not None else q.shape[0] // groups
            return first_frame_attention(q, k, v, heads, n, rt.attn_fn)
        return rt.attn_fn(q, k, v, heads)


class P2PWrapper:
    """``DIFFUSION_MODEL`` wrapper: ``(executor, *args, **kwargs) -> prediction`` for exactly the
    rows the sampler passed (arguments read through ``wrapper_args``)."""

    def __init__(self, runtime: P2PRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        args = diffusion_model_args(args, kwargs)
        x, timesteps, context, y, control = (args[k] for k in ("x", "timesteps", "context", "y", "control"))
        rt = self.runtime
        to = args.transformer_options
        pnp = to.get(PNP_KEY)
        if pnp is not None and getattr(pnp, "mode", None) == PnPMode.CAPTURE:  # FLATTEN's own source pass
            return args.call(executor)
        if pnp is not None:
            raise ValueError(
                "VideoEdit P2P: the model carries FLATTEN's feature injection (Apply FLATTEN given an "
                "inversion), whose injected rows cannot share a UNet call with P2P's source rows; "
                "apply FLATTEN without the inversion under P2P"
            )
        kinds = list(to.get("cond_or_uncond") or [0])
        n = x.shape[0] // len(kinds)
        frames = call_frame_indices(to, n)
        # the latent being sampled must be the inverted clip's (else the source rows are another video's)
        rt.source.check_call(tuple(x.shape[1:]), frames, to)
        sigma = float(to["sigmas"][0]) if "sigmas" in to else float(rt.model_sampling.sigma(timesteps[0]))
        step = rt.source.step_index(sigma)
        run = rt.current_run()
        sched = rt.schedule
        alpha = sched.alpha[min(step, sched.alpha.shape[0] - 1)]
        has_cond = 0 in kinds
        update = rt.joint and step < rt.source.num_steps and not self._updated(run, step, frames)
        if update and run.cfg != 1.0:
            source_kinds = [1, 0]
        elif update or has_cond:
            source_kinds = [0]
        else:
            source_kinds = []
        call = P2PCall(
            step=step,
            n=n,
            frames=frames,
            source_kinds=source_kinds,
            kinds=kinds,
            alpha=alpha,
            edit_on=bool(alpha.any()),
            self_on=sched.self_window[0] <= step < sched.self_window[1],
        )
        opts = dict(to)
        opts[P2P_CALL_KEY] = call
        if not source_kinds:
            return args.call(executor, transformer_options=opts)
        src_inputs, x_src_ve = self._source_inputs(run, step, sigma, frames, timesteps, x, source_kinds)
        joint = TokenFlowWrapper._joint_inputs(src_inputs, (x, timesteps, context, y, control))
        if joint is None:  # the edit needs the source's maps of the same layer in the same call
            raise ValueError(
                "VideoEdit P2P: the source rows cannot share a UNet call with the sampler's rows "
                "(conditioning of another kind: a different context width or vector conditioning); "
                "encode both prompts with the CLIP of this model"
            )
        opts["cond_or_uncond"] = list(source_kinds) + kinds
        jx, jt, jctx, jy, jctrl = joint
        pred = args.call(executor, x=jx, timesteps=jt, context=jctx, y=jy, control=jctrl, transformer_options=opts)
        self._commit_maps(run, call)
        if update:
            self._advance_source(run, step, sigma, frames, x_src_ve, pred[: call.source_rows], source_kinds)
        return pred[call.source_rows :]

    # -- the source branch ------------------------------------------------------------------
    def _updated(self, run: RunState, step: int, frames: torch.Tensor) -> bool:
        filled = run.x_src_filled.get(step + 1)
        return filled is not None and bool(filled[frames].all())

    def _source_state(self, run: RunState, step: int, frames: torch.Tensor) -> torch.Tensor:
        """Joint mode: the source branch's VE latent of ``frames`` at ``step``."""
        rt = self.runtime
        if step == 0:
            return rt.source.latent(float(rt.source.sigmas[0]), frames)
        filled = run.x_src_filled.get(step)
        if filled is None or not bool(filled[frames].all()):
            raise ValueError(
                "VideoEdit P2P joint mode: the source branch has no state at this step; sample the "
                "inversion's latent along the inversion's SIGMAS from the first step (denoise 1)"
            )
        return run.x_src[step][frames]

    def _source_inputs(self, run: RunState, step: int, sigma: float, frames, timesteps, like, source_kinds):
        rt = self.runtime
        n = len(frames)
        if not rt.joint:
            return source_unet_inputs(rt.source, rt.model_sampling, sigma, frames, timesteps, like=like), None
        x_ve = self._source_state(run, step, frames).to(like.device, torch.float32)
        sig = torch.full((n,), sigma, device=like.device)
        x_in = rt.model_sampling.calculate_input(sig, x_ve).to(like.dtype)
        ctx_c, y_c = rt.source.unet_conditioning(n, like=like, frames=frames)
        rows_x, rows_ctx, rows_y = [], [], []
        for kind in source_kinds:
            if kind == 0:
                ctx, yy = ctx_c, y_c
            else:
                ctx, yy = rt.source.uncond_conditioning(step, n, like=like, frames=frames)
                if ctx.shape[1] != ctx_c.shape[1]:
                    raise ValueError(
                        "VideoEdit P2P joint mode: the null-text / empty-prompt context has "
                        f"{ctx.shape[1]} tokens, the source prompt's {ctx_c.shape[1]}"
                    )
            rows_x.append(x_in)
            rows_ctx.append(ctx)
            rows_y.append(yy)
        y_all = None if rows_y[0] is None else torch.cat(rows_y)
        return (torch.cat(rows_x), timesteps[:1].expand(n * len(source_kinds)), torch.cat(rows_ctx), y_all), x_ve

    def _advance_source(self, run: RunState, step: int, sigma: float, frames, x_ve, src_pred, source_kinds):
        """DDIM (euler) step of the source branch with its own CFG; stored for the next step."""
        rt = self.runtime
        n = len(frames)
        sig = torch.full((n,), sigma, device=x_ve.device)
        den = {}
        for i, kind in enumerate(source_kinds):
            out = src_pred[i * n : (i + 1) * n].float().to(x_ve.device)
            den[kind] = rt.model_sampling.calculate_denoised(sig, out, x_ve)
        d = den[0] if 1 not in den else den[1] + (den[0] - den[1]) * run.cfg
        sigma_next = float(rt.source.sigmas[step + 1])
        x_next = d + (x_ve - d) * (sigma_next / sigma)
        if step + 1 not in run.x_src:
            run.x_src[step + 1] = torch.zeros(
                (run.frames, *run.latent_shape), dtype=torch.float32, device=x_next.device
            )
            run.x_src_filled[step + 1] = torch.zeros(run.frames, dtype=torch.bool)
        run.x_src[step + 1][frames.to(x_next.device)] = x_next
        run.x_src_filled[step + 1][frames] = True

    def _commit_maps(self, run: RunState, call: P2PCall) -> None:
        """This call's summed maps become the step's pending maps of its frames (assigned, not
        added: a step's calls for the same frames carry the same source maps)."""
        if not call.maps:
            return
        pending = run.pending.setdefault(call.step, {})
        for name, value in call.maps.items():
            if name not in pending:
                h, w = value.shape[-2:]
                pending[name] = torch.zeros((run.frames, h, w), dtype=torch.float32, device=value.device)
            pending[name][call.frames.to(value.device)] = value.float()
        run.stored_map_bytes = max(run.stored_map_bytes, run.stored_bytes())


class P2PBlend:
    """``sampler_post_cfg_function``: local blend after each step (see the module docstring)."""

    def __init__(self, runtime: P2PRuntime, threshold: float, start: float):
        self.runtime = runtime
        self.threshold = float(threshold)
        self.start = float(start)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict) -> torch.Tensor:
        rt = self.runtime
        denoised, x = args["denoised"], args["input"]
        run = rt.run
        if run is None:
            return denoised
        sigma = float(torch.as_tensor(args["sigma"]).flatten()[0])
        step = rt.source.step_index(sigma)
        if step >= rt.source.num_steps:
            return denoised
        if step not in run.committed:  # commit the step's maps once its calls are done
            for name, value in run.pending.pop(step, {}).items():
                run.sums[name] = run.sums[name] + value if name in run.sums else value
            run.committed.add(step)
        if not _blend_branches(rt.edit) or not blend_active(step, rt.source.num_steps, self.start):
            return denoised
        if not all(k in run.sums for k in _blend_branches(rt.edit)):
            return denoised  # no maps yet (e.g. no conditional rows ran)
        hw = tuple(x.shape[-2:])
        mask = local_blend_mask(
            run.sums.get("src"),
            run.sums.get("tgt"),
            hw,
            self.threshold,
            run.sums.get("src_sub"),
            run.sums.get("tgt_sub"),
        ).to(x.device)
        if mask.shape[0] != x.shape[0]:
            return denoised
        sigma_next = float(rt.source.sigmas[step + 1])
        frames = torch.arange(x.shape[0])
        if rt.joint:
            filled = run.x_src_filled.get(step + 1)
            if filled is None or not bool(filled.all()):
                return denoised
            x_src_next = run.x_src[step + 1].to(x)
        else:
            x_src_next = rt.source.latent(sigma_next, frames).to(x)
        run.mask = mask
        return blend_denoised(denoised, x, sigma, sigma_next, x_src_next, mask)


class P2PRunWrapper:
    """``OUTER_SAMPLE`` wrapper: one :class:`RunState` per sampling run (the guider's cfg is the
    source branch's in joint mode); the run's last mask and memory figures are kept only when
    the run completes."""

    def __init__(self, runtime: P2PRuntime):
        self.runtime = runtime

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        rt = self.runtime
        guider = getattr(executor, "class_obj", None)
        run = rt.new_run(float(getattr(guider, "cfg", 1.0)))
        rt.run = run
        try:
            out = executor(*args, **kwargs)
        finally:
            rt.run = None
        rt.last_mask = run.mask
        rt.last_stats = {"peak_map_bytes": run.peak_map_bytes, "stored_map_bytes": run.stored_map_bytes}
        return out
