"""The bad-input matrix: every node of the pack, queued through a real server's /prompt with
wrong types, out-of-range values, unknown options, mismatched shapes and hostile paths.

Every case must end in a validation error (``node_errors``) or an execution error whose
message names the input; afterwards the server must still be healthy and no file outside
output/ may have changed. The matrix is built from ``/object_info`` (so new inputs join it)
plus hand-written shape and path cases; it prints its size and pass count.

One server, the tiny smoke model, a 4-frame 64-pixel clip: upstream nodes are cached by
ComfyUI after the first case, so each case runs only the node under test (and its sink).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import torch

from ve_testkit.workflows import WORKFLOWS

OURS = "VideoEdit_"
# Outputs of the base graph that feed the node under test, by type.
PROVIDERS = {
    "MODEL": ["ckpt", 0],
    "CLIP": ["ckpt", 1],
    "VAE": ["ckpt", 2],
    "IMAGE": ["load", 0],
    "CONDITIONING": ["pos", 0],
    "LATENT": ["enc", 0],
    "OPTICAL_FLOW": ["flow", 0],
    "VE_INVERSION": ["inv", 0],
    "SIGMAS": ["inv", 2],
    "VE_TRAJECTORIES": ["traj", 0],
    "MASK": ["cons", 0],
    "SAMPLER": ["ksel", 0],
    "VE_P2P_EDIT": ["p2p", 0],
}
# An output of another type for each link input (a wrong-type wiring).
WRONG_LINK = {"IMAGE": ["inv", 2]}
DEFAULT_WRONG_LINK = ["load", 0]  # IMAGE
# Values that make the base graph cheap and valid.
OVERRIDES = {
    "VideoEdit_LoadVideo": {"video": "sample.mp4", "frame_load_cap": 4, "custom_width": 64},
    "VideoEdit_EstimateFlow": {"method": "dis"},
    "VideoEdit_DDIMInversion": {"steps": 2, "cache_mode": "memory", "cache_limit_mb": 0},
    "VideoEdit_RerenderKeyframes": {"steps": 2, "keyframe_interval": 2, "flow_method": "dis"},
    "VideoEdit_NullTextOptimization": {"inner_steps": 1},
    "VideoEdit_TokenFlowSampler": {"sampler_name": "euler"},
    "VideoEdit_SaveVideo": {"filename_prefix": "bad_inputs/ok"},
    "VideoEdit_P2PEdit": {
        "source_prompt": "a red car",
        "target_prompt": "a blue car",
        "blend_source": "car",
        "blend_target": "car",
        "reweight": "",
        "subtract": "",
    },
}


@dataclass
class Case:
    name: str
    node: str  # class under test
    input: str  # the input the message must name
    inputs: dict = field(default_factory=dict)  # overrides of the node's inputs
    extra: dict = field(default_factory=dict)  # more nodes (ids -> node), e.g. a sampler after a MODEL patch
    sink: str | None = "target"  # the node whose first output PreviewAny shows (None: target is an output)


class Matrix:
    def __init__(self, server):
        self.server = server
        self.info = server.get("/object_info")

    # -- building prompts ---------------------------------------------------------------------
    def defaults(self, class_type: str) -> dict:
        spec = self.info[class_type]["input"].get("required", {})
        inputs = {}
        for name, entry in spec.items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            if isinstance(kind, list):
                inputs[name] = kind[0]
            elif kind == "COMBO":
                inputs[name] = opts.get("default", (opts.get("options") or [""])[0])
            elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
                inputs[name] = opts.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}[kind])
            else:
                inputs[name] = list(PROVIDERS[kind])
        inputs.update(OVERRIDES.get(class_type, {}))
        return inputs

    def base(self) -> dict:
        def node(cls, **kw):
            return {"class_type": cls, "inputs": {**(self.defaults(cls) if cls.startswith(OURS) else {}), **kw}}

        return {
            "ckpt": {"class_type": "VETest_TinyCheckpoint", "inputs": {"seed": 0}},
            "load": node("VideoEdit_LoadVideo"),
            "pos": node("CLIPTextEncode", text="a red car", clip=["ckpt", 1]),
            "neg": node("CLIPTextEncode", text="", clip=["ckpt", 1]),
            "enc": node("VAEEncode", pixels=["load", 0], vae=["ckpt", 2]),
            "flow": node("VideoEdit_EstimateFlow"),
            "inv": node("VideoEdit_DDIMInversion", latent=["enc", 0]),
            "traj": node("VideoEdit_SampleTrajectories"),
            "cons": node("VideoEdit_FlowConsistency", backward_flow=["flow", 1]),
            "ksel": node("KSamplerSelect", sampler_name="euler"),
            "p2p": node("VideoEdit_P2PEdit", clip=["ckpt", 1]),
        }

    def prompt(self, case: Case) -> dict:
        prompt = self.base()
        prompt["target"] = {"class_type": case.node, "inputs": {**self.defaults(case.node), **case.inputs}}
        prompt.update(case.extra)
        if case.sink is not None:
            prompt["sink"] = {"class_type": "PreviewAny", "inputs": {"source": [case.sink, 0]}}
        return prompt

    # -- running ------------------------------------------------------------------------------
    def run(self, case: Case) -> tuple[str, str]:
        """("validation" | "execution" | "success", the error text)."""
        body = {"prompt": self.prompt(case), "client_id": uuid.uuid4().hex}
        r = requests.post(f"{self.server.url}/prompt", json=body, timeout=30)
        data = r.json()
        if r.status_code != 200 or data.get("node_errors"):
            errors = data.get("node_errors", {}).get("target", {}).get("errors") or [data.get("error", {})]
            named = [e for e in errors if (e.get("extra_info") or {}).get("input_name") in (None, case.input)]
            text = json.dumps(named if len(named) == len(errors) else errors)
            return "validation", text
        prompt_id = data["prompt_id"]
        deadline = time.time() + 300
        while time.time() < deadline:
            entry = self.server.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("completed") is not None:
                if status.get("status_str") == "success":
                    return "success", ""
                for kind, msg in status.get("messages", []):
                    if kind == "execution_error":
                        return "execution", f"{msg.get('node_type')}: {msg.get('exception_message')}"
                return "execution", json.dumps(status)
            time.sleep(0.05)
        raise AssertionError(f"{case.name}: did not finish")


def _sink_of(m: Matrix, cls: str) -> str | None:
    return "target" if m.info[cls].get("output") else None  # an output node (Save Video) needs no sink


def _numeric_cases(m: Matrix) -> list[Case]:
    cases = []
    for cls, node in sorted(m.info.items()):
        if not cls.startswith(OURS):
            continue
        for name, entry in node["input"].get("required", {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            if kind not in ("INT", "FLOAT"):
                continue
            sink = _sink_of(m, cls)
            cases.append(Case(f"{cls}.{name}=text", cls, name, {name: "not a number"}, sink=sink))
            if opts.get("max") is not None:
                cases.append(Case(f"{cls}.{name}>max", cls, name, {name: opts["max"] + 1}, sink=sink))
            if opts.get("min") is not None:
                cases.append(Case(f"{cls}.{name}<min", cls, name, {name: opts["min"] - 1}, sink=sink))
    return cases


def _combo_cases(m: Matrix) -> list[Case]:
    cases = []
    for cls, node in sorted(m.info.items()):
        if not cls.startswith(OURS):
            continue
        for name, entry in node["input"].get("required", {}).items():
            if entry[0] == "COMBO" or isinstance(entry[0], list):
                inputs = {name: "no such option"}
                if name == "raft_weights":  # only read by the RAFT methods
                    inputs["method"] = "raft_small"
                cases.append(Case(f"{cls}.{name}=unknown", cls, name, inputs, sink=_sink_of(m, cls)))
    return cases


def _link_cases(m: Matrix) -> list[Case]:
    cases = []
    for cls, node in sorted(m.info.items()):
        if not cls.startswith(OURS):
            continue
        for name, entry in node["input"].get("required", {}).items():
            kind = entry[0]
            if isinstance(kind, list) or kind not in PROVIDERS:
                continue
            wrong = list(WRONG_LINK.get(kind, DEFAULT_WRONG_LINK))
            cases.append(Case(f"{cls}.{name}=wrong type", cls, name, {name: wrong}, sink=_sink_of(m, cls)))
    return cases


def _sampled(model_node: str, latent) -> dict:
    """SamplerCustom on the inversion's sigmas with ``latent`` (a link), after a MODEL patch."""
    return {
        "samp": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": [model_node, 0],
                "add_noise": False,
                "noise_seed": 0,
                "cfg": 5.0,
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "sampler": ["ksel", 0],
                "sigmas": ["inv", 2],
                "latent_image": latent,
            },
        }
    }


