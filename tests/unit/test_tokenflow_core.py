"""TokenFlow tensor functions against naive references."""

import torch
import torch.nn.functional as F

from comfyui_videoedit.attention.extended import extended_attention, sdpa_attention
from comfyui_videoedit.attention.tokenflow import (
    blend_plan,
    expected_cost_ratio,
    nearest_neighbours,
    nn_fields,
    official_weight_range,
    propagate,
    sample_keyframes,
)


def naive_attention(q, k, v, heads):
    b, nq, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, nq, heads, d).transpose(1, 2)
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, nq, inner)


def test_extended_attention_with_one_keyframe_is_self_attention():
    g, f, n, heads, d = 2, 3, 10, 2, 4
    q, k, v = (torch.randn(g * f, n, heads * d) for _ in range(3))
    for frame in range(f):
        out = extended_attention(q, k, v, heads, groups=g, keyframes=[frame])
        for grp in range(g):
            i = grp * f + frame
            ref = naive_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], heads)
            assert torch.allclose(out[i], ref[0], atol=1e-5)


def test_extended_attention_matches_naive_concat_and_chunking():
    g, f, n, heads, d = 2, 5, 7, 2, 3
    q, k, v = (torch.randn(g * f, n, heads * d) for _ in range(3))
    kf = [1, 3]
    out = extended_attention(q, k, v, heads, groups=g, keyframes=kf, query_chunk_frames=2)
    for grp in range(g):
        kc = torch.cat([k[grp * f + j] for j in kf])[None]
        vc = torch.cat([v[grp * f + j] for j in kf])[None]
        for frame in range(f):
            i = grp * f + frame
            ref = naive_attention(q[i : i + 1], kc, vc, heads)[0]
            assert torch.allclose(out[i], ref, atol=1e-5)
    assert torch.allclose(sdpa_attention(q, k, v, heads), naive_attention(q, k, v, heads), atol=1e-5)


def test_chunked_nearest_neighbours_equal_dense_reference():
    g = torch.Generator().manual_seed(0)
    query, keys = torch.randn(300, 16, generator=g), torch.randn(120, 16, generator=g)
    dense = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T
    ref = dense.argmax(-1)
    got = nearest_neighbours(query, keys, chunk_tokens=37)
    top2 = dense.topk(2, dim=-1).values
    ties = (top2[:, 0] - top2[:, 1]).abs() < 1e-6
    assert torch.equal(got[~ties], ref[~ties])
    assert (~ties).sum() > 290


def test_nn_fields_pick_each_slot_independently():
    g = torch.Generator().manual_seed(1)
    frames, kfs = torch.randn(4, 9, 8, generator=g), torch.randn(3, 11, 8, generator=g)
    slots = torch.tensor([[0, 0], [1, 0], [1, 2], [2, 1]])
    fields = nn_fields(frames, kfs, slots, chunk_tokens=5)
    for m in range(4):
        for j in range(2):
            ref = (F.normalize(frames[m], dim=-1) @ F.normalize(kfs[slots[m, j]], dim=-1).T).argmax(-1)
            assert torch.equal(fields[m, j], ref)


def test_nn_field_of_a_frame_onto_itself_is_identity():
    feats = torch.randn(3, 20, 8)
    fields = nn_fields(feats, feats, torch.tensor([[0, 0], [1, 1], [2, 2]]))
    assert torch.equal(fields[:, 0], torch.arange(20).expand(3, 20))


def test_propagation_with_weight_one_copies_t_base():
    t_base = torch.randn(3, 2, 6, 5)  # G, K, Nk, C
    fields = torch.randint(0, 6, (4, 2, 6))
    slots = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]])
    out = propagate(t_base, fields, slots, torch.ones(4))
    for m in range(4):
        assert torch.equal(out[:, m], t_base[:, slots[m, 0]][:, fields[m, 0]])


