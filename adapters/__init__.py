"""The ComfyUI-facing layer: the only modules besides ``nodes/`` that import ``comfy.*`` or touch
ModelPatcher objects, samplers, conditioning lists or ``transformer_options`` built by the host.

``attention/``, ``flow/``, ``inversion/`` and ``media/`` are pure torch (a unit test scans their
imports); ``nodes/`` holds the V3 schemas, whose ``execute`` validates and calls one function here.
See ``docs/architecture.md``.
"""
