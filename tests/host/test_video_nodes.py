"""Load Video / Save Video nodes inside the real ComfyUI: files come from and go to the host's
input/output folders, errors name the input, saves never overwrite, metadata follows the
host's --disable-metadata switch."""

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

PROMPT = {"1": {"class_type": "VideoEdit_LoadVideo", "inputs": {"video": "clip.mp4"}}}
WORKFLOW = {"nodes": [{"id": 1, "type": "VideoEdit_LoadVideo"}], "links": []}
SOURCE_FPS = 10.0


@pytest.fixture(scope="module")
def video_nodes(pack_nodes):
    from comfyui_videoedit.nodes import video

    return video


@pytest.fixture(scope="module")
def clip_name(host, tmp_path_factory):
    """A 20-frame 96x64 clip in ComfyUI's input folder; frame k has brightness 10 + 10k."""
    from comfyui_videoedit.media.encode import write_video

    frames = (10 + 10 * torch.arange(20, dtype=torch.float32)).div(255).view(20, 1, 1, 1).expand(20, 64, 96, 3)
    stem = tmp_path_factory.mktemp("clip") / "clip"
    (path,) = write_video(frames.contiguous(), str(stem), SOURCE_FPS, "mp4", crf=10)
    shutil.copyfile(path, os.path.join(host.folder_paths.get_input_directory(), "clip.mp4"))
    return "clip.mp4"


def frame_numbers(images: torch.Tensor) -> list[int]:
    return [round((float(img.mean()) * 255 - 10) / 10) for img in images]


def load(video_nodes, **overrides):
    inputs = dict(
        video="clip.mp4",
        frame_load_cap=0,
        skip_first_frames=0,
        select_every_nth=1,
        custom_width=0,
        custom_height=0,
        size_multiple=8,
    )
    inputs.update(overrides)
    return video_nodes.LoadVideo.execute(**inputs).result


def save(video_nodes, images, fmt, prefix, hidden=None, fps=8.0, crf=19):
    node = video_nodes.SaveVideo.PREPARE_CLASS_CLONE(hidden or {})  # as the executor does
    return node.execute(images=images, fps=fps, format=fmt, filename_prefix=prefix, crf=crf).ui.as_dict()


def output_file(host, result: dict) -> Path:
    assert result["type"] == "output"
    return Path(host.folder_paths.get_output_directory()) / result["subfolder"] / result["filename"]


def test_upload_widget_lists_the_input_videos(video_nodes, clip_name, host):
    Path(host.folder_paths.get_input_directory(), "notes.txt").write_text("not a video")
    config = video_nodes.LoadVideo.INPUT_TYPES()["required"]["video"][1]  # ("COMBO", {...}) in V3
    assert clip_name in config["options"] and "notes.txt" not in config["options"]
    assert config.get("video_upload") is True


def test_load_selects_resizes_and_reports(video_nodes, clip_name, inference_mode):
    images, count, fps, width, height = load(
        video_nodes, frame_load_cap=4, skip_first_frames=3, select_every_nth=2, custom_width=48, size_multiple=16
    )
    assert frame_numbers(images) == [3, 5, 7, 9]
    assert images.dtype == torch.float32 and tuple(images.shape) == (4, 32, 48, 3)
    assert (count, width, height) == (4, 48, 32)
    assert fps == pytest.approx(SOURCE_FPS / 2)


def test_load_all_frames_by_default(video_nodes, clip_name, inference_mode):
    images, count, fps, width, height = load(video_nodes)
    assert frame_numbers(images) == list(range(20)) and count == 20
    assert (width, height) == (96, 64) and fps == pytest.approx(SOURCE_FPS)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"video": "missing.mp4"}, r"video: 'missing.mp4' is not in ComfyUI's input folder .*upload it"),
        ({"video": "../../x.mp4"}, r"video: '../../x.mp4' points outside ComfyUI's input folder"),
        ({"custom_width": 5}, r"custom_width=5 is smaller than size_multiple=8"),
        ({"custom_height": 20, "size_multiple": 64}, r"custom_height=20 is smaller than size_multiple=64"),
        ({"skip_first_frames": 100}, r"skip_first_frames=100 skips past the end of 'clip.mp4', which has 20 frames"),
    ],
)
def test_load_errors_name_the_input_and_the_fix(video_nodes, clip_name, inference_mode, overrides, match):
    with pytest.raises(ValueError, match=match):
        load(video_nodes, **overrides)


