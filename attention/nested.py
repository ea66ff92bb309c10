"""Mapping a function over the tensors of nested containers (CONDITIONING option dicts,
ControlNet residual dicts of lists), keeping everything else by reference."""

from __future__ import annotations

from collections.abc import Callable

import torch


def map_tensors(value, fn: Callable[[torch.Tensor], torch.Tensor]):
    """``fn`` applied to every tensor inside dicts, lists and tuples (new containers; the
    input is not changed); other values are returned as they are."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_tensors(v, fn) for v in value)
    return value
