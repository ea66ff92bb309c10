"""Stable content hashes for cache keys: tensors, nested conditioning, model weights, patches.

Two flavours:
- :func:`tensor_digest` hashes every byte (latents, conditioning: small, must be exact);
- :func:`fingerprint_tensors` hashes names, shapes, dtypes and a strided sample of values
  (model weights: cheap even for multi-GB models, and any realistic change of weights — a
  different checkpoint, a fine-tune, a merge — changes the sample).

:func:`canonical` turns nested Python values into a JSON-able structure: tensors by digest,
objects by their ``cache_key()`` if they expose one, otherwise by qualified type name plus
their public tensor/float/str/bool attributes (one level). The behaviour of foreign callables
cannot be hashed in general: settings held elsewhere (ints, nested objects, closures) are not
seen, so two such patches may share a key — our own patch objects expose ``cache_key()``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import torch

SAMPLES_PER_TENSOR = 64


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t`` (any dtype, bf16/fp8 included) on CPU, C order."""
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of dtype, shape and every byte of ``t``."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


def _strided_sample(t: torch.Tensor, samples: int) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n <= samples:
        idx = torch.arange(n, device=flat.device)
    else:  # evenly spread, first and last included
        idx = torch.arange(samples, device=flat.device, dtype=torch.long) * (n - 1) // (samples - 1)
    return flat[idx].to(torch.float32)


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]], samples: int = SAMPLES_PER_TENSOR) -> str:
    """Hash of names, shapes, dtypes and ``samples`` strided values of every tensor.

    Values are gathered on each tensor's own device and moved to CPU once per device, so a
    full-size model on a GPU costs a few milliseconds.
    """
    meta = []
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for name, t in named:
        meta.append(f"{name}|{t.dtype}|{tuple(t.shape)}")
        if t.numel() and t.device.type != "meta":
            by_device.setdefault(t.device, []).append(_strided_sample(t, samples))
    h = hashlib.sha256("\n".join(meta).encode())
    for device in sorted(by_device, key=str):
        h.update(tensor_bytes(torch.cat(by_device[device])))
    return h.hexdigest()


def qualname(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def canonical(obj: Any, depth: int = 0, tensor_hash=tensor_digest) -> Any:
    """JSON-able, order-stable description of ``obj`` for hashing (see module docstring)."""
    if depth > 12:
        return "<deep>"
    rec = functools.partial(canonical, depth=depth + 1, tensor_hash=tensor_hash)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj) if math.isfinite(obj) else str(obj)
    if isinstance(obj, torch.Tensor):
        return {"tensor": tensor_hash(obj)}
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, dict):
        return {
            "dict": sorted(([json.dumps(rec(k), sort_keys=True), rec(v)] for k, v in obj.items()), key=lambda kv: kv[0])
        }
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [rec(v) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        return {"set": sorted(json.dumps(rec(v), sort_keys=True) for v in obj)}
    if callable(getattr(obj, "cache_key", None)) and not isinstance(obj, type):
        return {"object": qualname(obj), "cache_key": rec(obj.cache_key())}
    if isinstance(obj, functools.partial):
        return {"partial": rec(obj.func), "args": rec(obj.args), "kwargs": rec(obj.keywords)}
    if hasattr(obj, "__self__") and hasattr(obj, "__func__"):  # bound method
        return {"method": rec(obj.__func__), "of": rec(obj.__self__)}
    if isinstance(obj, torch.nn.Module):
        return {"module": qualname(obj), "state": fingerprint_tensors(sorted(obj.state_dict(keep_vars=True).items()))}
    if callable(obj) and hasattr(obj, "__qualname__"):  # functions, classes
        return {"callable": f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"}
    weights = getattr(obj, "weights", None)  # ComfyUI weight adapters (LoRA & co.)
    if isinstance(weights, (list, tuple)):
        return {"object": qualname(obj), "weights": rec(weights)}
    return {"object": qualname(obj), "attrs": {k: rec(v) for k, v in _settings(obj)}}


def _is_setting(value: Any) -> bool:
    if isinstance(value, (bool, float, str, torch.Tensor)):
        return True
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, (bool, float, str, torch.Tensor)) for v in value)
    )


def _settings(obj: Any) -> list[tuple[str, Any]]:
    """Public attributes of a foreign object that look like settings (tensors, floats, strings,
    booleans, lists of those). Ints are skipped: they are usually counters or indices that
    change as the object is used, and would make every run miss the cache."""
    return [(k, v) for k, v in sorted(getattr(obj, "__dict__", {}).items()) if not k.startswith("_") and _is_setting(v)]


def digest(obj: Any, tensor_hash=tensor_digest) -> str:
    """sha256 of :func:`canonical` ``(obj)``."""
    return sha256_hex(json.dumps(canonical(obj, tensor_hash=tensor_hash), sort_keys=True, separators=(",", ":")))


def sampled_tensor_hash(t: torch.Tensor) -> str:
    """Tensor hash for weight-sized tensors (LoRA patches): shape, dtype and a strided sample."""
    return fingerprint_tensors([("", t)])
