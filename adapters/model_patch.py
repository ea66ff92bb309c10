"""Patches on a *clone* of a ModelPatcher, through ComfyUI's supported setters only
(``set_model_attn1_replace``), composing with a replace patch already present at the same key
(another pack's, or ours from an earlier node) instead of overwriting it; ComfyUI's attention
kernel; block specs (``"output 4-11"``) resolved against the model's own blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..attention.unet_blocks import BlockKey, parse_block_list, resblock_keys, transformer_block_keys

log = logging.getLogger(__name__)


def comfy_attention(q, k, v, heads):
    """ComfyUI's attention kernel (the user's --use-*-attention choice), looked up per call, with
    the ``attn_fn(q, k, v, heads)`` signature the attention modules take."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads)


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


def attention_keys_from_spec(model, spec: str, input_name: str, example: str = "output 4-11") -> list[BlockKey]:
    """Self-attention layers named by a block spec (``"output 4-11"``, ``"input 1,2; output 9-11"``,
    ``"all"``, ``"none"``), checked against the model: the error lists the blocks it has."""
    try:
        return parse_block_list(spec, self_attention_keys(model), example=example)
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from None


def resblock_keys_from_spec(model, spec: str, input_name: str, example: str = "output 3, 4, 6"
                            ) -> tuple[tuple[str, int], ...]:
    """ResBlocks (``(name, block_id)``, layer 0 of the block) named by a block spec, same grammar,
    checked against the model: the error lists the ResBlocks it has."""
    try:
        return tuple(parse_block_list(spec, resblock_keys(model.get_model_object("diffusion_model")),
                                      what="a ResBlock", example=example))
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from None
