"""Writers: write → read round trips for mp4 / webm / gif / png, workflow metadata, odd sizes,
no overwriting, cleanup after a failed save, and encoder availability."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_videoedit.media.decode import read_video_frames
from comfyui_videoedit.media.encode import (
    encoder_opens,
    frame_to_uint8,
    h264_encoder,
    output_paths,
    pad_to_even,
    write_video,
)

METADATA = {"prompt": json.dumps({"3": {"class_type": "KSampler"}}), "workflow": json.dumps({"nodes": [1, 2]})}


def test_clip(frames=10, height=37, width=50) -> torch.Tensor:
    """Smooth gradients, a flat colour block and a bar moving 3 px per frame (odd size on purpose)."""
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    clip = torch.empty(frames, height, width, 3)
    clip[..., 0] = x.expand(frames, height, width)
    clip[..., 1] = y.expand(frames, height, width)
    clip[..., 2] = torch.linspace(0.2, 0.8, frames).view(frames, 1, 1)
    clip[:, :10, :12] = torch.tensor([0.8, 0.15, 0.1])  # saturated flat block: checks colour matrices
    for f in range(frames):
        clip[f, 20:30, 3 * f : 3 * f + 4] = 1.0
    return clip


test_clip.__test__ = False  # a helper, not a test


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / torch.mean((a - b) ** 2)))


def read_png_sequence(paths) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()) for p in paths])


@pytest.mark.parametrize("fmt, min_psnr", [("mp4", 30.0), ("webm", 30.0), ("gif", 24.0)])
def test_round_trip_video_formats(tmp_path, fmt, min_psnr):
    clip = test_clip()
    (path,) = write_video(clip, str(tmp_path / "clip_"), 12.0, fmt, crf=18)
    assert path.endswith("." + {"mp4": "mp4", "webm": "webm", "gif": "gif"}[fmt])
    loaded = read_video_frames(path, size_multiple=1)
    frames = loaded.frames
    assert frames.shape[0] == clip.shape[0]
    if fmt == "mp4":  # 4:2:0 H.264 needs even sides: one repeated row at the bottom
        assert frames.shape[1:3] == (38, 50)
        assert psnr(frames[:, 37], frames[:, 36]) > 30
        frames = frames[:, :37]
    assert frames.shape[1:3] == (37, 50)
    assert psnr(frames, clip) > min_psnr
    assert (frames[:, 2:8, 2:10] - clip[:, 2:8, 2:10]).abs().mean() < 0.03  # flat colour block keeps its colour
    moving_bar = [int(torch.argmax(frames[f, 25, :, :].mean(-1) - frames[f, 15, :, :].mean(-1))) for f in range(10)]
    assert all(abs(col - (3 * f + 1.5)) <= 2 for f, col in enumerate(moving_bar))  # frames stay in order
    expected_fps = 100 / round(100 / 12.0) if fmt == "gif" else 12.0  # GIF delays are in 1/100 s
    assert loaded.fps == pytest.approx(expected_fps, rel=1e-3)


def test_png_sequence_is_lossless_and_carries_text_chunks(tmp_path):
    clip = test_clip(frames=4)
    paths = write_video(clip, str(tmp_path / "seq_"), 8.0, "png", metadata=METADATA)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"seq_{i:05d}.png" for i in range(4)]
    expected = torch.stack([torch.from_numpy(frame_to_uint8(f)) for f in clip])
    assert torch.equal(read_png_sequence(paths), expected)
    for path in paths:
        assert Image.open(path).text == METADATA


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_workflow_metadata_is_in_the_container(tmp_path, fmt):
    (path,) = write_video(test_clip(frames=3), str(tmp_path / "meta_"), 8.0, fmt, metadata=METADATA)
    with av.open(path) as container:
        tags = {key.lower(): value for key, value in container.metadata.items()}  # matroska upper-cases keys
    assert json.loads(tags["prompt"]) == json.loads(METADATA["prompt"])
    assert json.loads(tags["workflow"]) == json.loads(METADATA["workflow"])


def test_no_metadata_when_none_is_given(tmp_path):
    (path,) = write_video(test_clip(frames=2), str(tmp_path / "plain_"), 8.0, "mp4")
    with av.open(path) as container:
        assert "prompt" not in container.metadata and "workflow" not in container.metadata


def test_frame_to_uint8_rounds_clamps_and_drops_alpha():
    frame = torch.tensor([[[-0.5, 0.5, 1.5, 0.3], [1 / 255 * 0.49, 1 / 255 * 0.51, 1.0, 0.0]]])
    out = frame_to_uint8(frame)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    assert out.tolist() == [[[0, 128, 255], [0, 1, 255]]]
    grey = frame_to_uint8(torch.full((2, 2, 1), 0.2))
    assert grey.shape == (2, 2, 3) and (grey == 51).all()


def test_pad_to_even_repeats_the_last_row_and_column():
    rgb = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    out = pad_to_even(rgb)
    assert out.shape == (4, 6, 3)
    assert np.array_equal(out[:3, :5], rgb)
    assert np.array_equal(out[3, :5], rgb[2]) and np.array_equal(out[:3, 5], rgb[:, 4])
    even = np.zeros((4, 6, 3), np.uint8)
    assert pad_to_even(even) is even


def test_existing_files_are_never_overwritten(tmp_path):
    stem = str(tmp_path / "once_")
    (path,) = write_video(test_clip(frames=3), stem, 8.0, "mp4")
    before = open(path, "rb").read()
    with pytest.raises(FileExistsError, match="will not overwrite"):
        write_video(test_clip(frames=5), stem, 8.0, "mp4")
    assert open(path, "rb").read() == before
    (tmp_path / "seq_00002.png").write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        write_video(test_clip(frames=4), str(tmp_path / "seq_"), 8.0, "png")
    assert sorted(p.name for p in tmp_path.glob("seq_*")) == ["seq_00002.png"]  # nothing half-written either


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "png"])
def test_a_failed_save_leaves_no_files(tmp_path, fmt):
    class Stop(Exception):
        pass

    def stop_at_three(written):
        if written == 3:
            raise Stop

    with pytest.raises(Stop):
        write_video(test_clip(frames=6), str(tmp_path / "cut_"), 8.0, fmt, on_frame=stop_at_three)
    assert list(tmp_path.iterdir()) == []


def test_output_paths_name_every_file():
    assert output_paths("/o/v_00001_", "mp4", 9) == ["/o/v_00001_.mp4"]
    assert output_paths("/o/v_00001_", "gif", 9) == ["/o/v_00001_.gif"]
    assert output_paths("/o/v_00001_", "png", 2) == ["/o/v_00001_00000.png", "/o/v_00001_00001.png"]
    with pytest.raises(ValueError, match="format: 'avi' is not one of"):
        output_paths("/o/v", "avi", 1)


@pytest.mark.parametrize(
    "frames, fps, match",
    [
        (torch.zeros(8, 8, 3), 8.0, r"images: expected a batch of frames"),
        (torch.zeros(0, 8, 8, 3), 8.0, r"images"),
        (torch.zeros(2, 8, 8, 3), 0.0, r"fps must be positive"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, frames, fps, match):
    with pytest.raises(ValueError, match=match):
        write_video(frames, str(tmp_path / "bad_"), fps, "mp4")
    assert list(tmp_path.iterdir()) == []


def test_h264_encoder_probe():
    name = h264_encoder()
    assert encoder_opens(name)
    assert name == "libx264" or not encoder_opens("libx264")  # libx264 is preferred whenever it works
    assert not encoder_opens("no-such-encoder")
    assert encoder_opens("libvpx-vp9")  # webm depends on it


def test_mp4_without_any_h264_encoder_falls_back_to_mpeg4(tmp_path, monkeypatch):
    """The path a PyAV build without libx264 takes: MPEG-4 Part 2 at a fixed bit rate."""
    from comfyui_videoedit.media import encode

    monkeypatch.setattr(encode, "h264_encoder", lambda: encode.FALLBACK_MP4_ENCODER)
    clip = test_clip()
    (path,) = write_video(clip, str(tmp_path / "fallback_"), 12.0, "mp4")
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    frames = read_video_frames(path, size_multiple=1).frames
    assert frames.shape == (10, 38, 50, 3)
    assert psnr(frames[:, :37], clip) > 25
