"""Frame indices under context windows (pure): TokenFlow's clip-wide keyframes in a window,
core's window over one of the pack's own frame chunks, the resolution grammar's parts."""

import types

import pytest
import torch

from comfyui_videoedit.attention.frames import FRAME_INDICES_KEY, call_frame_indices
from comfyui_videoedit.attention.tokenflow import blend_plan, sample_keyframes
from comfyui_videoedit.attention.tokenflow_windows import keyframes_for_call


def test_whole_clip_is_tokenflow_as_published():
    frames = torch.arange(10)
    kf, slots, w = keyframes_for_call(frames, 10, 4, "official", torch.Generator().manual_seed(7))
    expected_kf = sample_keyframes(10, 4, torch.Generator().manual_seed(7))
    expected_slots, expected_w = blend_plan(frames, expected_kf, 4, "official")
    assert torch.equal(kf, expected_kf) and torch.equal(slots, expected_slots) and torch.equal(w, expected_w)


@pytest.mark.parametrize("blend", ["official", "paper"])
def test_a_window_uses_the_clips_keyframes_it_holds(blend):
    total, window = 24, 4
    clip_kf = sample_keyframes(total, window, torch.Generator().manual_seed(3))
    for start in range(0, total - 6 + 1, 2):
        frames = torch.arange(start, start + 6)
        kf_pos, slots, w = keyframes_for_call(frames, total, window, blend, torch.Generator().manual_seed(3))
        held = frames[kf_pos]
        assert set(held.tolist()) <= set(clip_kf.tolist())
        assert set(held.tolist()) == set(clip_kf.tolist()) & set(frames.tolist())
        assert slots.shape == (6, 2) and int(slots.max()) < len(kf_pos)
        # a frame's blend keyframe, when held, is used as such; otherwise the nearest held one
        clip_slots, clip_w = blend_plan(frames, clip_kf, window, blend)
        assert torch.equal(w, clip_w)
        for i in range(6):
            for j in range(2):
                want = int(clip_kf[clip_slots[i, j]])
                got = int(held[slots[i, j]])
                nearest = int(held[(held - want).abs().argmin()])
                assert got == (want if want in held.tolist() else nearest)


def test_a_window_without_a_clip_keyframe_draws_its_own():
    # window 8 keyframes; a 3-frame window between two of them
    clip_kf = sample_keyframes(16, 8, torch.Generator().manual_seed(0))
    gap = [f for f in range(16) if f not in clip_kf.tolist()]
    start = next(f for f in gap if f + 1 in gap and f + 2 in gap)
    frames = torch.arange(start, start + 3)
    assert not set(frames.tolist()) & set(clip_kf.tolist())
    kf_pos, slots, _ = keyframes_for_call(frames, 16, 8, "official", torch.Generator().manual_seed(0))
    assert len(kf_pos) == 1 and int(slots.max()) == 0


def _window(indices):
    return types.SimpleNamespace(index_list=list(indices))


def test_core_window_over_a_chunk_of_the_pack_maps_to_the_clip():
    # the pack's inversion runs frames 12..23 as one chunk; core's window holds chunk positions 4..9
    to = {FRAME_INDICES_KEY: list(range(12, 24)), "context_window": _window(range(4, 10))}
    assert call_frame_indices(to, 6).tolist() == list(range(16, 22))
    # a chunk the window handler did not split: the chunk's own indices
    to = {FRAME_INDICES_KEY: [3, 4, 5], "context_window": _window(range(4, 10))}
    assert call_frame_indices(to, 3).tolist() == [3, 4, 5]
    assert call_frame_indices({"context_window": _window([6, 7, 8])}, 3).tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="context window lists 3 frames but the UNet call holds 4"):
        call_frame_indices({"context_window": _window([6, 7, 8])}, 4)
