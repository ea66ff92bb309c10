"""FLOPs from the UNet's own module shapes, and FLOPs counted while a case runs.

:func:`unet_shapes` runs one UNet forward for one row (one frame of one cond/uncond chunk) on
fake tensors (shapes only, no arithmetic, no memory) with hooks on every convolution, linear
layer and attention module, so the per-method models in :mod:`bench.model` are computed from
the real layer sizes at the benchmark's resolution. A multiply-add counts as 2 FLOPs; norms,
activations and other element-wise work are left out (a few % of a UNet).

:func:`counted_flops` wraps a run in ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions, SDPA, including CPU's flash kernel), i.e. what the implementation really
computes, as a cross-check of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SelfAttention:
    """One self-attention (attn1) layer: ``tokens`` per frame, ``inner`` = heads × dim_head."""

    name: str
    tokens: int
    inner: int
    heads: int

    @property
    def core_flops(self) -> float:
        """FLOPs of q·kᵀ and softmax·v for one frame attending to itself: 2 · 2·N²·inner."""
        return 4.0 * self.tokens * self.tokens * self.inner


@dataclass
class UNetShapes:
    """FLOPs of one UNet row and its self-attention layers, at one latent size."""

    row_flops: float = 0.0  # one frame through the whole UNet (convs + linears + attention cores)
    conv_flops: float = 0.0
    linear_flops: float = 0.0
    cross_core_flops: float = 0.0
    self_layers: list[SelfAttention] = field(default_factory=list)

    @property
    def self_core_flops(self) -> float:
        """Per-frame self-attention cores, all layers."""
        return sum(layer.core_flops for layer in self.self_layers)

    @property
    def top_layers(self) -> list[SelfAttention]:
        """The highest-resolution self-attention layers (FLATTEN's default flow-step layers)."""
        top = max(layer.tokens for layer in self.self_layers)
        return [layer for layer in self.self_layers if layer.tokens == top]

    def summary(self) -> str:
        g = 1e9
        return (
            f"UNet row {self.row_flops / g:.1f} GFLOP (conv {self.conv_flops / g:.1f}, linear "
            f"{self.linear_flops / g:.1f}, self-attn cores {self.self_core_flops / g:.1f}, cross-attn cores "
            f"{self.cross_core_flops / g:.2f}); {len(self.self_layers)} self-attention layers"
        )


def unet_shapes(
    diffusion_model: torch.nn.Module,
    latent_hw: tuple[int, int],
    context_tokens: int = 77,
    context_dim: int | None = None,
    in_channels: int = 4,
) -> UNetShapes:
    """Hook one fake-tensor forward of ``diffusion_model`` (ComfyUI ``UNetModel``) for one row
    at latent ``latent_hw`` and a ``context_tokens``-long text context."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes = UNetShapes()
    handles = []

    def conv_hook(mod, args, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]  # in/groups · kh · kw
        shapes.conv_flops += 2.0 * out.numel() * k

    def linear_hook(mod, args, out):
        shapes.linear_flops += 2.0 * out.numel() * mod.in_features

    def attn_hook(name):
        def hook(mod, args, kwargs, out):
            x = args[0]
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            inner = mod.to_q.out_features
            n = x.shape[1]
            if name.endswith("attn1"):
                shapes.self_layers.append(SelfAttention(name, int(n), int(inner), int(mod.heads)))
            else:
                m = context.shape[1] if context is not None else n
                shapes.cross_core_flops += 4.0 * x.shape[0] * n * m * inner

        return hook

    for name, mod in diffusion_model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, torch.nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
        elif name.endswith(("attn1", "attn2")) and hasattr(mod, "to_q"):
            handles.append(mod.register_forward_hook(attn_hook(name), with_kwargs=True))
    if context_dim is None:
        attn2 = [m for n, m in diffusion_model.named_modules() if n.endswith("attn2") and hasattr(m, "to_k")]
        context_dim = attn2[0].to_k.in_features if attn2 else 768
    dtype = next(diffusion_model.parameters()).dtype
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(1, in_channels, *latent_hw, dtype=dtype)
            t = torch.full((1,), 500.0)
            ctx = torch.empty(1, context_tokens, context_dim, dtype=dtype)
            diffusion_model(x, timesteps=t, context=ctx, transformer_options={})
    finally:
        for h in handles:
            h.remove()
    shapes.row_flops = shapes.conv_flops + shapes.linear_flops + shapes.self_core_flops + shapes.cross_core_flops
    return shapes


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, h, n, d = query_shape
    m = key_shape[-2]
    return 4 * b * h * n * m * d


def counted_flops(fn) -> float:
    """FLOPs of the matmuls/convolutions/SDPA ``fn()`` runs (CPU's flash SDPA included)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        custom[op] = _sdpa_cpu_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return float(counter.get_total_flops())
