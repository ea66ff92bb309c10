"""The UI workflow builder without a server: stages from node types, left-to-right groups, Notes,
frontend widget conventions, and the schema check the browser tier applies. The object_info here
is a small hand-written one in the shape ComfyUI publishes."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from workflow_format import api_to_ui, ui_to_api  # noqa: E402
from workflow_layout import assign_stages, auto_stage  # noqa: E402

from ve_testkit.schema import value_problems  # noqa: E402


def _info(category, inputs=None, outputs=(), output_node=False, description=""):
    req = dict(inputs or {})
    return {
        "input": {"required": req},
        "input_order": {"required": list(req)},
        "output": list(outputs),
        "output_name": list(outputs),
        "category": category,
        "output_node": output_node,
        "display_name": "",
        "description": description,
    }


INFO = {
    "CheckpointLoaderSimple": _info(
        "loaders", {"ckpt_name": [["a.safetensors", "b.safetensors"]]}, ["MODEL", "CLIP", "VAE"]
    ),
    "VideoEdit_LoadVideo": _info(
        "VideoEdit/video",
        {
            "video": ["COMBO", {"options": ["clip.mp4"], "video_upload": True}],
            "frame_load_cap": ["INT", {"default": 0, "min": 0}],
        },
        ["IMAGE", "FLOAT"],
    ),
    "CLIPTextEncode": _info(
        "conditioning", {"clip": ["CLIP"], "text": ["STRING", {"multiline": True}]}, ["CONDITIONING"]
    ),
    "VAEEncode": _info("latent", {"pixels": ["IMAGE"], "vae": ["VAE"]}, ["LATENT"]),
    "VideoEdit_EstimateFlow": _info("VideoEdit/flow", {"images": ["IMAGE"]}, ["OPTICAL_FLOW", "OPTICAL_FLOW"]),
    "VideoEdit_DDIMInversion": _info(
        "VideoEdit/inversion",
        {"model": ["MODEL"], "latent": ["LATENT"], "steps": ["INT", {"default": 50, "min": 1, "max": 1000}]},
        ["VE_INVERSION", "LATENT", "SIGMAS"],
    ),
    "VideoEdit_PatchForInversion": _info(
        "VideoEdit/flatten", {"model": ["MODEL"], "flow": ["OPTICAL_FLOW"]}, ["MODEL"]
    ),
    # A node type the builder has no note for (as a parallel P2P branch would add).
    "VideoEdit_P2PWordSwap": _info(
        "VideoEdit/p2p",
        {"model": ["MODEL"], "inversion": ["VE_INVERSION"], "seed": ["INT", {"default": 0, "min": 0}]},
        ["LATENT"],
        description="Swaps a word of the prompt, keeps the rest.",
    ),
    "VAEDecode": _info("latent", {"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
    "VideoEdit_Propagate": _info("VideoEdit/rerender", {"images": ["IMAGE"], "keyframes": ["IMAGE"]}, ["IMAGE"]),
    "VideoEdit_SaveVideo": _info(
        "VideoEdit/video", {"images": ["IMAGE"], "fps": ["FLOAT", {"default": 8.0}]}, output_node=True
    ),
}

PROMPT = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
    "2": {"class_type": "VideoEdit_LoadVideo", "inputs": {"video": "clip.mp4", "frame_load_cap": 8}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
    "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
    "5": {"class_type": "VideoEdit_EstimateFlow", "inputs": {"images": ["2", 0]}},
    "6": {"class_type": "VideoEdit_PatchForInversion", "inputs": {"model": ["1", 0], "flow": ["5", 0]}},
    "7": {"class_type": "VideoEdit_DDIMInversion", "inputs": {"model": ["6", 0], "latent": ["4", 0], "steps": 50}},
    "8": {"class_type": "VideoEdit_P2PWordSwap", "inputs": {"model": ["1", 0], "inversion": ["7", 0], "seed": 3}},
    "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
    "10": {"class_type": "VideoEdit_Propagate", "inputs": {"images": ["2", 0], "keyframes": ["9", 0]}},
    "11": {"class_type": "VideoEdit_SaveVideo", "inputs": {"images": ["10", 0], "fps": ["2", 1]}},
}


def test_stages_follow_node_types_and_the_graph():
    stage = assign_stages(PROMPT, INFO)
    assert [stage[n] for n in "1 2 3 4".split()] == ["load"] * 4
    assert stage["5"] == "flow"
    assert stage["6"] == "inversion", "a MODEL patch used only by the inversion belongs to the inversion"
    assert stage["7"] == "inversion" and stage["8"] == "edit"
    assert stage["9"] == "edit", "a decode that is edited further is part of the edit"
    assert stage["10"] == "edit" and stage["11"] == "save"
    assert auto_stage("VideoEdit_P2PWordSwap", INFO["VideoEdit_P2PWordSwap"]) == "edit"


def test_ui_has_a_group_per_stage_left_to_right_and_a_note_in_each():
    ui = api_to_ui(PROMPT, INFO, {"3": "Target prompt"}, name="not_a_known_workflow")
    titles = [g["title"] for g in sorted(ui["groups"], key=lambda g: g["bounding"][0])]
    assert titles == ["1 · Load", "2 · Optical flow", "3 · Inversion", "4 · Edit", "5 · Decode / Save"]
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == len(ui["groups"])
    edit_note = next(n for n in notes if n["title"].endswith("Edit"))["widgets_values"][0]
    assert "Swaps a word of the prompt" in edit_note, "unknown node types are described by their schema"
    boxes = {n["id"]: n for n in ui["nodes"]}
    for g in ui["groups"]:
        x, y, w, h = g["bounding"]
        members = [n for n in ui["nodes"] if x <= n["pos"][0] < x + w]
        assert members and all(y <= n["pos"][1] - 30 and n["pos"][1] + n["size"][1] <= y + h for n in members)
    for nid, node in PROMPT.items():  # links run left to right
        for v in node["inputs"].values():
            if isinstance(v, list):
                assert boxes[int(v[0])]["pos"][0] < boxes[int(nid)]["pos"][0], (v, nid)
    assert boxes[3]["title"] == "Target prompt"


def test_frontend_widget_conventions_and_round_trip():
    ui = api_to_ui(PROMPT, INFO)
    nodes = {n["id"]: n for n in ui["nodes"]}
    # seed gets the frontend's "control after generate" value (fixed, not its default randomize)
    assert nodes[8]["widgets_values"] == [3, "fixed"]
    # the upload button's value comes after all other widgets
    assert nodes[2]["widgets_values"] == ["clip.mp4", 8, "image"]
    # a linked widget input keeps its place in widgets_values and is listed as an input
    assert nodes[11]["widgets_values"] == [8.0]
    assert any(i["name"] == "fps" and i.get("widget") and i["link"] for i in nodes[11]["inputs"])
    assert ui_to_api(ui, INFO) == PROMPT


def test_ui_to_api_refuses_shifted_widget_values():
    ui = api_to_ui(PROMPT, INFO)
    node = next(n for n in ui["nodes"] if n["id"] == 2)
    node["widgets_values"] = node["widgets_values"][:-1]  # upload value dropped, as the old builder did
    with pytest.raises(ValueError, match="upload"):
        ui_to_api(ui, INFO)


def test_value_problems_names_each_bad_value():
    assert value_problems(PROMPT, INFO) == []
    bad = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in PROMPT.items()}
    bad["1"]["inputs"]["ckpt_name"] = "missing.safetensors"
    bad["2"]["inputs"]["frame_load_cap"] = "image"
    bad["7"]["inputs"]["steps"] = 5000
    bad["8"]["inputs"]["seed"] = True
    del bad["3"]["inputs"]["text"]
    bad["12"] = {"class_type": "NoSuchNode", "inputs": {}}
    problems = "\n".join(value_problems(bad, INFO))
    for needle in (
        "missing.safetensors",
        "frame_load_cap='image' is not an integer",
        "steps=5000 outside",
        "seed=True is not an integer",
        "'text' missing",
        "unknown node type 'NoSuchNode'",
    ):
        assert needle in problems, problems


def test_bypassed_ui_only_nodes_leave_the_prompt_unchanged(monkeypatch):
    import workflow_notes

    info = dict(
        INFO,
        ApplyHint=_info(
            "conditioning/controlnet", {"positive": ["CONDITIONING"], "image": ["IMAGE"]}, ["CONDITIONING"]
        ),
        UsesCond=_info("sampling", {"positive": ["CONDITIONING"]}, ["LATENT"]),
    )
    prompt = dict(PROMPT)
    prompt["14"] = {"class_type": "UsesCond", "inputs": {"positive": ["3", 0]}}
    monkeypatch.setitem(
        workflow_notes.WORKFLOWS,
        "with_hint",
        {
            "bypassed": {
                "30": {
                    "class_type": "ApplyHint",
                    "inputs": {"positive": ["3", 0], "image": ["2", 0]},
                    "title": "Optional hint",
                }
            },
            "rewire": {"14": {"positive": ["30", 0]}},
        },
    )
    ui = api_to_ui(prompt, info, name="with_hint")
    hint = next(n for n in ui["nodes"] if n["id"] == 30)
    assert hint["mode"] == 4 and hint["title"] == "Optional hint"
    assert any(link[1] == 30 and link[3] == 14 for link in ui["links"]), "the consumer reads the bypassed node"
    assert ui_to_api(ui, info) == prompt, "through a bypassed node the link stands for its matching input"
    hint["mode"] = 0  # turned on (Ctrl+B): the prompt now goes through it
    on = ui_to_api(ui, info)
    assert on["14"]["inputs"]["positive"] == ["30", 0] and on["30"]["class_type"] == "ApplyHint"
    hint["mode"] = 2  # muted: its consumers lose the input
    assert "positive" not in ui_to_api(ui, info)["14"]["inputs"]
