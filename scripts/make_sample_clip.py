"""Render the bundled sample clip ``workflows/assets/sample.mp4``: a small, deterministic
procedural scene that gives optical flow and video editing something to work on.

The camera pans slowly over a textured backdrop (smooth multi-scale noise: every region has
trackable detail) while a checker-textured square turns and slides across, and a striped
ball bounces over the lower half (motion, rotation and occlusion in one short clip).
Default: 24 frames, 320x192 (both sides multiples of 64), 8 fps, H.264 crf 20: about 60 KB.

    .venv/bin/python scripts/make_sample_clip.py [--output PATH] [--frames N] [--fps F]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ve_testkit.pack import load_pack  # noqa: E402  (imports the pack as a package, no host)

load_pack()
from comfyui_videoedit.media.encode import write_video  # noqa: E402

log = logging.getLogger("make_sample_clip")

WIDTH, HEIGHT = 320, 192
PAN_PER_FRAME = (2.5, 0.6)  # camera motion in pixels per frame (x, y)
SEED = 20240611


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Value noise in 0..1: a coarse random grid upsampled with bicubic interpolation."""
    grid = rng.random((cells[1], cells[0]), dtype=np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def backdrop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB ``[H, W, 3]`` in 0..1: a sky-to-meadow gradient modulated by noise at three scales."""
    detail = (
        0.5 * smooth_noise(rng, height, width, (10, 6))
        + 0.3 * smooth_noise(rng, height, width, (36, 20))
        + 0.2 * smooth_noise(rng, height, width, (110, 60))
    )
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky, meadow = np.array([0.45, 0.62, 0.85], np.float32), np.array([0.30, 0.55, 0.22], np.float32)
    base = sky * (1 - t) + meadow * t
    return np.clip(base * (0.55 + 0.8 * detail[..., None]), 0.0, 1.0)


def checker_texture(size: int, squares: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] * squares // size
    light, dark = np.array([0.95, 0.62, 0.15], np.float32), np.array([0.55, 0.16, 0.10], np.float32)
    return np.where(((x + y) % 2 == 0)[..., None], light, dark).astype(np.float32)


def composite(frame: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> None:
    frame *= 1.0 - alpha[..., None]
    frame += layer * alpha[..., None]


def draw_square(frame: np.ndarray, texture: np.ndarray, centre: tuple[float, float], angle_deg: float) -> None:
    """Paste ``texture`` rotated by ``angle_deg`` about its centre at ``centre`` (bilinear, soft edges)."""
    size = texture.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle_deg, 1.0)
    matrix[:, 2] += (centre[0] - size / 2, centre[1] - size / 2)
    shape = (frame.shape[1], frame.shape[0])
    layer = cv2.warpAffine(texture, matrix, shape, flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(np.ones(texture.shape[:2], np.float32), matrix, shape, flags=cv2.INTER_LINEAR)
    composite(frame, layer, alpha)


def draw_ball(frame: np.ndarray, centre: tuple[float, float], radius: float, phase: float) -> None:
    """A ball with stripes fixed to it (so its motion is visible inside, not only at the rim)."""
    y, x = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]].astype(np.float32)
    dx, dy = x - centre[0], y - centre[1]
    alpha = np.clip(radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    stripes = 0.5 + 0.5 * np.sin((dx + dy) * 0.45 + phase)
    shade = np.clip(1.0 - 0.35 * (dx + dy) / (2 * radius), 0.6, 1.2)[..., None]
    colour = (
        np.array([0.15, 0.25, 0.80], np.float32) * (1 - stripes[..., None])
        + np.array([0.92, 0.92, 0.98], np.float32) * stripes[..., None]
    )
    composite(frame, np.clip(colour * shade, 0, 1), alpha)


def render(frames: int, width: int = WIDTH, height: int = HEIGHT, seed: int = SEED) -> torch.Tensor:
    """The clip as ComfyUI IMAGE frames ``[frames, height, width, 3]`` float32 0..1."""
    rng = np.random.default_rng(seed)
    margin_x = int(math.ceil(PAN_PER_FRAME[0] * frames)) + 8
    margin_y = int(math.ceil(PAN_PER_FRAME[1] * frames)) + 8
    world = backdrop(rng, height + margin_y, width + margin_x)
    texture = checker_texture(64, 4)
    out = torch.empty((frames, height, width, 3), dtype=torch.float32)
    for index in range(frames):
        t = index / max(frames - 1, 1)
        pan = np.float32([[1, 0, -PAN_PER_FRAME[0] * index], [0, 1, -PAN_PER_FRAME[1] * index]])
        frame = cv2.warpAffine(world, pan, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        draw_square(frame, texture, (60 + 190 * t, 70 + 18 * math.sin(2 * math.pi * t)), angle_deg=150 * t)
        bounce = abs(math.sin(math.pi * 1.5 * t))
        draw_ball(frame, (260 - 170 * t, 160 - 70 * bounce), radius=22, phase=-6.0 * t)
        out[index] = torch.from_numpy(np.clip(frame, 0.0, 1.0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "workflows" / "assets" / "sample.mp4")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--crf", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    frames = render(args.frames)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # write_video never overwrites: encode next to the target, then swap it in atomically.
    with tempfile.TemporaryDirectory(dir=args.output.parent) as tmp:
        (written,) = write_video(frames, os.path.join(tmp, "clip"), args.fps, "mp4", crf=args.crf)
        os.replace(written, args.output)
    log.info(
        "wrote %s: %d frames, %dx%d, %.3g fps, %.0f KB",
        args.output,
        args.frames,
        WIDTH,
        HEIGHT,
        args.fps,
        args.output.stat().st_size / 1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
