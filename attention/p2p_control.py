"""Prompt-to-Prompt attention control maths: the edit (token maps, equalizer, blend words) and
what it does to one cross-attention layer's probabilities.

The edited cross-attention map of a target row (P2P's ``AttentionControlEdit`` with the
replace/refine controller, optionally wrapped by ``AttentionReweight``)::

    edit = (base @ M^T + tgt * keep) * eq        # base: the source row's map, tgt: the target's
    new  = alpha_t * edit + (1 - alpha_t) * tgt  # alpha_t: this step's per-token schedule

with ``M`` the mapper (``p2p_tokens``), ``keep`` 0 for replace and ``1 - alpha_refine`` for
refine (new words keep their own map), ``eq`` the reweighting equalizer (1 = none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .p2p_tokens import PromptTokens


@dataclass(frozen=True, eq=False)
class P2PEdit:
    """``VE_P2P_EDIT``: a source/target prompt pair prepared for attention control.

    ``mapper [L, L]`` (target x source), ``keep [L]``, ``equalizer [L]``; ``blend_src`` /
    ``blend_tgt`` / ``subtract_src`` / ``subtract_tgt``: token weights ``[L]`` of the local-blend
    and subtract words in each prompt (None = none). ``source_conditioning`` /
    ``target_conditioning`` / ``empty_conditioning``: ComfyUI CONDITIONINGs of the source
    prompt, the target prompt and the empty prompt (the source branch's plain negative in
    joint mode), encoded by the same CLIP.
    """

    source: PromptTokens
    target: PromptTokens
    mode: str  # "replace" | "refine"
    mapper: torch.Tensor
    keep: torch.Tensor
    equalizer: torch.Tensor
    blend_src: torch.Tensor | None = None
    blend_tgt: torch.Tensor | None = None
    subtract_src: torch.Tensor | None = None
    subtract_tgt: torch.Tensor | None = None
    source_conditioning: list | None = None
    target_conditioning: list | None = None
    empty_conditioning: list | None = None

    def __deepcopy__(self, memo):  # immutable: shared when ComfyUI copies model options
        return self

    @property
    def length(self) -> int:
        return int(self.mapper.shape[0])

    @property
    def blends(self) -> bool:
        return self.blend_src is not None or self.blend_tgt is not None

    def cache_key(self) -> str:
        def t(x):
            return None if x is None else tuple(round(float(v), 6) for v in x.flatten().tolist())

        return repr(
            (
                self.source.text,
                self.target.text,
                self.mode,
                t(self.mapper.sum(0)),
                t(self.keep),
                t(self.equalizer),
                t(self.blend_src),
                t(self.blend_tgt),
                t(self.subtract_src),
                t(self.subtract_tgt),
            )
        )

    def summary(self) -> str:
        parts = [f"{self.mode}: {self.source.text!r} -> {self.target.text!r}"]
        changed = (self.equalizer != 1).nonzero().flatten().tolist()
        if changed:
            parts.append(f"reweighted tokens {changed}")
        if self.blends:
            parts.append("local blend")
        return ", ".join(parts)


def one_hot(positions, length: int) -> torch.Tensor | None:
    """``[L]`` weights 1 at ``positions`` (None when there are none)."""
    if not positions:
        return None
    w = torch.zeros(length)
    w[list(positions)] = 1.0
    return w


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))``: q ``[B, N, H*d]``, k ``[B, T, H*d]`` → ``[B, H, N, T]``
    float32 (ComfyUI's kernels never return probabilities; P2P needs them)."""
    b, n, c = q.shape
    d = c // heads
    qh = q.float().reshape(b, n, heads, d).transpose(1, 2)  # float32: fp16 scores can overflow
    kh = k.float().reshape(b, k.shape[1], heads, d).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * (1.0 / math.sqrt(d))
    return scores.softmax(dim=-1)


def attend(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probs [B, H, N, T]`` applied to v ``[B, T, H*d]`` → ``[B, N, H*d]``."""
    b, h, n, t = probs.shape
    vh = v.reshape(b, t, h, -1).transpose(1, 2)
    return torch.matmul(probs.to(vh.dtype), vh).transpose(1, 2).reshape(b, n, -1)


def _over_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """``[..., r*L]`` → ``[..., r, L]`` (a context repeated ``r`` times to a common length)."""
    t = x.shape[-1]
    if t % length:
        raise ValueError(f"context of {t} tokens is not a repeat of the prompt's {length}")
    return x.reshape(*x.shape[:-1], t // length, length)


def edit_cross_attention(base: torch.Tensor, tgt: torch.Tensor, edit: P2PEdit, alpha_t: torch.Tensor) -> torch.Tensor:
    """The target rows' edited cross-attention probabilities.

    Args:
        base: ``[F, H, N, T]`` the source rows' maps (same frames, in order).
        tgt: ``[F, H, N, T]`` the target rows' own maps.
        edit: mapper / keep / equalizer over the prompt's ``L`` tokens (``T = r * L``).
        alpha_t: ``[L]`` this step's replacement weight per target token.

    Returns ``[F, H, N, T]`` in ``tgt``'s dtype.
    """
    length = edit.length
    dt = torch.float32
    b = _over_tokens(base.to(dt), length)
    t = _over_tokens(tgt.to(dt), length)
    mapper = edit.mapper.to(b.device, dt)
    e = torch.einsum("...w,nw->...n", b, mapper)  # the one new map-sized tensor; the rest is in place
    keep = edit.keep.to(b.device, dt)
    if bool(keep.any()):
        e.addcmul_(t, keep)
    e.mul_(edit.equalizer.to(b.device, dt))
    new = e.sub_(t).mul_(alpha_t.to(b.device, dt)).add_(t)  # alpha * e + (1 - alpha) * t
    return new.reshape(tgt.shape).to(tgt.dtype)


EDIT_MODES = ("auto", "replace", "refine")


@dataclass(frozen=True)
class P2PEditSpec:
    """Settings of the Video-P2P Edit node (the single source of their defaults).

    ``mode``: ``auto`` (word swap when the word counts match, else refine), ``replace`` or
    ``refine``. ``reweight``: ``'word:scale, ...'`` on target words. ``blend_source`` /
    ``blend_target``: local-blend words of each prompt (both or neither). ``subtract``: words
    whose region is kept from the source (looked up in both prompts).
    """

    source_prompt: str = ""
    target_prompt: str = ""
    mode: str = "auto"
    reweight: str = ""
    blend_source: str = ""
    blend_target: str = ""
    subtract: str = ""

    @classmethod
    def from_inputs(cls, **inputs) -> P2PEditSpec:
        spec = cls(**inputs)
        if spec.mode not in EDIT_MODES:
            raise ValueError(f"mode: '{spec.mode}' is not one of {list(EDIT_MODES)}")
        for name in ("source_prompt", "target_prompt"):
            if not getattr(spec, name).strip():
                raise ValueError(f"{name}: the prompt is empty; Prompt-to-Prompt needs the words of both prompts")
        if bool(spec.blend_source.strip()) != bool(spec.blend_target.strip()):
            missing = "blend_target" if spec.blend_source.strip() else "blend_source"
            raise ValueError(
                f"{missing}: empty while the other blend input is set; name the edited object in both "
                "prompts (e.g. 'bike' and 'motorcycle'), or leave both empty for no local blend"
            )
        return spec
