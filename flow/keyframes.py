"""Rerender-A-Video's keyframe schedule: which frames are rendered, and after which keyframes
the cross-frame attention's "previous keyframe" reference moves on.

Frame 0 is always the anchor (the official ``initfirst`` render, the style reference of every
later keyframe). After it, with interval ``K``:

- ``"even"`` (the pack's default): keyframes ``0, K, 2K, ...``: evenly spaced, the anchor is
  one of them, and a clip of ``nK + 1`` frames ends on a keyframe. This is what "every K-th
  frame" reads as, and Propagate Keyframes then fills ``K − 1`` frames between each pair.
- ``"official"``: ``0, 1, 1 + K, 1 + 2K, ...``: williamyang1991/Rerender_A_Video renders the
  anchor, then frame ``i + 1`` for ``i = 0, K, 2K, ... < F − 1`` (``cid = i + 1``), and its
  output video starts at frame 1 (``video_blend.py --beg 1``): frame 1 sits right after the
  anchor, so frames 0 and 1 are both keyframes and the last gap is shorter.

The official code moves the cross-frame "previous" store on at the keyframe of loop index
``i`` only when ``i % style_update_freq == 0`` (default 10, so with ``K = 10`` at every
keyframe). ``i`` is the keyframe's distance in frames from the first keyframe after the
anchor, which is how :func:`updates_previous_style` counts in both layouts. The pixel-aware
fusion's previous keyframe (``pre_result``) moves on at every keyframe regardless.
"""

from __future__ import annotations

KEYFRAME_LAYOUTS = ("even", "official")


def keyframe_indices(frame_count: int, interval: int, layout: str = "even") -> list[int]:
    """Frames rendered, in order; the first is the anchor (frame 0).

    Args:
        frame_count: frames in the clip (≥ 1).
        interval: ``K`` (≥ 1).
        layout: ``"even"`` (0, K, 2K, ...) or ``"official"`` (0, 1, 1 + K, ...).
    """
    if layout not in KEYFRAME_LAYOUTS:
        raise ValueError(f"keyframe_layout: expected one of {list(KEYFRAME_LAYOUTS)}, got {layout!r}")
    if frame_count < 1:
        raise ValueError(f"images: the clip has no frames ({frame_count})")
    if interval < 1:
        raise ValueError(f"keyframe_interval: must be at least 1, got {interval}")
    if layout == "even":
        return list(range(0, frame_count, interval))
    return [0] + [i + 1 for i in range(0, frame_count - 1, interval)]


def updates_previous_style(keyframes: list[int], position: int, style_update_freq: int) -> bool:
    """Whether ``keyframes[position]`` (a keyframe after the anchor, ``position ≥ 1``) becomes
    the cross-frame attention's previous keyframe once rendered: when its distance in frames
    from the first keyframe after the anchor is a multiple of ``style_update_freq`` (the
    official ``i % style_update_freq == 0``). The first keyframe after the anchor always does.
    """
    if style_update_freq < 1:
        raise ValueError(f"style_update_freq: must be at least 1, got {style_update_freq}")
    if position < 1:
        raise ValueError("the anchor (position 0) is not a later keyframe")
    return (keyframes[position] - keyframes[1]) % style_update_freq == 0
