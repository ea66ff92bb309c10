"""Node options as dataclass fields: the one place of each option's default, range and allowed
ids, read by the node schemas (``spec``) and checked when a node's inputs become settings
(``from_inputs``). Pure Python: no ComfyUI import.

    @dataclass(frozen=True)
    class FooOptions(Options):
        steps: int = option(20, min=1, max=1000)
        mode: str = option("fast", choices=("fast", "exact"))

    io.Int.Input("steps", **FooOptions.spec("steps"), tooltip=...)   # default/min/max from here
    FooOptions.from_inputs(**inputs)                                 # ValueError on a bad id or range
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

_SPEC_KEYS = ("min", "max", "step")


def option(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: Iterable[str] | None = None,
) -> Any:
    """A dataclass field with its widget range (``min``/``max``/``step``) or its combo ids."""
    meta = {k: v for k, v in (("min", min), ("max", max), ("step", step)) if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
        if default not in meta["choices"]:
            raise ValueError(f"option default '{default}' is not one of its choices {meta['choices']}")
    return dataclasses.field(default=default, metadata=meta)


def check_choice(input_name: str, value: Any, ids: Iterable[str]) -> str:
    """``value`` if it is one of ``ids``; else ``ValueError("<input>: '<value>' is not one of a, b")``.
    (ComfyUI 0.3.75 does not check V3 combo values itself.)"""
    ids = tuple(ids)
    if value not in ids:
        raise ValueError(f"{input_name}: '{value}' is not one of {', '.join(ids)}")
    return value


def check_range(input_name: str, value: Any, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{input_name}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{input_name}: {value} is outside {low}..{high}")


class Options:
    """Mixin for the settings dataclasses built with :func:`option`."""

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def default(cls, name: str) -> Any:
        return cls._fields()[name].default

    @classmethod
    def choices(cls, name: str) -> list[str]:
        return list(cls._fields()[name].metadata["choices"])

    @classmethod
    def spec(cls, name: str) -> dict:
        """Keyword arguments for the option's ``io.*.Input``: ``default`` plus ``min``/``max``/
        ``step`` or, for a combo, ``options``."""
        f = cls._fields()[name]
        out = {"default": f.default}
        out.update({k: f.metadata[k] for k in _SPEC_KEYS if k in f.metadata})
        if "choices" in f.metadata:
            out["options"] = list(f.metadata["choices"])
        return out

    @classmethod
    def from_inputs(cls, **inputs):
        """The settings from node inputs (any subset; the rest keep their defaults), with every
        combo value checked against its ids and every number against its range."""
        fields = cls._fields()
        unknown = sorted(set(inputs) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        for name, value in inputs.items():
            meta = fields[name].metadata
            if "choices" in meta:
                check_choice(name, value, meta["choices"])
            elif "min" in meta or "max" in meta:
                check_range(name, value, meta.get("min"), meta.get("max"))
        return cls(**inputs)
