"""Every combo value stored in a shipped workflow is one of its node's option ids (combo values
are short stable ids; old display labels are not accepted), and the settings dataclasses reject
other values with an error that lists the ids."""

import dataclasses
import json
import re

import pytest

from ve_testkit.workflows import WORKFLOWS, api_workflows, load_api

FILE_LISTS = {"video", "raft_weights"}  # combos that list files on disk, not option ids


def _combos(pack_nodes) -> dict[str, dict[str, list]]:
    out = {}
    for node in pack_nodes.all_nodes():
        schema = node.define_schema()
        out[schema.node_id] = {
            i.id: list(i.options)
            for i in schema.inputs
            if getattr(i, "options", None) is not None and i.id not in FILE_LISTS
        }
    return out


def test_every_shipped_combo_value_is_an_option_id(pack_nodes):
    combos = _combos(pack_nodes)
    checked = 0
    for path in api_workflows():
        for node_id, node in load_api(path).items():
            options = combos.get(node["class_type"])
            if options is None:
                continue  # a core node
            for name, value in node["inputs"].items():
                if name in options and not isinstance(value, list):  # a list is a link
                    assert value in options[name], (path.name, node_id, name, value, options[name])
                    checked += 1
    assert checked >= 10, checked


def test_ui_workflows_carry_the_same_ids(pack_nodes):
    """The drag-and-drop twins hold widget values only; every pack combo id in them is valid."""
    combos = _combos(pack_nodes)
    for path in sorted(WORKFLOWS.glob("*.json")):
        ui = json.loads(path.read_text())
        for node in ui["nodes"]:
            options = combos.get(node.get("type"))
            if not options:
                continue
            values = [v for v in node.get("widgets_values", []) if isinstance(v, str)]
            known = {o for opts in options.values() for o in opts}
            long_labels = [v for v in values if " (" in v or ": " in v]
            assert not [v for v in long_labels if v not in known], (path.name, node["type"], long_labels)


@pytest.mark.parametrize(
    "node_module, option, bad",
    [
        ("tokenflow", "blend", "official (own + previous window, sigmoid)"),
        ("tokenflow", "nn_feature", "self-attention input (official)"),
        ("flatten", "mode", "dense (paper)"),
        ("video", "format", "mp4 (h264)"),
        ("video", "format", "png sequence"),
        ("inversion", "cache_mode", "ram"),
    ],
)
def test_old_long_labels_are_refused(pack_nodes, node_module, option, bad):
    if node_module == "tokenflow":
        from comfyui_videoedit.adapters.tokenflow import TokenFlowOptions as options
    elif node_module == "video":
        from comfyui_videoedit.nodes.video import SaveVideoOptions as options
    elif node_module == "inversion":
        from comfyui_videoedit.adapters.inversion import InversionOptions as options
    else:
        from comfyui_videoedit.adapters.flatten import FlattenOptions as options
    ids = options.choices(option)
    with pytest.raises(ValueError, match=rf"^{option}: '{re.escape(bad)}' is not one of {', '.join(ids)}$"):
        options.from_inputs(**{option: bad})


def test_rerender_config_checks_ids_ranges_and_windows(host):
    from comfyui_videoedit.adapters.rerender import RerenderConfig

    with pytest.raises(ValueError, match="^fidelity_mode: 'code: x_r' is not one of code, paper$"):
        RerenderConfig.from_inputs(fidelity_mode="code: x_r")
    with pytest.raises(
        ValueError, match="^flow_method: 'chain input flows' is not one of dis, chain, raft_large, raft_small$"
    ):
        RerenderConfig.from_inputs(flow_method="chain input flows")
    with pytest.raises(ValueError, match="sampler_name: 'nope' is not one of"):
        RerenderConfig.from_inputs(sampler_name="nope")
    with pytest.raises(ValueError, match=r"adain: the window is a fraction of the steps"):
        RerenderConfig.from_inputs(adain_start=-0.5)
    with pytest.raises(ValueError, match=r"mask_strength: 2 is outside 0.0..1.0"):
        RerenderConfig.from_inputs(mask_strength=2)
    config = RerenderConfig.from_inputs(adain_start=0.9, keyframe_interval=4)
    assert config.adain == (0.9, RerenderConfig.default("adain")[1]) and config.keyframe_interval == 4
    assert config.steps == RerenderConfig.default("steps")


def test_schemas_read_their_defaults_from_the_settings(pack_nodes):
    from comfyui_videoedit.adapters.flatten import FlattenOptions
    from comfyui_videoedit.adapters.rerender import RerenderConfig
    from comfyui_videoedit.adapters.tokenflow import TokenFlowOptions
    from comfyui_videoedit.attention.tokenflow_patch import TokenFlowConfig

    def defaults(node):
        return {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}

    tf = defaults(pack_nodes.tokenflow.ApplyTokenFlow)
    assert tf["seed"] == TokenFlowOptions.default("seed") == TokenFlowConfig.seed == 1  # one seed default
    assert tf["window"] == TokenFlowConfig.window and tf["blend"] == TokenFlowOptions.default("blend")
    fl = defaults(pack_nodes.flatten.ApplyFLATTEN)
    assert fl["mode"] == FlattenOptions.default("mode") and fl["inject_step"] == FlattenOptions.default("inject_step")
    rr = defaults(pack_nodes.rerender.RerenderKeyframes)
    assert (rr["adain_start"], rr["adain_end"]) == RerenderConfig.default("adain")
    assert rr["keyframe_interval"] == RerenderConfig.default("keyframe_interval")


