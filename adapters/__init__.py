"""The ComfyUI-facing layer: the only code besides ``nodes/`` that imports ``comfy.*`` or touches
ModelPatcher, transformer_options, samplers and conditioning lists."""
