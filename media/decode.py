"""Streaming video decoding with PyAV: frame selection (skip / stride / cap) and resizing
happen while frames are decoded, so memory holds only the frames that are kept.

A load of 60 frames from a 10 000-frame video costs 60 frames of memory (plus the decoder's
few reference frames), not 10 000: frames before ``skip_first_frames`` and between strides
are decoded (inter-frame codecs need them) but never converted to RGB, and decoding stops as
soon as ``frame_load_cap`` frames are kept. Kept frames are held as ``uint8`` at the output
size and turned into one float tensor at the end, frame by frame.

Errors a user can fix raise ``ValueError`` whose message names the node input and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from .resize import check_size_request, resize_frame, target_size

log = logging.getLogger(__name__)

DEFAULT_FPS = 24.0  # only when a file states no usable frame rate at all (logged)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (before decoding)."""

    width: int
    height: int
    fps: float
    frame_count: int  # the container's count or an estimate from the duration; 0 when unknown
    codec: str


@dataclass
class LoadedVideo:
    """``frames``: ``[F, H, W, 3]`` float32 in 0..1 (or uint8 0..255 when asked for);
    ``fps``: the source rate divided by the stride; ``source_*``: the file's own figures;
    ``warnings``: what the user should know about the load (shown in the node's UI text)."""

    frames: torch.Tensor
    fps: float
    source_fps: float
    source_width: int
    source_height: int
    warnings: list[str] = field(default_factory=list)


IMAGE_BYTES_PER_VALUE = 4  # ComfyUI's IMAGE is float32


def image_bytes(frames: int, height: int, width: int) -> int:
    """Bytes of an IMAGE batch ``[frames, height, width, 3]`` float32."""
    return int(frames) * int(height) * int(width) * 3 * IMAGE_BYTES_PER_VALUE


def check_memory(frames: int, height: int, width: int, available_bytes: int, name: str) -> None:
    """Refuse a load whose IMAGE would not fit in ``available_bytes`` of RAM, naming the inputs
    that make it smaller."""
    need = image_bytes(frames, height, width)
    if available_bytes > 0 and need > available_bytes:
        fit = max(1, available_bytes // max(image_bytes(1, height, width), 1))
        raise ValueError(
            f"frame_load_cap/custom_width: loading {frames} frames of '{name}' at {width}x{height} needs "
            f"{need / 2**30:.2f} GiB as an IMAGE (frames x height x width x 3 x 4 bytes) but only "
            f"{available_bytes / 2**30:.2f} GiB of RAM is available; set frame_load_cap to at most {fit}, "
            "raise select_every_nth, or set a smaller custom_width"
        )


def _stated_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float
) -> tuple[int, bool]:
    """The container's frame count and whether it is exact (a sample table, as mp4/mov keep)
    rather than an estimate from a duration (mkv/webm/avi)."""
    if stream.frames:
        return int(stream.frames), True
    return _frame_count(container, stream, fps), False


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"video: the file '{name}' does not exist ({path}); choose an existing video file")
    try:
        container = av.open(os.fspath(path), mode="r")
    except av.error.FFmpegError as err:
        raise ValueError(
            f"video: '{name}' cannot be read as a video ({err}); choose a video file "
            "(mp4, webm, mkv, mov, avi, gif, m4v) or re-encode it, e.g. to H.264 mp4"
        ) from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"video: '{name}' has no video stream (an audio-only or data file?); choose a file with video")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and math.isfinite(float(rate)) and float(rate) > 0:
            return float(rate)
    return 0.0


def _frame_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float) -> int:
    """The stream's frame count, else an estimate from its (or the container's) duration."""
    if stream.frames:
        return int(stream.frames)
    if fps <= 0:
        return 0
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * fps))
    if container.duration is not None:  # e.g. webm: only the container knows (in AV_TIME_BASE units)
        return int(round(container.duration / av.time_base * fps))
    return 0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the header of ``path``'s first video stream (no frames are decoded)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        ctx = stream.codec_context
        return VideoInfo(
            width=int(ctx.width),
            height=int(ctx.height),
            fps=fps,
            frame_count=_frame_count(container, stream, fps),
            codec=ctx.name or "",
        )


