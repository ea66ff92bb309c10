"""Patches on a *clone* of a ModelPatcher, through ComfyUI's supported setters only
(``set_model_attn1_replace``), composing with a replace patch already present at the same key
(another pack's, or ours from an earlier node) instead of overwriting it; ComfyUI's attention
kernel; block specs (``"output 4-11"``, or by resolution ``"output 1/16"``) resolved against the
model's own blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..attention.block_resolution import choose_blocks, is_resolution_spec
from ..attention.unet_blocks import BlockKey, parse_block_list, resblock_keys, transformer_block_keys

log = logging.getLogger(__name__)


def comfy_attention(q, k, v, heads):
    """ComfyUI's attention kernel (the user's --use-*-attention choice), looked up per call, with
    the ``attn_fn(q, k, v, heads)`` signature the attention modules take."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads)


def comfy_long_attention():
    """The kernel for attention over the keys of many frames (FLATTEN's spatio-temporal part):
    ComfyUI's own, unless that is one of its generic fallbacks chosen by default (sub-quadratic
    or split attention: what a CPU gets, a Python loop over chunks), then PyTorch's fused SDPA,
    which is memory-bounded as well (flash kernel on CPU, flash/memory-efficient on CUDA) and
    about 3x faster there at 8 frames x 1024 tokens (bench). A user's explicit
    --use-split/quad-cross-attention and every specialised kernel (xformers, sage, flash,
    pytorch) are kept."""
    import comfy.ldm.modules.attention as attention
    from comfy.cli_args import args

    from ..attention.extended import sdpa_attention

    explicit = getattr(args, "use_split_cross_attention", False) or getattr(args, "use_quad_cross_attention", False)
    fallbacks = {getattr(attention, name, None) for name in ("attention_sub_quad", "attention_split")}
    if not explicit and attention.optimized_attention in fallbacks:
        return sdpa_attention
    return comfy_attention


def existing_replace(model, key: BlockKey, kind: str = "attn1") -> Callable | None:
    """The ``kind`` (attn1 / attn2) replace patch the model already carries at ``key`` (3-tuple,
    or the 2-tuple form ComfyUI also looks up), if any."""
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return replace.get(key) or replace.get(key[:2])


def existing_attn1_replace(model, key: BlockKey) -> Callable | None:
    """The self-attention replace patch the model already carries at ``key``, if any."""
    return existing_replace(model, key, "attn1")


def self_attention_keys(model) -> list[BlockKey]:
    return transformer_block_keys(model.get_model_object("diffusion_model"))


def attach_attn1(
    model, make_patch: Callable[[BlockKey, Callable | None], Callable], keys: Iterable[BlockKey] | None = None
):
    """Clone ``model`` and set ``make_patch(key, previous)`` as the attn1 replace at every key.

    ``previous`` is the replace patch that was there (or None); the new patch should call it
    as its attention kernel so both packs' effects apply. Returns the clone.
    """
    m = model.clone()
    for key in keys if keys is not None else self_attention_keys(model):
        previous = existing_attn1_replace(m, key)
        m.set_model_attn1_replace(make_patch(key, previous), key[0], key[1], key[2])
    return m


def _keys_from_spec(model, spec: str, available: list, input_name: str, what: str, example: str) -> list:
    """The keys among ``available`` that ``spec`` names: block ids (``parse_block_list``) and/or
    resolutions of the image (``"output 1/32#1-2, 1/16"``, ``attention/block_resolution.py``), so
    one spec picks the same layers on SD1.5/2.x and SDXL. Errors start with ``input_name``."""

    def by_id(part: str) -> list:
        return parse_block_list(part, available, what=f"a {what}" if what == "ResBlock" else what, example=example)

    try:
        if not is_resolution_spec(spec):
            return by_id(spec)
        plural = "ResBlocks" if what == "ResBlock" else what
        return choose_blocks(spec, model.get_model_object("diffusion_model"), available, by_id, input_name, plural)
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith(f"{input_name}:") else f"{input_name}: {message}") from None


def attention_keys_from_spec(model, spec: str, input_name: str, example: str = "output 4-11") -> list[BlockKey]:
    """Self-attention layers named by a block spec (``"output 4-11"``, ``"input 1,2; output 9-11"``,
    ``"all"``, ``"none"``, or by resolution ``"output 1/32#1-2, 1/16, 1/8"``), checked against the
    model: the error lists the blocks it has."""
    return _keys_from_spec(model, spec, self_attention_keys(model), input_name, "self-attention", example)


def resblock_keys_from_spec(
    model, spec: str, input_name: str, example: str = "output 3, 4, 6"
) -> tuple[tuple[str, int], ...]:
    """ResBlocks (``(name, block_id)``, layer 0 of the block) named by a block spec, same grammar
    (block ids or resolutions), checked against the model: the error lists the ResBlocks it has."""
    available = resblock_keys(model.get_model_object("diffusion_model"))
    return tuple(_keys_from_spec(model, spec, available, input_name, "ResBlock", example))
