"""Attaching attention patches to a *clone* of a ModelPatcher through ComfyUI's supported
setters only (``set_model_attn1_replace``), composing with a replace patch already present at
the same key (another pack's, or ours from an earlier node) instead of overwriting it.

Duck-typed on the ModelPatcher so this module imports nothing from ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .unet_blocks import BlockKey, transformer_block_keys

log = logging.getLogger(__name__)


def existing_attn1_replace(model, key: BlockKey) -> Callable | None:
    """The attn1 replace patch the model already carries at ``key`` (3-tuple, or the 2-tuple
    form ComfyUI also looks up), if any."""
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    return replace.get(key) or replace.get(key[:2])


def self_attention_keys(model) -> list[BlockKey]:
    return transformer_block_keys(model.get_model_object("diffusion_model"))


def attach_attn1(model, make_patch: Callable[[BlockKey, Callable | None], Callable],
                 keys: Iterable[BlockKey] | None = None):
    """Clone ``model`` and set ``make_patch(key, previous)`` as the attn1 replace at every key.

    ``previous`` is the replace patch that was there (or None); the new patch should call it
    as its attention kernel so both packs' effects apply. Returns the clone.
    """
    m = model.clone()
    for key in keys if keys is not None else self_attention_keys(model):
        previous = existing_attn1_replace(m, key)
        m.set_model_attn1_replace(make_patch(key, previous), key[0], key[1], key[2])
    return m


def kernel_from(previous: Callable | None, extra_options: dict, default: Callable) -> Callable:
    """An ``attn_fn(q, k, v, heads)`` that runs ``previous`` (a replace patch) when present."""
    if previous is None:
        return default
    return lambda q, k, v, heads: previous(q, k, v, extra_options)
