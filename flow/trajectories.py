"""FLATTEN patch trajectories: optical flow turned into chains of latent cells, one cell per
frame, at every latent resolution a UNet's self-attention runs at.

At a grid of ``h × w`` cells, the forward flow (resized to the grid, vectors scaled, rounded
to whole cells; see :data:`FLOW_RESIZE`) links cell ``(t, y, x)`` to ``(t+1, y+dy, x+dx)``. A link that leaves the
grid ends its trajectory. When several cells link to the same target, one of them (a seeded
random choice: the official code uses Python's unseeded ``random``) continues into it and the
others end. Cells of frame ``t+1`` that no link continues into start new trajectories. Every
cell therefore belongs to exactly one trajectory, and a trajectory holds one cell in each
frame of a contiguous frame range.

Stored compactly per resolution: the trajectory id of every cell (``[F, h, w]``) and each
trajectory's start frame and length; a cell's position inside its trajectory is
``t - start[id]``. The work is vectorised over cells and frames alike.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field

import torch

from .resize import resize_flow

DEFAULT_LEVELS = 4  # SD1.5/2.x attend at latent /1, /2, /4, /8; SDXL at /2, /4

# How the flow is brought to each cell grid (ids → ``flow.resize`` modes):
# - "official": nearest, as yrcong/flatten's ``interpolate(flow, scale_factor=r/512)``: each
#   cell moves by the flow of the pixel at its top-left corner;
# - "antialiased": each cell moves by the mean flow of the pixels it covers (smoother, ignores
#   single-pixel outliers). On real flows the rounded cell displacements of the two differ in
#   a few per cent of cells (README, "Differences from the official code").
FLOW_RESIZE = {"official": "nearest", "antialiased": "antialiased"}


def latent_grid_sizes(height: int, width: int, levels: int = DEFAULT_LEVELS) -> list[tuple[int, int]]:
    """Token grids of a UNet's resolution levels for a latent of ``height × width``.

    ComfyUI's ``Downsample`` is a 3×3 stride-2 convolution with padding 1, whose output size
    is ``ceil(n / 2)``; the decoder's ``Upsample`` is resized to the matching skip, so the
    decoder sees the same sizes. Level 0 is the latent itself.
    """
    sizes = [(int(height), int(width))]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def _resize_mode(flow_resize: str) -> str:
    try:
        return FLOW_RESIZE[flow_resize]
    except KeyError:
        raise ValueError(f"flow_resize: expected one of {list(FLOW_RESIZE)}, got {flow_resize!r}") from None


def cell_displacements(flow: torch.Tensor, size: tuple[int, int], flow_resize: str = "official") -> torch.Tensor:
    """Flow resized to a cell grid with its vectors in cells, rounded to whole cells.

    Args:
        flow: ``[F-1, H, W, 2]`` pixel displacements (dx, dy), any grid size.
        size: ``(h, w)`` target grid.
        flow_resize: ``"official"`` (nearest) or ``"antialiased"`` (:data:`FLOW_RESIZE`).

    Returns:
        ``[F-1, h, w, 2]`` int64 (dx, dy) in cells, on the flow's device.
    """
    mode = _resize_mode(flow_resize)
    if flow.shape[0] == 0:
        return torch.zeros(0, size[0], size[1], 2, dtype=torch.long, device=flow.device)
    return torch.round(resize_flow(flow.float(), size, mode)).long()


def link_cells(disp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Resolve the links of every frame into trajectory ids.

    Each cell of frame t+1 gets at most one predecessor (the link that won it); following
    predecessors back gives the cell where its trajectory started, found for all cells at once
    by pointer doubling (``log2(F)`` gathers, no per-frame or per-cell Python loop).

    Args:
        disp: ``[F-1, h, w, 2]`` int64 cell displacements (dx, dy) from frame t to t+1.
        generator: CPU generator for the collision choice (deterministic given its state).

    Returns:
        ``[F, h, w]`` int64 trajectory ids ``0..T-1``, numbered in order of first appearance
        (frame, then raster order).
    """
    frames = disp.shape[0] + 1
    _, h, w, _ = disp.shape
    n = h * w
    device = disp.device
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ty = ys.reshape(1, n) + disp[..., 1].reshape(-1, n)  # [F-1, n]
    tx = xs.reshape(1, n) + disp[..., 0].reshape(-1, n)
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    target = torch.where(inside, ty * w + tx, 0)
    # a random permutation per frame: unique priorities, so exactly one source wins a target
    priority = torch.rand(frames - 1, n, generator=generator).argsort(dim=1).to(device)
    priority = torch.where(inside, priority, -1)
    best = torch.full((frames - 1, n), -1, dtype=torch.long, device=device)
    best = best.scatter_reduce(1, target, priority, reduce="amax")
    wins = inside & (priority == best.gather(1, target))

    cell = torch.arange(frames * n, device=device)  # flat (frame, cell) index
    grid = cell.view(frames, n)
    root = cell.clone()  # predecessor, or the cell itself where a trajectory starts
    root[grid[1:].gather(1, target)[wins]] = grid[:-1][wins]
    for _ in range(max(1, (frames - 1).bit_length())):
        root = root[root]
    # roots in flat order = order of first appearance
    ids = torch.unique(root, return_inverse=True)[1]
    return ids.view(frames, h, w)


