"""Streaming decode: which frames a skip / stride / cap selection returns, resizing, fps,
display rotation, progress callbacks and the errors a user sees.

Test clips are written with PyAV directly (not with the pack's encoder) and carry their frame
number as 8 wide black/white bars (bit i of the index in bar i), which survive lossy coding
and resizing, so the decoded frames can be identified exactly.
"""

import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from comfyui_videoedit.media.decode import (
    frames_to_decode,
    probe_video,
    read_video_frames,
    selected_count,
    stack_as_float,
)

BITS = 8
BAR = 16  # pixels per bar
FPS = 10


def index_frame(index: int, height: int = 48) -> np.ndarray:
    bits = [(index >> b) & 1 for b in range(BITS)]
    row = np.repeat(np.array(bits, np.uint8) * 200 + 28, BAR)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


def write_index_clip(path, count: int, codec: str = "libx264", rotation: int | None = None) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 48, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(index_frame(index), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def read_indices(frames: torch.Tensor) -> list[int]:
    """Frame numbers from the bars of float frames [F, H, W, 3] (any width: bars scale with it)."""
    width = frames.shape[2]
    centres = [int((b + 0.5) * width / BITS) for b in range(BITS)]
    bars = frames[:, frames.shape[1] // 2, centres, :].mean(dim=-1) > 0.5  # [F, BITS]
    return [sum(int(bit) << b for b, bit in enumerate(row)) for row in bars.tolist()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / "index30.mp4"
    write_index_clip(path, 30)
    return path


def test_the_pattern_decodes_every_frame_of_the_clip(clip):
    loaded = read_video_frames(clip, size_multiple=1)
    assert read_indices(loaded.frames) == list(range(30))


@pytest.mark.parametrize(
    "cap, skip, nth",
    [(0, 0, 1), (10, 0, 1), (0, 5, 1), (0, 3, 4), (4, 2, 3), (100, 0, 7), (0, 29, 1), (5, 28, 1), (3, 0, 30)],
)
def test_selection_returns_exactly_the_expected_frames(clip, cap, skip, nth):
    expected = list(range(30))[skip::nth][: cap or None]  # naive reference: slice the whole clip
    decoded = []
    loaded = read_video_frames(
        clip, frame_load_cap=cap, skip_first_frames=skip, select_every_nth=nth, size_multiple=1, on_frame=decoded.append
    )
    assert read_indices(loaded.frames) == expected
    assert selected_count(30, cap, skip, nth) == len(expected)
    # Streaming: decoding stops right after the last kept frame, and the progress total says so.
    assert decoded == list(range(1, len(decoded) + 1))
    last_needed = skip + (len(expected) - 1) * nth + 1
    assert len(decoded) == (last_needed if cap and len(expected) == cap else 30)
    assert frames_to_decode(30, cap, skip, nth) == len(decoded)
    assert loaded.fps == pytest.approx(FPS / nth)
    assert loaded.source_fps == pytest.approx(FPS)


def test_output_is_float_in_unit_range_or_uint8_on_request(clip):
    as_float = read_video_frames(clip, frame_load_cap=3, size_multiple=1).frames
    as_uint8 = read_video_frames(clip, frame_load_cap=3, size_multiple=1, as_float=False).frames
    assert as_float.dtype == torch.float32 and as_float.shape == (3, 48, 128, 3)
    assert as_uint8.dtype == torch.uint8
    assert 0.0 <= as_float.min() and as_float.max() <= 1.0
    torch.testing.assert_close(as_float, as_uint8.float() / 255.0)


def test_stack_as_float_matches_a_naive_conversion_and_releases_the_inputs():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(4)]
    reference = torch.stack([torch.from_numpy(f).float() / 255.0 for f in frames])
    out = stack_as_float(frames)
    torch.testing.assert_close(out, reference)
    assert frames == []


@pytest.mark.parametrize(
    "custom, multiple, expected_hw",
    [((64, 0), 8, (24, 64)), ((0, 32), 8, (32, 88)), ((100, 40), 16, (48, 96)), ((0, 0), 64, (64, 128))],
)
def test_frames_are_resized_while_decoding(clip, custom, multiple, expected_hw):
    loaded = read_video_frames(
        clip,
        frame_load_cap=6,
        skip_first_frames=4,
        custom_width=custom[0],
        custom_height=custom[1],
        size_multiple=multiple,
    )
    assert tuple(loaded.frames.shape[1:3]) == expected_hw
    assert read_indices(loaded.frames) == [4, 5, 6, 7, 8, 9]
    assert (loaded.source_width, loaded.source_height) == (128, 48)


@pytest.mark.parametrize("rotation, quarter_turns", [(90, 1), (-90, -1)])
def test_display_rotation_is_applied(tmp_path, rotation, quarter_turns):
    path = tmp_path / "rotated.mp4"
    write_index_clip(path, 3, rotation=rotation)
    loaded = read_video_frames(path, size_multiple=1, as_float=False)
    plain = index_frame(1)
    assert loaded.frames.shape == (3, 128, 48, 3)
    expected = np.rot90(plain, k=quarter_turns)  # counter-clockwise, as players show it
    assert np.abs(loaded.frames[1].numpy().astype(int) - expected.astype(int)).mean() < 4


def test_probe_reads_size_rate_and_count(clip, tmp_path):
    info = probe_video(clip)
    assert (info.width, info.height, info.frame_count, info.codec) == (128, 48, 30, "h264")
    assert info.fps == pytest.approx(FPS)
    webm = tmp_path / "index.webm"
    write_index_clip(webm, 12, codec="libvpx-vp9")
    info = probe_video(webm)
    assert (info.width, info.height, info.codec) == (128, 48, "vp9")
    assert info.frame_count == 12  # estimated from the container duration (webm has no count)
    assert read_indices(read_video_frames(webm, size_multiple=1).frames) == list(range(12))


def test_an_interrupting_callback_stops_decoding(clip):
    class Stop(Exception):
        pass

    calls = []

    def on_frame(decoded):
        calls.append(decoded)
        if decoded == 3:
            raise Stop

    with pytest.raises(Stop):
        read_video_frames(clip, on_frame=on_frame)
    assert calls == [1, 2, 3]


def test_skipping_past_the_end_names_the_input_and_the_fix(clip):
    with pytest.raises(
        ValueError,
        match=r"skip_first_frames=40 skips past the end of 'index30.mp4', which has 30 frames: "
        r"set skip_first_frames below 30",
    ):
        read_video_frames(clip, skip_first_frames=40)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"video: the file 'nope.mp4' does not exist"):
        read_video_frames(tmp_path / "nope.mp4")


def test_a_file_that_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    with pytest.raises(ValueError, match=r"video: 'notes.mp4' cannot be read as a video"):
        read_video_frames(path)


def test_a_file_without_a_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.zeros(8000, np.int16).tobytes())
    with pytest.raises(ValueError, match=r"video: 'sound.wav' has no video stream"):
        probe_video(path)
    with pytest.raises(ValueError, match=r"has no video stream"):
        read_video_frames(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"custom_width": 4}, r"custom_width=4 is smaller than size_multiple=8"),
        ({"select_every_nth": 0}, r"select_every_nth must be at least 1"),
        ({"frame_load_cap": -1}, r"frame_load_cap must be 0"),
        ({"skip_first_frames": -2}, r"skip_first_frames must be 0 or more"),
    ],
)
def test_bad_selection_or_size_fails_before_decoding(clip, kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        read_video_frames(clip, on_frame=calls.append, **kwargs)
    assert calls == []


def test_the_source_file_is_never_modified(clip):
    before = clip.read_bytes()
    read_video_frames(clip, frame_load_cap=5, custom_width=64)
    assert clip.read_bytes() == before
