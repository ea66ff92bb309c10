"""Frame geometry: the output size a load asks for, and resizing one decoded frame to it.

Sizes are ``(width, height)`` in pixels, as video tools (and the node inputs) state them;
frames are numpy ``uint8`` arrays ``[H, W, 3]`` straight from the decoder.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def snap_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up), never below ``multiple`` itself."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def check_size_request(custom_width: int, custom_height: int, size_multiple: int) -> None:
    """Raise ``ValueError`` naming the input when a requested size cannot be produced."""
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be at least 1 (1 keeps the exact size), got {size_multiple}")
    for name, value in (("custom_width", custom_width), ("custom_height", custom_height)):
        if value < 0:
            raise ValueError(f"{name} must be 0 (keep the source size) or a positive size in pixels, got {value}")
        if 0 < value < size_multiple:
            raise ValueError(
                f"{name}={value} is smaller than size_multiple={size_multiple}, so it cannot be reached: "
                f"set {name} to at least {size_multiple}, or lower size_multiple (1 keeps exact sizes)"
            )


def target_size(
    source_width: int,
    source_height: int,
    custom_width: int = 0,
    custom_height: int = 0,
    size_multiple: int = 8,
) -> tuple[int, int]:
    """Output ``(width, height)`` for a ``source_width`` x ``source_height`` video.

    ``custom_width`` / ``custom_height`` = 0 keep the source side; when only one is given the
    other follows from the source aspect ratio. Both sides are then rounded to the nearest
    multiple of ``size_multiple`` (latent-friendly sizes: 8 for SD VAEs; 1 keeps exact sizes),
    and never below one multiple. An explicit custom side smaller than ``size_multiple`` cannot
    be honoured and raises ``ValueError`` naming the input.
    """
    if source_width <= 0 or source_height <= 0:
        raise ValueError(f"video: the file reports a frame size of {source_width}x{source_height}; it may be damaged")
    check_size_request(custom_width, custom_height, size_multiple)
    if custom_width and custom_height:
        width, height = float(custom_width), float(custom_height)
    elif custom_width:
        width, height = float(custom_width), source_height * custom_width / source_width
    elif custom_height:
        width, height = source_width * custom_height / source_height, float(custom_height)
    else:
        width, height = float(source_width), float(source_height)
    return snap_to_multiple(width, size_multiple), snap_to_multiple(height, size_multiple)


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a ``uint8 [H, W, C]`` frame to ``size = (width, height)``.

    Shrinking uses area averaging (no aliasing of fine texture, which optical flow and the VAE
    would otherwise see as flicker); enlarging, or a mixed change, uses Lanczos. Returns the
    input itself when the size already matches.
    """
    width, height = size
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    shrinking = width <= frame.shape[1] and height <= frame.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    return np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=interpolation))