@dataclass(frozen=True)
class Trajectories:
    """Trajectories at one resolution.

    ``traj_id``: ``[F, h, w]`` int64, the trajectory of every cell (ids ``0..T-1``);
    ``start``: ``[T]`` first frame of each trajectory; ``length``: ``[T]`` frames it spans.
    """

    traj_id: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.traj_id.shape[1]), int(self.traj_id.shape[2])

    @property
    def count(self) -> int:
        return int(self.start.shape[0])

    def position(self) -> torch.Tensor:
        """``[F, h, w]`` index of every cell inside its trajectory (0 at the start frame)."""
        frames = torch.arange(self.traj_id.shape[0], device=self.traj_id.device).view(-1, 1, 1)
        return frames - self.start[self.traj_id]

    @staticmethod
    def from_ids(traj_id: torch.Tensor) -> Trajectories:
        flat = traj_id.reshape(traj_id.shape[0], -1)
        count = int(flat.max()) + 1 if flat.numel() else 0
        frame_of = torch.arange(flat.shape[0], device=flat.device).view(-1, 1).expand_as(flat).reshape(-1)
        start = torch.full((count,), flat.shape[0], dtype=torch.long, device=flat.device)
        start = start.scatter_reduce(0, flat.reshape(-1), frame_of, reduce="amin")
        length = torch.bincount(flat.reshape(-1), minlength=count)
        return Trajectories(traj_id, start, length)


@dataclass
class TrajectorySet:
    """``VE_TRAJECTORIES``: trajectories of one clip at every latent resolution.

    ``frames``: the clip's frame count; ``latent_size``: ``(h, w)`` of the latent (level 0);
    ``levels``: grid ``(h, w)`` → :class:`Trajectories` (CPU tensors); ``flow_resize``: how the
    flow was brought to the grids (:data:`FLOW_RESIZE`).
    """

    frames: int
    latent_size: tuple[int, int]
    levels: dict[tuple[int, int], Trajectories] = field(default_factory=dict)
    seed: int = 0
    flow_resize: str = "official"

    def at(self, size: tuple[int, int]) -> Trajectories:
        try:
            return self.levels[tuple(size)]
        except KeyError:
            raise ValueError(
                f"FLATTEN trajectories hold grids {sorted(self.levels)} (latent "
                f"{self.latent_size[0]}x{self.latent_size[1]}), not {size[0]}x{size[1]}: sample the "
                "trajectories for the latent being sampled"
            ) from None

    def describe(self) -> str:
        h, w = self.latent_size
        return f"{self.frames} frames at latent {h}x{w}"

    @functools.cached_property
    def content_digest(self) -> str:
        """sha256 of every level's trajectory ids (they determine the rest): part of the cache
        keys of anything computed through FLATTEN, so trajectories from another flow never
        share an inversion or feature-cache entry."""
        h = hashlib.sha256(f"{self.frames};{self.latent_size};{self.flow_resize};{self.seed}".encode())
        for size in sorted(self.levels):
            ids = self.levels[size].traj_id.detach().to("cpu", torch.int64).contiguous()
            h.update(f"{size}:{tuple(ids.shape)}".encode())
            h.update(ids.numpy().tobytes())
        return h.hexdigest()

    def __deepcopy__(self, memo):  # immutable once sampled; never copied with model options
        return self


def sample_trajectories(
    flow: torch.Tensor,
    latent_size: tuple[int, int],
    levels: int = DEFAULT_LEVELS,
    seed: int = 0,
    flow_resize: str = "official",
) -> TrajectorySet:
    """Trajectories of a clip at every latent resolution.

    Args:
        flow: ``[F-1, H, W, 2]`` forward flow (frame i → i+1), pixel displacements (dx, dy)
            at any resolution with the latent's aspect ratio.
        latent_size: ``(h, w)`` of the latent (image size / 8 for SD).
        levels: how many resolutions, each ``ceil(n/2)`` of the previous.
        seed: seed of the collision choices.
        flow_resize: ``"official"`` (nearest, yrcong/flatten) or ``"antialiased"``.

    Returns:
        :class:`TrajectorySet` with CPU tensors.
    """
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [frames-1, H, W, 2], got {list(flow.shape)}")
    _resize_mode(flow_resize)
    gen = torch.Generator().manual_seed(int(seed))
    out = TrajectorySet(
        frames=int(flow.shape[0]) + 1,
        latent_size=(int(latent_size[0]), int(latent_size[1])),
        seed=int(seed),
        flow_resize=flow_resize,
    )
    for size in latent_grid_sizes(*latent_size, levels):
        if size in out.levels:
            continue
        ids = link_cells(cell_displacements(flow, size, flow_resize), gen)
        out.levels[size] = Trajectories.from_ids(ids.cpu())
    return out
