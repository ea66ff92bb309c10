"""Pair bookkeeping of the clip-level driver, with a fake estimator that reports its inputs."""

import pytest
import torch

from comfyui_videoedit.flow.estimate import bidirectional_flow


def _clip(count, height=5, width=6):
    """Frame k is filled with the value k / 10."""
    return (torch.arange(count, dtype=torch.float32) / 10).view(-1, 1, 1, 1).expand(count, height, width, 3).clone()


class Recorder:
    """A 'flow' whose x is the source frame's value and y the target's: shows which pair
    produced every output."""

    def __init__(self):
        self.batches = []

    def __call__(self, source, target):
        self.batches.append(source.shape[0])
        return torch.stack([source[..., 0], target[..., 0]], -1)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 9])
def test_forward_and_backward_hold_the_right_pairs(batch_size):
    clip = _clip(6)
    rec, done = Recorder(), []
    forward, backward = bidirectional_flow(clip, rec, batch_size=batch_size, on_batch=done.append)
    assert forward.shape == backward.shape == (5, 5, 6, 2)
    for i in range(5):
        torch.testing.assert_close(forward[i, 0, 0], torch.tensor([i / 10, (i + 1) / 10]))
        torch.testing.assert_close(backward[i, 0, 0], torch.tensor([(i + 1) / 10, i / 10]))
    assert sum(done) == 5
    pairs_per_call = [min(batch_size, 5 - start) for start in range(0, 5, batch_size)]
    assert rec.batches == [2 * n for n in pairs_per_call]  # both directions in one call


def test_reduced_scale_feeds_smaller_frames_and_returns_full_size_flow():
    clip = _clip(3, 40, 60)
    sizes = []

    def constant(source, target):
        sizes.append(tuple(source.shape[1:3]))
        return torch.ones(*source.shape[:3], 2)  # 1 px at the reduced size

    forward, _ = bidirectional_flow(clip, constant, scale=0.25)
    assert sizes == [(10, 15)]
    torch.testing.assert_close(forward, torch.full((2, 40, 60, 2), 4.0))


@pytest.mark.parametrize(("kwargs", "message"), [({"batch_size": 0}, "batch_size"), ({"scale": 0.0}, "scale")])
def test_bad_arguments_are_reported(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bidirectional_flow(_clip(3), Recorder(), **kwargs)
