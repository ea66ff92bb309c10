"""The pack inside a real ComfyUI server, driven through the HTTP API like a user's client."""

import json
import shutil
import sys
from pathlib import Path

import av
import pytest

from ve_testkit.pack import PACK_ROOT
from ve_testkit.server import ServerError
from ve_testkit.workflows import WORKFLOWS, api_workflows, load_api, prepare_prompt, shrink

sys.path.insert(0, str(PACK_ROOT / "scripts"))
from build_workflows import render, ui_for  # noqa: E402
from workflow_format import strip_meta, ui_to_api  # noqa: E402

SAMPLE = WORKFLOWS / "assets" / "sample.mp4"


def _video_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _put_sample(server) -> str:
    dest = server.base / "input" / SAMPLE.name
    shutil.copyfile(SAMPLE, dest)
    return dest.name


def test_every_node_is_registered_without_import_errors(server):
    import ast

    info = server.get("/object_info")
    ours = {k for k in info if k.startswith("VideoEdit_")}
    declared = set()
    for path in (PACK_ROOT / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                declared.add(node.value.value)
    assert declared and declared <= ours, f"not registered: {sorted(declared - ours)}"
    assert server.import_failures() == []
    assert "VETest_TinyCheckpoint" in info


@pytest.mark.parametrize("path", api_workflows(), ids=lambda p: p.stem)
def test_api_workflow_runs_end_to_end(server, path):
    prompt = shrink(prepare_prompt(load_api(path), _put_sample(server), None), frames=5, steps=3, width=96)
    entry = server.run(prompt, timeout=900)
    files = server.output_files(entry)
    videos = [f for f in files if f.suffix == ".mp4"]
    assert videos, f"no video written: {entry['outputs']}"
    for f in videos:
        assert f.exists() and f.stat().st_size > 0
        assert _video_frames(f) in (4, 5)  # flow previews have one frame fewer


@pytest.mark.parametrize("path", api_workflows(), ids=lambda p: p.stem)
def test_ui_workflow_matches_its_api_twin(server, path):
    ui_path = WORKFLOWS / f"{path.stem}.json"
    assert ui_path.exists(), f"{ui_path.name}: run scripts/build_workflows.py"
    info = server.get("/object_info")
    assert ui_to_api(json.loads(ui_path.read_text()), info) == strip_meta(load_api(path))


@pytest.mark.parametrize("path", api_workflows(), ids=lambda p: p.stem)
def test_ui_workflow_is_what_the_builder_writes(server, path):
    """Layout, groups and Notes have one source (the API file, scripts/workflow_layout.py and
    scripts/workflow_notes.py): a hand-edited or stale UI file fails here."""
    ui_path = WORKFLOWS / f"{path.stem}.json"
    assert ui_path.read_text() == render(ui_for(path, server.get("/object_info"))), (
        f"{ui_path.name} is stale: run scripts/build_workflows.py"
    )


def test_templates_are_served(server):
    templates = server.get("/workflow_templates")
    assert any(set(p.stem for p in api_workflows()) <= set(names) for names in templates.values()), templates


def test_validation_errors_come_back_as_node_errors(server):
    prompt = {
        "1": {
            "class_type": "VideoEdit_LoadVideo",
            "inputs": {
                "video": "no_such_clip.mp4",
                "frame_load_cap": 0,
                "skip_first_frames": 0,
                "select_every_nth": 1,
                "custom_width": 0,
                "custom_height": 0,
                "size_multiple": 8,
            },
        },
        "2": {
            "class_type": "VideoEdit_SaveVideo",
            "inputs": {"images": ["1", 0], "fps": 8.0, "format": "mp4", "filename_prefix": "x", "crf": 19},
        },
    }
    with pytest.raises(ServerError, match="no_such_clip.mp4"):
        server.queue(prompt)


def test_execution_errors_carry_the_pack_message(server):
    name = _put_sample(server)
    prompt = {
        "1": {
            "class_type": "VideoEdit_LoadVideo",
            "inputs": {
                "video": name,
                "frame_load_cap": 1,
                "skip_first_frames": 0,
                "select_every_nth": 1,
                "custom_width": 0,
                "custom_height": 0,
                "size_multiple": 8,
            },
        },
        "2": {
            "class_type": "VideoEdit_EstimateFlow",
            "inputs": {
                "images": ["1", 0],
                "method": "dis",
                "raft_weights": "auto",
                "num_flow_updates": 12,
                "batch_size": 4,
                "scale": 1.0,
            },
        },
        "3": {"class_type": "VideoEdit_FlowPreview", "inputs": {"flow": ["2", 0], "max_magnitude": 0.0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    with pytest.raises(ServerError, match="2 frames"):
        server.run(prompt, timeout=120)
