"""Composing an attention patch with the replace patch it found at its layer (another pack's,
or ours from an earlier node): the earlier patch becomes the new one's attention kernel.
Attaching patches to a ModelPatcher lives in ``adapters/model_patch.py``."""

from __future__ import annotations

from collections.abc import Callable


def kernel_from(previous: Callable | None, extra_options: dict, default: Callable) -> Callable:
    """An ``attn_fn(q, k, v, heads)`` that runs ``previous`` (a replace patch) when present."""
    if previous is None:
        return default
    return lambda q, k, v, heads: previous(q, k, v, extra_options)
