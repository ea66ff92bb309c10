"""Select Keyframes: every K-th frame and its indices, in the form Propagate Keyframes reads."""

import pytest
import torch


@pytest.fixture(scope="module")
def select(pack_nodes):
    from comfyui_videoedit.nodes.video import SelectKeyframes

    return SelectKeyframes


def test_every_kth_frame_from_zero_with_its_indices(select):
    clip = torch.arange(11, dtype=torch.float32).view(11, 1, 1, 1).expand(11, 4, 6, 3) / 10
    images, indices = select.execute(clip, 4).args
    assert indices == "0, 4, 8"
    assert torch.equal(images, clip[[0, 4, 8]])


def test_indices_are_those_rerender_keyframes_renders(select):
    from comfyui_videoedit.nodes.common import parse_int_list

    clip = torch.rand(21, 8, 8, 3)
    _, indices = select.execute(clip, 10).args
    assert parse_int_list(indices, "keyframe_indices") == list(range(0, 21, 10))


def test_interval_one_keeps_every_frame_and_bad_input_is_named(select):
    clip = torch.rand(3, 8, 8, 3)
    images, indices = select.execute(clip, 1).args
    assert indices == "0, 1, 2" and torch.equal(images, clip)
    with pytest.raises(ValueError, match="keyframe_interval"):
        select.execute(clip, 0)
    with pytest.raises(ValueError, match="images"):
        select.execute(torch.rand(8, 8, 3), 2)