def test_propagation_blends_with_weights():
    t_base = torch.randn(2, 2, 6, 5)
    fields = torch.randint(0, 6, (3, 2, 6))
    slots = torch.tensor([[0, 1], [1, 0], [1, 1]])
    w = torch.tensor([0.25, 0.7, 0.5])
    out = propagate(t_base, fields, slots, w)
    for m in range(3):
        ref = w[m] * t_base[:, slots[m, 0]][:, fields[m, 0]] + (1 - w[m]) * t_base[:, slots[m, 1]][:, fields[m, 1]]
        assert torch.allclose(out[:, m], ref, atol=1e-6)


def test_official_weights_range_and_first_window():
    lo, hi = official_weight_range(8)
    assert 0.62 <= lo < 0.63 and 0.73 <= hi < 0.74
    slots, w = blend_plan(torch.arange(0, 8), torch.arange(0, 16, 8), 8, "official")
    assert torch.all(w == 1) and torch.all(slots == 0)
    slots, w = blend_plan(torch.arange(8, 16), torch.arange(0, 16, 8), 8, "official")
    assert torch.all(slots[:, 0] == 1) and torch.all(slots[:, 1] == 0)
    assert torch.all((w >= 0.62) & (w <= 0.74))


def test_paper_weights_are_linear_between_neighbouring_keyframes():
    kf = torch.tensor([2, 6, 9])
    slots, w = blend_plan(torch.arange(11), kf, 4, "paper")
    # before the first keyframe and after the last: the single neighbour, weight 1
    assert slots[0].tolist() == [0, 0] and w[0] == 1
    assert slots[10].tolist() == [2, 2] and w[10] == 1
    # keyframes take themselves
    for s, f in enumerate(kf.tolist()):
        assert w[f] == 1 and slots[f, 0] == s
    # frame 4: between 2 and 6, weight on the next keyframe (6) = 2/4
    assert slots[4].tolist() == [1, 0] and abs(float(w[4]) - 0.5) < 1e-6
    assert slots[8].tolist() == [2, 1] and abs(float(w[8]) - 2 / 3) < 1e-6


def test_keyframes_one_per_window_deterministic():
    a = sample_keyframes(19, 8, torch.Generator().manual_seed(3))
    b = sample_keyframes(19, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(a) == 3
    for i, k in enumerate(a.tolist()):
        assert i * 8 <= k < min(19, (i + 1) * 8)
    draws = torch.stack([sample_keyframes(16, 8, torch.Generator().manual_seed(s)) for s in range(50)])
    assert len(torch.unique(draws[:, 0])) > 4  # really random within the window


def test_cost_model():
    assert abs(expected_cost_ratio(8) - 1.6875) < 1e-9


def test_control_residuals_get_zero_rows_for_the_source():
    from comfyui_videoedit.attention.tokenflow_patch import _with_zero_rows

    a, one = torch.randn(4, 3, 2, 2), torch.randn(1, 3, 2, 2)
    control = {"output": [a, None, one], "middle": [a]}
    out = _with_zero_rows(control, 2, 4)
    assert torch.equal(out["output"][0][:2], torch.zeros(2, 3, 2, 2)) and torch.equal(out["output"][0][2:], a)
    assert out["output"][1] is None
    assert torch.equal(out["output"][2][2:], one.expand(4, 3, 2, 2)) and not out["output"][2][:2].any()
    assert control["output"][0] is a  # the input structure is not changed


def test_contexts_of_other_lengths_are_repeated_to_a_common_length():
    from comfyui_videoedit.attention.tokenflow_patch import _joint_context

    a, b = torch.randn(2, 77, 8), torch.randn(3, 154, 8)
    ra, rb = _joint_context(a, b)
    assert ra.shape == (2, 154, 8) and torch.equal(ra[:, 77:], a) and torch.equal(rb, b)
    assert _joint_context(a, torch.randn(3, 77, 16)) is None