def selected_count(total: int, frame_load_cap: int = 0, skip_first_frames: int = 0, select_every_nth: int = 1) -> int:
    """How many of ``total`` frames a load keeps: frames ``skip, skip+nth, skip+2*nth, …``,
    at most ``frame_load_cap`` of them (0 = no cap)."""
    available = max(0, total - skip_first_frames)
    count = (available + select_every_nth - 1) // select_every_nth
    return min(count, frame_load_cap) if frame_load_cap > 0 else count


def frames_to_decode(total: int, frame_load_cap: int = 0, skip_first_frames: int = 0, select_every_nth: int = 1) -> int:
    """How many frames a load decodes (skipped ones included) before it stops: a progress total."""
    kept = selected_count(total, frame_load_cap, skip_first_frames, select_every_nth)
    if frame_load_cap <= 0 or kept < frame_load_cap:
        return total
    return skip_first_frames + (kept - 1) * select_every_nth + 1


def _check_selection(frame_load_cap: int, skip_first_frames: int, select_every_nth: int) -> None:
    if frame_load_cap < 0:
        raise ValueError(f"frame_load_cap must be 0 (load all frames) or a positive count, got {frame_load_cap}")
    if skip_first_frames < 0:
        raise ValueError(f"skip_first_frames must be 0 or more, got {skip_first_frames}")
    if select_every_nth < 1:
        raise ValueError(f"select_every_nth must be at least 1 (1 keeps every frame), got {select_every_nth}")


