"""Capturing named UNet features during one source-branch pass.

The editing methods need, at each step, features of the *source* video at the current sigma:
self-attention inputs (TokenFlow's nearest-neighbour fields), q/k of chosen self-attention
layers (PnP / FLATTEN injection), and the residual-branch output of chosen ResBlocks
(PnP / FLATTEN). They are recomputed per step by running the UNet once on the cached source
latents (``inversion.replay``), never stored for every step (tens of GB per clip).

Plumbing, through ComfyUI's supported patch points on a model *clone*:

- :class:`AttnInputCapture` — an ``attn1_patch``: records ``n`` (the LayerNorm'd hidden states
  that enter self-attention, ``[B, N, C]``);
- :class:`QKCapture` — an ``attn1`` replace patch per chosen layer: records q and k
  (``[B, N, heads*dim_head]``, after ``to_q``/``to_k``) and computes the attention with the
  replace patch that was there before (chained) or ComfyUI's kernel;
- ResBlock residuals ``[B, C, h, w]`` (``out - skip_connection(x)``) via
  ``attention.resnet_hooks.residual_hooks`` around the capture call (ComfyUI's
  ``forward_timestep_embed_patch`` never sees ResBlocks: they are TimestepBlocks).

The patches are inert unless the call's ``transformer_options[CAPTURE_KEY]`` holds a
:class:`FeatureStore`; :func:`capture_pass` sets it on a *copy* of the options for exactly one
UNet call, so ordinary sampling through the same clone is unaffected.

Layer keys are ``(block_name, block_id, index)`` tuples: for attention the transformer depth
index (``("output", 4, 0)`` = ``output_blocks[4][1].transformer_blocks[0]``), for ResBlocks the
layer inside the block (``("output", 4, 0)`` = ``output_blocks[4][0]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .extended import AttnFn
from .keys import CAPTURE_KEY
from .resnet_hooks import residual_hooks
from .unet_blocks import BlockKey, key_of

LayerKey = BlockKey
ALL = "all"


def _keys(keys: Iterable) -> tuple[LayerKey, ...]:
    out = []
    for k in keys:
        k = tuple(k)
        if len(k) == 2:
            k = (*k, 0)
        if len(k) != 3 or k[0] not in ("input", "middle", "output"):
            raise ValueError(f"layer key {k!r} is not like ('output', 4, 0)")
        out.append((str(k[0]), int(k[1]), int(k[2])))
    return tuple(out)


@dataclass(frozen=True)
class CaptureSpec:
    """Which features to record. ``attn1_inputs`` may be ``"all"``; ResBlock keys may be given as
    ``("output", 4)`` (layer 0 of the block)."""

    attn1_inputs: tuple[LayerKey, ...] | str = ()
    qk: tuple[LayerKey, ...] = ()
    resnets: tuple[LayerKey, ...] = ()

    def __post_init__(self):
        if self.attn1_inputs != ALL:
            object.__setattr__(self, "attn1_inputs", _keys(self.attn1_inputs))
        object.__setattr__(self, "qk", _keys(self.qk))
        object.__setattr__(self, "resnets", _keys(self.resnets))
        bad = [k for k in self.resnets if k[2] != 0]
        if bad:
            raise ValueError(f"ResBlock keys {bad}: the ResBlock is layer 0 of its block, use e.g. ('output', 4, 0)")

    def wants_input(self, key: LayerKey) -> bool:
        return self.attn1_inputs == ALL or key in self.attn1_inputs

    def cache_key(self) -> str:
        return repr(self)


@dataclass
class FeatureStore:
    """Features of one capture pass. Tensors keep the UNet's batch order (the frames of the
    pass); ``device``/``dtype`` optionally move them as they are recorded (e.g. fp16 CPU)."""

    spec: CaptureSpec
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    attn1_inputs: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    q: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    k: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    resnets: dict[LayerKey, torch.Tensor] = field(default_factory=dict)

    KINDS = ("attn1_inputs", "q", "k", "resnets")

    def record(self, kind: str, key: LayerKey, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        if self.device is not None or self.dtype is not None:
            t = t.to(device=self.device or t.device, dtype=self.dtype or t.dtype)
        getattr(self, kind)[key] = t

    def flat(self) -> dict[str, torch.Tensor]:
        """``{"q/output.4.0": tensor, …}`` — names usable as safetensors keys."""
        return {f"{kind}/{k[0]}.{k[1]}.{k[2]}": t for kind in self.KINDS for k, t in getattr(self, kind).items()}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.flat().values())

    def missing(self) -> list[str]:
        """Requested features that the pass did not produce (a key the model does not have)."""
        out = [f"q/k {k}" for k in self.spec.qk if k not in self.q]
        out += [f"resnet {k}" for k in self.spec.resnets if k not in self.resnets]
        if self.spec.attn1_inputs != ALL:
            out += [f"attn1 input {k}" for k in self.spec.attn1_inputs if k not in self.attn1_inputs]
        return out


def _store(extra_options: dict) -> FeatureStore | None:
    store = extra_options.get(CAPTURE_KEY)
    return store if isinstance(store, FeatureStore) else None


class AttnInputCapture:
    """``attn1_patch`` ``(n, context, value, extra_options) -> (n, context, value)``; records ``n``."""

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> str:
        return "videoedit.capture.attn1_input"

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        store = _store(extra_options)
        if store is not None:
            key = key_of(extra_options)
            if store.spec.wants_input(key):
                store.record("attn1_inputs", key, n)
        return n, context_attn1, value_attn1


class QKCapture:
    """``attn1`` replace patch for one layer: records q/k during a capture pass, and always
    computes the attention with ``previous`` (a replace patch that was already at this key) or
    ``attn_fn`` (ComfyUI's kernel)."""

    def __init__(self, key: LayerKey, attn_fn: AttnFn, previous: Callable | None = None):
        self.key = key
        self.attn_fn = attn_fn
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def cache_key(self) -> Any:
        prev = self.previous
        if prev is not None:
            prev = (
                prev.cache_key()
                if hasattr(prev, "cache_key")
                else getattr(prev, "__qualname__", type(prev).__qualname__)
            )
        return ["videoedit.capture.qk", list(self.key), prev]

    def __call__(self, q, k, v, extra_options):
        store = _store(extra_options)
        if store is not None:
            store.record("q", self.key, q)
            store.record("k", self.key, k)
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return self.attn_fn(q, k, v, extra_options["n_heads"])


def capture_pass(
    run: Callable[[dict], Any],
    transformer_options: dict,
    spec: CaptureSpec,
    diffusion_model: torch.nn.Module | None = None,
    device=None,
    dtype=None,
) -> tuple[FeatureStore, Any]:
    """Run one UNet call with capture on and return ``(features, the call's result)``.

    ``run(transformer_options) -> Any`` performs the call (e.g. a DIFFUSION_MODEL wrapper's
    ``executor`` on the source latents, or ``BaseModel.apply_model``) with the options it is
    given: a shallow copy of ``transformer_options`` with the store set. ResBlock residuals need
    ``diffusion_model`` (the UNet module; ``executor.class_obj`` inside a DIFFUSION_MODEL wrapper).
    """
    store = FeatureStore(spec, device=device, dtype=dtype)
    options = dict(transformer_options)
    options[CAPTURE_KEY] = store
    if not spec.resnets:
        return store, run(options)
    if diffusion_model is None:
        raise ValueError("capturing ResBlock features needs the diffusion model (the UNet module)")

    def on_residual(key, residual):
        store.record("resnets", (key[0], key[1], 0), residual)
        return None  # keep the block's output unchanged

    with residual_hooks(diffusion_model, [k[:2] for k in spec.resnets], on_residual):
        result = run(options)
    return store, result
