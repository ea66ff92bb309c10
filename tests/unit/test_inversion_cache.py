"""Disk/memory cache of the inversion and the hashes its keys are made of (pure torch)."""

import json
import logging
import os

import pytest
import torch

from comfyui_videoedit.inversion import identity
from comfyui_videoedit.inversion.cache import MANIFEST, TENSORS, DiskCache, MemoryCache, cache_key


def entry(seed=0, frames=3):
    g = torch.Generator().manual_seed(seed)
    return {
        "latents_vp": torch.randn(5, frames, 4, 8, 8, generator=g).half(),
        "x_T": torch.randn(frames, 4, 8, 8, generator=g),
        "sigmas": torch.linspace(3, 0, 5),
    }


def key_of(i: int) -> str:
    return identity.sha256_hex(str(i))


def test_store_and_load_round_trip_bit_exact(tmp_path):
    cache = DiskCache(tmp_path)
    tensors = entry()
    cache.store(key_of(0), tensors, {"info": {"steps": 4}})
    loaded = cache.load(key_of(0), {"x_T": ((3, 4, 8, 8), torch.float32)})
    assert loaded is not None
    for name, t in tensors.items():
        assert torch.equal(loaded.tensors[name], t) and loaded.tensors[name].dtype == t.dtype
    assert loaded.meta["info"] == {"steps": 4}
    assert [p.name for p in tmp_path.iterdir()] == [key_of(0)]  # no temp folders left behind
    assert cache.load(key_of(1)) is None  # plain miss


def _corrupt_truncate(folder):
    path = folder / TENSORS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_flip_byte(folder):
    path = folder / TENSORS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_manifest_shape(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["tensors"]["x_T"]["shape"] = [9, 4, 8, 8]
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _corrupt_manifest_json(folder):
    (folder / MANIFEST).write_text("{not json")


@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncate, _corrupt_flip_byte, _corrupt_manifest_shape, _corrupt_manifest_json]
)
def test_corrupt_entries_are_never_trusted(tmp_path, caplog, corrupt):
    cache = DiskCache(tmp_path)
    cache.store(key_of(0), entry())
    corrupt(tmp_path / key_of(0))
    with caplog.at_level(logging.WARNING):
        assert cache.load(key_of(0)) is None
    assert "stale or corrupt" in caplog.text
    assert not (tmp_path / key_of(0)).exists()  # removed, so the recomputation rewrites it


def test_expected_shapes_are_checked(tmp_path, caplog):
    cache = DiskCache(tmp_path)
    cache.store(key_of(0), entry(frames=3))
    with caplog.at_level(logging.WARNING):
        assert cache.load(key_of(0), {"x_T": ((4, 4, 8, 8), None)}) is None
    assert "expected" in caplog.text


def test_eviction_removes_least_recently_used_first(tmp_path):
    cache = DiskCache(tmp_path)
    for i in range(3):
        cache.store(key_of(i), entry(i))
        manifest = json.loads((tmp_path / key_of(i) / MANIFEST).read_text())
        manifest["last_used"] = 1000.0 + i  # deterministic ages
        (tmp_path / key_of(i) / MANIFEST).write_text(json.dumps(manifest))
    size = cache.entries()[0][1]
    assert cache.load(key_of(0)) is not None  # touching entry 0 makes it the most recent
    cache.limit_bytes = int(2.5 * size)
    cache.store(key_of(3), entry(3))
    left = {k for k, _, _ in cache.entries()}
    assert left == {key_of(0), key_of(3)}
    assert cache.total_bytes() <= cache.limit_bytes


def test_newest_entry_is_kept_even_over_the_limit(tmp_path):
    cache = DiskCache(tmp_path, limit_bytes=1)
    cache.store(key_of(0), entry(0))
    cache.store(key_of(1), entry(1))
    assert [k for k, _, _ in cache.entries()] == [key_of(1)]


def test_clear_removes_entries_only(tmp_path):
    cache = DiskCache(tmp_path)
    cache.store(key_of(0), entry())
    (tmp_path / "notes.txt").write_text("user file")
    (tmp_path / "other_folder").mkdir()
    assert cache.clear() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other_folder"]


def test_an_existing_key_is_replaced_atomically(tmp_path):
    cache = DiskCache(tmp_path)
    cache.store(key_of(0), entry(0))
    cache.store(key_of(0), entry(1))
    assert torch.equal(cache.load(key_of(0)).tensors["x_T"], entry(1)["x_T"])
    assert len(os.listdir(tmp_path)) == 1


