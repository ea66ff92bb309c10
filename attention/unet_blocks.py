"""Addressing the transformer blocks of a ComfyUI UNet (``openaimodel.UNetModel``).

ComfyUI's attention patches are keyed by ``(block_name, block_id, block_index)``:
``("input"|"middle"|"output", id, depth index inside the SpatialTransformer)`` — the same
triple ``extra_options["block"] + (extra_options["block_index"],)`` carries at run time. The
walk below finds them by structure (a child with ``transformer_blocks``), so it works for
SD1.5/2.x (depth 1) and SDXL (depth 2/10) alike without naming ComfyUI classes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

BlockKey = tuple[str, int, int]
SECTION_ALIASES = {"decoder": "output", "up": "output", "encoder": "input", "down": "input"}


def unet_sections(diffusion_model: torch.nn.Module) -> Iterator[tuple[str, int, torch.nn.Module]]:
    """``(name, block_id, block)`` of every input, middle and output block, in execution order
    (the one walk of the UNet's block structure)."""
    for i, block in enumerate(getattr(diffusion_model, "input_blocks", [])):
        yield "input", i, block
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        yield "middle", 0, middle
    for i, block in enumerate(getattr(diffusion_model, "output_blocks", [])):
        yield "output", i, block


def transformer_block_keys(diffusion_model: torch.nn.Module) -> list[BlockKey]:
    """Every ``(name, id, index)`` that has a self-attention layer, in execution order."""
    keys = []
    for name, block_id, block in unet_sections(diffusion_model):
        for layer in block:
            blocks = getattr(layer, "transformer_blocks", None)
            if blocks is not None:
                keys.extend((name, block_id, j) for j in range(len(blocks)))
    return keys


def resblock_keys(diffusion_model: torch.nn.Module) -> list[tuple[str, int]]:
    """Every ``(name, id)`` whose layer 0 is a ResBlock (has a ``skip_connection``), in order."""
    return [
        (name, block_id)
        for name, block_id, block in unet_sections(diffusion_model)
        if len(block) and hasattr(block[0], "skip_connection")
    ]


def key_of(extra_options: dict) -> BlockKey:
    """The running block's key, from the ``extra_options`` ComfyUI passes to patches."""
    name, block_id = extra_options["block"][:2]
    return str(name), int(block_id), int(extra_options.get("block_index", 0))


def parse_block_list(spec: str, available: list, what: str = "self-attention", example: str = "output 4-11") -> list:
    """Parse a block spec such as ``"output 4-11"``, ``"input 1,2; output 9-11"``, ``"all"`` or
    ``"none"`` (the one grammar for attention layers and ResBlocks). A section name alone
    (``"output"``, also ``"decoder"``/``"up"``; ``"input"``, ``"encoder"``/``"down"``; ``"middle"``)
    names every block of that section.

    ``available`` holds the model's keys (``(name, id, index)`` attention layers or ``(name, id)``
    ResBlocks); returns those whose ``(name, id)`` is named, in the model's order. Raises
    ValueError naming the bad part, or the missing blocks together with the blocks the model has.
    """
    spec = (spec or "").strip().lower()
    if spec in ("all", "*"):
        return list(available)
    if spec in ("", "none"):
        return []
    wanted: set[tuple[str, int]] = set()
    for part in spec.replace(";", "|").split("|"):
        part = part.strip()
        if not part:
            continue
        name, _, ids = part.partition(" ")
        name = SECTION_ALIASES.get(name, name)
        if name not in ("input", "middle", "output"):
            raise ValueError(
                f"'{part}' is not like '{example}' (input/middle/output, then block numbers or "
                "ranges; ';' between sections; 'all' or 'none')"
            )
        if not ids.strip():
            section = {(k[0], k[1]) for k in available if k[0] == name}
            if not section:
                have = sorted({(k[0], k[1]) for k in available})
                raise ValueError(f"this model has no {name} blocks with {what}; it has {have}")
            wanted |= section
            continue
        for item in ids.replace(" ", "").split(","):
            lo, _, hi = item.partition("-")
            if not lo.isdigit() or not (hi or lo).isdigit():
                raise ValueError(f"'{part}' is not like '{example}'")
            for i in range(int(lo), int(hi or lo) + 1):
                wanted.add((name, i))
    chosen = [k for k in available if (k[0], k[1]) in wanted]
    missing = wanted - {(k[0], k[1]) for k in chosen}
    if missing:
        have = sorted({(k[0], k[1]) for k in available})
        blocks = ", ".join(f"{n}_blocks[{i}]" for n, i in sorted(missing))
        raise ValueError(f"this model has no {blocks} with {what}; it has {have}")
    return chosen
