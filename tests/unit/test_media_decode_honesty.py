"""Decoding is honest about what it read: a truncated file is an error naming both counts
(PyAV's threaded decoder stops without a word there), a header that lies is a warning with
the count, and a load that would not fit in RAM is refused before decoding."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from comfyui_videoedit.media.decode import check_memory, image_bytes, read_video_frames
from comfyui_videoedit.media.encode import write_video

FRAMES = 24


@pytest.fixture(scope="module")
def full_mp4(tmp_path_factory):
    frames = torch.rand(FRAMES, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    (path,) = write_video(frames, str(tmp_path_factory.mktemp("clips") / "full"), 24.0, "mp4", 19)
    return path


def _truncated(full_mp4, tmp_path, fraction):
    data = open(full_mp4, "rb").read()
    path = tmp_path / f"cut{int(fraction * 100)}.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_the_whole_file_loads_without_warnings(full_mp4):
    loaded = read_video_frames(full_mp4)
    assert loaded.frames.shape[0] == FRAMES and loaded.warnings == []


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_a_truncated_mp4_is_an_error_with_both_counts(full_mp4, tmp_path, fraction):
    path = _truncated(full_mp4, tmp_path, fraction)
    with pytest.raises(
        ValueError,
        match=rf"video: 'cut\d+.mp4' is truncated or damaged: only \d+ frames of the "
        rf"{FRAMES} frames its container lists.*frame_load_cap",
    ):
        read_video_frames(path)


def test_the_readable_frames_of_a_truncated_file_load_with_a_cap(full_mp4, tmp_path):
    path = _truncated(full_mp4, tmp_path, 0.5)
    with pytest.raises(ValueError, match=r"only (\d+) frames") as err:
        read_video_frames(path)
    readable = int(str(err.value).split("only ")[1].split(" ")[0])
    loaded = read_video_frames(path, frame_load_cap=readable)
    assert loaded.frames.shape[0] == readable
    full = read_video_frames(full_mp4, frame_load_cap=readable)
    assert torch.equal(loaded.frames, full.frames)


def test_a_header_that_lies_gives_a_warning_with_the_count(tmp_path):
    """mkv keeps no frame count, only a duration: frames with a gap in their timestamps (a
    variable-rate clip) make the duration promise far more frames than there are."""
    path = tmp_path / "gappy.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 24)
        for i, pts in enumerate([0, 1, 2, 3, 40]):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")
            frame.pts = pts
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    loaded = read_video_frames(path)
    assert loaded.frames.shape[0] == 5
    (warning,) = loaded.warnings
    assert "decoded 5 frames" in warning and "gappy.mkv" in warning


def test_memory_guard_names_the_inputs_before_decoding(full_mp4):
    one = image_bytes(1, 64, 64)
    assert one == 64 * 64 * 3 * 4
    with pytest.raises(ValueError, match=r"frame_load_cap/custom_width: loading 24 frames .* at most 10"):
        read_video_frames(full_mp4, available_bytes=10 * one + 5)
    assert read_video_frames(full_mp4, frame_load_cap=10, available_bytes=10 * one + 5).frames.shape[0] == 10
    assert read_video_frames(full_mp4, custom_width=16, available_bytes=10 * one).frames.shape[0] == FRAMES
    check_memory(24, 64, 64, 0, "x")  # 0 = unknown: no guard
