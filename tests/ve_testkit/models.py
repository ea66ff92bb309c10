"""Tiny random-weight SD1.5-layout models built from ComfyUI's own classes, and an analytic
denoiser with a closed-form prediction.

Random weights are for plumbing, shapes, memory and speed only: their eps is not smooth in t
and DDIM inversion does not round-trip on them. Exact answers use ``AnalyticPrediction``.
Call ``import_host()`` before using anything here.
"""

import math

import torch

TINY_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 32,
    "transformer_depth_output": [1] * 9 + [0] * 3,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
TINY_CLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
TINY_CLIP_VISION_CONFIG = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "image_size": 28,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-5,
    "model_type": "clip_vision_model",
    "num_attention_heads": 2,
    "num_channels": 3,
    "num_hidden_layers": 2,
    "patch_size": 7,
    "projection_dim": 32,
}
TINY_VAE_CONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0, std_scale: float = 1.0) -> torch.nn.Module:
    """ComfyUI's ``comfy.ops`` layers skip ``reset_parameters`` (weights are torch.empty
    garbage, and zero GroupNorm weights make the UNet output exactly 0): initialise
    everything explicitly and deterministically."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std_scale / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
        elif isinstance(m, torch.nn.Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
    return module


def build_tiny_model(seed: int = 0, prediction: str = "eps"):
    """A ModelPatcher around an 8.5 M-parameter SD1.5-layout UNet (SD1.5's exact block ids,
    context dim 32). ``prediction``: "eps" or "v"."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.SD15(dict(TINY_UNET_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    model = comfy.model_base.BaseModel(cfg, model_type=model_type, device=torch.device("cpu"))
    init_random_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_tiny_clip(seed: int = 1):
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    clip = comfy.sd.CLIP(
        target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
        model_options={"clip_l_model_config": dict(TINY_CLIP_CONFIG), "dtype": torch.float32},
    )
    init_random_(clip.cond_stage_model, seed)
    return clip


def build_tiny_projected_clip(seed: int = 1):
    """Like :func:`build_tiny_clip`, but the text tower is used *with* its projection (ComfyUI's
    plain ``SDClipModel``, as for towers whose files carry a trained projection, e.g. SDXL's
    clip_g): its pooled output lives in the same 32-d space as :func:`build_tiny_clip_vision`."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    clip = comfy.sd.CLIP(
        target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
        model_options={
            "clip_l_model_config": dict(TINY_CLIP_CONFIG),
            "clip_l_class": comfy.sd1_clip.SDClipModel,
            "dtype": torch.float32,
        },
    )
    init_random_(clip.cond_stage_model, seed)
    return clip


def build_tiny_clip_vision(seed: int = 3, projection_dim: int = 32):
    """A random-weight CLIP_VISION from ComfyUI's own ``ClipVisionModel`` (ViT, 2 layers, width
    32, 28 px input in 7 px patches, projection to ``projection_dim``), float32."""
    import json
    import os
    import tempfile

    import comfy.clip_vision

    config = dict(TINY_CLIP_VISION_CONFIG, projection_dim=projection_dim)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        vision = comfy.clip_vision.ClipVisionModel(f.name)
    finally:
        os.unlink(f.name)
    vision.model.to(torch.float32)
    vision.dtype = torch.float32
    g = torch.Generator().manual_seed(seed)
    init_random_(vision.model, seed)
    with torch.no_grad():  # init_random_ leaves plain Parameters (class embedding) as torch.empty
        vision.model.vision_model.embeddings.class_embedding.copy_(torch.randn(config["hidden_size"], generator=g))
    return vision


def build_tiny_vae(seed: int = 2):
    """8x downscale like SD's VAE, 4 latent channels, 32 base channels."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    ae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(TINY_VAE_CONFIG), embed_dim=4)
    init_random_(ae, seed)
    return comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": dict(TINY_VAE_CONFIG), "embed_dim": 4}})


