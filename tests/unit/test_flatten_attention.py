"""FLATTEN attention (attention/flatten.py, attention/flatten_patch.py) against naive
references written here; the patch is driven with hand-made ``extra_options`` (no host)."""

import math

import pytest
import torch

from comfyui_videoedit.attention.extended import extended_attention
from comfyui_videoedit.attention.flatten import (
    anchor_positions,
    anchor_sets,
    bounded_attention,
    trajectory_attention,
    trajectory_groups,
)
from comfyui_videoedit.attention.flatten_patch import FlattenAttention, FlattenConfig, FlattenRuntime
from comfyui_videoedit.attention.pnp import PNP_KEY, PnPPass
from comfyui_videoedit.flow.trajectories import sample_trajectories

GEN = torch.Generator().manual_seed(0)


def _trajectories(frames=5, h=4, w=6, seed=0):
    flow = torch.randn(frames - 1, h * 8, w * 8, 2, generator=torch.Generator().manual_seed(seed)) * 10
    return sample_trajectories(flow, (h, w), seed=seed)


def _naive_trajectory_attention(q, k, v, ids, heads, groups):
    """Per token: softmax over exactly the tokens of its trajectory among the call's frames."""
    b, n, c = v.shape
    d = c // heads
    fc = b // groups
    flat_ids = ids.reshape(-1)  # [fc*n], token j = row*n + cell
    out = torch.zeros_like(v)
    for g in range(groups):
        qg, kg, vg = (t[g * fc : (g + 1) * fc].reshape(fc * n, heads, d) for t in (q, k, v))
        og = torch.zeros(fc * n, heads, d, dtype=v.dtype)
        for j in range(fc * n):
            members = (flat_ids == flat_ids[j]).nonzero(as_tuple=True)[0]
            for hd in range(heads):
                scores = kg[members, hd] @ qg[j, hd] / math.sqrt(d)
                og[j, hd] = torch.softmax(scores, 0) @ vg[members, hd]
        out[g * fc : (g + 1) * fc] = og.reshape(fc, n, c)
    return out


@pytest.mark.parametrize("frames_in_call", [[0, 1, 2, 3, 4], [1, 2, 4]])
def test_trajectory_attention_matches_naive_softmax_over_the_trajectory(frames_in_call):
    ts = _trajectories()
    traj = ts.levels[(4, 6)]
    frames = torch.tensor(frames_in_call)
    ids = traj.traj_id[frames].reshape(len(frames), -1)
    groups, heads, c = 2, 2, 8
    hidden = torch.randn(groups * len(frames), 24, c, generator=GEN, dtype=torch.float64)
    tables = trajectory_groups(ids)
    assert sorted(torch.cat([t.reshape(-1) for _, t in tables]).tolist()) == list(range(ids.numel()))
    assert {length for length, _ in tables} - {1} and max(length for length, _ in tables) <= len(frames)
    # tiny chunks: several chunks per length bucket
    got = trajectory_attention(hidden, hidden, hidden, tables, heads, groups, chunk_elements=64)
    want = _naive_trajectory_attention(hidden, hidden, hidden, ids, heads, groups)
    torch.testing.assert_close(got, want)
    # old_qk: q and k from elsewhere, v = H
    q = torch.randn(hidden.shape, generator=GEN, dtype=torch.float64)
    k = torch.randn(hidden.shape, generator=GEN, dtype=torch.float64)
    got = trajectory_attention(q, k, hidden, tables, heads, groups)
    torch.testing.assert_close(got, _naive_trajectory_attention(q, k, hidden, ids, heads, groups))