def _shape_and_path_cases() -> list[Case]:
    tf = "VideoEdit_ApplyTokenFlow"
    fewer = {
        "fewer": {
            "class_type": "VideoEdit_LoadVideo",
            "inputs": {
                "video": "sample.mp4",
                "frame_load_cap": 3,
                "skip_first_frames": 0,
                "select_every_nth": 1,
                "custom_width": 64,
                "custom_height": 0,
                "size_multiple": 8,
            },
        },
        "fewer_enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["fewer", 0], "vae": ["ckpt", 2]}},
    }
    wider = {
        "wider": {
            "class_type": "VideoEdit_LoadVideo",
            "inputs": {
                "video": "sample.mp4",
                "frame_load_cap": 4,
                "skip_first_frames": 0,
                "select_every_nth": 1,
                "custom_width": 96,
                "custom_height": 0,
                "size_multiple": 8,
            },
        },
        "wider_enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["wider", 0], "vae": ["ckpt", 2]}},
        "wider_flow": {
            "class_type": "VideoEdit_EstimateFlow",
            "inputs": {
                "images": ["wider", 0],
                "method": "dis",
                "raft_weights": "auto",
                "num_flow_updates": 12,
                "batch_size": 4,
                "scale": 1.0,
            },
        },
    }
    cases = [
        Case(
            "TokenFlow on a latent with fewer frames",
            tf,
            "latent_image",
            extra={**fewer, **_sampled("target", ["fewer_enc", 0])},
            sink="samp",
        ),
        Case(
            "TokenFlow on a latent of another size",
            tf,
            "latent_image",
            extra={**wider, **_sampled("target", ["wider_enc", 0])},
            sink="samp",
        ),
        Case(
            "FLATTEN PnP on a latent of another size",
            "VideoEdit_ApplyFLATTEN",
            "latent_image",
            {"inversion": ["inv", 0], "trajectories": ["wtraj", 0]},
            extra={
                **wider,
                "wtraj": {
                    "class_type": "VideoEdit_SampleTrajectories",
                    "inputs": {
                        "flow": ["wider_flow", 0],
                        "latent": ["wider_enc", 0],
                        "seed": 0,
                        "flow_resize": "official",
                    },
                },
                **_sampled("target", ["wider_enc", 0]),
            },
            sink="samp",
        ),
        Case(
            "FLATTEN trajectories for another frame count",
            "VideoEdit_ApplyFLATTEN",
            "latent_image",
            extra={**fewer, **_sampled("target", ["fewer_enc", 0])},
            sink="samp",
        ),
        Case(
            "trajectories: flow of another clip",
            "VideoEdit_SampleTrajectories",
            "flow",
            {"latent": ["fewer_enc", 0]},
            extra=fewer,
        ),
        Case(
            "trajectories: flow of another aspect",
            "VideoEdit_SampleTrajectories",
            "flow",
            {"flow": ["wider_flow", 0]},
            extra=wider,
        ),
        Case(
            "reconstruction: source latent of another clip",
            "VideoEdit_InversionReconstruction",
            "source_latent",
            {"source_latent": ["fewer_enc", 0]},
            extra=fewer,
        ),
        Case(
            "consistency: flows of two clips",
            "VideoEdit_FlowConsistency",
            "backward_flow",
            {"backward_flow": ["wider_flow", 1]},
            extra=wider,
        ),
        Case("warp: flow of another size", "VideoEdit_WarpImages", "flow", {"flow": ["wider_flow", 0]}, extra=wider),
        Case(
            "propagate: fewer keyframes than indices",
            "VideoEdit_PropagateKeyframes",
            "keyframe_indices",
            {"keyframes": ["fewer", 0], "keyframe_indices": "0, 1, 2, 3"},
            extra=fewer,
        ),
        Case(
            "propagate: keyframe index past the clip",
            "VideoEdit_PropagateKeyframes",
            "keyframe_indices",
            {"keyframes": ["one", 0], "keyframe_indices": "9"},
            extra={
                "one": {"class_type": "ImageFromBatch", "inputs": {"image": ["load", 0], "batch_index": 0, "length": 1}}
            },
        ),
        Case(
            "propagate: keyframes of another size",
            "VideoEdit_PropagateKeyframes",
            "keyframes",
            {"keyframes": ["wider", 0], "keyframe_indices": "0, 1, 2, 3"},
            extra=wider,
        ),
        Case(
            "AdaIN: reference of another channel count",
            "VideoEdit_LatentAdaIN",
            "reference",
            {"reference": ["wide_lat", 0]},
            extra={
                "wide_lat": {
                    "class_type": "EmptyHunyuanLatentVideo",
                    "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1},
                }
            },
        ),
        Case(
            "Rerender: flows of another clip",
            "VideoEdit_RerenderKeyframes",
            "forward_flow",
            {"forward_flow": ["wider_flow", 0], "backward_flow": ["wider_flow", 1], "flow_method": "chain"},
            extra=wider,
        ),
        Case(
            "propagate: flows of another clip",
            "VideoEdit_PropagateKeyframes",
            "forward_flow",
            {
                "forward_flow": ["wider_flow", 0],
                "backward_flow": ["wider_flow", 1],
                "keyframes": ["load", 0],
                "keyframe_indices": "0, 1, 2, 3",
            },
            extra=wider,
        ),
        Case(
            "warp: fewer frames than flows",
            "VideoEdit_WarpImages",
            "images",
            {"images": ["one", 0]},
            extra={
                "one": {"class_type": "ImageFromBatch", "inputs": {"image": ["load", 0], "batch_index": 0, "length": 2}}
            },
        ),
        Case(
            "inversion of a video-model latent",
            "VideoEdit_DDIMInversion",
            "latent",
            {"latent": ["vid_lat", 0]},
            extra={
                "vid_lat": {
                    "class_type": "EmptyHunyuanLatentVideo",
                    "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1},
                }
            },
        ),
        Case(
            "inversion with FLATTEN trajectories of another clip",
            "VideoEdit_DDIMInversion",
            "latent",
            {"model": ["flat", 0], "latent": ["fewer_enc", 0]},
            extra={
                **fewer,
                "flat": {
                    "class_type": "VideoEdit_ApplyFLATTEN",
                    "inputs": {
                        "model": ["ckpt", 0],
                        "trajectories": ["traj", 0],
                        "mode": "dense",
                        "levels": "highest",
                        "old_qk": False,
                        "anchor_stride": 4,
                        "max_anchors": 4,
                        "inject_step": 0.8,
                        "pnp_attn_blocks": "output 4-9",
                        "pnp_resnet_blocks": "output 3, 4, 6",
                    },
                },
            },
        ),
        Case("apply null-text to an inversion without it", "VideoEdit_ApplyNullText", "inversion", {}),
        Case(
            "TokenFlow with an inversion from another model",
            tf,
            "inversion",
            {"model": ["ckpt2", 0]},
            extra={"ckpt2": {"class_type": "VETest_TinyCheckpoint", "inputs": {"seed": 1}}},
        ),
        Case(
            "extended attention: keyframes not numbers",
            "VideoEdit_ApplyExtendedAttention",
            "keyframes",
            {"keyframes": "0, eight"},
        ),
        Case("TokenFlow: block list typo", tf, "pnp_attn_blocks", {"pnp_attn_blocks": "output 4-1l"}),
        Case("TokenFlow: resnet block typo", tf, "pnp_resnet_blocks", {"pnp_resnet_blocks": "outptu 4"}),
        Case(
            "FLATTEN: block list typo",
            "VideoEdit_ApplyFLATTEN",
            "pnp_attn_blocks",
            {"inversion": ["inv", 0], "pnp_attn_blocks": "output four"},
        ),
        Case(
            "Rerender: cross-frame block typo",
            "VideoEdit_RerenderKeyframes",
            "cross_frame_blocks",
            {"cross_frame_blocks": "output 6-x"},
        ),
        Case(
            "estimate flow of one frame",
            "VideoEdit_EstimateFlow",
            "images",
            {"images": ["one", 0]},
            extra={
                "one": {"class_type": "ImageFromBatch", "inputs": {"image": ["load", 0], "batch_index": 0, "length": 1}}
            },
        ),
        Case(
            "Rerender: frames not a multiple of 8",
            "VideoEdit_RerenderKeyframes",
            "images",
            {"images": ["odd", 0]},
            extra={
                "odd": {
                    "class_type": "ImageCrop",
                    "inputs": {"image": ["load", 0], "width": 60, "height": 30, "x": 0, "y": 0},
                }
            },
        ),
    ]
    load, save, flow = "VideoEdit_LoadVideo", "VideoEdit_SaveVideo", "VideoEdit_EstimateFlow"
    for value in (
        "../../../etc/passwd",
        "/etc/passwd",
        "../output/../../x.mp4",
        "clip\x00.mp4",
        "no_such.mp4",
        "truncated.mp4",
        "not_a_video.mp4",
    ):
        cases.append(Case(f"load video {value!r}", load, "video", {"video": value}))
    for value in (
        "../escape",
        "../../escape",
        "/tmp/ve_escape",
        "a\x00b",
        "sub/../../escape",
        "..\\..\\escape",
        "%date:yyyy%/../../escape",
    ):
        cases.append(
            Case(
                f"save prefix {value!r}",
                save,
                "filename_prefix",
                {"filename_prefix": value, "images": ["load", 0]},
                sink=None,
            )
        )
    for value in (
        "../../../etc/passwd",
        "/etc/passwd",
        "unsafe.pth",
        "foreign.safetensors",
        "other_model.pth",
        "garbage.pth",
        "missing.pth",
    ):
        cases.append(
            Case(f"raft weights {value!r}", flow, "raft_weights", {"method": "raft_small", "raft_weights": value})
        )
    return cases


