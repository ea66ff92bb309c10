"""Unpacking the arguments ComfyUI passes to a model wrapper.

ComfyUI calls a wrapper as ``wrapper(executor, *args, **kwargs)`` and the mix of positional and
keyword arguments differs between call sites and versions (newer ComfyUI passes more). Wrappers
therefore take ``(executor, *args, **kwargs)`` and read what they need through :class:`WrapperArgs`,
which also rebuilds the call with some arguments replaced, passing everything else through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DIFFUSION_MODEL_ARGS = ("x", "timesteps", "context", "y", "control", "transformer_options")
"""``UNetModel._forward``'s parameters (``WrappersMP.DIFFUSION_MODEL``)."""

APPLY_MODEL_ARGS = ("x", "t", "c_concat", "c_crossattn", "control", "transformer_options")
"""``BaseModel._apply_model``'s parameters (``WrappersMP.APPLY_MODEL``)."""

PREDICT_NOISE_ARGS = ("x", "timestep", "model_options", "seed")
"""``CFGGuider.predict_noise``'s parameters (``WrappersMP.PREDICT_NOISE``)."""


class WrapperArgs:
    """The arguments of one wrapper call by name (missing ones read as None)."""

    def __init__(self, names: tuple[str, ...], args: tuple, kwargs: dict):
        self.names = names
        self.values: dict[str, Any] = dict(zip(names, args))
        self.tail = tuple(args[len(names) :])  # positional arguments past the known ones
        self.extra = {k: v for k, v in kwargs.items() if k not in names}
        for name in names:
            if name in kwargs:
                self.values[name] = kwargs[name]

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name)

    @property
    def transformer_options(self) -> dict:
        return self.values.get("transformer_options") or {}

    def call(self, executor: Callable, **replace: Any) -> Any:
        """``executor`` with the same arguments, ``replace`` substituted by name."""
        values = dict(self.values, **replace)
        last = max((i for i, n in enumerate(self.names) if n in values), default=-1)
        if self.tail:
            last = len(self.names) - 1
        positional = [values.get(n) for n in self.names[: last + 1]]
        return executor(*positional, *self.tail, **self.extra)


def diffusion_model_args(args: tuple, kwargs: dict) -> WrapperArgs:
    return WrapperArgs(DIFFUSION_MODEL_ARGS, args, kwargs)


def apply_model_args(args: tuple, kwargs: dict) -> WrapperArgs:
    return WrapperArgs(APPLY_MODEL_ARGS, args, kwargs)


def predict_noise_args(args: tuple, kwargs: dict) -> WrapperArgs:
    return WrapperArgs(PREDICT_NOISE_ARGS, args, kwargs)
