"""FLATTEN trajectory sampling (flow/trajectories.py) against naive checks written here."""

import pytest
import torch

from comfyui_videoedit.flow.trajectories import (
    Trajectories,
    cell_displacements,
    latent_grid_sizes,
    link_cells,
    sample_trajectories,
)


def _conv_sizes(h, w, levels):
    """Reference: the output sizes of ComfyUI's Downsample (3x3 conv, stride 2, padding 1)."""
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    x, sizes = torch.zeros(1, 1, h, w), [(h, w)]
    with torch.no_grad():
        for _ in range(levels - 1):
            x = conv(x)
            sizes.append(tuple(x.shape[-2:]))
    return sizes


@pytest.mark.parametrize("hw", [(64, 64), (40, 24), (13, 7), (1, 3)])
def test_grid_sizes_follow_the_unet_downsampling(hw):
    assert latent_grid_sizes(*hw, 4) == _conv_sizes(*hw, 4)


def _check_partition(traj: Trajectories):
    """Every cell on exactly one trajectory; each trajectory one cell per frame over
    [start, start+length), and start/length describe it."""
    ids = traj.traj_id
    frames = ids.shape[0]
    count = traj.count
    assert ids.min() >= 0 and ids.max() == count - 1
    seen = {}
    for t in range(frames):
        for tid in ids[t].reshape(-1).tolist():
            assert (tid, t) not in seen, f"trajectory {tid} has two cells in frame {t}"
            seen[(tid, t)] = True
    per_traj: dict[int, list[int]] = {}
    for tid, t in seen:
        per_traj.setdefault(tid, []).append(t)
    assert len(per_traj) == count
    for tid, ts in per_traj.items():
        ts.sort()
        assert ts == list(range(ts[0], ts[0] + len(ts))), f"trajectory {tid} skips frames: {ts}"
        assert traj.start[tid] == ts[0] and traj.length[tid] == len(ts)
    assert int(traj.length.sum()) == ids.numel()
    pos = traj.position()
    assert pos.min() == 0 and bool((pos < traj.length[ids]).all())


def _check_links(traj: Trajectories, disp: torch.Tensor):
    """Each continuation follows the rounded flow; a target reached by at least one in-grid
    link is continued by exactly one of its sources; a cell with no incoming link starts anew."""
    ids = traj.traj_id
    frames, h, w = ids.shape
    for t in range(frames - 1):
        incoming: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for y in range(h):
            for x in range(w):
                dx, dy = disp[t, y, x].tolist()
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    incoming.setdefault((ty, tx), []).append((y, x))
        for y in range(h):
            for x in range(w):
                tid = int(ids[t + 1, y, x])
                sources = incoming.get((y, x), [])
                continuing = [s for s in sources if int(ids[t, s[0], s[1]]) == tid]
                if sources:
                    assert len(continuing) == 1, (t, y, x, sources)
                else:
                    assert traj.start[tid] == t + 1, f"cell {(t + 1, y, x)} has no incoming link but continues"
        # a trajectory present in frame t+1 and in frame t must come through one of those links
        both = set(ids[t].reshape(-1).tolist()) & set(ids[t + 1].reshape(-1).tolist())
        for tid in both:
            (y0, x0), (y1, x1) = ((ids[t] == tid).nonzero()[0].tolist(), (ids[t + 1] == tid).nonzero()[0].tolist())
            assert (y1, x1) == (y0 + int(disp[t, y0, x0, 1]), x0 + int(disp[t, y0, x0, 0]))


@pytest.mark.parametrize("latent", [(8, 8), (10, 6)])
def test_every_cell_in_exactly_one_trajectory_with_collisions_and_exits(latent):
    gen = torch.Generator().manual_seed(0)
    frames = 5
    h, w = latent
    # large random motion at 8x the latent: many collisions and many links leaving the grid
    flow = torch.randn(frames - 1, h * 8, w * 8, 2, generator=gen) * 24
    flow[1] = 20.0  # one frame of uniform motion: cells on the far edge leave the grid
    ts = sample_trajectories(flow, latent, seed=3)
    assert ts.frames == frames and ts.latent_size == latent
    assert sorted(ts.levels) == sorted(set(latent_grid_sizes(h, w, 4)))
    collisions = 0
    for size, traj in ts.levels.items():
        assert traj.traj_id.shape == (frames, *size)
        _check_partition(traj)
        disp = cell_displacements(flow, size)
        _check_links(traj, disp)
        collisions += int(traj.count) - size[0] * size[1]
    assert collisions > 0, "the flow was meant to end trajectories"


def test_translation_is_followed():
    frames, h, w = 4, 8, 12
    flow = torch.zeros(frames - 1, h * 8, w * 8, 2)
    flow[..., 0], flow[..., 1] = 16.0, -16.0  # 2 cells right, 2 cells up at the latent grid
    ts = sample_trajectories(flow, (h, w), seed=0)
    ids = ts.levels[(h, w)].traj_id
    for t in range(frames - 1):
        for y in range(h):
            for x in range(w):
                ty, tx = y - 2, x + 2
                if 0 <= ty < h and 0 <= tx < w:
                    assert ids[t + 1, ty, tx] == ids[t, y, x]
                else:  # left the frame: that trajectory ends at t
                    assert not (ids[t + 1] == ids[t, y, x]).any()
    # cells entering from the bottom/left edges start new trajectories
    traj = ts.levels[(h, w)]
    assert bool((traj.start[ids[1, h - 2 :, :]] == 1).all()) and bool((traj.start[ids[1, :, :2]] == 1).all())
    # no collisions under a translation: every trajectory spans to the end or leaves the grid
    level1 = ts.levels[(4, 6)].traj_id  # vectors scaled with the grid: 1 cell right, 1 up
    assert torch.equal(level1[1, :-1, 1:], level1[0, 1:, :-1])


def test_seeded_and_deterministic():
    gen = torch.Generator().manual_seed(1)
    flow = torch.randn(6, 64, 64, 2, generator=gen) * 16
    a = sample_trajectories(flow, (8, 8), seed=5)
    b = sample_trajectories(flow, (8, 8), seed=5)
    c = sample_trajectories(flow, (8, 8), seed=6)
    assert all(torch.equal(a.levels[s].traj_id, b.levels[s].traj_id) for s in a.levels)
    assert any(not torch.equal(a.levels[s].traj_id, c.levels[s].traj_id) for s in a.levels)


def test_link_cells_collision_winner_is_one_of_the_sources():
    # every cell of a 1x4 row moves onto cell 0 → one continues, three end; cells 1..3 of the
    # next frame are unreached → new trajectories
    disp = torch.zeros(1, 1, 4, 2, dtype=torch.long)
    disp[0, 0, :, 0] = -torch.arange(4)
    ids = link_cells(disp, torch.Generator().manual_seed(0))
    assert ids[1, 0, 0] in ids[0, 0].tolist()
    assert ids[1, 0, 1:].tolist() == [4, 5, 6]


def test_single_frame_and_bad_flow():
    ts = sample_trajectories(torch.zeros(0, 16, 16, 2), (2, 2))
    assert ts.frames == 1 and ts.levels[(2, 2)].count == 4
    with pytest.raises(ValueError, match=r"flow must be \[frames-1, H, W, 2\]"):
        sample_trajectories(torch.zeros(3, 16, 16), (2, 2))
