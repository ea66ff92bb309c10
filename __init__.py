"""ComfyUI-VideoEdit: training-free diffusion video editing as ComfyUI nodes.

Importing this package does nothing but define ``comfy_entrypoint``: no model loads, no file
or network I/O. ComfyUI calls the entrypoint at start-up; the node modules (which import
ComfyUI's own packages) are loaded only then, so the algorithm packages (``flow``,
``attention``, ``inversion``, ``media``) stay importable and testable without a host.
"""

__all__ = ["comfy_entrypoint"]


async def comfy_entrypoint():
    """V3 entry point (``comfy_api.latest``): returns the extension listing every node."""
    from .nodes import VideoEditExtension

    return VideoEditExtension()
