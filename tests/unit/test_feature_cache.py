"""The feature cache on its own (no ComfyUI): lossless storage, the cap, groups, disk entries,
and the TokenFlow / PnP feature naming round trips."""

import torch

from comfyui_videoedit.attention.pnp import pnp_features, pnp_from_features
from comfyui_videoedit.attention.tokenflow_patch import StepState, fill_state, state_features
from comfyui_videoedit.inversion.feature_cache import FeatureCache, _MemoryStore, pack, unpack


def _features(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return {
        "q|output.4.0": torch.randn(2, n, 8, generator=g),
        "half": torch.randn(3, 4, generator=g).half(),
        "idx": torch.randint(0, 30000, (3, 2, n), generator=g),  # int64 token indices
        "big": torch.tensor([0, 2**40]),  # does not fit int32
    }


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_pack_is_lossless_and_narrows_indices():
    f = _features()
    stored, dtypes = pack(f)
    assert stored["idx"].dtype == torch.int16 and stored["big"].dtype == torch.int64
    assert stored["half"].dtype == torch.float16 and stored["q|output.4.0"].dtype == torch.float32
    _same(unpack(stored, dtypes, "cpu"), f)
    f["q|output.4.0"][0, 0, 0] = 99.0  # the stored copy is not an alias of the live tensor
    assert stored["q|output.4.0"][0, 0, 0] != 99.0


def test_memory_groups_hits_and_keys():
    cache = FeatureCache("memory", "inv", memory=_MemoryStore())
    a, b = cache.group("tokenflow seed 1"), cache.group("tokenflow seed 2")
    assert a.key != b.key
    e = a.entry_key(step=0, frames=[0, 1])
    assert e != a.entry_key(step=1, frames=[0, 1]) and e != b.entry_key(step=0, frames=[0, 1])
    assert a.get(e, "cpu") is None
    assert a.put(e, _features())
    _same(a.get(e, "cpu"), _features())
    assert b.get(b.entry_key(step=0, frames=[0, 1]), "cpu") is None
    assert (a.hits, a.misses, a.stored) == (1, 1, 1)
    other = FeatureCache("memory", "another inversion", memory=cache.memory).group("tokenflow seed 1")
    assert other.key != a.key


def test_off_stores_nothing():
    g = FeatureCache("off", "inv", memory=_MemoryStore()).group("m")
    assert not g.put("e", _features()) and g.get("e", "cpu") is None


def test_cap_drops_other_groups_first_then_refuses():
    size = sum(t.numel() * t.element_size() for t in pack(_features())[0].values())
    store = _MemoryStore()
    cache = FeatureCache("memory", "inv", limit_bytes=2 * size, memory=store)
    old, new = cache.group("old"), cache.group("new")
    assert old.put("e1", _features()) and old.put("e2", _features(1))
    assert new.put("e1", _features(2))  # makes room by dropping the other group
    assert old.key not in store.groups and old.get("e1", "cpu") is None
    assert new.put("e2", _features(3))
    assert not new.put("e3", _features(4))  # its own entries are never evicted: refused
    assert new.full and any("cap" in n for n in cache.notes)
    _same(new.get("e1", "cpu"), _features(2))


def test_disk_round_trip_in_a_new_process(tmp_path):
    cache = FeatureCache("disk", "inv", root=tmp_path, memory=_MemoryStore())
    g = cache.group("m")
    e = g.entry_key(step=3, frames=[4])
    assert g.put(e, _features())
    later = FeatureCache("disk", "inv", root=tmp_path, memory=_MemoryStore()).group("m")  # empty RAM
    _same(later.get(e, "cpu"), _features())
    (tmp_path / "keep_me.txt").write_text("a user's file")
    assert FeatureCache("disk", "inv", root=tmp_path, memory=_MemoryStore()).clear() == 1
    assert (tmp_path / "keep_me.txt").read_text() == "a user's file"
    assert FeatureCache("disk", "inv", root=tmp_path, memory=_MemoryStore()).group("m").get(e, "cpu") is None


def _state(inject_attn=True, inject_res=True):
    return StepState(
        sigma=1.0,
        frames=(0, 1, 2),
        kf_pos=torch.tensor([1]),
        slots=torch.zeros(3, 2, dtype=torch.long),
        weights=torch.ones(3),
        inject_attn=inject_attn,
        inject_res=inject_res,
    )


def test_tokenflow_state_round_trip():
    st = _state()
    g = torch.Generator().manual_seed(1)
    st.fields = {("output", 4, 0): {(0, 1): torch.randint(0, 9, (2, 2, 9), generator=g), (2,): torch.zeros(1, 2, 9)}}
    st.kf_src_qk = {("output", 5, 1): (torch.randn(1, 9, 4, generator=g), torch.randn(1, 9, 4, generator=g))}
    st.kf_src_res = {("output", 4): torch.randn(1, 3, 2, 2, generator=g)}
    st.src_res = {("output", 4): {(0, 1): torch.randn(2, 3, 2, 2, generator=g)}}
    st.kf_src_n = {("output", 4, 0): torch.randn(1, 9, 4)}  # not consumed by the edit rows: not stored
    feats = state_features(st)
    back = _state()
    fill_state(back, unpack(*pack(feats), "cpu"))
    for name in ("fields", "kf_src_res", "src_res"):
        assert repr(getattr(back, name).keys()) == repr(getattr(st, name).keys())
    assert torch.equal(back.fields[("output", 4, 0)][(0, 1)], st.fields[("output", 4, 0)][(0, 1)])
    assert torch.equal(back.src_res[("output", 4)][(0, 1)], st.src_res[("output", 4)][(0, 1)])
    q, k = back.kf_src_qk[("output", 5, 1)]
    assert torch.equal(q, st.kf_src_qk[("output", 5, 1)][0]) and torch.equal(k, st.kf_src_qk[("output", 5, 1)][1])
    assert not back.kf_src_n
    late = _state(inject_attn=False, inject_res=False)  # after the injection steps: only the fields
    late.fields, late.kf_src_qk, late.src_res = st.fields, st.kf_src_qk, st.src_res
    assert all(n.startswith("fields|") for n in state_features(late))


def test_pnp_round_trip():
    g = torch.Generator().manual_seed(2)
    qk = {("output", 6, 0): (torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g))}
    res = {("output", 3): torch.randn(2, 5, 2, 2, generator=g)}
    qk2, res2 = pnp_from_features(pnp_features(qk, res))
    assert list(qk2) == list(qk) and list(res2) == list(res)
    assert all(torch.equal(a, b) for a, b in zip(qk2[("output", 6, 0)], qk[("output", 6, 0)], strict=True))
    assert torch.equal(res2[("output", 3)], res[("output", 3)])


def test_disk_cap_drops_older_groups_and_keeps_count_without_rescanning(tmp_path):
    size = sum(t.numel() * t.element_size() for t in pack(_features())[0].values())
    cache = FeatureCache("disk", "inv", limit_bytes=int(2.5 * size), root=tmp_path, memory=_MemoryStore())
    old, new = cache.group("old"), cache.group("new")
    e1, e2 = old.entry_key(step=0), old.entry_key(step=1)
    assert old.put(e1, _features()) and old.put(e2, _features(1))
    assert new.put(new.entry_key(step=0), _features(2))  # past the cap: the older group's folder goes
    assert not (tmp_path / old.key).exists() and (tmp_path / new.key).is_dir()
    fresh = FeatureCache("disk", "inv", root=tmp_path, memory=_MemoryStore())
    assert fresh.group("old").get(e1, "cpu") is None
    _same(fresh.group("new").get(new.entry_key(step=0), "cpu"), _features(2))