def tiny_controlnet(seed: int = 5):
    """A random-weight ControlNet matching the tiny UNet, built from ComfyUI's classes."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm

    cfg = dict(TINY_UNET_CONFIG)
    cfg.pop("out_channels")
    cfg.update(hint_channels=3, num_heads=8, num_head_channels=-1, dtype=torch.float32, device="cpu")
    net = init_random_(comfy.cldm.cldm.ControlNet(**cfg), seed, std_scale=0.3)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device(), manual_cast_dtype=None)


def tiny_lora(model, seed: int = 8, rank: int = 2, scale: float = 0.5) -> dict:
    """A kohya-format LoRA state dict (``lora_unet_*.lora_up/lora_down/alpha``) for every
    attention projection of ``model``'s UNet, random low-rank factors; load it with
    ``comfy.sd.load_lora_for_models`` as the LoraLoader node does."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, t in model.model.diffusion_model.state_dict().items():
        if not name.endswith(".weight") or t.dim() != 2 or ".attn" not in name:
            continue
        key = "lora_unet_" + name[: -len(".weight")].replace(".", "_")
        out_f, in_f = t.shape
        lora[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * scale / math.sqrt(rank)
        lora[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) / math.sqrt(in_f)
        lora[f"{key}.alpha"] = torch.tensor(float(rank))
    return lora


def encode_prompt(clip, text: str):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


class AnalyticPrediction:
    """A ``DIFFUSION_MODEL`` wrapper that replaces the UNet by a closed-form prediction.

    eps(x_in, sigma) = field * g(sigma) + x_coeff * x_in, g(sigma) = 1 / (1 + 0.1 sigma),
    where ``x_in`` is the UNet input (``calculate_input``-scaled, i.e. diffusers' x_t) and
    ``field`` a fixed tensor broadcastable to the latent. With ``x_coeff == 0`` eps does not
    depend on x and DDIM inversion is exact. For v-prediction models the wrapper returns the v
    that implies that eps: v = (eps - s x_in) / a, a = 1/sqrt(1+sigma^2), s = sigma a.

    Attach it *last* (innermost) with ``attach(patcher)``; it never calls the real UNet but
    counts its calls in ``self.calls``.
    """

    def __init__(self, field: torch.Tensor, model_sampling, prediction: str = "eps", x_coeff: float = 0.0):
        self.field = field
        self.model_sampling = model_sampling
        self.prediction = prediction
        self.x_coeff = x_coeff
        self.calls = 0
        self.frames_seen = 0

    def eps(self, x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        g = (1.0 / (1.0 + 0.1 * sigma)).view(-1, *([1] * (x_in.ndim - 1)))
        return self.field.to(x_in) * g + self.x_coeff * x_in

    def __call__(self, executor, x, timesteps, *args, **kwargs):
        self.calls += 1
        self.frames_seen += x.shape[0]
        sigma = self.model_sampling.sigma(timesteps.float()).to(x)
        eps = self.eps(x, sigma)
        if self.prediction == "eps":
            return eps
        a = (1.0 / torch.sqrt(1.0 + sigma**2)).view(-1, 1, 1, 1)
        s = sigma.view(-1, 1, 1, 1) * a
        return (eps - s * x) / a

    def attach(self, patcher, key: str = "ve_test_analytic"):
        import comfy.patcher_extension as pe

        m = patcher.clone()
        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, key, self)
        return m


class CallCounter:
    """A pass-through ``DIFFUSION_MODEL`` wrapper counting real UNet calls and frames."""

    def __init__(self):
        self.calls = 0
        self.frames = 0

    def __call__(self, executor, x, *args, **kwargs):
        self.calls += 1
        self.frames += x.shape[0]
        return executor(x, *args, **kwargs)

    def attach(self, patcher, key: str = "ve_test_counter"):
        import comfy.patcher_extension as pe

        m = patcher.clone()
        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, key, self)
        return m


# -- model families (SD2.x v-prediction, SDXL) ---------------------------------------------------
# SDXL's layout shrunk: three levels (no attention at the latent's own resolution), linear
# projections in the transformers, a depth that changes per level (1 at 1/16, 2 at 1/32, as
# SDXL's 2 / 10), the pooled text embedding + six size embeddings as ``adm`` (SDXL's
# 1280 + 6·256 with a 32-wide pooled output), a context of CLIP-L ⊕ CLIP-G features.
TINY_SDXL_CLIP_L_CONFIG = dict(TINY_CLIP_CONFIG, num_hidden_layers=3)  # SDXL reads layer -2
TINY_SDXL_CLIP_G_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 32,
    "hidden_act": "gelu",
}
TINY_SDXL_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 32 + 6 * 256,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 2,
    "use_linear_in_transformer": True,
    "context_dim": 64,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def build_tiny_sdxl_model(seed: int = 0, prediction: str = "eps"):
    """A ModelPatcher around a tiny SDXL-layout UNet in ComfyUI's SDXL model class
    (``comfy.model_base.SDXL``: ``adm`` from the pooled text embedding and the size
    embeddings), block ids of SDXL (attention in input 4, 5, 7, 8, middle, output 0-5)."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    model = comfy.model_base.SDXL(cfg, model_type=model_type, device=torch.device("cpu"))
    init_random_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_tiny_sdxl_clip(seed: int = 1):
    """SDXL's dual text encoder (CLIP-L hidden states ⊕ CLIP-G hidden states, CLIP-G's
    projected pooled output) with the host's real tokenizer files, tiny random weights."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    clip = comfy.sd.CLIP(
        target=comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
        model_options={
            "clip_l_model_config": dict(TINY_SDXL_CLIP_L_CONFIG),
            "clip_g_model_config": dict(TINY_SDXL_CLIP_G_CONFIG),
            "dtype": torch.float32,
        },
    )
    init_random_(clip.cond_stage_model, seed)
    return clip


def build_tiny_flow_model(seed: int = 0):
    """The tiny SD1.5-layout UNet sampled as a flow-matching model (``ModelType.FLOW``:
    SD3/Flux's ``ModelSamplingDiscreteFlow`` + ``CONST``), for the refusal tests."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.SD15(dict(TINY_UNET_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.FLOW, device=torch.device("cpu"))
    init_random_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


# family name -> (model builder kwargs, text encoder builder); the VAE is shared (4 channels, 8x)
MODEL_FAMILIES = {
    "sd15_eps": (build_tiny_model, {"prediction": "eps"}, build_tiny_clip),
    "sd2_v": (build_tiny_model, {"prediction": "v"}, build_tiny_clip),
    "sdxl": (build_tiny_sdxl_model, {}, build_tiny_sdxl_clip),
}


def build_family(name: str, seed: int = 0):
    """``(model, clip)`` of one of :data:`MODEL_FAMILIES`."""
    build_model, kwargs, build_clip = MODEL_FAMILIES[name]
    return build_model(seed=seed, **kwargs), build_clip()