def test_trajectory_attention_never_mixes_trajectories_or_groups():
    ids = torch.tensor([[0, 1, 2], [0, 3, 2]])  # trajectory 1 and 3 are singletons
    v = torch.randn(4, 3, 4, generator=GEN)
    out = trajectory_attention(v, v, v, trajectory_groups(ids), heads=1, groups=2)
    torch.testing.assert_close(out[:, 1], v[:, 1])  # singletons keep their own value
    # group 1's output is unchanged when group 0's input changes
    v2 = v.clone()
    v2[:2] += 5
    out2 = trajectory_attention(v2, v2, v2, trajectory_groups(ids), heads=1, groups=2)
    torch.testing.assert_close(out2[2:], out[2:])


def _naive_frame_sets_attention(q, k, v, heads, groups, sets):
    b, n, c = q.shape
    f = b // groups
    d = c // heads
    out = torch.zeros_like(q)
    for g in range(groups):
        for i in range(f):
            keys = torch.cat([k[g * f + j] for j in sets[i].tolist()])
            vals = torch.cat([v[g * f + j] for j in sets[i].tolist()])
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                w = torch.softmax(q[g * f + i, :, sl] @ keys[:, sl].T / math.sqrt(d), -1)
                out[g * f + i, :, sl] = w @ vals[:, sl]
    return out


def test_bounded_with_all_frames_as_anchors_equals_dense():
    q, k, v = (torch.randn(2 * 6, 10, 8, generator=GEN, dtype=torch.float64) for _ in range(3))
    frames = torch.arange(6)
    sets = anchor_sets(6, anchor_positions(frames, stride=1, max_anchors=0))
    assert all(s.tolist() == list(range(6)) for s in sets)
    dense = extended_attention(q, k, v, heads=2, groups=2, keyframes=None)
    torch.testing.assert_close(bounded_attention(q, k, v, 2, 2, sets), dense)
    torch.testing.assert_close(bounded_attention(q, k, v, 2, 2, sets, chunk_elements=1), dense)


def test_bounded_attention_matches_naive_per_frame_sets():
    q, k, v = (torch.randn(2 * 7, 5, 4, generator=GEN, dtype=torch.float64) for _ in range(3))
    sets = anchor_sets(7, anchor_positions(torch.arange(7), stride=3, max_anchors=0))
    assert [s.tolist() for s in sets][:2] == [[0, 1, 3, 6], [0, 1, 2, 3, 6]]
    want = _naive_frame_sets_attention(q, k, v, 2, 2, sets)
    torch.testing.assert_close(bounded_attention(q, k, v, 2, 2, sets, chunk_elements=100), want)


def test_anchor_positions():
    assert anchor_positions(torch.arange(9), 4).tolist() == [0, 4, 8]
    assert anchor_positions(torch.arange(32), 4, max_anchors=4).tolist() == [0, 8, 20, 28]
    assert anchor_positions(torch.arange(3, 8), 4).tolist() == [1]  # global frame 4, second in the window
    assert anchor_positions(torch.tensor([9, 10, 11]), 4).tolist() == [0]  # no anchor in the window: first frame


# -- the patch, driven like ComfyUI drives an attn1 replace -------------------------------------------------


def _options(frames, groups=2, size=(4, 6), latent=(4, 6), **extra):
    eo = {
        "n_heads": 2,
        "dim_head": 4,
        "cond_or_uncond": [1, 0][:groups] if groups <= 2 else [1] + [0] * (groups - 1),
        "activations_shape": [groups * frames, 8, *size],
        "original_shape": [groups * frames, 4, *latent],
        "block": ("input", 1),
        "block_index": 0,
    }
    eo.update(extra)
    return eo


def _patch(ts, flow_step=True, **cfg):
    return FlattenAttention(FlattenRuntime(ts, FlattenConfig(**cfg)), ("input", 1, 0), flow_step)


