"""The speed-relevant structure of FLATTEN and the warps (issue #13): work that is the same for
every layer of a call is done once, and the bounded mode reads fewer keys than dense."""

import torch

import comfyui_videoedit.attention.flatten_patch as flatten_patch
from comfyui_videoedit.attention.extended import sdpa_attention
from comfyui_videoedit.attention.flatten_patch import FlattenAttention, FlattenConfig, FlattenRuntime
from comfyui_videoedit.flow import warp
from comfyui_videoedit.flow.trajectories import sample_trajectories

FRAMES, H, W = 8, 4, 6


def _options():
    return {
        "n_heads": 2,
        "cond_or_uncond": [1, 0],
        "activations_shape": [2 * FRAMES, 8, H, W],
        "original_shape": [2 * FRAMES, 4, H, W],
    }


def _runtime(mode="dense", kernel=sdpa_attention):
    flow = torch.randn(FRAMES - 1, H * 8, W * 8, 2, generator=torch.Generator().manual_seed(0)) * 8
    return FlattenRuntime(sample_trajectories(flow, (H, W)), FlattenConfig(mode=mode), kernel)


def _qkv():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * FRAMES, H * W, 8, generator=g) for _ in range(3)]


def test_trajectory_tables_are_built_once_per_call_size_for_all_layers(monkeypatch):
    built = []
    real = flatten_patch.trajectory_groups
    monkeypatch.setattr(flatten_patch, "trajectory_groups", lambda ids: built.append(ids.shape) or real(ids))
    rt = _runtime()
    layers = [FlattenAttention(rt, ("input", i, 0), True) for i in (1, 2)] + [
        FlattenAttention(rt, ("output", i, 0), True) for i in (9, 10, 11)
    ]
    q, k, v = _qkv()
    for _ in range(2):  # two steps
        for layer in layers:
            layer(q, k, v, _options())
    assert built == [(FRAMES, H * W)]


def test_bounded_reads_fewer_keys_than_dense_at_8_frames():
    def counting(keys):
        def kernel(q, k, v, heads):
            keys.append(k.shape[0] * k.shape[1] * q.shape[1])  # query-key pairs of this call
            return sdpa_attention(q, k, v, heads)

        return kernel

    q, k, v = _qkv()
    dense, bounded = [], []
    FlattenAttention(_runtime("dense", counting(dense)), ("input", 1, 0), False)(q, k, v, _options())
    FlattenAttention(_runtime("bounded", counting(bounded)), ("input", 1, 0), False)(q, k, v, _options())
    assert sum(dense) == 2 * (FRAMES * H * W) ** 2  # every query of a chunk against every key of it
    assert sum(bounded) < 0.6 * sum(dense)


def test_warp_base_grid_is_built_once_per_size_device_and_dtype():
    a = warp._base_grid(5, 7, torch.device("cpu"), torch.float32)
    assert warp._base_grid(5, 7, torch.device("cpu"), torch.float32) is a
    assert warp._base_grid(5, 8, torch.device("cpu"), torch.float32).shape == (1, 5, 8, 2)
    assert warp._base_grid(5, 7, torch.device("cpu"), torch.float64).dtype == torch.float64
    # x then y, pixel units; callers add to it, never write into it
    assert a[0, 2, 3].tolist() == [3.0, 2.0]
    flow = torch.zeros(1, 5, 7, 2)
    warp.sample_grid(flow).add_(1.0)
    assert a[0, 0, 0].tolist() == [0.0, 0.0]
