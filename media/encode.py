"""Writing frames to disk: H.264 mp4, VP9 webm (PyAV), GIF and PNG sequences (Pillow).

Frames are ComfyUI images ``[F, H, W, C]`` float in 0..1 (C = 3; 4 drops alpha, 1 is grey).
They are converted to ``uint8`` one at a time while encoding, so a save never holds a second
copy of the clip. Workflow metadata (``{"prompt": json, "workflow": json, …}``, values
already JSON strings) goes where each format has a place for it: mp4/webm container tags
(``movflags=use_metadata_tags`` for mp4, as ComfyUI core's SaveVideo does) and PNG text
chunks. GIF has no place ComfyUI reads, so it gets none.

Colour: RGB → Y'CbCr uses BT.709 limited range and the streams are tagged so, which is what
browsers and players assume for untagged HD anyway; the loader reads the tags back.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

log = logging.getLogger(__name__)

FORMATS = ("mp4", "webm", "gif", "png")
EXTENSIONS = {"mp4": ".mp4", "webm": ".webm", "gif": ".gif", "png": ".png"}

# Software encoders first (always open), then platform/hardware ones that may be compiled in
# but fail to open without the hardware; MPEG-4 Part 2 is the last resort that any FFmpeg has.
H264_CANDIDATES = ("libx264", "libopenh264", "h264_videotoolbox", "h264_mf", "h264_nvenc", "h264_qsv", "h264_amf")
FALLBACK_MP4_ENCODER = "mpeg4"
VP9_ENCODER = "libvpx-vp9"

_BT709 = 1  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC value for BT.709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


def encoder_opens(name: str) -> bool:
    """True when FFmpeg (as bundled with PyAV) has encoder ``name`` *and* it opens here
    (hardware encoders are often compiled in but cannot open without their device)."""
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height = 64, 64
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25, 1)
        ctx.open()
        return True
    except Exception:  # any failure (unknown codec, no device, bad format) means "not usable"
        return False


@functools.cache
def h264_encoder() -> str:
    """The best usable H.264 encoder, or ``mpeg4`` (not H.264; logged) when there is none."""
    for name in H264_CANDIDATES:
        if encoder_opens(name):
            if name != "libx264":
                log.warning("VideoEdit: libx264 is not available in PyAV's FFmpeg; mp4 uses %s (no crf control)", name)
            return name
    log.warning(
        "VideoEdit: no H.264 encoder in PyAV's FFmpeg; mp4 falls back to MPEG-4 Part 2 (%s)", FALLBACK_MP4_ENCODER
    )
    return FALLBACK_MP4_ENCODER


def output_paths(stem: str, fmt: str, frame_count: int) -> list[str]:
    """Files :func:`write_video` writes for ``stem``: ``stem.mp4`` … or, for a PNG sequence,
    ``stem00000.png``, ``stem00001.png``, …"""
    if fmt not in FORMATS:
        raise ValueError(f"format: '{fmt}' is not one of {', '.join(FORMATS)}")
    if fmt == "png":
        return [f"{stem}{index:05d}.png" for index in range(frame_count)]
    return [stem + EXTENSIONS[fmt]]


def frame_to_uint8(frame: torch.Tensor) -> np.ndarray:
    """One image ``[H, W, C]`` float 0..1 → contiguous ``uint8 [H, W, 3]`` (rounded, clamped)."""
    if frame.shape[-1] == 1:
        frame = frame.expand(*frame.shape[:-1], 3)
    rgb = frame[..., :3].detach().to("cpu", torch.float32)
    return rgb.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).numpy()


def _uint8_frames(frames: torch.Tensor, on_frame: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    for index in range(frames.shape[0]):
        yield frame_to_uint8(frames[index])
        if on_frame is not None:
            on_frame(index + 1)


def pad_to_even(rgb: np.ndarray) -> np.ndarray:
    """Repeat the last row/column when a side is odd: 4:2:0 chroma needs even sizes for H.264.
    Padding keeps every source pixel (cropping would drop a line of content)."""
    pad_h, pad_w = rgb.shape[0] % 2, rgb.shape[1] % 2
    if not (pad_h or pad_w):
        return rgb
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4) or frames.shape[0] == 0:
        raise ValueError(
            f"images: expected a batch of frames [frames, height, width, 3], got shape {tuple(frames.shape)}"
        )


def _frame_rate(fps: float) -> Fraction:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(round(fps * 1000), 1000)


def _bits_per_second(width: int, height: int, fps: float) -> int:
    """Bit rate for encoders without a constant-quality mode (~0.25 bit per pixel)."""
    return int(width * height * fps * 0.25)


def _write_av(
    frames: torch.Tensor,
    path: str,
    rate: Fraction,
    fmt: str,
    crf: int,
    metadata: dict[str, str] | None,
    on_frame: Callable[[int], None] | None,
) -> None:
    codec = h264_encoder() if fmt == "mp4" else VP9_ENCODER
    height, width = frames.shape[1], frames.shape[2]
    if codec != VP9_ENCODER:  # VP9 handles odd sizes itself; H.264/MPEG-4 4:2:0 do not
        height, width = height + height % 2, width + width % 2
    options = {"movflags": "+faststart+use_metadata_tags"} if fmt == "mp4" else {}
    with av.open(path, mode="w", options=options) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
        ctx.color_range = _LIMITED_RANGE
        if codec == "libx264":
            stream.options = {"crf": str(min(crf, 51)), "preset": "medium"}
        elif codec == VP9_ENCODER:
            stream.bit_rate = 0  # constant quality: crf alone decides
            stream.options = {"crf": str(min(crf, 63)), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        else:
            stream.bit_rate = _bits_per_second(width, height, float(rate))
        for index, rgb in enumerate(_uint8_frames(frames, on_frame)):
            rgb_frame = av.VideoFrame.from_ndarray(pad_to_even(rgb) if codec != VP9_ENCODER else rgb, format="rgb24")
            frame = rgb_frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed frames


def _write_gif(frames: torch.Tensor, path: str, rate: Fraction, on_frame: Callable[[int], None] | None) -> None:
    # GIF stores delays in 1/100 s; Pillow quantises each frame to its own adaptive palette.
    duration_ms = max(10, int(round(100.0 / float(rate))) * 10)
    images = (Image.fromarray(rgb) for rgb in _uint8_frames(frames, on_frame))
    first = next(images)
    first.save(path, format="GIF", save_all=True, append_images=images, duration=duration_ms, loop=0, optimize=False)


def _write_png(
    frames: torch.Tensor, paths: list[str], metadata: dict[str, str] | None, on_frame: Callable[[int], None] | None
) -> None:
    info = None
    if metadata:
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value)
    for path, rgb in zip(paths, _uint8_frames(frames, on_frame)):
        Image.fromarray(rgb).save(path, format="PNG", pnginfo=info, compress_level=4)


def write_video(
    frames: torch.Tensor,
    stem: str,
    fps: float,
    fmt: str = "mp4",
    crf: int = 19,
    metadata: dict[str, str] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``frames`` (``[F, H, W, C]`` float 0..1, any device) as ``fmt`` to the files
    :func:`output_paths` names for ``stem``; returns those paths.

    ``fmt``: ``mp4`` (H.264 yuv420p, odd sides padded by one repeated pixel row/column),
    ``webm`` (VP9 yuv420p), ``gif`` (looping, delay rounded to 1/100 s), ``png`` (lossless,
    one file per frame). ``crf``: constant rate factor, lower = better (H.264 uses at most 51,
    VP9 63; ignored by GIF/PNG). ``metadata``: text tags (values are strings, e.g. JSON).
    ``on_frame(written)`` is called after each frame (progress, interruption).
    Existing files are never overwritten (``FileExistsError``); on failure the files this
    call started are removed, so an interrupted save leaves nothing half-written behind.
    """
    _check_frames(frames)
    rate = _frame_rate(fps)
    paths = output_paths(stem, fmt, frames.shape[0])
    taken = [p for p in paths if os.path.exists(p)]
    if taken:
        raise FileExistsError(f"will not overwrite {taken[0]}")
    try:
        if fmt in ("mp4", "webm"):
            _write_av(frames, paths[0], rate, fmt, int(crf), metadata, on_frame)
        elif fmt == "gif":
            _write_gif(frames, paths[0], rate, on_frame)
        else:
            _write_png(frames, paths, metadata, on_frame)
    except BaseException:
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        raise
    return paths
