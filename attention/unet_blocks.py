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


def _sections(diffusion_model: torch.nn.Module) -> Iterator[tuple[str, int, torch.nn.Module]]:
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
    for name, block_id, block in _sections(diffusion_model):
        for layer in block:
            blocks = getattr(layer, "transformer_blocks", None)
            if blocks is not None:
                keys.extend((name, block_id, j) for j in range(len(blocks)))
    return keys


def key_of(extra_options: dict) -> BlockKey:
    """The running block's key, from the ``extra_options`` ComfyUI passes to patches."""
    name, block_id = extra_options["block"][:2]
    return name, int(block_id), int(extra_options.get("block_index", 0))


def parse_block_list(spec: str, available: list[BlockKey]) -> list[BlockKey]:
    """Parse a user list such as ``"output 4-11"`` or ``"input 1,2; output 9-11"`` or ``"all"``.

    Returns the matching keys among ``available`` (all depth indices of a matched block).
    Raises ValueError naming unknown blocks.
    """
    spec = spec.strip().lower()
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
        if name not in ("input", "middle", "output"):
            raise ValueError(f"block list {spec!r}: '{name}' is not input/middle/output")
        for item in ids.replace(" ", "").split(",") if ids.strip() else ["0"]:
            lo, _, hi = item.partition("-")
            if not (lo.isdigit() and (hi.isdigit() or not hi)):
                raise ValueError(f"block list {spec!r}: '{item}' in '{part}' is not a block number or range "
                                 "like 4-11 (e.g. 'output 4-11' or 'input 1,2; output 9')")
            for i in range(int(lo), int(hi or lo) + 1):
                wanted.add((name, i))
    chosen = [k for k in available if (k[0], k[1]) in wanted]
    missing = wanted - {(k[0], k[1]) for k in chosen}
    if missing:
        have = sorted({(k[0], k[1]) for k in available})
        raise ValueError(f"block list {spec!r}: no self-attention in {sorted(missing)}; this model has {have}")
    return chosen