def test_shipped_workflows_save_with_format_ids(pack_nodes):
    """Save Video's ``format`` is stored as a short id (mp4, webm, gif, png) in every shipped workflow."""
    from comfyui_videoedit.nodes.video import SAVE_FORMATS

    seen = [
        node["inputs"]["format"]
        for path in api_workflows()
        for node in load_api(path).values()
        if node["class_type"] == "VideoEdit_SaveVideo"
    ]
    assert seen and all(value in SAVE_FORMATS for value in seen), seen
    for path in sorted(WORKFLOWS.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node.get("type") == "VideoEdit_SaveVideo":
                assert any(v in SAVE_FORMATS for v in node["widgets_values"]), (path.name, node["widgets_values"])


@pytest.mark.parametrize(
    "module, cls, option, bad",
    [
        ("nodes.flow", "EstimateFlowOptions", "method", "farneback"),
        ("nodes.flow", "WarpImagesOptions", "flow_direction", "sideways"),
        ("nodes.flow", "WarpImagesOptions", "padding_mode", "wrap"),
    ],
)
def test_flow_combos_are_checked_by_the_settings(pack_nodes, module, cls, option, bad):
    import importlib

    options = getattr(importlib.import_module(f"comfyui_videoedit.{module}"), cls)
    ids = options.choices(option)
    with pytest.raises(ValueError, match=rf"^{option}: '{bad}' is not one of {', '.join(ids)}$"):
        options.from_inputs(**{option: bad})


def test_flow_video_and_inversion_nodes_check_their_inputs(pack_nodes, inference_mode):
    import torch

    from comfyui_videoedit.adapters.nulltext import NullTextOptions
    from comfyui_videoedit.nodes import flow, rerender, video

    clip, fl = torch.rand(3, 8, 8, 3), torch.zeros(2, 8, 8, 2)
    with pytest.raises(ValueError, match="^flow_direction: 'sideways' is not one of forward, backward$"):
        flow.WarpImages.execute(clip, fl, flow_direction="sideways", padding_mode="border")
    with pytest.raises(ValueError, match="^method: 'farneback' is not one of dis, raft_large, raft_small$"):
        flow.EstimateFlow.execute(clip, method="farneback")
    with pytest.raises(ValueError, match=r"^scale: 2.0 is outside 0.1..1.0$"):
        flow.EstimateFlow.execute(clip, method="dis", scale=2.0)
    with pytest.raises(ValueError, match=r"^alpha: -1.0 is outside 0.0..1.0$"):
        flow.FlowConsistency.execute(fl, fl, alpha=-1.0, beta=0.5, squared=True)
    with pytest.raises(ValueError, match=r"^max_magnitude: -1 is outside 0.0..10000.0$"):
        flow.FlowPreview.execute(fl, max_magnitude=-1)
    with pytest.raises(ValueError, match=r"^select_every_nth: 0 is outside 1..1000$"):
        video.LoadVideo.execute("clip.mp4", select_every_nth=0)
    with pytest.raises(ValueError, match=r"^cfg: 0.5 is outside 1.0..30.0$"):
        NullTextOptions.from_inputs(cfg=0.5)
    with pytest.raises(ValueError, match=r"^error_scale: 0 is outside 0.005..1.0$"):
        rerender.PropagateKeyframes.execute(clip, clip, "0", fl, fl, "moments", "ycbcr", 0.5, 0)
    with pytest.raises(ValueError, match=r"^strength: 2 is outside 0.0..1.0$"):
        rerender.LatentAdaIN.execute({"samples": torch.zeros(1, 4, 2, 2)}, {"samples": torch.zeros(1, 4, 2, 2)}, 2)


def test_flow_video_and_inversion_schemas_read_their_settings(pack_nodes):
    from comfyui_videoedit.adapters.inversion import ReconstructionOptions
    from comfyui_videoedit.adapters.nulltext import NullTextOptions
    from comfyui_videoedit.nodes import flow, inversion, rerender, video

    pairs = [
        (rerender.PropagateKeyframes, rerender.PropagateOptions),
        (rerender.LatentAdaIN, rerender.LatentAdaINOptions),
        (video.SelectKeyframes, video.SelectKeyframesOptions),
        (flow.EstimateFlow, flow.EstimateFlowOptions),
        (flow.FlowConsistency, flow.FlowConsistencyOptions),
        (flow.FlowPreview, flow.FlowPreviewOptions),
        (flow.WarpImages, flow.WarpImagesOptions),
        (video.LoadVideo, video.LoadVideoOptions),
        (inversion.NullTextOptimization, NullTextOptions),
        (inversion.InversionReconstruction, ReconstructionOptions),
    ]
    for node, options in pairs:
        inputs = {i.id: i for i in node.define_schema().inputs}
        for field in dataclasses.fields(options):
            spec = options.spec(field.name)
            widget = inputs[field.name]
            assert widget.default == spec.pop("default"), (node.__name__, field.name)
            for key, value in spec.items():
                assert getattr(widget, key) == value, (node.__name__, field.name, key)
