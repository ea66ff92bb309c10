"""Video file nodes: load a clip as IMAGE frames (streaming, with cap / skip / stride /
resize) and save IMAGE frames as mp4, webm, gif or a PNG sequence."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io, ui

from ..media.decode import frames_to_decode, probe_video, read_video_frames
from ..media.encode import h264_encoder, output_paths, write_video
from ..options import Options, option
from .common import available_ram, check_filename_prefix, check_image, interruptible_progress

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")

SAVE_FORMATS = ("mp4", "webm", "gif", "png")  # stable ids stored in workflows; explained in the tooltip


@dataclass(frozen=True)
class LoadVideoOptions(Options):
    """Load Video's options (``video`` lists the files in ComfyUI's input folder, checked by
    ``validate_inputs``)."""

    frame_load_cap: int = option(0, min=0, max=1_000_000)
    skip_first_frames: int = option(0, min=0, max=10_000_000)
    select_every_nth: int = option(1, min=1, max=1000)
    custom_width: int = option(0, min=0, max=16384)
    custom_height: int = option(0, min=0, max=16384)
    size_multiple: int = option(8, min=1, max=512)


@dataclass(frozen=True)
class SelectKeyframesOptions(Options):
    """Select Keyframes' options (Rerender-A-Video's interval 10)."""

    keyframe_interval: int = option(10, min=1, max=10000)


@dataclass(frozen=True)
class SaveVideoOptions(Options):
    """Save Video's options."""

    fps: float = option(24.0, min=0.01, max=1000.0, step=0.01)
    format: str = option("mp4", choices=SAVE_FORMATS)
    filename_prefix: str = option("VideoEdit/video")
    crf: int = option(19, min=0, max=63)


def input_videos() -> list[str]:
    """Video files directly in ComfyUI's input folder (what the upload button puts there)."""
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    return sorted(
        name
        for name in os.listdir(folder)
        if name.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )


def _video_path(video: str) -> str:
    """Absolute path of a combo value (``name``, ``sub/name`` or ``name [output]``), refusing
    names that climb out of ComfyUI's input/output/temp folders (API clients can send any string)."""
    path = os.path.abspath(folder_paths.get_annotated_filepath(video))
    roots = (folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory())
    if not any(os.path.commonpath((os.path.abspath(root), path)) == os.path.abspath(root) for root in roots):
        raise ValueError(f"video: '{video}' points outside ComfyUI's input folder; choose a file inside it")
    return path


class LoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = LoadVideoOptions.spec
        return io.Schema(
            node_id="VideoEdit_LoadVideo",
            display_name="Load Video (VideoEdit)",
            category="VideoEdit/video",
            description="Loads frames of a video from ComfyUI's input folder as an IMAGE batch. Frames are selected "
            "and resized while decoding, so memory holds only the frames kept.",
            inputs=[
                io.Combo.Input(
                    "video",
                    options=input_videos(),
                    upload=io.UploadType.video,
                    tooltip="A video in ComfyUI's input folder (mp4, webm, mkv, mov, avi, gif, m4v); "
                    "use the upload button to add one. The file is only read.",
                ),
                io.Int.Input(
                    "frame_load_cap",
                    **spec("frame_load_cap"),
                    tooltip="Most frames to load (after skipping and striding); 0 loads all of them.",
                ),
                io.Int.Input(
                    "skip_first_frames",
                    **spec("skip_first_frames"),
                    tooltip="Frames to drop from the start before selecting.",
                ),
                io.Int.Input(
                    "select_every_nth",
                    **spec("select_every_nth"),
                    tooltip="Keep every n-th frame after the skipped ones (1 = all); the fps output is "
                    "divided by it so playback speed stays right.",
                ),
                io.Int.Input(
                    "custom_width",
                    **spec("custom_width"),
                    tooltip="Output width in pixels; 0 keeps the source width, or follows custom_height "
                    "with the source aspect ratio.",
                ),
                io.Int.Input(
                    "custom_height",
                    **spec("custom_height"),
                    tooltip="Output height in pixels; 0 keeps the source height, or follows custom_width "
                    "with the source aspect ratio.",
                ),
                io.Int.Input(
                    "size_multiple",
                    **spec("size_multiple"),
                    tooltip="Both sides are rounded to the nearest multiple of this (8 suits SD VAEs, 64 "
                    "is safest for UNet down/up-sampling); 1 keeps the exact size.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Int.Output(display_name="frame_count"),
                io.Float.Output(display_name="fps"),
                io.Int.Output(display_name="width"),
                io.Int.Output(display_name="height"),
            ],
        )

    @classmethod
    def execute(cls, video, **options) -> io.NodeOutput:
        s = LoadVideoOptions.from_inputs(**options)
        path = _video_path(video)
        if not os.path.isfile(path):
            raise ValueError(
                f"video: '{video}' is not in ComfyUI's input folder ({folder_paths.get_input_directory()}); "
                "upload it with the node's upload button or copy it there"
            )
        total = frames_to_decode(
            probe_video(path).frame_count, s.frame_load_cap, s.skip_first_frames, s.select_every_nth
        )
        loaded = read_video_frames(
            path,
            s.frame_load_cap,
            s.skip_first_frames,
            s.select_every_nth,
            s.custom_width,
            s.custom_height,
            s.size_multiple,
            on_frame=interruptible_progress(total, absolute=True),
            available_bytes=available_ram(),
        )
        frames = loaded.frames
        outputs = (frames, frames.shape[0], loaded.fps, frames.shape[2], frames.shape[1])
        if loaded.warnings:
            return io.NodeOutput(*outputs, ui=ui.PreviewText("\n".join(loaded.warnings)))
        return io.NodeOutput(*outputs)

    @classmethod
    def validate_inputs(cls, video):
        try:
            path = _video_path(video)
        except ValueError as err:
            return str(err)
        if not os.path.isfile(path):
            return f"video: '{video}' is not in ComfyUI's input folder; upload it with the node's upload button"
        return True

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        # Re-run when the file is replaced or edited in place; cheaper than hashing a video.
        try:
            path = _video_path(video)
        except ValueError:
            return ""
        if not os.path.isfile(path):
            return ""
        stat = os.stat(path)
        return f"{stat.st_mtime_ns}:{stat.st_size}"


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        encoder = h264_encoder()
        h264_note = "libx264" if encoder == "libx264" else f"{encoder}: libx264 is missing from this PyAV build"
        return io.Schema(
            node_id="VideoEdit_SaveVideo",
            display_name="Save Video (VideoEdit)",
            category="VideoEdit/video",
            description="Saves IMAGE frames as a video (mp4, webm, gif) or a PNG sequence in ComfyUI's output folder, "
            "with the workflow embedded where the format allows, and shows it in the UI.",
            inputs=[
                io.Image.Input("images", tooltip="Frames to save, [frames, height, width, 3] in 0..1."),
                io.Float.Input(
                    "fps",
                    **SaveVideoOptions.spec("fps"),
                    tooltip="Playback frame rate; wire Load Video's fps output to keep the source timing. "
                    "GIF stores delays in 1/100 s, so its rate is rounded.",
                ),
                io.Combo.Input(
                    "format",
                    **SaveVideoOptions.spec("format"),
                    tooltip=f"mp4: H.264 ({h264_note}), yuv420p, odd sides padded by one repeated pixel; "
                    "webm: VP9; gif: looping, 256 colours per frame; png: a PNG sequence, lossless, "
                    "one file per frame. mp4/webm/png carry the workflow metadata.",
                ),
                io.String.Input(
                    "filename_prefix",
                    **SaveVideoOptions.spec("filename_prefix"),
                    tooltip="Output path inside ComfyUI's output folder; a counter is appended, so "
                    "existing files are never overwritten. May contain %date:…% style variables.",
                ),
                io.Int.Input(
                    "crf",
                    **SaveVideoOptions.spec("crf"),
                    tooltip="Constant rate factor: lower = better quality and bigger files. H.264 uses "
                    "0-51 (17-23 typical), VP9 0-63 (15-35 typical); ignored by gif and png.",
                ),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, **options) -> io.NodeOutput:
        s = SaveVideoOptions.from_inputs(**options)
        fps, fmt, filename_prefix, crf = s.fps, s.format, s.filename_prefix, s.crf
        check_filename_prefix(filename_prefix)
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1]
            )
        except Exception as err:  # core's own check (e.g. a %variable% that expands outside the folder)
            raise ValueError(
                f"filename_prefix: '{filename_prefix}' cannot be used ({err}); give a path inside "
                "ComfyUI's output folder, e.g. 'VideoEdit/my_edit'"
            ) from err
        while any(
            os.path.exists(p)
            for p in output_paths(os.path.join(folder, f"{filename}_{counter:05}_"), fmt, images.shape[0])
        ):
            counter += 1  # a file written since the counter was computed: never overwrite it
        stem = os.path.join(folder, f"{filename}_{counter:05}_")
        paths = write_video(
            images, stem, fps, fmt, crf, cls._metadata(), interruptible_progress(images.shape[0], absolute=True)
        )
        results = [ui.SavedResult(os.path.basename(p), subfolder, io.FolderType.output) for p in paths]
        if fmt in ("mp4", "webm"):
            return io.NodeOutput(ui=ui.PreviewVideo(results))
        return io.NodeOutput(ui=ui.SavedImages(results, is_animated=fmt == "gif"))

    @classmethod
    def _metadata(cls) -> dict[str, str] | None:
        """The workflow as text tags, like core's savers; none with --disable-metadata."""
        hidden = cls.hidden
        if args.disable_metadata or hidden is None:
            return None
        metadata = {}
        if hidden.prompt is not None:
            metadata["prompt"] = json.dumps(hidden.prompt)
        for key, value in (hidden.extra_pnginfo or {}).items():
            metadata[key] = json.dumps(value)
        return metadata or None


class SelectKeyframes(io.ComfyNode):
    """Every K-th frame of a clip and their indices: keyframes to edit with any method (e.g.
    TokenFlow on the keyframes only) and spread over the clip with Propagate Keyframes."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_SelectKeyframes",
            display_name="Select Keyframes",
            category="VideoEdit/video",
            description="Frames 0, K, 2K, ... of a clip (the keyframes Rerender Keyframes renders) and their indices "
            "as text. Edit the keyframes with any method, then fill every frame with Propagate Keyframes "
            "(images = the whole clip, keyframe_indices = this node's indices).",
            inputs=[
                io.Image.Input("images", tooltip="The clip [F,H,W,3]."),
                io.Int.Input(
                    "keyframe_interval",
                    **SelectKeyframesOptions.spec("keyframe_interval"),
                    tooltip="K: every K-th frame is a keyframe, starting with frame 0 (Rerender-A-Video: 10).",
                ),
            ],
            outputs=[io.Image.Output(display_name="keyframes"), io.String.Output(display_name="keyframe_indices")],
        )

    @classmethod
    def execute(cls, images, keyframe_interval) -> io.NodeOutput:
        check_image(images)
        s = SelectKeyframesOptions.from_inputs(keyframe_interval=keyframe_interval)
        keys = list(range(0, images.shape[0], int(s.keyframe_interval)))
        return io.NodeOutput(images[keys], ", ".join(str(k) for k in keys))


NODES = [LoadVideo, SaveVideo, SelectKeyframes]