def _upright(frame: av.VideoFrame, rgb: np.ndarray) -> np.ndarray:
    """Apply the display rotation phone cameras store beside the pixels (a counter-clockwise
    angle in multiples of 90°), so frames come out the way players show them."""
    quarter_turns = int(round(getattr(frame, "rotation", 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb


def stack_as_float(frames: list[np.ndarray]) -> torch.Tensor:
    """``uint8 [H, W, 3]`` frames → one float32 ``[F, H, W, 3]`` tensor in 0..1. Each source
    frame is released as soon as it is copied, so the uint8 and float copies never coexist
    whole. Empties ``frames``."""
    height, width, channels = frames[0].shape
    out = torch.empty((len(frames), height, width, channels), dtype=torch.float32)
    for index in range(len(frames)):
        out[index].copy_(torch.from_numpy(frames[index])).div_(255.0)
        frames[index] = None  # type: ignore[call-overload]  # drop the uint8 copy now
    frames.clear()
    return out


def read_video_frames(
    path: str | os.PathLike,
    frame_load_cap: int = 0,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    custom_width: int = 0,
    custom_height: int = 0,
    size_multiple: int = 8,
    as_float: bool = True,
    on_frame: Callable[[int], None] | None = None,
    available_bytes: int = 0,
) -> LoadedVideo:
    """Decode frames ``skip, skip+nth, …`` of ``path`` (at most ``frame_load_cap``; 0 = all),
    each resized to :func:`~.resize.target_size` as it is decoded.

    ``on_frame(decoded_so_far)`` is called after every decoded frame (kept or not): progress
    reporting and interruption (raise from it to stop) without this module knowing the host.
    Returns :class:`LoadedVideo`; ``frames`` is float32 0..1 ``[F, H, W, 3]`` (uint8 when
    ``as_float=False``). The file is only read.

    Honest about what it read: when decoding ends before the frames the container lists (a
    truncated or damaged file; PyAV's threaded decoder stops without an error there) it raises
    a ValueError with both counts; when only a duration-based estimate disagrees (a header
    that lies, e.g. variable frame rate) the load succeeds with a warning in ``warnings``.
    ``available_bytes`` > 0: refuse before decoding when the IMAGE would not fit.
    """
    _check_selection(frame_load_cap, skip_first_frames, select_every_nth)
    check_size_request(custom_width, custom_height, size_multiple)
    name = os.path.basename(path)
    kept: list[np.ndarray] = []
    decoded = 0
    size: tuple[int, int] | None = None
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is most of the cost
        source_fps = _stream_fps(stream)
        source_width, source_height = int(stream.codec_context.width), int(stream.codec_context.height)
        stated, exact = _stated_count(container, stream, source_fps)
        if stated and available_bytes > 0:
            out_w, out_h = target_size(source_width, source_height, custom_width, custom_height, size_multiple)
            check_memory(
                selected_count(stated, frame_load_cap, skip_first_frames, select_every_nth),
                out_h,
                out_w,
                available_bytes,
                name,
            )
        capped = False
        failure = None
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if index >= skip_first_frames and (index - skip_first_frames) % select_every_nth == 0:
                    rgb = _upright(frame, frame.to_ndarray(format="rgb24"))
                    if size is None:  # from the first kept frame: its real, upright size
                        size = target_size(rgb.shape[1], rgb.shape[0], custom_width, custom_height, size_multiple)
                    kept.append(resize_frame(rgb, size))
                if on_frame is not None:
                    on_frame(decoded)
                if frame_load_cap and len(kept) >= frame_load_cap:
                    capped = True
                    break
        except av.error.FFmpegError as err:
            if not kept:
                raise ValueError(
                    f"video: decoding '{name}' failed at frame {decoded} ({err}); "
                    "the file may be damaged: re-encode it, e.g. to H.264 mp4"
                ) from None
            failure = str(err)
    warnings = [] if capped else _check_decoded(name, decoded, stated, exact, failure, len(kept), frame_load_cap)
    if not kept:
        if decoded == 0:
            raise ValueError(f"video: '{name}' contains no decodable frames; choose another file or re-encode it")
        raise ValueError(
            f"skip_first_frames={skip_first_frames} skips past the end of '{name}', which has {decoded} frames: "
            f"set skip_first_frames below {decoded}"
        )
    if source_fps <= 0:
        log.warning("VideoEdit: %s states no frame rate; assuming %.0f fps", name, DEFAULT_FPS)
        source_fps = DEFAULT_FPS
    frames = stack_as_float(kept) if as_float else torch.from_numpy(np.stack(kept))
    return LoadedVideo(
        frames=frames,
        fps=source_fps / select_every_nth,
        source_fps=source_fps,
        source_width=source_width,
        source_height=source_height,
        warnings=warnings,
    )


def _check_decoded(
    name: str, decoded: int, stated: int, exact: bool, failure: str | None, kept: int, frame_load_cap: int
) -> list[str]:
    """After a load that read to the end: an error when frames the container lists could not
    be decoded, a warning when only an estimate disagrees. Returns the warnings."""
    # an exact count one frame above the decoded one is left to a warning: edit lists of some
    # camera files hide a frame the sample table still lists
    short = exact and decoded < stated - 1
    if failure is not None or short:
        listed = f"of the {stated} frames its container lists " if stated else ""
        why = f" (FFmpeg: {failure})" if failure else ""
        raise ValueError(
            f"video: '{name}' is truncated or damaged: only {decoded} frames {listed}could be decoded{why}; "
            f"re-encode or re-copy the file, or set frame_load_cap to {kept} or fewer to use the readable frames"
            + ("" if not frame_load_cap else f" (frame_load_cap is {frame_load_cap})")
        )
    tolerance = 0 if exact else max(2, round(0.05 * stated))
    if stated and abs(decoded - stated) > tolerance:
        said = "its container lists" if exact else "its header's duration suggests about"
        text = (
            f"video: '{name}': decoded {decoded} frames where {said} {stated} (a variable frame rate or a "
            "wrong header); the frames loaded are all the file holds"
        )
        log.warning("VideoEdit: %s", text)
        return [text]
    return []
