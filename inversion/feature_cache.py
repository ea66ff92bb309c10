"""Feature cache: the source-branch features an edit consumes, per step, kept for the next edit.

TokenFlow and FLATTEN's PnP run a *source pass* at every step of every edit: the cached inversion
latents through the UNet with the source prompt, only to read features from it (TokenFlow's NN
fields, PnP q/k and ResBlock residuals). Those features depend on the inversion and the edit's
settings, never on the target prompt, so the second of five target prompts on one clip can read
them instead of running the pass again.

Layout. A **group** is one (inversion, method settings, model patches) combination; its
**entries** are the features of one UNet call (step, frames, dtype). Modes:

- ``memory``: CPU RAM of this process (kept across prompts while ComfyUI runs);
- ``disk``: ``<root>/<group>/<entry>/`` safetensors entries (written with ``cache.DiskCache``:
  manifest, digest, marker; survives restarts) plus the RAM copy as long as it fits.

``limit_bytes`` caps the features of all groups in a mode. A new entry first makes room by dropping
the least recently used *other* groups; when this group alone would pass the cap the entry is not
stored and that call recomputes (and keeps doing so, said once in ``notes``) — a cached edit is never
partly evicted by its own later steps.

Values are stored losslessly: floats in the dtype the UNet computed them in (fp16 on a GPU in
half precision, so the bytes reported for fp16 are what a user's GPU run stores), integer index
tables in the narrowest integer type that holds them (int16 for token indices below 32768), restored
to their original dtype. So an edit served from the cache equals the edit that filled it.

An entry is committed only after the UNet call that produced it completed (the caller's job), so an
interrupted run never leaves a partial entry.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .cache import DiskCache, cache_key

log = logging.getLogger(__name__)

FEATURE_CACHE_MODES = ("off", "memory", "disk")
FEATURES_DIR_NAME = "features"
GROUP_MARKER = ".videoedit_feature_group"

Features = dict[str, torch.Tensor]


def _narrow_int(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the narrowest of int16/int32 that holds its values (else as is)."""
    if t.dtype not in (torch.int64, torch.int32) or t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype)
    return t


def pack(features: Mapping[str, torch.Tensor]) -> tuple[Features, dict[str, str]]:
    """CPU copies for storage and the original dtype of each (``{name: "torch.int64"}``)."""
    stored, dtypes = {}, {}
    for name, t in features.items():
        t = t.detach()
        dtypes[name] = str(t.dtype)
        stored[name] = _narrow_int(t).to("cpu", copy=True).contiguous()  # never an alias of a live tensor
    return stored, dtypes


def unpack(stored: Mapping[str, torch.Tensor], dtypes: Mapping[str, str], device) -> Features:
    """The tensors on ``device`` in their original dtypes."""
    out = {}
    for name, t in stored.items():
        dtype = getattr(torch, dtypes[name].removeprefix("torch."))
        out[name] = t.to(device=device, dtype=dtype)
    return out