def test_memory_cache_is_lru_bounded_by_bytes():
    mem = MemoryCache()
    mem.put("a", 1, 10, limit_bytes=25)
    mem.put("b", 2, 10, limit_bytes=25)
    assert mem.get("a") == 1  # a becomes most recent
    mem.put("c", 3, 10, limit_bytes=25)
    assert "b" not in mem and mem.get("a") == 1 and mem.get("c") == 3
    mem.clear()
    assert len(mem) == 0


def test_cache_key_depends_on_every_part():
    base = {
        "latent": "L",
        "weights_id": "W",
        "patches_id": "P",
        "conditioning": "C",
        "steps": 50,
        "inversion_steps": 0,
        "scheduler": "ddim_uniform",
        "sigmas": [1.0, 0.0],
    }
    k = cache_key(base)
    assert k == cache_key(dict(base))
    for name, value in [
        ("latent", "L2"),
        ("weights_id", "W2"),
        ("patches_id", "P2"),
        ("conditioning", "C2"),
        ("steps", 49),
        ("inversion_steps", 500),
        ("scheduler", "normal"),
        ("sigmas", [1.5, 0.0]),
    ]:
        assert cache_key({**base, name: value}) != k, name


# -- identity ------------------------------------------------------------------------------------
def test_tensor_digest_sees_every_element_dtype_and_shape():
    t = torch.arange(1000, dtype=torch.float32)
    d = identity.tensor_digest(t)
    u = t.clone()
    u[537] += 1e-3
    assert identity.tensor_digest(u) != d
    assert identity.tensor_digest(t.half()) != d
    assert identity.tensor_digest(t.reshape(10, 100)) != d
    assert identity.tensor_digest(t.clone()) == d
    assert identity.tensor_digest(torch.ones(3, dtype=torch.bfloat16))  # any dtype hashes


def test_weight_fingerprint_samples_values_and_sees_shapes_and_names():
    g = torch.Generator().manual_seed(0)
    w = {"a.weight": torch.randn(64, 32, generator=g), "b.bias": torch.randn(7, generator=g)}
    fp = identity.fingerprint_tensors(sorted(w.items()))
    assert fp == identity.fingerprint_tensors(sorted((k, v.clone()) for k, v in w.items()))
    scaled = {k: v * 1.01 for k, v in w.items()}  # e.g. a merge or fine-tune changes many values
    assert identity.fingerprint_tensors(sorted(scaled.items())) != fp
    renamed = {"a.weight2": w["a.weight"], "b.bias": w["b.bias"]}
    assert identity.fingerprint_tensors(sorted(renamed.items())) != fp
    reshaped = {"a.weight": w["a.weight"].reshape(32, 64), "b.bias": w["b.bias"]}
    assert identity.fingerprint_tensors(sorted(reshaped.items())) != fp


class Keyed:
    def __init__(self, key):
        self.key = key

    def cache_key(self):
        return self.key

    def __call__(self, *a):
        return a


class Foreign:
    def __init__(self, scale, embeds, calls=0):
        self.scale = scale
        self.embeds = embeds
        self.calls = calls  # ints (counters) are not part of the identity
        self._cache = torch.randn(3)  # private state neither

    def __call__(self, *a):
        return a


def plain_function(*a):
    return a


def test_canonical_identity_of_patch_objects():
    e = torch.ones(2, 3)
    d = identity.digest
    assert d(Keyed("x")) == d(Keyed("x")) != d(Keyed("y"))
    assert d(Foreign(0.5, e)) == d(Foreign(0.5, e.clone(), calls=7))
    assert d(Foreign(0.5, e)) != d(Foreign(0.6, e))
    assert d(Foreign(0.5, e)) != d(Foreign(0.5, e * 2))
    assert d(plain_function) == d(plain_function) != d(Keyed("x"))
    assert d({"patches": {"attn1_patch": [plain_function]}}) != d({"patches": {"attn1_patch": []}})
    assert d({"a": 1, "b": 2}) == d({"b": 2, "a": 1})
    assert d([("output", 4, 0)]) != d([("output", 4, 1)])


def test_weight_fingerprint_of_large_tensors_stays_in_bounds():
    """Index arithmetic is integer: float32 linspace would round n-1 up to n for ~3e7 elements."""
    big = torch.zeros(29_491_200, dtype=torch.float16)
    a = identity.fingerprint_tensors([("w", big)])
    big[-1] = 1.0  # the last element is always sampled
    assert identity.fingerprint_tensors([("w", big)]) != a
