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


UNETS = {"sd15": SD15_UNET_CONFIG, "tiny": TINY_UNET_CONFIG}  # tiny: the smoke test of the bench itself


def build_sd15(dtype: torch.dtype, seed: int = 0, device: torch.device | str | None = None, unet: str = "sd15"):
    """ModelPatcher around a random-weight UNet (full-size SD1.5 by default), built directly on
    ``device`` (default: ComfyUI's offload device) in ``dtype``: on a GPU in fp16 neither a
    CPU copy nor a conversion is made, so construction takes seconds."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    device = torch.device(device) if device is not None else mm.unet_offload_device()
    cfg = comfy.supported_models.SD15(dict(UNETS[unet]))
    cfg.set_inference_dtype(dtype, None)
    model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.EPS, device=device)
    model.diffusion_model.to(device=device, dtype=dtype)  # no-op when built there (ComfyUI ops honour device)
    init_random_on_device_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


@torch.no_grad()
def init_random_on_device_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The test kit's scheme (unit norms, fan-in scaled weights, small biases), drawn on each
    parameter's own device and dtype: speed does not depend on the values."""
    gens: dict = {}
    for m in module.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)):
            w = m.weight
            g = gens.setdefault(w.device, torch.Generator(w.device).manual_seed(seed))
            scale = 0.02 if isinstance(m, torch.nn.Embedding) else 1.0 / w[0].numel() ** 0.5
            w.copy_(torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype) * scale)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, device=w.device, dtype=w.dtype) * 0.01)
    return module


def random_conditioning(seed: int = 0, tokens: int = 77, dim: int = 768):
    """SD1.5-shaped conditioning ``[[cond [1, tokens, dim], {"pooled_output": [1, dim]}]]``."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, dim, generator=g), {"pooled_output": torch.randn(1, dim, generator=g)}]]
