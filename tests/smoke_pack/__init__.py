"""A tiny-model loader used by the server tests and by `make demo` without a checkpoint.

It is a separate custom-node folder (never part of the pack): the server harness links it
into a throw-away ComfyUI base directory next to the pack. ``VETest_TinyCheckpoint`` returns
MODEL, CLIP and VAE in the same output order as ComfyUI's CheckpointLoaderSimple, so an API
workflow only swaps the loader's class_type. Weights are random: results are smoke runs.
"""

import importlib.util
import sys
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

_KIT = Path(__file__).resolve().parents[1] / "ve_testkit" / "models.py"


def _models():
    name = "ve_smoke_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _KIT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class TinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VETest_TinyCheckpoint",
            display_name="Tiny random checkpoint (smoke tests)",
            category="VideoEdit/testing",
            description="Random-weight SD1.5-layout UNet, CLIP and VAE built from ComfyUI classes. Smoke runs only.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="weight init seed")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        m = _models()
        return io.NodeOutput(m.build_tiny_model(seed), m.build_tiny_clip(seed + 1), m.build_tiny_vae(seed + 2))


class TinyCLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VETest_TinyCLIPVision",
            display_name="Tiny random CLIP vision (smoke tests)",
            category="VideoEdit/testing",
            description="Random-weight CLIP vision model built from ComfyUI's ClipVisionModel. Smoke runs only.",
            inputs=[io.Int.Input("seed", default=3, min=0, max=2**31 - 1, tooltip="weight init seed")],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        return io.NodeOutput(_models().build_tiny_clip_vision(seed))


class SmokeExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyCheckpoint, TinyCLIPVision]


async def comfy_entrypoint():
    return SmokeExtension()
