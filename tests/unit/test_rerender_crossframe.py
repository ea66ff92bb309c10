"""Rerender's cross-frame attention patch and step schedule (attention/crossframe.py), with
fake ``extra_options`` shaped like ComfyUI's."""

import pytest
import torch
import torch.nn.functional as F

from comfyui_videoedit.attention.crossframe import CrossFrameAttention, CrossFrameStore, SigmaSchedule

SIGMAS = [14.6, 9.0, 5.0, 2.5, 1.0, 0.0]  # a 5-step schedule
DEC = ("output", 9, 0)
ENC = ("input", 1, 0)


def _opts(sigma, key=DEC, cond_or_uncond=(1, 0), rows=1):
    return {
        "block": key[:2],
        "block_index": key[2],
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.full((rows,), float(sigma)),
    }


def _n(seed, rows=2, tokens=6, channels=4):
    return torch.randn(rows, tokens, channels, generator=torch.Generator().manual_seed(seed))


def _store(**kw):
    kw.setdefault("store_dtype", None)
    return CrossFrameStore([DEC], SigmaSchedule(SIGMAS), **kw)


def test_schedule_steps_and_windows_follow_the_official_bounds():
    sched = SigmaSchedule(SIGMAS)
    assert [sched.step_of(s) for s in SIGMAS[:-1]] == [0, 1, 2, 3, 4]
    assert sched.step_of(7.0) == 1  # between schedule points: the step it is inside
    assert sched.step_of(20.0) == 0 and sched.step_of(0.5) == 4
    sched20 = SigmaSchedule(torch.linspace(14.0, 0.0, 21))
    assert sched20.window_steps((0.0, 0.1)) == [0, 1, 2]  # shape fusion: steps 0-2 of 20
    assert sched20.window_steps((0.8, 1.0)) == [16, 17, 18, 19]  # AdaIN (configs)
    assert sched20.window_steps((1.0, 1.0)) == []  # the code's default AdaIN period is off
    assert sched20.window_steps((0.5, 0.8), strict=True) == [11, 12, 13, 14, 15]  # inpainting mask
    assert sched20.window_steps((0.0, 1.0)) == list(range(20))
    with pytest.raises(ValueError):
        SigmaSchedule([1.0])


def test_record_then_attend_uses_anchor_inputs_per_branch_and_step():
    store = _store()
    patch = CrossFrameAttention(store)
    anchors = {}
    store.begin("record_anchor")
    for sigma in SIGMAS[:-1]:
        n = _n(int(sigma * 10))
        out = patch(n, n, n, _opts(sigma))  # uncond chunk first, as ComfyUI batches
        assert out[1] is n  # recording does not change the attention
        anchors[sigma] = n
    store.begin("attend")
    cur = _n(99)
    n, ctx, val = patch(cur, cur, cur, _opts(9.0))
    assert n is cur and ctx is val
    # previous == anchor right after the anchor: attends to the anchor alone, branch by branch
    assert torch.equal(ctx, anchors[9.0])
    # the same step split into two calls, cond first this time
    _, ctx_c, _ = patch(cur[:1], cur[:1], cur[:1], _opts(9.0, cond_or_uncond=(0,)))
    assert torch.equal(ctx_c, anchors[9.0][1:2])  # cond was the second chunk when recorded


def test_previous_keyframe_is_appended_and_committed_after_its_pass():
    store = _store()
    patch = CrossFrameAttention(store)
    store.begin("record_anchor")
    a = _n(1)
    patch(a, a, a, _opts(5.0))
    store.begin("attend", record=True)
    k1 = _n(2)
    _, ctx, _ = patch(k1, k1, k1, _opts(5.0))
    assert torch.equal(ctx, a)
    store.begin("off")
    store.commit_previous()
    store.begin("attend", record=True)
    k2 = _n(3)
    _, ctx, _ = patch(k2, k2, k2, _opts(5.0))
    assert torch.equal(ctx, torch.cat([a, k1], dim=1))  # [anchor ; previous], current left out
    store.include_current = True
    _, ctx, _ = patch(k2, k2, k2, _opts(5.0))
    assert torch.equal(ctx, torch.cat([a, k1, k2], dim=1))


def test_attention_over_the_stored_context_equals_plain_attention_when_frames_agree():
    """The patched context feeds ComfyUI's own to_k/to_v: with the anchor equal to the current
    frame, attending to [anchor ; anchor] is ordinary self-attention."""
    store = _store()
    patch = CrossFrameAttention(store)
    to_q, to_k, to_v = (torch.nn.Linear(4, 4) for _ in range(3))
    n = _n(7)
    store.begin("record_anchor")
    patch(n, n, n, _opts(5.0))
    store.previous = {k: v.clone() for k, v in store.anchor.items()}  # a distinct previous, same values
    store.begin("attend")
    _, ctx, val = patch(n, n, n, _opts(5.0))
    assert ctx.shape[1] == 2 * n.shape[1]

    def attend(q_in, kv_in, v_in):
        return F.scaled_dot_product_attention(to_q(q_in)[:, None], to_k(kv_in)[:, None], to_v(v_in)[:, None])[:, 0]

    with torch.no_grad():
        assert torch.allclose(attend(n, ctx, val), attend(n, n, n), atol=1e-6)


def test_window_layers_and_missing_entries_pass_through():
    store = _store(window=(0.0, 0.4))  # steps 0-2 of 5
    patch = CrossFrameAttention(store)
    store.begin("record_anchor")
    for sigma in SIGMAS[:-1]:
        n = _n(int(sigma * 10))
        patch(n, n, n, _opts(sigma))
    store.begin("attend")
    cur = _n(5)
    assert patch(cur, cur, cur, _opts(2.5))[1] is cur  # step 3: outside the window
    assert patch(cur, cur, cur, _opts(5.0))[1] is not cur  # step 2: inside
    assert patch(cur, cur, cur, _opts(5.0, key=ENC))[1] is cur  # not a chosen layer
    assert patch(cur, cur, cur, _opts(7.0))[1] is cur  # a sigma the anchor never saw
    assert store.missing == 1
    store.begin("off")
    assert patch(cur, cur, cur, _opts(5.0))[1] is cur


def test_store_keeps_fp16_copies_off_the_compute_tensors():
    store = CrossFrameStore([DEC], SigmaSchedule(SIGMAS), store_device="cpu", store_dtype=torch.float16)
    patch = CrossFrameAttention(store)
    n = _n(11)
    store.begin("record_anchor")
    patch(n, n, n, _opts(5.0))
    kept = next(iter(store.anchor.values()))
    assert kept.dtype == torch.float16 and kept.data_ptr() != n.data_ptr()
    assert store.nbytes() == n.numel() * 2  # both branches once (anchor and previous share them), 2 bytes each
    store.begin("attend")
    _, ctx, _ = patch(n, n, n, _opts(5.0))
    assert ctx.dtype == n.dtype and torch.allclose(ctx, n, atol=1e-3)
    with pytest.raises(ValueError, match="cond/uncond"):
        patch(_n(1, rows=3), None, None, _opts(5.0))
    with pytest.raises(ValueError, match="mode"):
        store.begin("replay")