def nbytes(features: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


class _MemoryStore:
    """``group -> OrderedDict(entry -> (stored, dtypes, bytes))``, groups in LRU order."""

    def __init__(self):
        self.groups: OrderedDict[str, OrderedDict[str, tuple[Features, dict, int]]] = OrderedDict()

    def bytes_of(self, group: str) -> int:
        return sum(n for _, _, n in self.groups.get(group, {}).values())

    def total(self) -> int:
        return sum(self.bytes_of(g) for g in self.groups)

    def get(self, group: str, key: str):
        entries = self.groups.get(group)
        if entries is None or key not in entries:
            return None
        self.groups.move_to_end(group)
        return entries[key]

    def make_room(self, group: str, need: int, limit: int) -> bool:
        """Drop least recently used other groups until ``need`` more bytes fit under ``limit``."""
        if limit <= 0:
            return True
        for other in [g for g in self.groups if g != group]:
            if self.total() + need <= limit:
                break
            del self.groups[other]
        return self.total() + need <= limit

    def put(self, group: str, key: str, stored: Features, dtypes: dict, size: int) -> None:
        self.groups.setdefault(group, OrderedDict())[key] = (stored, dtypes, size)
        self.groups.move_to_end(group)

    def clear(self) -> None:
        self.groups.clear()


MEMORY = _MemoryStore()  # one per process: what ComfyUI keeps between prompts


class FeatureCache:
    """The feature cache of one inversion (what DDIM Inversion's ``feature_cache`` option makes).

    Args:
        mode: one of :data:`FEATURE_CACHE_MODES` (``off`` stores nothing and never hits).
        inversion_key: the inversion's cache key (its latents, model, prompt and schedule).
        limit_bytes: cap over all groups of the mode (0 = none).
        root: the disk folder (``disk`` mode), e.g. ``<output>/videoedit_cache/features``.
    """

    def __init__(
        self,
        mode: str,
        inversion_key: str,
        limit_bytes: int = 0,
        root: str | Path | None = None,
        memory: _MemoryStore = MEMORY,
    ):
        if mode not in FEATURE_CACHE_MODES:
            raise ValueError(f"feature_cache: '{mode}' is not one of {FEATURE_CACHE_MODES}")
        if mode == "disk" and root is None:
            raise ValueError("feature_cache: disk mode needs a folder")
        self.mode, self.inversion_key, self.limit = mode, inversion_key, int(limit_bytes)
        self.root = None if root is None else Path(root)
        self.memory = memory
        self.notes: list[str] = []
        self._disk_bytes: int | None = None  # running total of the disk groups (None: not scanned yet)

    def __deepcopy__(self, memo):  # shared by every model and record that carries it
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def describe(self) -> str:
        cap = f", cap {self.limit / 2**20:.0f} MB" if self.limit else ""
        return f"feature cache {self.mode}{cap}"

    def group(self, method_key: str) -> FeatureGroup:
        """The entries of one method setting on this inversion."""
        return FeatureGroup(
            self, cache_key({"what": "features", "inversion": self.inversion_key, "method": method_key})
        )

    # -- disk ----------------------------------------------------------------------------------------
    def _disk(self, group: str) -> DiskCache:
        return DiskCache(self.root / group)  # no limit of its own: the cap is checked per group below

    def _disk_make_room(self, group: str, need: int) -> bool:
        """Whether ``need`` more bytes fit on disk under the cap, after dropping least recently
        used other groups if they must go. The folders are scanned once, and again only when the
        running total says the cap would be passed (not at every step)."""
        if self.limit <= 0:
            return True
        if self._disk_bytes is None:
            self._disk_bytes = sum(size for _, size, _ in _disk_groups(self.root))
        if self._disk_bytes + need <= self.limit:
            self._disk_bytes += need
            return True
        groups = _disk_groups(self.root)  # the precise sizes, oldest first
        total = sum(size for _, size, _ in groups)
        for name, size, _ in groups:
            if total + need <= self.limit:
                break
            if name != group:
                shutil.rmtree(self.root / name, ignore_errors=True)
                total -= size
        fits = total + need <= self.limit
        self._disk_bytes = total + need * fits
        return fits

    def clear(self) -> int:
        """Drop every group (RAM, and on disk every folder the pack wrote); groups removed."""
        self._disk_bytes = None
        return clear_features(self.root, self.memory)


def _disk_groups(root: Path | None) -> list[tuple[str, int, float]]:
    """``(group, bytes, last_used)`` of the groups the pack wrote under ``root``, oldest first."""
    out = []
    if root is None or not root.is_dir():
        return out
    for folder in root.iterdir():
        if folder.is_dir() and not folder.is_symlink() and (folder / GROUP_MARKER).is_file():
            entries = DiskCache(folder).entries()
            last = max((e[2] for e in entries), default=0.0)
            out.append((folder.name, sum(e[1] for e in entries), last))
    return sorted(out, key=lambda g: g[2])


def clear_features(root: str | Path | None, memory: _MemoryStore = MEMORY) -> int:
    """Drop every feature group in RAM and every group folder the pack wrote under ``root``
    (other files there are left alone); groups removed."""
    n = len(memory.groups)
    memory.clear()
    root = None if root is None else Path(root)
    for name, _, _ in _disk_groups(root):
        shutil.rmtree(root / name, ignore_errors=True)
        n += 1
    return n


class FeatureGroup:
    """The entries of one (inversion, method settings) group; what a patch talks to."""

    def __init__(self, cache: FeatureCache, key: str):
        self.cache, self.key = cache, key
        self.full = False  # the cap was hit: later entries of this run are recomputed
        self.hits = self.misses = self.stored = 0

    def __deepcopy__(self, memo):
        return self

    def entry_key(self, **parts: Any) -> str:
        return cache_key({"group": self.key, **parts})

    def get(self, entry: str, device) -> Features | None:
        """The features of ``entry`` on ``device``, or None (recompute)."""
        c = self.cache
        if not c.enabled:
            return None
        item = c.memory.get(self.key, entry)
        if item is None and c.mode == "disk":
            item = self._from_disk(entry)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        return unpack(item[0], item[1], device)

    def _from_disk(self, entry: str):
        disk = self.cache._disk(self.key)
        found = disk.load(entry)
        self.cache.notes.extend(disk.notes)
        if found is None:
            return None
        dtypes = found.meta.get("dtypes")
        if not isinstance(dtypes, dict) or set(dtypes) != set(found.tensors):
            disk.remove(entry)
            return None
        item = (found.tensors, dtypes, nbytes(found.tensors))
        if self.cache.memory.make_room(self.key, item[2], self.cache.limit):
            self.cache.memory.put(self.key, entry, *item)
        return item

    def put(self, entry: str, features: Mapping[str, torch.Tensor]) -> bool:
        """Store ``features`` under ``entry`` (call once the UNet call that made them completed);
        False when the cap leaves no room (the entry will be recomputed next time)."""
        c = self.cache
        if not c.enabled or self.full:
            return False
        stored, dtypes = pack(features)
        size = nbytes(stored)
        in_memory = c.memory.make_room(self.key, size, c.limit)
        if in_memory:
            c.memory.put(self.key, entry, stored, dtypes, size)
        on_disk = False
        if c.mode == "disk":
            on_disk = c._disk_make_room(self.key, size)
            if on_disk:
                folder = c.root / self.key
                try:
                    if not (folder / GROUP_MARKER).is_file():  # a new group folder
                        folder.mkdir(parents=True, exist_ok=True)
                        (folder / GROUP_MARKER).write_text(json.dumps({"inversion": c.inversion_key}))
                    c._disk(self.key).store(entry, stored, {"dtypes": dtypes})
                except OSError as err:
                    log.warning("VideoEdit feature cache: could not write under %s (%s)", folder, err)
                    on_disk = False
        if not (in_memory or on_disk):
            self.full = True
            text = (
                f"feature cache: the cap of {c.limit / 2**20:.0f} MB is reached; the remaining steps "
                "recompute their source pass (raise feature_cache_mb to keep them)"
            )
            log.warning("VideoEdit %s", text)
            c.notes.append(text)
            return False
        self.stored += 1
        return True
