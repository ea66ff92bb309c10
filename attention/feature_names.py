"""Names of the tensors an editing patch hands to the feature cache: a kind followed by block
keys, ``"fields|output.4.0|0.1.2"`` (kind ``fields``, layer ``("output", 4, 0)``, the call's frame
positions ``(0, 1, 2)``). One spelling for TokenFlow's and PnP's features, readable in a
safetensors header and turned back into the same tuples."""

from __future__ import annotations


def feature_name(kind: str, *keys: tuple) -> str:
    return "|".join([kind, *(".".join(str(v) for v in key) for key in keys)])


def parse_feature_name(name: str) -> tuple[str, tuple[tuple, ...]]:
    """``(kind, keys)`` of a :func:`feature_name`; numeric parts come back as ints."""

    def key(part: str) -> tuple:
        return tuple(int(v) if v.lstrip("-").isdigit() else v for v in part.split(".")) if part else ()

    kind, *parts = name.split("|")
    return kind, tuple(key(p) for p in parts)
