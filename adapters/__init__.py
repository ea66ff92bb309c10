"""The ComfyUI-facing layer: the only code besides ``nodes/`` that imports ``comfy.*`` or touches
ComfyUI objects (ModelPatcher, CLIP, CLIP_VISION, samplers, conditioning lists). The pure folders
(``attention/``, ``flow/``, ``inversion/``, ``media/``) never import it."""
