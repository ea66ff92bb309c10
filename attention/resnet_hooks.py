"""Read or replace the residual branch of chosen ResBlocks during one UNet call.

PnP / TokenFlow / FLATTEN inject the *residual-branch output* of decoder ResBlocks (after
the second conv, before the skip add). ComfyUI has no patch point there (its
``forward_timestep_embed_patch`` never sees TimestepBlocks), so this uses PyTorch forward
hooks, registered on entry and removed on exit of a context manager that a model wrapper
opens around its own ``executor(...)`` call: nothing stays on the shared module, nothing is
assigned to it, and the hook only runs inside our wrapped call.

    out = skip(x) + residual  →  hook returns skip(x) + handler(key, residual)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

ResKey = tuple[str, int]
Handler = Callable[[ResKey, torch.Tensor], torch.Tensor | None]


def resblock_of(diffusion_model: torch.nn.Module, key: ResKey) -> torch.nn.Module:
    """The ResBlock at ``("output"|"input", id)`` (layer 0 of that block; "middle" → 0)."""
    name, block_id = key
    if name == "middle":
        block = diffusion_model.middle_block
    else:
        block = getattr(diffusion_model, f"{name}_blocks")[block_id]
    layer = block[0]
    if not hasattr(layer, "skip_connection"):
        raise ValueError(f"{name}_blocks[{block_id}][0] is not a ResBlock (no skip_connection)")
    return layer


@contextlib.contextmanager
def residual_hooks(diffusion_model: torch.nn.Module, keys: Iterable[ResKey], handler: Handler):
    """Within the block, ``handler(key, residual)`` sees each chosen ResBlock's residual branch
    ``[B, C, h, w]`` and may return a replacement (or None to keep it)."""
    handles = []

    def make(key: ResKey):
        def hook(module, args, output):
            x = args[0]
            skip = module.skip_connection(x)
            residual = output - skip
            new = handler(key, residual)
            return None if new is None else skip + new.to(output.dtype)
        return hook

    try:
        for key in keys:
            handles.append(resblock_of(diffusion_model, key).register_forward_hook(make(key)))
        yield
    finally:
        for h in handles:
            h.remove()
