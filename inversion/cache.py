"""The inversion cache: a process-wide RAM cache and a disk cache that survives restarts.

Disk layout, one folder per key under the cache root (``<ComfyUI output>/videoedit_cache``;
ComfyUI wipes its temp dir at every start, so the output dir is used)::

    <root>/<key>/tensors.safetensors   every tensor of the entry
    <root>/<key>/manifest.json         format version, key, file sizes + sha256, tensor shapes and
                                       dtypes, free metadata (sigmas, model ids, …), created and
                                       last-used times (Unix seconds), and the sha256 of all of it
                                       but the last-used time
    <root>/<key>/.videoedit_cache_entry  marker: the pack wrote this folder

Entries are written into a temporary folder and renamed into place, so a reader never sees a
half-written entry. On load every file is checked (size, sha256, tensor names, shapes and
dtypes against the manifest and the caller's expectations); any mismatch logs a warning,
deletes the entry and reports a miss: a stale or corrupt entry is never trusted (the manifest's
own digest covers its metadata too, so an edited ``meta`` is a miss, not a hit that fails
later). A size limit evicts least-recently-used entries first. Clearing and eviction delete
only folders the pack wrote (the marker file, or a manifest of the first format naming its
own folder), never anything else a user keeps under the cache root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .identity import canonical, sha256_hex

log = logging.getLogger(__name__)

CACHE_DIR_NAME = "videoedit_cache"
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
MARKER = ".videoedit_cache_entry"
KEY_VERSION = 1  # part of every key: changing it orphans every entry
FORMAT_VERSION = 2  # the manifest's layout; 2 added the manifest digest and the marker file
_KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")


def cache_key(parts: Mapping[str, Any]) -> str:
    """Hex key of everything that determines the cached result (plus the key version)."""
    body = {"format": KEY_VERSION, **parts}
    return sha256_hex(json.dumps(canonical(body), sort_keys=True, separators=(",", ":")))


@dataclass
class CacheEntry:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the whole manifest except its last-used time (rewritten by every hit) and the
    digest itself."""
    body = {k: v for k, v in manifest.items() if k not in ("last_used", "digest")}
    return sha256_hex(json.dumps(body, sort_keys=True, separators=(",", ":")))


def is_pack_entry(folder: Path) -> bool:
    """Whether the pack wrote ``folder``: its marker file, or (entries of the first format,
    before the marker) a manifest of that format naming the folder as its key."""
    if (folder / MARKER).is_file():
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == 1
        and manifest.get("key") == folder.name
        and TENSORS in (manifest.get("files") or {})
    )


class CorruptEntry(Exception):
    pass


