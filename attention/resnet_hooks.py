"""Read or replace the residual branch of chosen ResBlocks during one UNet call.

PnP / TokenFlow / FLATTEN inject the *residual-branch output* of decoder ResBlocks (after
the second conv, before the skip add). ComfyUI has no patch point there (its
``forward_timestep_embed_patch`` never sees TimestepBlocks), so this uses PyTorch forward
hooks, registered on entry and removed on exit of a context manager that a model wrapper
opens around its own ``executor(...)`` call: nothing stays on the shared module, nothing is
assigned to it, and the hook only runs inside our wrapped call.

The hook sits on the last module of the ResBlock's ``out_layers`` (the conv whose output *is*
the residual branch), so the handler sees the branch exactly and its replacement goes into
ComfyUI's own ``skip(x) + h``: the official order (TokenFlow/FLATTEN swap ``h`` after conv2,
then add the skip), bit-identical at every dtype. A block without ``out_layers`` falls back to
a hook on the block itself that recovers the branch as ``output − skip(x)`` and returns
``skip(x) + new``; in fp16/bf16 that rounds twice and differs from the official order by up
to one ulp of the block output (measured on SD-scale activations: README, "Differences from
the official code").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

ResKey = tuple[str, int]
Handler = Callable[[ResKey, torch.Tensor], torch.Tensor | None]


def residual_branch_end(resblock: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose output is the ResBlock's residual branch (ComfyUI's ``out_layers[-1]``,
    the zero-initialised conv), or None when the block has no ``out_layers`` sequence.

    ComfyUI's ``ResBlock._forward`` ends ``h = out_layers(h)`` (or ``out_layers[1:]`` after the
    scale-shift norm, which still calls the same last module) and returns ``skip(x) + h``."""
    layers = getattr(resblock, "out_layers", None)
    if isinstance(layers, torch.nn.Sequential) and len(layers) > 0:
        return layers[-1]
    return None


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

    def on_branch(key: ResKey):
        def hook(module, args, output):  # output is the residual branch h itself
            new = handler(key, output)
            return None if new is None else new.to(output.dtype)

        return hook

    def on_block(key: ResKey):
        def hook(module, args, output):
            x = args[0]
            skip = module.skip_connection(x)
            residual = output - skip
            new = handler(key, residual)
            return None if new is None else skip + new.to(output.dtype)

        return hook

    try:
        for key in keys:
            block = resblock_of(diffusion_model, key)
            end = residual_branch_end(block)
            if end is not None:
                handles.append(end.register_forward_hook(on_branch(key)))
            else:
                handles.append(block.register_forward_hook(on_block(key)))
        yield
    finally:
        for h in handles:
            h.remove()