def test_patch_is_dense_then_trajectory_attention():
    ts = _trajectories()
    q, k, v = (torch.randn(10, 24, 8, generator=GEN) for _ in range(3))
    eo = _options(5)
    hidden = extended_attention(q, k, v, 2, 2)
    tables = trajectory_groups(ts.levels[(4, 6)].traj_id.reshape(5, -1))
    torch.testing.assert_close(_patch(ts, flow_step=False)(q, k, v, eo), hidden)
    torch.testing.assert_close(_patch(ts)(q, k, v, eo), trajectory_attention(hidden, hidden, hidden, tables, 2, 2))
    torch.testing.assert_close(_patch(ts, old_qk=True)(q, k, v, eo), trajectory_attention(q, k, hidden, tables, 2, 2))
    # bounded with every frame an anchor is the dense patch
    torch.testing.assert_close(
        _patch(ts, mode="bounded", anchor_stride=1, max_anchors=0)(q, k, v, eo), _patch(ts)(q, k, v, eo)
    )
    bounded = _patch(ts, mode="bounded", anchor_stride=4, max_anchors=1)(q, k, v, eo)
    assert not torch.allclose(bounded, _patch(ts)(q, k, v, eo), atol=1e-4)


def test_patch_split_batch_equals_joint_batch():
    """ComfyUI may run uncond and cond as separate calls: the result must not change."""
    ts = _trajectories()
    q, k, v = (torch.randn(10, 24, 8, generator=GEN) for _ in range(3))
    patch = _patch(ts)
    joint = patch(q, k, v, _options(5))
    first = patch(q[:5], k[:5], v[:5], _options(5, groups=1, cond_or_uncond=[1]))
    second = patch(q[5:], k[5:], v[5:], _options(5, groups=1, cond_or_uncond=[0]))
    torch.testing.assert_close(torch.cat([first, second]), joint)


def test_patch_uses_the_window_rows():
    ts = _trajectories(frames=6)
    q, k, v = (torch.randn(6, 24, 8, generator=GEN) for _ in range(3))
    eo = _options(3, ad_params={"sub_idxs": [2, 3, 5]})
    hidden = extended_attention(q, k, v, 2, 2)
    tables = trajectory_groups(ts.levels[(4, 6)].traj_id[[2, 3, 5]].reshape(3, -1))
    torch.testing.assert_close(_patch(ts)(q, k, v, eo), trajectory_attention(hidden, hidden, hidden, tables, 2, 2))


def test_patch_applies_injected_qk():
    ts = _trajectories()
    q, k, v = (torch.randn(10, 24, 8, generator=GEN) for _ in range(3))
    q_src, k_src = torch.randn(5, 24, 8, generator=GEN), torch.randn(5, 24, 8, generator=GEN)
    key = ("input", 1, 0)
    injected = _options(5, **{PNP_KEY: PnPPass("inject", 2, frozenset([key]), {key: (q_src, k_src)})})
    want = _patch(ts)(q_src.repeat(2, 1, 1), k_src.repeat(2, 1, 1), v, _options(5))
    torch.testing.assert_close(_patch(ts)(q, k, v, injected), want)


def test_patch_rejects_other_frame_counts_and_sizes():
    ts = _trajectories(frames=6)  # latent 4x6
    q = torch.randn(10, 24, 8)
    with pytest.raises(
        ValueError,
        match=r"sampled for 6 frames at latent 4x6, but the latent being sampled has "
        r"5 frames at latent 4x6",
    ):
        _patch(ts)(q, q, q, _options(5))
    q = torch.randn(12, 6, 8)
    with pytest.raises(ValueError, match=r"sampled for 6 frames at latent 4x6, .* has 6 frames at latent 2x3"):
        _patch(ts)(q, q, q, _options(6, size=(2, 3), latent=(2, 3)))
    q = torch.randn(4, 24, 8)
    with pytest.raises(ValueError, match="a context window holds frame 7"):
        _patch(ts)(q, q, q, _options(2, ad_params={"sub_idxs": [6, 7]}))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode: 'sparse'"):
        FlattenConfig(mode="sparse")
    with pytest.raises(ValueError, match="anchor_stride must be >= 1"):
        FlattenConfig(anchor_stride=0)