class DiskCache:
    """Safetensors + JSON manifest entries under ``root``; ``limit_bytes`` 0 = unlimited."""

    def __init__(self, root: str | os.PathLike, limit_bytes: int = 0):
        self.root = Path(root)
        self.limit_bytes = int(limit_bytes)
        self.notes: list[str] = []  # what the user should see (recomputed entries), for the node's UI

    # -- reading -------------------------------------------------------------------------------
    def load(
        self, key: str, expect: Mapping[str, tuple[tuple[int, ...] | None, torch.dtype | None]] | None = None
    ) -> CacheEntry | None:
        """The entry for ``key``, or None (miss, or a bad entry that was logged and removed).

        ``expect``: tensor name -> (shape or None, dtype or None) the caller requires.
        """
        folder = self.root / key
        if not (folder / MANIFEST).is_file():
            return None
        try:
            entry = self._read(folder, key, expect or {})
        except CorruptEntry as err:
            text = f"cache entry {key[:16]} is stale or corrupt ({err}): recomputing"
            log.warning("VideoEdit %s", text)
            self.notes.append(text)
            self.remove(key)
            return None
        try:  # LRU bookkeeping; a read-only cache dir still serves hits
            _write_json_atomic(folder / MANIFEST, {**entry.meta["_manifest"], "last_used": time.time()})
        except OSError:
            pass
        return entry

    def _read(self, folder: Path, key: str, expect: Mapping) -> CacheEntry:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise CorruptEntry(f"unreadable manifest: {err}") from None
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            raise CorruptEntry("the manifest names another key")
        if manifest.get("format") != FORMAT_VERSION:
            raise CorruptEntry(f"manifest format {manifest.get('format')}, this version writes {FORMAT_VERSION}")
        if manifest.get("digest") != manifest_digest(manifest):
            raise CorruptEntry("the manifest was edited (its digest does not match its content)")
        for name, info in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise CorruptEntry(f"{name} is missing")
            if path.stat().st_size != info.get("bytes"):
                raise CorruptEntry(f"{name} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')}")
            if _file_sha256(path) != info.get("sha256"):
                raise CorruptEntry(f"{name} does not match its sha256")
        if TENSORS not in manifest.get("files", {}):
            raise CorruptEntry(f"the manifest lists no {TENSORS}")
        try:
            tensors = load_file(str(folder / TENSORS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CorruptEntry(f"unreadable tensors: {err}") from None
        declared = manifest.get("tensors", {})
        if set(declared) != set(tensors):
            raise CorruptEntry(f"tensor names {sorted(tensors)} differ from the manifest's {sorted(declared)}")
        for name, t in tensors.items():
            if list(t.shape) != declared[name]["shape"] or str(t.dtype) != declared[name]["dtype"]:
                raise CorruptEntry(f"{name} is {tuple(t.shape)} {t.dtype}, the manifest says {declared[name]}")
        for name, (shape, dtype) in expect.items():
            if name not in tensors:
                raise CorruptEntry(f"no tensor {name}")
            if shape is not None and tuple(tensors[name].shape) != tuple(shape):
                raise CorruptEntry(f"{name} is {tuple(tensors[name].shape)}, expected {tuple(shape)}")
            if dtype is not None and tensors[name].dtype != dtype:
                raise CorruptEntry(f"{name} is {tensors[name].dtype}, expected {dtype}")
        meta = dict(manifest.get("meta", {}))
        meta["_manifest"] = manifest
        return CacheEntry(tensors, meta)

    # -- writing -------------------------------------------------------------------------------
    def store(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
        """Write an entry atomically (temp folder + rename), then evict down to the limit."""
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        if final.exists() and not is_pack_entry(final):
            raise OSError(f"{final} exists and was not written by VideoEdit; it is left alone")
        tmp = self.root / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            (tmp / MARKER).write_text(key)
            cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            save_file(cpu, str(tmp / TENSORS))
            now = time.time()
            manifest = {
                "format": FORMAT_VERSION,
                "key": key,
                "created": now,
                "last_used": now,
                "files": {TENSORS: {"bytes": (tmp / TENSORS).stat().st_size, "sha256": _file_sha256(tmp / TENSORS)}},
                "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in cpu.items()},
                "meta": dict(meta or {}),
            }
            manifest["digest"] = manifest_digest(json.loads(json.dumps(manifest)))  # as it will read back
            _write_json_atomic(tmp / MANIFEST, manifest)
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:  # another process committed the same key meanwhile: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=key)
        return final

    # -- housekeeping --------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int, float]]:
        """``(key, bytes, last_used)`` of every committed entry, oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if not (folder.is_dir() and _KEY_RE.match(folder.name) and is_pack_entry(folder)):
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            try:
                last = float(json.loads((folder / MANIFEST).read_text()).get("last_used", 0.0))
            except (OSError, ValueError):
                last = 0.0  # broken entries go first
            out.append((folder.name, size, last))
        return sorted(out, key=lambda e: e[2])

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least-recently-used entries until the total fits ``limit_bytes``."""
        if self.limit_bytes <= 0:
            return []
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for key, size, _ in entries:
            if total <= self.limit_bytes:
                break
            if key == keep:
                continue
            self.remove(key)
            total -= size
            removed.append(key)
        if removed:
            log.info(
                "VideoEdit cache: evicted %d entr%s to stay under %.0f MB",
                len(removed),
                "y" if len(removed) == 1 else "ies",
                self.limit_bytes / 2**20,
            )
        return removed

    def remove(self, key: str) -> None:
        folder = self.root / key
        if _KEY_RE.match(key) and folder.is_dir() and is_pack_entry(folder):
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> int:
        """Remove every entry the pack wrote (and its leftover temp folders); every other file
        or folder under the root is left alone."""
        if not self.root.is_dir():
            return 0
        n = 0
        for folder in self.root.iterdir():
            ours = _KEY_RE.match(folder.name) or folder.name.startswith(".tmp-")
            if ours and folder.is_dir() and not folder.is_symlink() and is_pack_entry(folder):
                shutil.rmtree(folder, ignore_errors=True)
                n += 1
        return n


class MemoryCache:
    """Least-recently-used values (kept as is, not copied) bounded by total bytes."""

    def __init__(self):
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: Any, nbytes: int, limit_bytes: int = 0) -> None:
        self._items[key] = (value, int(nbytes))
        self._items.move_to_end(key)
        if limit_bytes > 0:
            while len(self._items) > 1 and sum(n for _, n in self._items.values()) > limit_bytes:
                self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


CACHE_MODES = ("off", "memory", "disk")


class TieredCache:
    """The cache policy of one request: RAM (``memory`` and ``disk`` modes), then disk (``disk``
    mode), else ``compute()``; what the user should see lands in ``notes`` (for the node's UI).

    ``mode``: one of :data:`CACHE_MODES`. ``limit_bytes`` (0 = none) bounds the RAM cache and,
    separately, the disk cache; a value larger than the limit is kept on disk only.
    ``encode(value) -> (tensors, meta)`` and ``decode(entry) -> value`` convert between values
    and disk entries; ``decode`` raises ``ValueError``/``KeyError``/``TypeError`` for an entry
    that passed the integrity checks but cannot serve this request (it is then recomputed).
    ``nbytes(value)``: RAM a value takes. ``expect``: tensor shapes/dtypes a disk entry must have.
    """

    def __init__(
        self,
        mode: str,
        memory: MemoryCache,
        root: str | os.PathLike | None,
        *,
        limit_bytes: int = 0,
        encode,
        decode,
        nbytes,
        expect: Mapping | None = None,
        notes: list[str] | None = None,
    ):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache_mode: '{mode}' is not one of {CACHE_MODES}")
        self.mode, self.memory, self.root, self.limit = mode, memory, root, int(limit_bytes)
        self.encode, self.decode, self.nbytes, self.expect = encode, decode, nbytes, expect
        self.notes = [] if notes is None else notes
        self.disk = DiskCache(root, self.limit) if mode == "disk" else None

    def clear(self) -> int:
        """Empty the RAM cache and every entry the pack wrote under the root; entries removed."""
        self.memory.clear()
        return DiskCache(self.root).clear()

    def _fits_memory(self, value: Any) -> bool:
        return not (self.limit and self.nbytes(value) > self.limit)

    def get_or_compute(self, key: str, compute) -> tuple[Any, bool]:
        """``(value, from_cache)``: the cached value of ``key``, or ``compute()`` stored by the policy."""
        if self.mode != "off":
            hit = self.memory.get(key)
            if hit is not None:
                log.info("VideoEdit cache: memory hit %s", key[:12])
                return hit, True
        if self.disk is not None:
            hit = self._from_disk(key)
            if hit is not None:
                return hit, True
        value = compute()
        if self.mode == "memory" or (self.mode == "disk" and self._fits_memory(value)):
            self.memory.put(key, value, self.nbytes(value), self.limit)
        elif self.mode == "disk":
            self.notes.append(
                f"inversion cache: {self.nbytes(value) / 2**20:.0f} MB exceed cache_limit_mb "
                f"{self.limit // 2**20}: kept on disk only (raise cache_limit_mb to keep a RAM copy)"
            )
        if self.disk is not None:
            tensors, meta = self.encode(value)
            try:
                self.disk.store(key, tensors, meta)
            except OSError as err:
                log.warning("VideoEdit cache: could not write the disk cache under %s (%s)", self.disk.root, err)
        return value, False

    def _from_disk(self, key: str) -> Any | None:
        entry = self.disk.load(key, self.expect)
        self.notes.extend(self.disk.notes)
        self.disk.notes.clear()
        if entry is None:
            return None
        try:
            value = self.decode(entry)
        except (ValueError, KeyError, TypeError) as err:
            text = f"cache entry {key[:12]} {err}: recomputing"
            log.warning("VideoEdit %s", text)
            self.notes.append(text)
            self.disk.remove(key)
            return None
        if self._fits_memory(value):
            self.memory.put(key, value, self.nbytes(value), self.limit)
        log.info("VideoEdit cache: disk hit %s", key[:12])
        return value
