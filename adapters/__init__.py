"""The ComfyUI-facing layer: model clones and patches, samplers, conditioning, the inversion
driver and source replay, each method's model builder. The only code besides ``nodes/`` that
imports ``comfy.*``."""