def _install_files(server) -> None:
    shutil.copyfile(WORKFLOWS / "assets" / "sample.mp4", server.base / "input" / "sample.mp4")
    data = (WORKFLOWS / "assets" / "sample.mp4").read_bytes()
    (server.base / "input" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (server.base / "input" / "not_a_video.mp4").write_bytes(b"just some text, not a video\n" * 20)
    raft = server.base / "models" / "raft"
    raft.mkdir(parents=True, exist_ok=True)
    torch.save({"w": collections.OrderedDict(a=torch.zeros(1)), "layer": torch.nn.Linear(1, 1)}, raft / "unsafe.pth")
    (raft / "foreign.safetensors").write_bytes(os.urandom(4096))
    (raft / "garbage.pth").write_bytes(os.urandom(4096))
    torch.save({"foo.weight": torch.zeros(3)}, raft / "other_model.pth")


def _snapshot(base: Path) -> dict:
    """Every file under the server's base dir (and its parent's entries) outside output/ and
    the server's own scratch (temp/, user/, its log): path -> (size, mtime)."""
    skip = {"output", "temp", "user", "custom_nodes"}
    files = {}
    for root, dirs, names in os.walk(base):
        rel = Path(root).relative_to(base)
        if rel.parts and rel.parts[0] in skip:
            dirs[:] = []
            continue
        for name in names:
            path = Path(root) / name
            if path.name != "server.log":
                st = path.stat()
                files[str(path.relative_to(base))] = (st.st_size, st.st_mtime_ns)
    files["<parent>"] = tuple(sorted(os.listdir(base.parent)))
    files["<tmp>"] = tuple(sorted(n for n in os.listdir("/tmp") if "escape" in n))
    return files


def test_bad_input_matrix(server):
    _install_files(server)
    before = _snapshot(server.base)
    m = Matrix(server)
    cases = _numeric_cases(m) + _combo_cases(m) + _link_cases(m) + _shape_and_path_cases()
    ours = {c for c in m.info if c.startswith(OURS)}
    assert {c.node for c in cases} == ours, f"nodes without a case: {sorted(ours - {c.node for c in cases})}"

    results, failures = collections.Counter(), []
    for case in cases:
        kind, text = m.run(case)
        results[kind] += 1
        if kind == "success" or case.input not in text:
            failures.append(f"{case.name}: {kind}: {text[:300]}")
        if os.environ.get("VE_MATRIX_VERBOSE"):
            print(f"[{kind}] {case.name}: {text[:400]}")
    assert requests.get(f"{server.url}/system_stats", timeout=10).status_code == 200
    # a good prompt still runs after all of them
    good = Case("good", "VideoEdit_FlowPreview", "", {})
    assert m.run(good)[0] == "success"
    after = _snapshot(server.base)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    passed = len(cases) - len(failures)
    print(f"\nbad-input matrix: {len(cases)} cases ({dict(results)}), {passed} end in an error naming the input")
    for line in failures:
        print("FAILED CASE", line)
    assert not changed, f"files outside output/ changed: {changed}"
    assert not failures, "\n".join(failures)
    assert len(cases) >= 80
