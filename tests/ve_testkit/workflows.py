"""Loading the shipped API workflows and adapting them to a run (video file, checkpoint or the
tiny smoke model, target prompt, smaller settings for tests)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .pack import PACK_ROOT

WORKFLOWS = PACK_ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
TARGET_MARK = "TARGET:"


def api_workflows() -> list[Path]:
    return sorted(API_DIR.glob("*.json"))


def load_api(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def prepare_prompt(prompt: dict, video_name: str, ckpt_name: str | None, target_prompt: str | None = None) -> dict:
    """A runnable copy: ``_meta`` dropped, the video set, the checkpoint loader pointed at
    ``ckpt_name`` or swapped for the tiny smoke model (same outputs: MODEL, CLIP, VAE), the
    ``TARGET:`` marker removed from the target prompt (or the prompt replaced)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node.pop("_meta", None)
        inputs = node["inputs"]
        if node["class_type"] == "VideoEdit_LoadVideo":
            inputs["video"] = video_name
        elif node["class_type"] == "CheckpointLoaderSimple":
            if ckpt_name is None:
                node["class_type"] = "VETest_TinyCheckpoint"
                node["inputs"] = {"seed": 0}
            else:
                inputs["ckpt_name"] = ckpt_name
        text = inputs.get("text")
        if isinstance(text, str) and text.startswith(TARGET_MARK):
            inputs["text"] = target_prompt if target_prompt else text[len(TARGET_MARK) :].strip()
    return prompt


def shrink(prompt: dict, frames: int | None = None, steps: int | None = None, width: int | None = None) -> dict:
    """Smaller settings for quick runs (tests, smoke demo)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "VideoEdit_LoadVideo":
            if frames is not None:
                inputs["frame_load_cap"] = frames
            if width is not None:
                inputs["custom_width"], inputs["custom_height"] = width, 0
        if steps is not None and "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
        if frames is not None and isinstance(inputs.get("keyframe_interval"), int):
            inputs["keyframe_interval"] = max(1, frames // 2)  # still more than one keyframe
    return prompt
