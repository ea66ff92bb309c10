"""ComfyUI node classes (V3 schema). Thin adapters: validate, convert types, call the
algorithm modules, report progress. Nothing here runs at import beyond class definitions."""

from comfy_api.latest import ComfyExtension, io

from ..adapters.paths import register_model_folders


def all_nodes() -> list[type[io.ComfyNode]]:
    """Every node of the pack, in menu order. Each area module exports ``NODES``."""
    from . import flatten, flow, inversion, p2p, quality, rerender, tokenflow, video

    return [
        *video.NODES,
        *flow.NODES,
        *inversion.NODES,
        *tokenflow.NODES,
        *flatten.NODES,
        *p2p.NODES,
        *rerender.NODES,
        *quality.NODES,
    ]


class VideoEditExtension(ComfyExtension):
    async def on_load(self) -> None:  # called by newer hosts; idempotent
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folders()  # 0.3.75 never calls on_load
        return all_nodes()
