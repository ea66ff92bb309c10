"""Rerender-A-Video's cross-frame attention as an ``attn1_patch`` (duck-typed, no ComfyUI imports).

Keyframes are rendered one after another. While the anchor (frame 0) is sampled, the patch
records the self-attention *input* ``n`` (LayerNorm'd hidden states, before ``to_k``/``to_v``)
of every chosen layer at every step, per cond/uncond branch. While a later keyframe is sampled,
the same layer at the same step and branch attends to ``[anchor ; previous keyframe]`` instead
of to itself: the patch returns that concatenation as ``context``/``value``, and ComfyUI's own
``to_k``/``to_v`` and attention kernel (or any replace patch another pack set) do the rest. As
in the official code the current frame's own tokens are left out (``include_current`` adds
them). Storing ``n`` rather than ``k``/``v`` halves the memory; the extra ``to_k``/``to_v`` of
two frames' tokens is negligible next to the attention itself.

Stores are keyed by (sigma, layer, branch): the sigma is read from ``extra_options["sigmas"]``
(the same schedule gives bit-identical sigmas in every pass, also for samplers that evaluate
between schedule points), the branch from ``extra_options["cond_or_uncond"]`` (0 cond, 1
uncond; never assumed to be both present, nor in a fixed order). Entries are kept on
``store_device`` in ``store_dtype`` (fp16 off the GPU by default): for SD1.5 at 512² with all
twelve decoder layers, 20 steps and CFG that is about 0.55 GB per stored frame, and up to three
frames are held (anchor, previous, the frame being recorded).

``SigmaSchedule`` maps a sigma to its step index for the step-fraction windows of every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from .modes import CrossFrameMode
from .unet_blocks import BlockKey, key_of

log = logging.getLogger(__name__)

MODES = tuple(m.value for m in CrossFrameMode)
# Precision of the stored attention inputs: "model" keeps the dtype the UNet runs in (the
# official code stores the tensors as they are); "fp16" halves an fp32 model's store, which
# moves a cross-frame attention output by about 1e-3 of its scale (README, "Differences from
# the official code") and changes nothing for an fp16 model.
STORE_PRECISIONS = {"fp16": torch.float16, "model": None}


def sigma_key(sigma: float) -> str:
    """Dictionary key of a sigma: 7 significant digits (passes share one schedule, so equal
    steps give equal floats; the rounding only guards against formatting noise)."""
    return f"{float(sigma):.7g}"


class SigmaSchedule:
    """Step indices of a sampling schedule and Rerender's step-fraction windows.

    Args:
        sigmas: the full schedule, ``steps + 1`` decreasing values ending in 0 (ComfyUI's
            ``KSampler.sigmas``). Step ``j`` goes from ``sigmas[j]`` to ``sigmas[j+1]``.
    """

    def __init__(self, sigmas: torch.Tensor | Iterable[float]):
        values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
        if len(values) < 2:
            raise ValueError("a sampling schedule needs at least one step (two sigmas)")
        self.sigmas = values
        self.steps = len(values) - 1

    def step_of(self, sigma: float) -> int:
        """The step whose interval ``[sigmas[j+1], sigmas[j]]`` holds ``sigma`` (a sigma equal to
        a schedule point is the step starting there; intermediate evaluations of multi-stage
        samplers belong to the step they are inside)."""
        sigma = float(sigma)
        tol = 1e-5 * max(1.0, sigma)
        starts = sum(1 for s in self.sigmas[:-1] if s >= sigma - tol)
        return min(max(starts - 1, 0), self.steps - 1)

    def in_window(self, step: int, window: tuple[float, float], strict: bool = False) -> bool:
        """Whether ``step`` lies in a window given as fractions of the steps.

        Inclusive (``lo·N ≤ j ≤ hi·N``) as the official controller's cross-frame, shape-fusion
        and AdaIN periods; ``strict`` (``lo·N < j < hi·N``) as its inpainting mask period. A
        window with ``hi ≤ lo`` is off.
        """
        lo, hi = window
        if hi <= lo:
            return False
        n = self.steps
        if strict:
            return lo * n < step < hi * n
        return lo * n <= step <= hi * n

    def window_steps(self, window: tuple[float, float], strict: bool = False) -> list[int]:
        return [j for j in range(self.steps) if self.in_window(j, window, strict)]


class CrossFrameStore:
    """Recorded attention inputs of the anchor and the previous keyframe, and the pass state.

    The node sets ``mode`` before each sampling pass:

    - ``"record_anchor"``: plain self-attention; inputs are stored as the anchor's (and as the
      previous keyframe's, so the first keyframe after the anchor attends to it alone);
    - ``"attend"``: inside ``window`` (step fractions), keys/values come from
      ``[anchor ; previous]`` of the same step, layer and branch; with ``record`` the frame's
      own inputs are kept (``commit_previous()`` then makes them the previous keyframe's);
    - ``"off"``: untouched.

    Shared, not copied, when ComfyUI deep-copies model options (``__deepcopy__``).
    """

    def __init__(
        self,
        keys: Iterable[BlockKey],
        schedule: SigmaSchedule,
        window: tuple[float, float] = (0.0, 1.0),
        include_current: bool = False,
        store_device: torch.device | str | None = None,
        store_dtype: torch.dtype | None = torch.float16,
    ):
        self.keys = set(keys)
        self.schedule = schedule
        self.window = window
        self.include_current = include_current
        self.store_device = store_device
        self.store_dtype = store_dtype
        self.mode = CrossFrameMode.OFF
        self.record = False
        self.anchor: dict = {}
        self.previous: dict = {}
        self.pending: dict = {}
        self.missing = 0

    def __deepcopy__(self, memo):
        return self

    def begin(self, mode: CrossFrameMode | str, record: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"cross-frame mode must be one of {MODES}, got {mode!r}")
        self.mode = CrossFrameMode(mode)
        self.record = record
        self.missing = 0

    def commit_previous(self) -> None:
        """The frame recorded since the last commit becomes the previous keyframe."""
        if self.pending:
            self.previous.update(self.pending)
            self.pending = {}

    def clear(self) -> None:
        self.anchor, self.previous, self.pending = {}, {}, {}
        self.mode, self.record = CrossFrameMode.OFF, False

    def nbytes(self) -> int:
        """Memory held by the stores (tensors shared between them counted once)."""
        unique = {id(t): t for d in (self.anchor, self.previous, self.pending) for t in d.values()}
        return sum(t.numel() * t.element_size() for t in unique.values())

    def _keep(self, n: torch.Tensor) -> torch.Tensor:
        out = n.detach()
        if self.store_dtype is not None and out.is_floating_point():
            out = out.to(self.store_dtype)
        if self.store_device is not None:
            out = out.to(self.store_device)
        return out if out.data_ptr() != n.data_ptr() else out.clone()

    def context_for(self, entry: tuple, current: torch.Tensor) -> torch.Tensor | None:
        """``[rows, M·N, C]`` keys/values input for one branch, or None when nothing is stored."""
        anchor = self.anchor.get(entry)
        previous = self.previous.get(entry)
        if anchor is None:
            return None
        parts = [anchor] if previous is None or previous is anchor else [anchor, previous]
        parts = [p.to(device=current.device, dtype=current.dtype) for p in parts]
        rows = current.shape[0]
        parts = [p.expand(rows, -1, -1) if p.shape[0] == 1 and rows > 1 else p for p in parts]
        if self.include_current:
            parts.append(current)
        return torch.cat(parts, dim=1)


class CrossFrameAttention:
    """``attn1_patch``: ``(n, context, value, extra_options) -> (n, context, value)``.

    ``n`` is ``[G·B, N, C]``: G cond/uncond chunks (``cond_or_uncond``) of B frames each.
    Layers outside the store's keys and calls outside a pass pass through unchanged, so with
    the store in ``"off"`` mode the UNet computes exactly what it does without the patch.
    """

    def __init__(self, store: CrossFrameStore):
        self.store = store

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        st = self.store
        if st.mode == CrossFrameMode.OFF:
            return n, context_attn1, value_attn1
        key = key_of(extra_options)
        if key not in st.keys:
            return n, context_attn1, value_attn1
        branches = list(extra_options.get("cond_or_uncond") or [0])
        if n.shape[0] % len(branches):
            raise ValueError(f"attention batch {n.shape[0]} does not split into {len(branches)} cond/uncond chunks")
        rows = n.shape[0] // len(branches)
        sigma = float(extra_options["sigmas"][0])
        skey = sigma_key(sigma)
        chunks = [n[g * rows : (g + 1) * rows] for g in range(len(branches))]
        entries = [(skey, key, int(b)) for b in branches]

        if st.mode == CrossFrameMode.RECORD_ANCHOR:
            for entry, chunk in zip(entries, chunks):
                kept = st._keep(chunk)
                st.anchor[entry] = kept
                st.previous[entry] = kept
            return n, context_attn1, value_attn1

        # attend
        if st.record:
            for entry, chunk in zip(entries, chunks):
                st.pending[entry] = st._keep(chunk)
        if not st.schedule.in_window(st.schedule.step_of(sigma), st.window):
            return n, context_attn1, value_attn1
        contexts = [st.context_for(entry, chunk) for entry, chunk in zip(entries, chunks)]
        if any(c is None for c in contexts):
            st.missing += 1
            if st.missing == 1:
                log.warning(
                    "cross-frame attention: no anchor features for sigma %s at %s; this call attends to "
                    "itself (different sampler or schedule than the anchor's?)",
                    skey,
                    key,
                )
            return n, context_attn1, value_attn1
        context = torch.cat(contexts, dim=0)
        return n, context, context
