"""The benchmark's models: the full-size SD1.5 UNet (860 M parameters) with random weights,
built from ComfyUI's own classes, and random conditioning of SD1.5's shape."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from ve_testkit.host import import_host  # noqa: E402
from ve_testkit.models import TINY_UNET_CONFIG  # noqa: E402
from ve_testkit.pack import load_pack  # noqa: E402

# the tiny test UNet's layout at SD1.5's real width and text-embedding size
SD15_UNET_CONFIG = dict(TINY_UNET_CONFIG, model_channels=320, context_dim=768)


def start_host(device: str):
    """Import ComfyUI (CPU unless ``device`` is cuda) and the pack."""
    host = import_host(cpu=(device == "cpu"))
    load_pack()
    return host


def build_sd15(dtype: torch.dtype, seed: int = 0):
    """ModelPatcher around a random-weight full-size SD1.5 UNet."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from ve_testkit.models import init_random_

    cfg = comfy.supported_models.SD15(dict(SD15_UNET_CONFIG))
    cfg.set_inference_dtype(dtype, None)
    model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.EPS,
                                       device=mm.unet_offload_device())
    init_random_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def random_conditioning(seed: int = 0, tokens: int = 77, dim: int = 768):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, dim, generator=g), {"pooled_output": torch.randn(1, dim, generator=g)}]]