def test_validation_and_fingerprint_follow_the_file(video_nodes, clip_name, host):
    node = video_nodes.LoadVideo
    assert node.validate_inputs(video=clip_name) is True
    assert "not in ComfyUI's input folder" in node.validate_inputs(video="missing.mp4")
    assert "points outside" in node.validate_inputs(video="../" * 8 + "etc/hostname")
    copy = Path(host.folder_paths.get_input_directory(), "changing.mp4")
    shutil.copyfile(Path(host.folder_paths.get_input_directory(), clip_name), copy)
    first = node.fingerprint_inputs(video="changing.mp4", frame_load_cap=0)
    assert first == node.fingerprint_inputs(video="changing.mp4", frame_load_cap=5)  # same file, same print
    with open(copy, "ab") as f:
        f.write(b"\0" * 16)
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))
    assert node.fingerprint_inputs(video="changing.mp4") != first


def test_save_mp4_with_metadata_and_preview(video_nodes, clip_name, host, inference_mode):
    images = load(video_nodes, frame_load_cap=6)[0]
    ui = save(
        video_nodes,
        images,
        "mp4",
        "VideoEdit/test_mp4",
        hidden={"PROMPT": PROMPT, "EXTRA_PNGINFO": {"workflow": WORKFLOW}},
    )
    assert ui["animated"] == (True,) and len(ui["images"]) == 1
    result = ui["images"][0]
    assert result["subfolder"] == "VideoEdit" and result["filename"] == "test_mp4_00001_.mp4"
    path = output_file(host, result)
    with av.open(str(path)) as container:
        assert json.loads(container.metadata["prompt"]) == PROMPT
        assert json.loads(container.metadata["workflow"]) == WORKFLOW
        assert container.streams.video[0].codec_context.name == "h264"
    from comfyui_videoedit.media.decode import read_video_frames

    assert frame_numbers(read_video_frames(path).frames) == list(range(6))


def test_a_second_save_does_not_overwrite_the_first(video_nodes, clip_name, host, inference_mode):
    images = load(video_nodes, frame_load_cap=3)[0]
    first = output_file(host, save(video_nodes, images, "webm", "VideoEdit/again")["images"][0])
    first_bytes = first.read_bytes()
    second = output_file(host, save(video_nodes, images[:2], "webm", "VideoEdit/again")["images"][0])
    assert first.name == "again_00001_.webm" and second.name == "again_00002_.webm"
    assert first.read_bytes() == first_bytes
    # A file that appeared under the next counter's name (another save, another tool) is skipped too.
    Path(first.parent, "again_00003_.gif").write_bytes(b"not ours")
    third = output_file(host, save(video_nodes, images, "gif", "VideoEdit/again")["images"][0])
    assert third.name == "again_00004_.gif"
    assert Path(first.parent, "again_00003_.gif").read_bytes() == b"not ours"


def test_save_gif_previews_as_an_animated_image(video_nodes, clip_name, host, inference_mode):
    images = load(video_nodes, frame_load_cap=5)[0]
    ui = save(video_nodes, images, "gif", "VideoEdit/anim", fps=SOURCE_FPS)
    assert ui["animated"] == (True,)
    gif = Image.open(output_file(host, ui["images"][0]))
    assert gif.format == "GIF" and gif.n_frames == 5 and gif.size == (96, 64)


def test_save_png_sequence_with_text_chunks(video_nodes, clip_name, host, inference_mode):
    images = load(video_nodes, frame_load_cap=4)[0]
    ui = save(video_nodes, images, "png", "VideoEdit/seq", hidden={"PROMPT": PROMPT})
    files = [output_file(host, r) for r in ui["images"]]
    assert [f.name for f in files] == [f"seq_00001_{i:05d}.png" for i in range(4)]
    assert "animated" not in ui
    for index, file in enumerate(files):
        png = Image.open(file)
        assert json.loads(png.text["prompt"]) == PROMPT
        expected = images[index].mul(255).round().to(torch.uint8).numpy()
        assert np.array_equal(np.asarray(png.convert("RGB")), expected)  # lossless


def test_disable_metadata_is_honoured(video_nodes, clip_name, host, inference_mode, monkeypatch):
    monkeypatch.setattr(host.args, "disable_metadata", True)
    images = load(video_nodes, frame_load_cap=2)[0]
    ui = save(video_nodes, images, "mp4", "VideoEdit/private", hidden={"PROMPT": PROMPT})
    with av.open(str(output_file(host, ui["images"][0]))) as container:
        assert "prompt" not in container.metadata
    ui = save(video_nodes, images, "png", "VideoEdit/private_png", hidden={"PROMPT": PROMPT})
    assert "prompt" not in Image.open(output_file(host, ui["images"][0])).text


def test_save_rejects_an_unknown_format(video_nodes, inference_mode):
    with pytest.raises(ValueError, match=r"format: 'avi' is not one of"):
        save(video_nodes, torch.zeros(2, 8, 8, 3), "avi", "VideoEdit/bad")
