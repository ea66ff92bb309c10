"""Choosing UNet layers by the resolution they run at, so one block spec means the same layers
on SD1.5/2.x (four levels, 1/8 … 1/64 of the image) and on SDXL (three levels, 1/8 … 1/32,
deeper transformers, no attention at 1/8).

A *resolution part* of a block spec names a section and resolutions of the image::

    "output 1/32#1-2, 1/16, 1/8"    decoder blocks 2nd–3rd at 1/32, every block at 1/16 and 1/8
    "input 1/16; output 1/16"       every encoder and decoder block at 1/16

``1/N`` is a fraction of the image side (latent side × 1/8, SD-family VAEs); ``#i`` / ``#i-j``
pick blocks by position (0 = first) among the section's blocks at that resolution that have
the layer kind asked for. A resolution the UNet runs at but where it has no such layer adds
nothing (SDXL has no attention at 1/8), so method defaults carry over; a resolution the UNet
never runs at, a position past the blocks there, or a spec that selects nothing at all is an
error listing what the model has. Parts without ``1/`` keep the block-id grammar
(``"output 4-11"``, :func:`.unet_blocks.parse_block_list`), parsed by the caller's parser;
``adapters/model_patch.py`` (``attention_keys_from_spec`` / ``resblock_keys_from_spec``) puts the
two together for every method's block inputs.

On SD1.5 the method defaults below equal the official block ids: TokenFlow's PnP attention
``output 4-11`` and ResBlock ``output 4``; FLATTEN's PnP attention ``output 4-9`` and ResBlocks
``output 3, 4, 6``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from .unet_blocks import SECTION_ALIASES, unet_sections

LATENT_SCALE = 8  # image pixels per latent cell (SD1.x / SD2.x / SDXL VAEs)
SECTIONS = {"input": "input", "middle": "middle", "mid": "middle", "output": "output", **SECTION_ALIASES}

TOKENFLOW_PNP_ATTN = "output 1/32#1-2, 1/16, 1/8"  # SD1.5: output 4-11 (official)
TOKENFLOW_PNP_RES = "output 1/32#1"  # SD1.5: output 4 (up_blocks[1].resnets[1])
FLATTEN_PNP_ATTN = "output 1/32#1-2, 1/16, 1/8#0"  # SD1.5: output 4-9
FLATTEN_PNP_RES = "output 1/32#0-1, 1/16#0"  # SD1.5: output 3, 4, 6

_TERM = re.compile(r"^1/(\d+)(?:#(\d+)(?:-(\d+))?)?$")


def block_levels(diffusion_model: torch.nn.Module) -> dict[tuple[str, int], int]:
    """Resolution level of every ``(section, block id)``: 0 = the latent, 1 = one
    ``Downsample`` deeper, … — the level its ResBlock and attention run at (an ``Upsample``
    at the end of a decoder block acts after them).

    >>> import torch.nn as nn
    >>> class Downsample(nn.Identity): pass
    >>> class Upsample(nn.Identity): pass
    >>> dm = nn.Module()
    >>> dm.input_blocks = nn.ModuleList([nn.Sequential(nn.Identity()), nn.Sequential(Downsample())])
    >>> dm.output_blocks = nn.ModuleList([nn.Sequential(nn.Identity(), Upsample()), nn.Sequential(nn.Identity())])
    >>> block_levels(dm)
    {('input', 0): 0, ('input', 1): 0, ('output', 0): 1, ('output', 1): 0}
    """
    levels: dict[tuple[str, int], int] = {}
    level = 0
    for name, block_id, block in unet_sections(diffusion_model):
        levels[(name, block_id)] = level
        for layer in block:
            kind = type(layer).__name__
            if kind == "Downsample":
                level += 1
            elif kind == "Upsample":
                level -= 1
    return levels


def fraction(level: int) -> str:
    """``"1/16"`` for level 1 (of the image side)."""
    return f"1/{LATENT_SCALE * 2**level}"


def describe(available: Sequence[tuple], levels: dict[tuple[str, int], int]) -> str:
    """``"output: 1/32 blocks 3-5, 1/16 blocks 6-8"``-style summary of ``available`` keys."""
    by: dict[str, dict[int, list[int]]] = {}
    for key in available:
        ids = by.setdefault(key[0], {}).setdefault(levels[(key[0], key[1])], [])
        if key[1] not in ids:
            ids.append(key[1])
    parts = []
    for name in ("input", "middle", "output"):
        if name in by:
            items = ", ".join(f"{fraction(lv)} blocks {_ranges(ids)}" for lv, ids in by[name].items())
            parts.append(f"{name}: {items}")
    return "; ".join(parts) or "none"


def _ranges(ids: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(ids):
        if start is None:
            start = v
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def is_resolution_spec(spec: str) -> bool:
    return "1/" in (spec or "")


def choose_blocks(
    spec: str,
    diffusion_model: torch.nn.Module,
    available: Sequence[tuple],
    parse_ids: Callable[[str], Sequence[tuple]],
    input_name: str,
    what: str = "self-attention",
) -> list:
    """The keys among ``available`` (``(name, id, index)`` attention layers or ``(name, id)``
    ResBlocks, in model order) that ``spec`` selects. Parts without a resolution go to
    ``parse_ids`` (the block-id grammar); a spec with no resolution part is passed whole.
    Raises ValueError(``"<input_name>: …"``) listing what the model has."""
    levels = block_levels(diffusion_model)
    have = describe(available, levels)
    if not is_resolution_spec(spec):
        out = list(parse_ids(spec))
        missing = [k for k in out if k not in available]
        if missing:
            raise ValueError(f"{input_name}: this model has no {what} at {missing}; it has {what} in {have}")
        return out
    known = sorted(set(levels.values()))
    chosen_blocks: set[tuple[str, int]] = set()
    chosen_keys: set[tuple] = set()
    for part in spec.replace("|", ";").split(";"):
        part = part.strip().lower()
        if not part:
            continue
        if not is_resolution_spec(part):
            chosen_keys |= set(parse_ids(part))
            continue
        name, _, terms = part.partition(" ")
        section = SECTIONS.get(name)
        if section is None:
            raise ValueError(
                f"{input_name}: '{part}' does not start with input/middle/output (or encoder/decoder), "
                f"e.g. 'output 1/16, 1/32'"
            )
        for term in terms.replace(" ", "").split(","):
            m = _TERM.match(term)
            if not m:
                raise ValueError(f"{input_name}: '{term}' is not a resolution like '1/16' or '1/32#1-2'")
            side = int(m.group(1))
            level = next((lv for lv in known if LATENT_SCALE * 2**lv == side), None)
            if level is None:
                raise ValueError(
                    f"{input_name}: this model's UNet does not run at 1/{side} of the image; it runs at "
                    f"{', '.join(fraction(lv) for lv in known)} ({what}: {have})"
                )
            blocks = sorted({k[1] for k in available if k[0] == section and levels[(k[0], k[1])] == level})
            if m.group(2) is None:
                picked = blocks
            else:
                lo = int(m.group(2))
                hi = int(m.group(3) or lo)
                if blocks and hi >= len(blocks):
                    raise ValueError(
                        f"{input_name}: '{term}' asks for block #{hi} but the {section} blocks at "
                        f"1/{side} with {what} are {blocks} (#0-{len(blocks) - 1}); this model has "
                        f"{what} in {have}"
                    )
                picked = blocks[lo : hi + 1]
            chosen_blocks |= {(section, b) for b in picked}
    out = [k for k in available if k in chosen_keys or (k[0], k[1]) in chosen_blocks]
    if not out:
        raise ValueError(
            f"{input_name}: '{spec}' selects no {what} on this model; it has {what} in {have} (or write 'none')"
        )
    return out
